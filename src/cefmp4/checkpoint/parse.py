"""Stored values back into records, checked: a record that does not parse is
``MalformedRecord`` (quarantined by the stores, never acted on; SPEC §2.18)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from cefmp4.checkpoint.records import (
    CompletedFile,
    MalformedRecord,
    PartRecord,
    StreamRecord,
    StreamState,
)
from cefmp4.core.keys import is_stream_id

# The StreamRecord fields, their type, and whether they may be absent (None).
_KINDS: dict[str, tuple[type, bool]] = {
    "stream_id": (str, False), "path": (str, False), "rel_path": (str, False),
    "device": (int, False), "inode": (int, False), "bucket": (str, False),
    "key": (str, False), "part_size": (int, False), "max_parts": (int, False),
    "state": (StreamState, False), "started_at": (float, False),
    "last_activity_at": (float, False), "upload_id": (str, True), "status": (str, True),
    "completed_at": (float, True), "final_size": (int, True), "final_mtime_ns": (int, True),
    "sha256": (str, True), "error": (str, True), "completed_by": (str, True),
}  # fmt: skip
MAX_PARTS_LIMIT = 10_000


def _typed(name: str, kind: type, value: object) -> object:
    if kind is StreamState:
        if not isinstance(value, str):
            raise MalformedRecord(f"{name}: not a state")
        try:
            return StreamState(value)
        except ValueError:
            raise MalformedRecord(f"{name}: unknown state {value[:40]!r}") from None
    if kind is float:
        return _float(name, value)
    if kind is int:
        return _int(name, value)
    return _str(name, value)


def build_record(values: Mapping[str, Any]) -> StreamRecord:
    """A StreamRecord from stored values of the right Python types, checked; else
    ``MalformedRecord`` saying what is wrong (missing, wrong type, out of range)."""
    typed: dict[str, Any] = {}
    for name, (kind, optional) in _KINDS.items():
        value = values.get(name)
        if value is None:
            if not optional:
                raise MalformedRecord(f"{name}: missing")
            typed[name] = None
            continue
        typed[name] = _typed(name, kind, value)
    record = StreamRecord(**typed)
    if not is_stream_id(record.stream_id):
        raise MalformedRecord("stream_id: not a stream id")
    if record.device < 0 or record.inode < 0:
        raise MalformedRecord("device/inode: negative")
    if record.part_size < 1 or not 1 <= record.max_parts <= MAX_PARTS_LIMIT:
        raise MalformedRecord("part_size/max_parts: out of range")
    for name in ("final_size", "final_mtime_ns"):
        value = getattr(record, name)
        if value is not None and value < 0:
            raise MalformedRecord(f"{name}: negative")
    return record


assert set(_KINDS) == {f.name for f in fields(StreamRecord)}


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedRecord(f"{name}: not an integer")
    return value


def _str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise MalformedRecord(f"{name}: not text")
    return value


def _float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedRecord(f"{name}: not a number")
    if not math.isfinite(value):
        raise MalformedRecord(f"{name}: not a finite number")
    return float(value)


def build_part(part_number: object, values: Mapping[str, Any]) -> PartRecord:
    """A PartRecord from stored values, checked; else ``MalformedRecord``."""
    try:
        number = _int("part_number", part_number)
        offset = _int("offset", values.get("offset"))
        size = _int("size", values.get("size"))
        etag = _str("etag", values.get("etag"))
        md5 = _str("md5", values.get("md5"))
        uploaded_at = _float("uploaded_at", values.get("uploaded_at"))
    except MalformedRecord as exc:
        raise MalformedRecord(f"part {str(part_number)[:20]}: {exc}") from None
    if not 1 <= number <= MAX_PARTS_LIMIT or offset < 0 or size < 1:
        raise MalformedRecord(f"part {number}: number, offset or size out of range")
    return PartRecord(number, offset, size, etag, md5, uploaded_at)


def outbox_values(
    seq: object, stream_id: object, payload: object, created_at: object
) -> tuple[int, str, bytes, float]:
    """An outbox item's stored values, checked (a sequence number, a stream id, the payload's
    bytes, a finite time); else ``MalformedRecord`` saying which one is wrong."""
    number = _int("seq", seq)
    if not is_stream_id(_str("stream_id", stream_id)):
        raise MalformedRecord("stream_id: not a stream id")
    if not isinstance(payload, bytes):
        raise MalformedRecord("payload: not bytes")
    return number, str(stream_id), payload, _float("created_at", created_at)


def build_completed(values: Sequence[object]) -> CompletedFile:
    """A CompletedFile from stored values of the right Python types, in its field order,
    checked as ``build_record`` checks them; else ``MalformedRecord``. It runs once per
    completed stream at start-up, hence the one-expression test of the usual case."""
    if len(values) != 8:
        raise MalformedRecord("completed record: wrong number of fields")
    stream_id, device, inode, size, mtime, path, key, bucket = values
    if (type(device) is int and type(inode) is int and type(size) is int
            and type(mtime) is int and min(device, inode, size, mtime) >= 0
            and type(path) is str and type(key) is str and type(bucket) is str
            and type(stream_id) is str and is_stream_id(stream_id)):  # fmt: skip
        return CompletedFile(stream_id, device, inode, size, mtime, path, key, bucket)
    # Not the usual case: say what is wrong.
    ints = (_int("device", device), _int("inode", inode), _int("final_size", size),
            _int("final_mtime_ns", mtime))  # fmt: skip
    if min(ints) < 0:
        raise MalformedRecord("device/inode/final_size/final_mtime_ns: negative")
    for name, text in (("path", path), ("key", key), ("bucket", bucket)):
        _str(name, text)
    if not is_stream_id(_str("stream_id", stream_id)):
        raise MalformedRecord("stream_id: not a stream id")
    raise MalformedRecord("completed record: does not parse")  # unreachable in practice
