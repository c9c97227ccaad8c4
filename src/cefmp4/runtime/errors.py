"""cefmp4's own exceptions, mapped from library errors at the IO boundary.

    CefmpError
    ├── ConfigError          invalid setting; the CLI prints one line and exits 2
    ├── TransientError       worth retrying: timeouts, refused connections, 5xx, throttling
    │   └── ContentChanged   S3 got other bytes than the Content-MD5 said (BadDigest)
    ├── PermanentError       retrying cannot help: access denied, bucket missing, bad request
    │   ├── UploadNotFound   the multipart upload id is unknown to S3 (expired, aborted)
    │   └── LeaseLost        another instance owns the stream now (fencing token rejected)
    └── SourceError          the local file cannot be read as expected
        ├── SourceGone       ENOENT: the file is gone (the only error that means deleted)
        ├── SourceReplaced   another file, or a non-regular one, sits at the path
        ├── SourcePermission EACCES/EPERM
        ├── SourceBusy       EMFILE/ENFILE: out of descriptors, try again later
        └── SourceTransient  EIO, ESTALE, ...
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


# The source file, classified by what a caller should do about it (only ENOENT is "gone").
class SourceGone(SourceError):
    """The file no longer exists (ENOENT): the stream ends with what was uploaded."""


class SourceReplaced(SourceError):
    """Another file (another inode, or not a regular file) now sits at the path."""


class SourcePermission(SourceError):
    """EACCES/EPERM: the file is there but may not be read; retried later, never "gone"."""


class SourceBusy(SourceError):
    """EMFILE/ENFILE: no descriptor free right now; the file waits its turn."""


class SourceTransient(SourceError):
    """EIO, ESTALE and other errors that may clear up; retried later."""


class ObjectExists(PermanentError):
    """The stream's key already holds an object (completed before a crash): never
    restart the upload over it."""


class UploadTaken(PermanentError):
    """Another party made an object of the stream's upload (salvage, §2.19): the stream
    is over at its key (``core.ending.Resume.TAKEN``)."""
