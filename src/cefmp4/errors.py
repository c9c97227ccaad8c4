"""cefmp4's own exceptions, mapped from library errors at the IO boundary.

    CefmpError
    ├── ConfigError          invalid setting; the CLI prints one line and exits 2
    ├── TransientError       worth retrying: timeouts, refused connections, 5xx, throttling
    │   └── ContentChanged   S3 got other bytes than the Content-MD5 said (BadDigest)
    ├── PermanentError       retrying cannot help: access denied, bucket missing, bad request
    │   ├── UploadNotFound   the multipart upload id is unknown to S3 (expired, aborted)
    │   └── LeaseLost        another instance owns the stream now (fencing token rejected)
    └── SourceError          the local file cannot be read as expected
"""

from __future__ import annotations


class CefmpError(Exception):
    """Root of every error cefmp4 raises on purpose."""


class ConfigError(CefmpError):
    """A setting is invalid; ``setting`` names it (env var spelling)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting
        self.message = message


class TransientError(CefmpError):
    """The operation may succeed if tried again later."""


class ContentChanged(TransientError):
    """The part body did not match its Content-MD5: hash the bytes again, then resend."""


class PermanentError(CefmpError):
    """The operation will fail the same way if tried again."""


class UploadNotFound(PermanentError):
    """S3 no longer knows the multipart upload id."""


class LeaseLost(PermanentError):
    """This instance no longer owns the stream; it must stop touching it."""


class SourceError(CefmpError):
    """The source file is gone, unreadable, or not what the checkpoint says."""
