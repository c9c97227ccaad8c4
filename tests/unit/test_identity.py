"""identity.classify: how a file changed between two looks (§2.4)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from cefmp4.core.identity import Change, FileIdentity, classify

OLD = FileIdentity(device=1, inode=100, size=1000, mtime_ns=5_000)


def test_from_stat_copies_the_identity_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x" * 7)
    st = os.stat(path)
    ident = FileIdentity.from_stat(st)
    assert ident == FileIdentity(st.st_dev, st.st_ino, 7, st.st_mtime_ns)


def test_is_frozen_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        OLD.size = 5  # type: ignore[misc]
    assert {OLD, dataclasses.replace(OLD)} == {OLD}


def test_same_file_ignores_size_and_mtime() -> None:
    assert OLD.same_file(dataclasses.replace(OLD, size=1, mtime_ns=1))
    assert not OLD.same_file(dataclasses.replace(OLD, inode=101))
    assert not OLD.same_file(dataclasses.replace(OLD, device=2))


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (OLD, Change.UNCHANGED),
        (dataclasses.replace(OLD, size=2000, mtime_ns=6_000), Change.GROWN),
        (dataclasses.replace(OLD, size=2000), Change.GROWN),
        (dataclasses.replace(OLD, mtime_ns=6_000), Change.REWRITTEN),
        (dataclasses.replace(OLD, mtime_ns=4_000), Change.REWRITTEN),
        (dataclasses.replace(OLD, size=10, mtime_ns=6_000), Change.TRUNCATED),
        (dataclasses.replace(OLD, size=0), Change.TRUNCATED),
        (dataclasses.replace(OLD, inode=101), Change.REPLACED),
        (dataclasses.replace(OLD, inode=101, size=5000), Change.REPLACED),
        (dataclasses.replace(OLD, device=2, size=10), Change.REPLACED),
        (None, Change.DELETED),
    ],
    ids=lambda v: str(v) if isinstance(v, Change) else "",
)
def test_classify(new: FileIdentity | None, expected: Change) -> None:
    assert classify(OLD, new) is expected


def test_change_values_are_strings_for_logs_and_checkpoints() -> None:
    assert str(Change.TRUNCATED) == "truncated"
    assert {str(c) for c in Change} == {
        "unchanged",
        "grown",
        "rewritten",
        "truncated",
        "replaced",
        "deleted",
    }
