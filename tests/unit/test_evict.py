"""AFTER_UPLOAD=evict (SPEC §2.24): the free space to keep, and a kept source that waits
for space to run short before it is deleted, with every proof of §2.25."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from cefmp4.after.after_upload import EVICT, AfterUploadSink, Space
from cefmp4.core.evict import KeepFree, parse_keep_free, shortfall
from cefmp4.runtime.errors import PermanentError
from tests.unit.test_after_upload import _item, _setup

GIB = 1 << 30


@pytest.mark.parametrize(("text", "expected"), [
    ("10%", KeepFree(percent=10.0)),
    (" 12.5% ", KeepFree(percent=12.5)),
    ("20G", KeepFree(nbytes=20 * GIB)),
    ("500M", KeepFree(nbytes=500 << 20)),
    ("2TiB", KeepFree(nbytes=2 << 40)),
    ("512k", KeepFree(nbytes=512 << 10)),
    ("1048576", KeepFree(nbytes=1 << 20)),
])
def test_keep_free_parses(text: str, expected: KeepFree) -> None:
    assert parse_keep_free(text) == expected


@pytest.mark.parametrize("text", ["", "0%", "100%", "-5M", "0", "ten", "5 %%", "1e9"])
def test_keep_free_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be|percentage"):
        parse_keep_free(text)


def test_shortfall() -> None:
    assert shortfall(free_bytes=5 * GIB, total_bytes=100 * GIB,
                     keep=KeepFree(percent=10)) == 5 * GIB
    assert shortfall(free_bytes=15 * GIB, total_bytes=100 * GIB, keep=KeepFree(percent=10)) == 0
    assert shortfall(free_bytes=1 * GIB, total_bytes=100 * GIB,
                     keep=KeepFree(nbytes=3 * GIB)) == 2 * GIB


class FakeSpace(Space):
    """Short of space only from the n-th look on."""

    def __init__(self, path: Path, short_from: int) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "keep", KeepFree(percent=10))
        object.__setattr__(self, "looks", [0])
        object.__setattr__(self, "short_from", short_from)

    def short(self) -> int:
        self.looks[0] += 1  # type: ignore[attr-defined]
        return 1 if self.looks[0] >= self.short_from else 0  # type: ignore[attr-defined]


async def test_a_kept_source_waits_for_short_space_then_goes(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    intent = replace(intent, action=EVICT)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        assert path.exists()  # nothing is evicted while space is plentiful

    evicted: list[int] = []
    sink = AfterUploadSink(head, sleep=sleep, space=FakeSpace(tmp_path, short_from=4),
                           evicted=lambda: evicted.append(1))
    await sink.deliver(_item(intent))
    assert len(slept) == 3  # three looks with space enough, then short
    assert not path.exists()
    assert evicted == [1]


async def test_eviction_keeps_every_proof(tmp_path: Path) -> None:
    """Short of space does not lower the bar: an object not confirmed, or a file changed
    since, is never evicted."""
    path, intent, head = _setup(tmp_path)
    intent = replace(intent, action=EVICT)
    del head.objects[intent.key]
    sink = AfterUploadSink(head, space=FakeSpace(tmp_path, short_from=1))
    with pytest.raises(PermanentError, match="not found"):
        await sink.deliver(_item(intent))
    assert path.exists()
    path2, intent2, head2 = _setup(tmp_path / "b")
    with open(path2, "ab") as f:
        f.write(b"more")
    with pytest.raises(PermanentError, match="changed since"):
        await AfterUploadSink(head2, space=FakeSpace(tmp_path, short_from=1)).deliver(
            _item(replace(intent2, action=EVICT)))
    assert path2.exists()
    assert os.path.getsize(path2) == intent2.size + 4


async def test_s3_down_while_space_runs_short_evicts_nothing(tmp_path: Path) -> None:
    """The object cannot be confirmed while S3 is down: the source stays, the action is
    retried (transient) once S3 answers."""
    from cefmp4.runtime.errors import TransientError

    path, intent, head = _setup(tmp_path)
    head.down = True
    sink = AfterUploadSink(head, space=FakeSpace(tmp_path, short_from=1))
    with pytest.raises(TransientError):
        await sink.deliver(_item(replace(intent, action=EVICT)))
    assert path.exists()
    head.down = False
    await sink.deliver(_item(replace(intent, action=EVICT)))
    assert not path.exists()
