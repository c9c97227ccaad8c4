"""WATCH_EXTENSIONS parsing and the Content-Type per extension (SPEC §2.17)."""

from __future__ import annotations

import re

import pytest

from cefmp4.core.containers import (
    SELF_CONTAINED_DEMUXERS,
    content_type,
    has_extension,
    parse_extensions,
    probe_formats,
)


def test_parse_lowercases_dedupes_and_keeps_order() -> None:
    assert parse_extensions(" .MP4, .mkv,.Mp4,, .TS ") == (".mp4", ".mkv", ".ts")
    assert parse_extensions([".MOV"]) == (".mov",)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("mp4", "must start with '.'"),
        (".", "one extension"),
        (".tar.gz", "one extension"),
        ("./x", "may not contain"),
        (".m p4", "may not contain"),
        (".mp*", "may not contain"),
        ("", "at least one"),
        (" , ,", "at least one"),
    ],
)
def test_parse_rejects_bad_entries(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        parse_extensions(value)


@pytest.mark.parametrize(
    ("name", "ctype"),
    [
        ("a.mp4", "video/mp4"),
        ("A.MP4", "video/mp4"),
        ("clip.mov", "video/quicktime"),
        ("clip.m4v", "video/x-m4v"),
        ("obs.mkv", "video/x-matroska"),
        ("cam/seg.TS", "video/mp2t"),
        ("x.webm", "video/webm"),
        ("noext", "application/octet-stream"),
        ("weird.xyz", "application/octet-stream"),
        ("dir.mp4/file", "application/octet-stream"),
    ],
)
def test_content_type_follows_the_extension(name: str, ctype: str) -> None:
    assert content_type(name) == ctype


def test_has_extension_any_case() -> None:
    exts = parse_extensions(".mp4,.mkv")
    assert has_extension("a/B.MKV", exts)
    assert has_extension("x.mp4", exts)
    assert not has_extension("x.mov", exts)
    assert not has_extension("x.mp4.part", exts)


# --- what ffprobe may read each container as (review #10) -----------------------------------


@pytest.mark.parametrize(
    ("name", "formats"),
    [
        ("a.mp4", "mov,mp4,m4a,3gp,3g2,mj2"),
        ("dir.x/A.MOV", "mov,mp4,m4a,3gp,3g2,mj2"),
        ("a.m4v", "mov,mp4,m4a,3gp,3g2,mj2"),
        ("a.mkv", "matroska,webm"),
        ("a.webm", "matroska,webm"),
        ("a.ts", "mpegts"),
        ("a.M2TS", "mpegts"),
    ],
)
def test_a_container_is_probed_as_itself_only(name: str, formats: str) -> None:
    assert probe_formats(name) == formats


@pytest.mark.parametrize("name", ["a.dv", "noext", "a.m3u8", "x.mp4/", "a.txt"])
def test_an_unknown_extension_is_probed_as_any_self_contained_container(name: str) -> None:
    assert probe_formats(name) == SELF_CONTAINED_DEMUXERS


def test_no_demuxer_that_opens_other_files_is_ever_allowed() -> None:
    names = set(SELF_CONTAINED_DEMUXERS.split(","))
    assert {"mov", "matroska", "mpegts"} <= names
    assert not names & {"hls", "applehttp", "dash", "concat", "image2", "tee", "data"}
