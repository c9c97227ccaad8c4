"""The completed-stream fingerprints (cefmp4.streams.history): exact, compact, thread-side test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cefmp4.checkpoint import StreamRecord, StreamState, fingerprint_key
from cefmp4.streams.history import History


def record_of(path: Path, **changes: object) -> StreamRecord:
    st = path.stat()
    values: dict[str, object] = {
        "stream_id": "s1", "path": str(path), "rel_path": path.name, "device": st.st_dev,
        "inode": st.st_ino, "bucket": "b", "key": "streams/s1/a.mp4", "part_size": 5 << 20,
        "max_parts": 10_000, "state": StreamState.COMPLETED, "started_at": 1.0,
        "last_activity_at": 2.0, "final_size": st.st_size, "final_mtime_ns": st.st_mtime_ns,
        **changes,
    }  # fmt: skip
    return StreamRecord(**values)  # type: ignore[arg-type]


def test_a_remembered_file_is_unchanged_until_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x" * 100)
    history = History()
    history.remember(record_of(path))
    test = history.unchanged_test({})
    assert history.unchanged(path.stat())
    assert test(path.stat())
    with path.open("ab") as f:
        f.write(b"y")
    assert not history.unchanged(path.stat())
    assert not test(path.stat())
    os.truncate(path, 100)  # same size again, but a new mtime
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
    assert not test(path.stat())


def test_an_unfinished_file_is_never_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x")
    history = History()
    history.remember(record_of(path))
    st = path.stat()
    assert not history.unchanged_test({(st.st_dev, st.st_ino): object()})(st)


def test_the_inline_key_is_fingerprint_key_even_for_a_mtime_before_1970(tmp_path: Path) -> None:
    path = tmp_path / "old.mp4"
    path.write_bytes(b"x")
    os.utime(path, ns=(0, -5_000_000_000))
    st = path.stat()
    assert st.st_mtime_ns < 0
    history = History()
    history._done.add(fingerprint_key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    assert history.unchanged_test({})(st)
    assert history.unchanged(st)


def test_a_record_without_final_size_or_mtime_is_not_remembered(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x")
    history = History()
    history.remember(record_of(path, final_size=None))
    history.remember(record_of(path, final_mtime_ns=None))
    assert len(history) == 0


def test_100000_fingerprints_cost_under_12_mib() -> None:
    history = History()
    history._done.update(
        fingerprint_key(2049, 10_000_000 + i, 1 << 30, 1_764_000_000_000_000_000 + i)
        for i in range(100_000)
    )
    size = sys.getsizeof(history._done) + sum(sys.getsizeof(k) for k in history._done)
    assert size < 12 << 20, size
