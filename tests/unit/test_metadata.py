"""The metadata document (SPEC §1.4)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest

import cefmp4
from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.core.metadata import ProbeResult, build_metadata, iso_utc, to_json_bytes

MIB = 1024 * 1024
T0 = 1_795_000_000.25  # 2026-11-18T...Z

REQUIRED = {
    "stream_id", "original_file_path", "s3_bucket", "s3_key", "status", "total_size_bytes",
    "sha256", "duration_seconds", "stream_started_at_utc", "stream_completed_at_utc",
    "processed_at_utc", "chunks",
}


def make_record(**changes: object) -> StreamRecord:
    record = StreamRecord(
        stream_id="20261124T104500Z-0123456789",
        path="/videos/cam 1/ré.mp4",
        rel_path="cam 1/ré.mp4",
        device=2049,
        inode=1234,
        bucket="video-streams",
        key="streams/20261124T104500Z-0123456789/cam 1/ré.mp4",
        part_size=5 * MIB,
        max_parts=10_000,
        state=StreamState.FINALIZING,
        started_at=T0,
        last_activity_at=T0 + 60,
        upload_id="up-1",
        completed_at=T0 + 90,
        final_size=12 * MIB + 7,
        sha256="ab" * 32,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def make_parts(*sizes: int) -> list[PartRecord]:
    parts, offset = [], 0
    for number, size in enumerate(sizes, start=1):
        etag, md5 = f'"etag{number}"', f"md5{number}"
        parts.append(PartRecord(number, offset, size, etag, md5, T0 + number))
        offset += size
    return parts


PARTS = make_parts(5 * MIB, 5 * MIB, 2 * MIB + 7)
PROBE = ProbeResult(4.0, format_name="mov,mp4,m4a,3gp,3g2,mj2", video_codec="mpeg4",
                    width=640, height=360)


def test_every_required_field_is_present_and_correct() -> None:
    doc = build_metadata(record=make_record(), parts=PARTS, probe=PROBE, status="complete",
                         processed_at=T0 + 95)
    assert doc.keys() >= REQUIRED
    assert doc["stream_id"] == "20261124T104500Z-0123456789"
    assert doc["original_file_path"] == "/videos/cam 1/ré.mp4"
    assert doc["s3_bucket"] == "video-streams"
    assert doc["s3_key"] == "streams/20261124T104500Z-0123456789/cam 1/ré.mp4"
    assert doc["status"] == "complete"
    assert doc["total_size_bytes"] == 12 * MIB + 7
    assert doc["sha256"] == "ab" * 32
    assert doc["duration_seconds"] == 4.0
    assert doc["stream_started_at_utc"] == iso_utc(T0)
    assert doc["stream_completed_at_utc"] == iso_utc(T0 + 90)
    assert doc["processed_at_utc"] == iso_utc(T0 + 95)


def test_extras() -> None:
    doc = build_metadata(record=make_record(), parts=PARTS, probe=PROBE, status="complete",
                         processed_at=T0, extra={"recorder": "cam-7"})
    assert doc["recorder"] == "cam-7"
    assert doc["video_codec"] == "mpeg4"
    assert (doc["width"], doc["height"]) == (640, 360)
    assert doc["part_size_bytes"] == 5 * MIB
    assert doc["chunk_count"] == 3
    assert doc["content_type"] == "video/mp4"
    assert doc["relative_path"] == "cam 1/ré.mp4"
    assert cefmp4.__version__ in str(doc["tool"])
    assert doc["duration_error"] is None


def test_chunks_are_ascending_and_sum_to_the_total() -> None:
    doc = build_metadata(record=make_record(), parts=PARTS, probe=PROBE, status="complete",
                         processed_at=T0)
    chunks = doc["chunks"]
    assert isinstance(chunks, list)
    assert [c["part_number"] for c in chunks] == [1, 2, 3]
    assert [c["offset_bytes"] for c in chunks] == [0, 5 * MIB, 10 * MIB]
    assert sum(c["size_bytes"] for c in chunks) == doc["total_size_bytes"]
    assert chunks[0]["etag"] == '"etag1"'
    assert chunks[0]["uploaded_at_utc"] == iso_utc(T0 + 1)
    assert set(chunks[0]) >= {"part_number", "offset_bytes", "size_bytes", "etag",
                              "uploaded_at_utc"}


def test_timestamps_are_iso_8601_utc_with_offset() -> None:
    stamp = iso_utc(T0)
    assert stamp.endswith("+00:00")
    assert datetime.fromisoformat(stamp).timestamp() == T0


def test_unprobeable_file_has_null_duration_and_a_reason() -> None:
    probe = ProbeResult(None, error="moov atom not found")
    doc = build_metadata(record=make_record(), parts=PARTS, probe=probe, status="complete",
                         processed_at=T0)
    assert doc["duration_seconds"] is None
    assert doc["duration_error"] == "moov atom not found"
    assert json.loads(to_json_bytes(doc))["duration_seconds"] is None


def test_json_is_utf8_and_round_trips() -> None:
    doc = build_metadata(record=make_record(), parts=PARTS, probe=PROBE, status="truncated",
                         processed_at=T0)
    raw = to_json_bytes(doc)
    assert "ré.mp4".encode() in raw
    assert json.loads(raw.decode("utf-8")) == doc


@pytest.mark.parametrize("parts", [
    [PARTS[1], PARTS[0], PARTS[2]],  # out of order
    [PARTS[0], PARTS[2]],  # a gap in numbers and offsets
    [replace(PARTS[0], part_number=0)],
    [replace(PARTS[0], offset=1)],  # not from byte 0
    [PARTS[0], replace(PARTS[1], offset=5 * MIB - 1)],  # overlapping
    [replace(PARTS[0], size=0)],
])
def test_inconsistent_parts_are_refused(parts: list[PartRecord]) -> None:
    with pytest.raises(ValueError, match="part"):
        build_metadata(record=make_record(final_size=None), parts=parts, probe=PROBE,
                       status="complete", processed_at=T0)


def test_final_size_must_match_the_parts() -> None:
    with pytest.raises(ValueError, match="final size"):
        build_metadata(record=make_record(final_size=1), parts=PARTS, probe=PROBE,
                       status="complete", processed_at=T0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"sha256": None}, "sha256"), ({"completed_at": None}, "completion"),
])
def test_missing_record_fields_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_metadata(record=make_record(**changes), parts=PARTS, probe=PROBE,
                       status="complete", processed_at=T0)


def test_extras_cannot_replace_required_fields() -> None:
    with pytest.raises(ValueError, match="sha256"):
        build_metadata(record=make_record(), parts=PARTS, probe=PROBE, status="complete",
                       processed_at=T0, extra={"sha256": "forged"})


def test_empty_stream() -> None:
    doc = build_metadata(record=make_record(final_size=0), parts=[], probe=PROBE,
                         status="complete", processed_at=T0)
    assert doc["total_size_bytes"] == 0
    assert doc["chunks"] == []
