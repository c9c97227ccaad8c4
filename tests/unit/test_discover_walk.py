"""The walk's fast path (ASCII names of regular files) and its slow path agree."""

from __future__ import annotations

import os
from pathlib import Path

from cefmp4.intake.discover import Notices, scan_paths


def test_every_kind_of_name_and_file_takes_the_right_path(tmp_path: Path) -> None:
    (tmp_path / "plain.mp4").write_bytes(b"a")
    (tmp_path / "kamera-\u00fc.mp4").write_bytes(b"b")  # valid UTF-8, not ASCII
    os.mkfifo(tmp_path / "pipe.mp4")  # an ASCII name that is not a regular file
    (tmp_path / "link.mp4").symlink_to(tmp_path / "plain.mp4")  # inside the tree
    raw = os.fsencode(tmp_path) + b"/bad-\xff.mp4"
    with open(raw, "wb") as out:
        out.write(b"c")
    notices = Notices()
    found = {Path(p).name for p in scan_paths(tmp_path, notices=notices)}
    assert found == {"plain.mp4", "kamera-\u00fc.mp4", "link.mp4"}
