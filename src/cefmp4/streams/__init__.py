"""The shell around each recording: supervisor, stream worker, upload and finalize, S3
operations, recovery, source and probe, ownership.
"""
