"""Discovery with WATCH_EXTENSIONS (SPEC §2.17): the filter and the scan."""

from __future__ import annotations

from pathlib import Path

import watchfiles

from cefmp4.core.containers import parse_extensions
from cefmp4.intake.discover import is_candidate, scan
from cefmp4.intake.watcher import _wanted

EXTS = parse_extensions(".mp4,.MKV,.ts")
W = Path("/w")


def test_default_is_mp4_only() -> None:
    assert is_candidate(W / "a.MP4", W)
    assert not is_candidate(W / "a.mkv", W)


def test_listed_extensions_in_any_case() -> None:
    for name in ("a.mp4", "b.MKV", "c.mkv", "cam/d.Ts"):
        assert is_candidate(W / name, W, EXTS), name
    for name in ("a.mov", ".hidden.mkv", "x/.tmp/b.ts", "a.mkv.part", "mkv"):
        assert not is_candidate(W / name, W, EXTS), name


def test_event_filter_uses_the_extensions() -> None:
    assert _wanted(watchfiles.Change.modified, "/w/a.mkv", W, EXTS)
    assert not _wanted(watchfiles.Change.modified, "/w/a.mkv", W)


def test_scan_finds_every_listed_extension(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.MKV", "sub/c.ts", "d.mov", ".e.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in scan(tmp_path, extensions=EXTS)]
    assert found == ["a.mp4", "b.MKV", "sub/c.ts"]
    assert [p.name for p in scan(tmp_path)] == ["a.mp4"]
