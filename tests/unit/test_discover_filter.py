"""discover.is_candidate: which names are recordings (§2.1). Pure: no file system."""

from __future__ import annotations

from pathlib import Path

import pytest

from cefmp4.intake.discover import is_candidate

ROOT = Path("/data/in")


@pytest.mark.parametrize(
    "relative",
    [
        "a.mp4",
        "b.MP4",
        "c.Mp4",
        "cam1/2024-05-01/rec.mp4",
        "with space.mp4",
        "dots.in.name.mp4",
        "not.hidden./x.mp4",
    ],
)
def test_accepted(relative: str) -> None:
    assert is_candidate(ROOT / relative, ROOT)


@pytest.mark.parametrize(
    "relative",
    [
        "a.mov",
        "a.mp4.part",
        "a.mp4~",
        "a.mp4.tmp",
        "mp4",
        "amp4",
        ".hidden.mp4",
        ".mp4",
        ".cam/rec.mp4",
        "cam/.tmp/rec.mp4",
        "cam/.rec.mp4",
        "../escape.mp4",
        "cam/../../escape.mp4",
    ],
)
def test_rejected(relative: str) -> None:
    assert not is_candidate(ROOT / relative, ROOT)


def test_outside_the_watch_dir_is_rejected() -> None:
    assert not is_candidate(Path("/data/other/a.mp4"), ROOT)
    assert not is_candidate(Path("/data/in.mp4"), ROOT)
    assert not is_candidate(Path("relative/a.mp4"), ROOT)


def test_the_watch_dir_itself_is_rejected() -> None:
    root = Path("/data/in.mp4")
    assert not is_candidate(root, root)


def test_hidden_components_above_the_watch_dir_do_not_matter() -> None:
    root = Path("/home/me/.local/share/recordings")
    assert is_candidate(root / "a.mp4", root)
    assert not is_candidate(root / ".cache" / "a.mp4", root)


def test_relative_paths_compare_as_given() -> None:
    assert is_candidate(Path("in/a.mp4"), Path("in"))
    assert not is_candidate(Path("in/.a.mp4"), Path("in"))


def test_no_file_system_access(tmp_path: Path) -> None:
    # Nothing exists: a pure name check still answers.
    assert is_candidate(tmp_path / "missing" / "a.mp4", tmp_path)
