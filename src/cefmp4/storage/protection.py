"""What every object cefmp4 writes carries from its first byte (SPEC §2.22): Object Lock
retention and legal hold, and server-side encryption, as the extra arguments of
CreateMultipartUpload and PutObject. Nothing is applied afterwards: there is no window in
which a written object is unprotected, and the IAM policy needs no PutObjectRetention.

**Retain-until.** The contract is "completion time + S3_OBJECT_LOCK_RETAIN_DAYS", but a
video's retention is set at CreateMultipartUpload, before anyone knows when the recording
will end. cefmp4 sets it to *creation time + days + RECORDING_ALLOWANCE* (one day): at least
completion + days for every recording that completes within a day of its upload's creation.
A longer recording is completed all the same, with a WARNING (``object_lock_short``) and
the metadata saying by how much at most (``object_lock.video_short_by_at_most_seconds``,
see ``cefmp4.streams.evidence``); extending it is the operator's call (``aws s3api
put-object-retention``; S3 only ever lets it grow). A metadata document is written by
PutObject at completion, so its retain-until is exact: written at + days.

Which objects are locked: every video and metadata object. cefmp4's own bookkeeping below
``{prefix}.cefmp4/`` (tail segments, salvage notes) and the checksum probes
(``{prefix}.cefmp4-check/``) are encrypted but not locked: they are deleted once their
recording is complete, which a lock would forbid.

**KMS key ids** are identifiers, not secrets, but an ARN names the AWS account; logs and
``check`` show it masked (``describe``), keeping the region, the last four digits of the
account and the start of the key id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

# Added to the retention set at CreateMultipartUpload: how long a recording may run after
# its upload was created and still get its full retention after completion (see above).
RECORDING_ALLOWANCE: Final = timedelta(days=1)
DAY_S: Final = 86_400.0

# Path segments under the key prefix that hold cefmp4's bookkeeping, never a recording.
BOOKKEEPING_SEGMENTS: Final = (".cefmp4/", ".cefmp4-check/")

_KMS_ARN = re.compile(
    r"arn:(?P<part>[\w-]+):kms:(?P<region>[\w-]*):(?P<account>\d{12}):(?P<rest>.+)"
)


def mask_kms_key_id(key_id: str) -> str:
    """A KMS key id fit for logs: an ARN's account reduced to its last four digits and its
    key part to eight characters; an alias or a bare key id as it is (neither names an
    account)."""
    match = _KMS_ARN.fullmatch(key_id)
    if match is None:
        return key_id
    rest = match["rest"]
    kind, _, name = rest.partition("/")
    shown = f"{kind}/{name[:8]}…" if name and len(name) > 8 else rest
    return f"arn:{match['part']}:kms:{match['region']}:********{match['account'][-4:]}:{shown}"


@dataclass(frozen=True, slots=True)
class ObjectProtection:
    """Object Lock and SSE of the objects one store writes. The default protects nothing."""

    lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = None
    retain_days: int | None = None
    legal_hold: bool = False
    sse: Literal["AES256", "aws:kms"] | None = None
    kms_key_id: str = ""

    @property
    def locks(self) -> bool:
        """Retention or legal hold: the bucket must have Object Lock enabled."""
        return self.lock_mode is not None or self.legal_hold

    @property
    def active(self) -> bool:
        return self.locks or self.sse is not None

    def retain_until(self, now: float, *, multipart: bool) -> datetime | None:
        """The retain-until of an object written at ``now`` (UNIX seconds): now + days, plus
        ``RECORDING_ALLOWANCE`` for a video whose upload starts now (completion comes later)."""
        if self.lock_mode is None or self.retain_days is None:
            return None
        until = datetime.fromtimestamp(now, UTC) + timedelta(days=self.retain_days)
        return until + RECORDING_ALLOWANCE if multipart else until

    def encryption_args(self) -> dict[str, Any]:
        if self.sse is None:
            return {}
        args: dict[str, Any] = {"ServerSideEncryption": self.sse}
        if self.sse == "aws:kms" and self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def lock_args(self, now: float, *, multipart: bool) -> dict[str, Any]:
        args: dict[str, Any] = {}
        until = self.retain_until(now, multipart=multipart)
        if until is not None:
            args["ObjectLockMode"] = self.lock_mode
            args["ObjectLockRetainUntilDate"] = until
        if self.legal_hold:
            args["ObjectLockLegalHoldStatus"] = "ON"
        return args

    def create_args(self, key: str, now: float) -> dict[str, Any]:
        """The extra arguments of CreateMultipartUpload for ``key`` (a video) at ``now``."""
        return self._args(key, now, multipart=True)

    def put_args(self, key: str, now: float) -> dict[str, Any]:
        """The extra arguments of PutObject for ``key`` (metadata, an empty video, or
        bookkeeping) at ``now``. Salvage's writes take them from here as well."""
        return self._args(key, now, multipart=False)

    def _args(self, key: str, now: float, *, multipart: bool) -> dict[str, Any]:
        args = self.encryption_args()
        if not is_bookkeeping(key):
            args.update(self.lock_args(now, multipart=multipart))
        return args

    def describe(self) -> dict[str, object]:
        """The protection as log fields (a KMS ARN masked)."""
        return {
            "object_lock_mode": self.lock_mode, "retain_days": self.retain_days,
            "legal_hold": self.legal_hold, "sse": self.sse,
            "kms_key_id": mask_kms_key_id(self.kms_key_id) if self.kms_key_id else None,
        }


def is_bookkeeping(key: str) -> bool:
    """cefmp4's own objects (tail segments, salvage notes, checksum probes): never a video
    or its metadata, so never locked."""
    return any(f"/{segment}" in f"/{key}" for segment in BOOKKEEPING_SEGMENTS)
