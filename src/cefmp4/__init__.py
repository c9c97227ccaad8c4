"""cefmp4: upload growing MP4 recordings to S3 while they are still being recorded."""

__version__ = "0.1.0"
