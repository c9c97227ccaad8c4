"""Which checkpointed parts an object already at the key was completed from (a restart)."""

from __future__ import annotations

from cefmp4.checkpoint import PartRecord
from cefmp4.core.hashing import multipart_etag
from cefmp4.storage import ObjectInfo
from cefmp4.streams.complete import made_of

PARTS = [PartRecord(n, (n - 1) * 10, 10, f"{n:032x}", "", 1.0) for n in (1, 2, 3, 5)]


def multipart(parts: list[PartRecord]) -> ObjectInfo:
    return ObjectInfo(sum(p.size for p in parts), multipart_etag([p.etag for p in parts]))


def test_an_object_of_the_first_parts_is_found_past_a_gap() -> None:
    assert made_of(multipart(PARTS[:2]), PARTS) == PARTS[:2]
    assert made_of(multipart(PARTS[:3]), PARTS) == PARTS[:3]


def test_parts_past_the_gap_never_make_the_object() -> None:
    assert made_of(multipart(PARTS), PARTS) is None  # 1, 2, 3, 5 is not a Complete we make


def test_another_object_at_the_key_is_not_ours() -> None:
    other = [PartRecord(1, 0, 10, "f" * 32, "", 1.0), *PARTS[1:2]]
    assert made_of(multipart(other), PARTS) is None
    assert made_of(ObjectInfo(20, "abc-9"), PARTS) is None  # more parts than we hold
    assert made_of(ObjectInfo(20, "abc-x"), PARTS) is None  # a dash, but no count


def test_a_plain_etag_is_matched_by_size() -> None:
    assert made_of(ObjectInfo(30, "d41d8cd98f00b204e9800998ecf8427e"), PARTS) == PARTS[:3]
    assert made_of(ObjectInfo(25, "d41d8cd98f00b204e9800998ecf8427e"), PARTS) is None
    assert made_of(ObjectInfo(0, "d41d8cd98f00b204e9800998ecf8427e"), PARTS) is None
