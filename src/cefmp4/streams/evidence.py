"""What makes a metadata document evidence (SPEC §2.22): the fields that say how its video is
protected (Object Lock, encryption, the whole-object checksum S3 verified), then the
signature over all of it. Every writer of metadata (finalize, salvage) passes its document
through ``Evidence.seal`` last, so nothing is added after the signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from cefmp4.checkpoint import PartRecord
from cefmp4.core.hashing import combined_crc64nvme, crc64_b64
from cefmp4.core.signature import Signer
from cefmp4.runtime import logs
from cefmp4.storage.protection import DAY_S, ObjectProtection

log = structlog.get_logger("cefmp4.streams.evidence")


@dataclass(frozen=True, slots=True)
class Evidence:
    """The signer and the protection of one process; the default adds and signs nothing."""

    signer: Signer | None = None
    protection: ObjectProtection = field(default_factory=ObjectProtection)

    def fields(
        self, parts: Sequence[PartRecord], *, started_at: float, completed_at: float,
        checksum_verified: bool,
    ) -> dict[str, object]:
        """The evidence fields of a video made of ``parts``: ``full_object_checksum`` (when
        every part's CRC64NVME is recorded), ``object_lock`` and ``encryption`` (when set).

        The video's retain-until was set when its upload was created, which was after the
        stream started (``started_at``): so it is at least started_at + days + the
        recording allowance, and that bound is what the document states. An empty video
        (no parts) is written whole at completion: its retain-until is exact."""
        doc: dict[str, object] = {}
        whole = combined_crc64nvme(parts) if parts else None
        if whole is not None:
            doc["full_object_checksum"] = {
                "algorithm": "CRC64NVME", "type": "FULL_OBJECT", "value": crc64_b64(whole),
                # True: S3 refused to complete unless its bytes had this checksum.
                "verified_by_store": checksum_verified,
            }
        protection = self.protection
        if protection.locks:
            lock: dict[str, object] = {
                "mode": protection.lock_mode, "legal_hold": protection.legal_hold,
            }
            if protection.retain_days is not None:
                multipart = bool(parts)
                start = started_at if multipart else completed_at
                until = protection.retain_until(start, multipart=multipart)
                assert until is not None  # mode and days are set together (settings)
                wanted = completed_at + protection.retain_days * DAY_S
                short = max(0.0, round(wanted - until.timestamp(), 3))
                lock.update(retain_days=protection.retain_days,
                            video_retain_until_at_least_utc=until.isoformat(),
                            video_short_by_at_most_seconds=short)
                if short > 0:
                    log.warning(logs.OBJECT_LOCK_SHORT, short_by_s=short,
                                retain_until=until.isoformat())
            doc["object_lock"] = lock
        if protection.sse is not None:
            described = protection.describe()
            doc["encryption"] = {"sse": protection.sse, **(
                {"kms_key_id": described["kms_key_id"]} if described["kms_key_id"] else {}
            )}
        return doc

    def seal(self, doc: Mapping[str, object]) -> dict[str, object]:
        """The document as it is written: signed with SIGNING_KEY_FILE when set."""
        return self.signer.sign(doc) if self.signer is not None else dict(doc)
