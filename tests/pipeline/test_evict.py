"""AFTER_UPLOAD=evict in the daemon: ``evictable_files`` and ``evictable_bytes`` are the
confirmed sources kept on disk and their sizes, kept current by the completions and the
evictions of this process, and read from the store at start-up (a restart keeps them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cefmp4.after.after_upload import Space
from cefmp4.runtime.app import App
from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import (
    FakeProber,
    daemon,
    make_settings,
    pattern,
    until,
)

SIZES = {"a.mp4": 3_000_000, "b.mp4": 1_000_000, "c.mp4": 2_000_000}


def _gauges(app: App) -> tuple[float | None, float | None]:
    read = app.metrics.registry.get_sample_value
    return read("evictable_files"), read("evictable_bytes")


@pytest.fixture
def space(monkeypatch: pytest.MonkeyPatch, watch: Path) -> dict[str, int]:
    """The file system is short of ``need`` bytes, less what evictions freed since."""
    state = {"need": 0}

    def short(self: Space) -> int:
        freed = sum(size for name, size in SIZES.items() if not (watch / name).exists())
        return max(0, state["need"] - freed)

    monkeypatch.setattr(Space, "short", short)
    return state


async def test_evictable_bytes_is_the_kept_sources_and_drops_on_eviction(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    space: dict[str, int],
) -> None:
    settings = make_settings(tmp_path, watch, after_upload="evict", evict_keep_free="10%")
    async with daemon(settings, store, prober) as app:
        for name, size in SIZES.items():  # one after the other: a is the oldest
            (watch / name).write_bytes(pattern(size, seed=size))
            await until(lambda n=name: _gauges(app)[0] == list(SIZES).index(n) + 1,
                        what=f"{name} kept and counted")
        assert _gauges(app) == (3, sum(SIZES.values()))
        space["need"] = 1  # short: the oldest goes, and that is enough
        await until(lambda: not (watch / "a.mp4").exists(), what="a evicted")
        await until(lambda: _gauges(app) == (2, SIZES["b.mp4"] + SIZES["c.mp4"]),
                    what="the gauges down by a")
        assert (watch / "b.mp4").exists()
        assert app.metrics.registry.get_sample_value("files_evicted_total") == 1
    # A restart reads the tally from the store, before any completion or eviction.
    async with daemon(settings, store, prober) as app:
        await until(lambda: _gauges(app) == (2, SIZES["b.mp4"] + SIZES["c.mp4"]),
                    what="the kept sources read back")
