"""Stream ids and object keys (SPEC §1.3)."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import PurePosixPath

import pytest

from cefmp4.core.keys import (
    UnkeyablePath,
    is_stream_id,
    metadata_key,
    new_stream_id,
    object_key,
    parse_key,
    within_prefix,
)

PREFIX = "streams/"


def test_stream_id_shape_and_uniqueness() -> None:
    now = datetime(2026, 11, 24, 10, 45, 0, tzinfo=UTC)
    ids = {new_stream_id(now) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"20261124T104500Z-[0-9a-f]{10}", i) for i in ids)
    assert all(is_stream_id(i) for i in ids)


def test_stream_ids_sort_by_time_and_use_utc() -> None:
    east = timezone(timedelta(hours=2))
    early = new_stream_id(datetime(2026, 1, 1, 12, 0, tzinfo=east))  # 10:00 UTC
    late = new_stream_id(datetime(2026, 1, 1, 10, 0, 1, tzinfo=UTC))
    naive = new_stream_id(datetime(2026, 1, 1, 9, 0))  # taken as UTC
    assert early.startswith("20260101T100000Z-")
    assert sorted([late, early, naive]) == [naive, early, late]


def test_default_stream_id_is_now() -> None:
    assert new_stream_id()[:8] == datetime.now(UTC).strftime("%Y%m%d")


@pytest.mark.parametrize("rel_path", [
    "cam1.mp4",
    "site/cam 2/recording one.mp4",
    "ünïcødé/録画 ✓.MP4",
    "deep/a/b/c/d.Mp4",
])
def test_object_key_round_trips(rel_path: str) -> None:
    key = object_key(PREFIX, "20261124T104500Z-0123456789", rel_path)
    assert key == f"streams/20261124T104500Z-0123456789/{rel_path}"
    assert parse_key(PREFIX, key) == ("20261124T104500Z-0123456789", rel_path)


def test_object_key_writes_paths_posix_style() -> None:
    key = object_key("p/", "s1", PurePosixPath("a") / "b.mp4")
    assert key == "p/s1/a/b.mp4"


def test_empty_prefix() -> None:
    assert object_key("", "s1", "x.mp4") == "s1/x.mp4"
    assert parse_key("", "s1/x.mp4") == ("s1", "x.mp4")


def test_metadata_key_sits_beside_the_video() -> None:
    video = object_key(PREFIX, "s1", "a/b.MP4")
    assert metadata_key(video) == "streams/s1/a/b.MP4.metadata.json"
    assert parse_key(PREFIX, metadata_key(video)) is None


@pytest.mark.parametrize("key", [
    "other/s1/x.mp4",  # outside the prefix
    "streams/s1",  # no relative path
    "streams/s1/",  # empty relative path
    "streams//x.mp4",  # empty stream id
    "streams/../x.mp4",
    "streams/s1/../../etc/passwd",
    "streams/s1/x.mp4.metadata.json",
    "streams",
])
def test_parse_key_rejects_foreign_keys(key: str) -> None:
    assert parse_key(PREFIX, key) is None


@pytest.mark.parametrize("rel_path", ["", "/abs.mp4", "../up.mp4", "a/../../b.mp4", "."])
def test_object_key_refuses_paths_outside_the_watch_dir(rel_path: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        object_key(PREFIX, "s1", rel_path)


@pytest.mark.parametrize("stream_id", ["", "a/b", "../x", ".hidden", "sp ace"])
def test_object_key_refuses_unsafe_stream_ids(stream_id: str) -> None:
    with pytest.raises(ValueError, match="stream id"):
        object_key(PREFIX, stream_id, "x.mp4")


def test_object_key_refuses_keys_s3_cannot_store() -> None:
    with pytest.raises(UnkeyablePath, match=re.escape(
            "1220 bytes (1234 with the metadata's suffix), over S3's limit of 1024")) as err:
        object_key(PREFIX, "s1", "/".join(["é" * 100] * 6) + ".mp4")
    assert isinstance(err.value, ValueError)
    assert "é" not in str(err.value)  # the path is the caller's to log (printable)


def test_the_metadata_key_counts_toward_the_limit() -> None:
    """The metadata's key is the video's + 14 bytes: both must fit (a 1,024-byte video key
    made a metadata key S3 refused, and the stream looped for ever)."""
    rel = "/".join(["a" * 200] * 5)[: 1024 - len("streams/s1/") - 14 - 4] + ".mp4"
    assert len(object_key(PREFIX, "s1", rel).encode()) == 1024 - 14
    with pytest.raises(UnkeyablePath, match="with the metadata's suffix"):
        object_key(PREFIX, "s1", "a" + rel)


@pytest.mark.parametrize(("name_bytes", "ok"), [(241, True), (242, False), (255, False)])
def test_a_name_longer_than_a_file_system_allows_is_unkeyable(name_bytes: int,
                                                              ok: bool) -> None:
    """MinIO and SeaweedFS keep each key segment as a file name (255 bytes at most), and
    the metadata's segment is the name + 14 bytes."""
    name = "n" * (name_bytes - 4) + ".mp4"
    if ok:
        assert object_key(PREFIX, "s1", f"cam/{name}").endswith(name)
    else:
        with pytest.raises(UnkeyablePath, match="a name in its path is"):
            object_key(PREFIX, "s1", f"cam/{name}")


@pytest.mark.parametrize("rel_path", ["", "/abs.mp4", "../up.mp4"])
def test_a_callers_mistake_is_not_taken_for_an_unkeyable_file(rel_path: str) -> None:
    with pytest.raises(ValueError, match="relative path") as err:
        object_key(PREFIX, "s1", rel_path)
    assert not isinstance(err.value, UnkeyablePath)


# --- the prefix is a path segment (§2.13); names that are not UTF-8 (#9.1) -----------------


@pytest.mark.parametrize(
    ("prefix", "key", "inside"),
    [
        ("streams/", "streams/id/a.mp4", True),
        ("streams", "streams/id/a.mp4", True),
        ("streams", "streams-archive/id/a.mp4", False),
        ("streams/", "streams-archive/id/a.mp4", False),
        ("streams", "streams", False),
        ("streams/", "streams/", False),
        ("streams/", "streams/../elsewhere/a.mp4", False),
        ("streams/", "other/streams/a.mp4", False),
        ("a/b/", "a/b/c", True),
        ("a/b", "a/bc", False),
        ("", "anything/at/all", True),
        ("", "", False),
    ],
)
def test_within_prefix_is_segment_wise(prefix: str, key: str, inside: bool) -> None:
    assert within_prefix(prefix, key) is inside


def test_object_key_and_parse_key_treat_the_prefix_as_a_segment() -> None:
    key = object_key("streams", "20261124T104500Z-3f9a0c12be", "a.mp4")
    assert key == "streams/20261124T104500Z-3f9a0c12be/a.mp4"
    assert parse_key("streams", key) == ("20261124T104500Z-3f9a0c12be", "a.mp4")
    assert parse_key("streams", "streams-archive/20261124T104500Z-3f9a0c12be/a.mp4") is None


def test_a_name_that_is_not_utf8_is_a_value_error_not_unicode_error() -> None:
    rel = os.fsdecode(b"cam/\xff\xfe.mp4")  # as os.scandir spells it: surrogate-escaped
    with pytest.raises(UnkeyablePath, match="not valid UTF-8") as err:
        object_key("streams/", "20261124T104500Z-3f9a0c12be", rel)
    assert not isinstance(err.value, UnicodeError)
    str(err.value).encode("utf-8")  # loggable; the path is the caller's to log (printable)
