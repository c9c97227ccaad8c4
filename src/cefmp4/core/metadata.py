"""The metadata document written beside every completed video (SPEC §1.4). Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cefmp4 import __version__
from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.core.containers import content_type
from cefmp4.core.hashing import is_md5_record, record_crc32c, record_crc64nvme

CONTENT_TYPE = "application/json"
VIDEO_CONTENT_TYPE = "video/mp4"  # of .mp4; others follow cefmp4.core.containers

# Fields the contract requires; ``extra`` may add fields but never replace these.
REQUIRED_FIELDS = frozenset({
    "stream_id", "original_file_path", "s3_bucket", "s3_key", "status", "total_size_bytes",
    "sha256", "duration_seconds", "stream_started_at_utc", "stream_completed_at_utc",
    "processed_at_utc", "chunks",
})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    duration_seconds: float | None
    error: str | None = None  # why there is no duration, when there is none
    format_name: str | None = None
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None


def iso_utc(timestamp: float) -> str:
    """A UNIX timestamp as ISO 8601 in UTC with an explicit ``+00:00`` offset."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def build_metadata(
    *,
    record: StreamRecord,
    parts: Sequence[PartRecord],
    probe: ProbeResult,
    status: str,
    processed_at: float,
    extra: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The §1.4 document for a completed stream.

    ``parts`` are the parts the object was completed from. Raises ``ValueError`` when they
    are not numbered 1..n in ascending order, not contiguous from byte 0, disagree with
    ``record.final_size``, or when the record lacks its sha256 or completion time.
    """
    chunks = _check_parts(parts)
    total = sum(part.size for part in parts)
    if record.final_size is not None and record.final_size != total:
        raise ValueError(
            f"parts add up to {total} bytes but the stream's final size is {record.final_size}"
        )
    if record.sha256 is None:
        raise ValueError(f"stream {record.stream_id} has no sha256")
    if record.completed_at is None:
        raise ValueError(f"stream {record.stream_id} has no completion time")
    if not status:
        raise ValueError("status must not be empty")

    doc: dict[str, object] = {
        "stream_id": record.stream_id,
        "original_file_path": record.path,
        "relative_path": record.rel_path,
        "s3_bucket": record.bucket,
        "s3_key": record.key,
        "content_type": content_type(record.rel_path),
        "status": status,
        "total_size_bytes": total,
        "sha256": record.sha256,
        "duration_seconds": probe.duration_seconds,
        "duration_error": probe.error,
        "format_name": probe.format_name,
        "video_codec": probe.video_codec,
        "width": probe.width,
        "height": probe.height,
        "stream_started_at_utc": iso_utc(record.started_at),
        "stream_completed_at_utc": iso_utc(record.completed_at),
        "processed_at_utc": iso_utc(processed_at),
        "part_size_bytes": record.part_size,
        "max_parts": record.max_parts,
        "chunk_count": len(chunks),
        "chunks": chunks,
        "tool": f"cefmp4 {__version__}",
    }
    if extra:
        clash = REQUIRED_FIELDS.intersection(extra)
        if clash:
            raise ValueError(f"extra fields may not replace required ones: {sorted(clash)}")
        doc.update(extra)
    return doc


def to_json_bytes(doc: Mapping[str, object]) -> bytes:
    """The document as UTF-8 JSON, indented, non-ASCII kept readable."""
    return (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _check_parts(parts: Sequence[PartRecord]) -> list[dict[str, object]]:
    chunks: list[dict[str, object]] = []
    expected_offset = 0
    for index, part in enumerate(parts, start=1):
        if part.part_number != index:
            raise ValueError(
                f"part numbers must be 1..n ascending; got {part.part_number} at {index}"
            )
        if part.offset != expected_offset:
            raise ValueError(
                f"part {part.part_number} starts at byte {part.offset}, expected {expected_offset}"
            )
        if part.size <= 0:
            raise ValueError(f"part {part.part_number} is empty")
        chunk: dict[str, object] = {
            "part_number": part.part_number,
            "offset_bytes": part.offset,
            "size_bytes": part.size,
            "etag": part.etag,
            # The recorded digest under its own name: "md5", or "crc32c" (8 hex digits)
            # and "crc64nvme" (16 hex digits) where recorded.
            ("md5" if is_md5_record(part.md5) else "crc32c"):
                part.md5 if is_md5_record(part.md5) else record_crc32c(part.md5),
        }
        crc64 = record_crc64nvme(part.md5)
        if crc64 is not None:
            chunk["crc64nvme"] = f"{crc64:016x}"
        chunk["uploaded_at_utc"] = iso_utc(part.uploaded_at)
        chunks.append(chunk)
        expected_offset += part.size
    return chunks
