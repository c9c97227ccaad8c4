"""The daemon on the memory store: following, identity, start-up and shutdown."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from cefmp4.checkpoint import StreamState
from cefmp4.config.settings import Settings
from cefmp4.runtime.app import App
from cefmp4.runtime.errors import PermanentError, TransientError
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.ownership import LocalOwnership
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    capture,
    daemon,
    make_app,
    metadata,
    pattern,
    records,
    until,
    videos,
)


async def test_a_growing_file_is_uploaded_part_by_part_then_completed(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    data = pattern(3 * PART + 10)
    path = watch / "live.mp4"
    async with daemon(settings, store, prober):
        with path.open("wb") as f:
            for offset in range(0, len(data), PART // 2):
                f.write(data[offset:offset + PART // 2])
                f.flush()
                await asyncio.sleep(0.01)
        await until(lambda: len(videos(store)) == 1, what="the object")
    assert list(videos(store).values()) == [data]


async def test_a_renamed_file_keeps_its_stream(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "a.mp4"
    async with daemon(settings, store, prober):
        with capture() as logs:
            path.write_bytes(pattern(PART + 3))
            await until(lambda: any(e["event"] == "stream_started" for e in logs))
            path.rename(watch / "b.mp4")
            await until(lambda: len(videos(store)) == 1, what="the object")
    [key] = videos(store)
    assert key.endswith("/a.mp4")  # the key is fixed when the stream starts
    assert metadata(store, key)["original_file_path"].endswith("/b.mp4")


async def test_a_file_deleted_while_followed_is_uploaded_to_its_last_byte(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    data = pattern(PART + 999)
    path = watch / "gone.mp4"
    async with daemon(settings, store, prober):
        with capture() as logs:
            path.write_bytes(data)
            await until(lambda: any(e["event"] == "stream_started" for e in logs))
            path.unlink()
            await until(lambda: len(videos(store)) == 1, what="the object")
    [(key, body)] = videos(store).items()
    assert body == data
    assert metadata(store, key)["status"] == "source_deleted"


async def test_a_truncated_file_ends_its_stream_with_what_was_uploaded_and_starts_anew(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    first = pattern(2 * PART + 5, seed=1)
    path = watch / "t.mp4"
    async with daemon(settings, store, prober):
        with capture() as logs:
            path.write_bytes(first)
            await until(lambda: sum(e["event"] == "part_uploaded" for e in logs) >= 2)
            second = pattern(100, seed=2)
            with path.open("r+b") as f:
                f.truncate(0)
                f.write(second)
            await until(lambda: len(videos(store)) == 2, what="two objects")
    bodies = sorted(videos(store).values(), key=len)
    assert bodies[0] == second
    assert bodies[1] == first[: len(bodies[1])]
    assert len(bodies[1]) >= 2 * PART
    statuses = sorted(metadata(store, k)["status"] for k in videos(store))
    assert statuses == ["complete", "truncated"]


async def test_a_transient_s3_error_is_retried_and_shown_in_readiness(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    store.fail_next("upload_part", TransientError("503 SlowDown"), times=3)
    seen: list[dict[str, str]] = []
    async with daemon(settings, store, prober) as app:
        real = store.upload_part

        async def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(app.readiness.failures())
            return await real(*args, **kwargs)

        store.upload_part = spy  # type: ignore[method-assign]
        (watch / "r.mp4").write_bytes(pattern(PART + 1))
        await until(lambda: len(videos(store)) == 1, what="the object")
        assert app.readiness.failures() == {}
    assert {"s3": "TransientError"} in seen


async def test_sigterm_during_a_start_up_outage_stops_at_once(
    settings: Settings, store: MemoryObjectStore, prober: FakeProber
) -> None:
    store.fail_next("ensure_bucket", TransientError("connection refused"), times=10_000)
    app = App(settings, objects=store, prober=prober)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    await until(lambda: store.calls["ensure_bucket"] >= 2, what="start-up retries")
    assert app.readiness.failures() == {"s3": "TransientError"}
    stop.set()
    await asyncio.wait_for(task, timeout=2)
    assert not app.ready.is_set()


async def test_shutdown_leaves_a_live_stream_resumable_and_a_restart_finishes_it(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    data = pattern(2 * PART + 17)
    path = watch / "s.mp4"
    async with daemon(settings, store, prober):
        with capture() as logs:
            with path.open("wb") as f:
                f.write(data[:PART + 1])
            await until(lambda: any(e["event"] == "part_uploaded" for e in logs))
    [rec] = await records(settings)
    assert rec.state is StreamState.ACTIVE
    with path.open("ab") as f:
        f.write(data[PART + 1:])
    async with daemon(settings, store, prober):
        await until(lambda: len(videos(store)) == 1, what="the object")
    assert list(videos(store).values()) == [data]
    assert os.path.exists(path)


async def test_readiness_stays_failing_while_another_stream_still_retrying(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """One stream's successful retry must not clear ``s3`` while another's still fails."""
    (watch / "a.mp4").write_bytes(pattern(PART + 1, seed=1))
    (watch / "b.mp4").write_bytes(pattern(PART + 1, seed=2))
    app = make_app(settings, store, prober)
    real = store.upload_part
    b_failed = b_done = False
    seen_by_a: list[dict[str, str]] = []  # readiness at a.mp4's first retry after b's success

    async def spy(key: str, *args: Any, **kwargs: Any) -> str:
        nonlocal b_failed, b_done
        if key.endswith("/a.mp4"):
            if not b_done:
                raise TransientError("503 SlowDown")
            seen_by_a.append(app.readiness.failures())
        elif not b_failed:
            b_failed = True
            raise TransientError("503 SlowDown")
        etag = await real(key, *args, **kwargs)
        b_done = b_done or key.endswith("/b.mp4")
        return etag

    store.upload_part = spy  # type: ignore[method-assign]
    done = await app.run_burst()
    assert all(record is not None for record in done.values()), done
    assert seen_by_a[0] == {"s3": "TransientError"}  # b's success left a's failure shown
    assert app.readiness.failures() == {}


async def test_bytes_written_while_a_truncated_stream_finalizes_survive_a_replace(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """The next stream of a truncated file starts when the truncated one's finalize ends.
    If meanwhile the file grew again and was replaced while its writer still held it, no
    path leads to those bytes any more: the finishing stream hands its descriptor on
    (simulator seed 20945 on 7fc0ecb, where they were lost)."""
    path = watch / "cam.mp4"
    old = pattern(2 * PART + 10, seed=1)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        async with daemon(settings, store, prober):
            with capture() as logs:
                os.pwrite(fd, old, 0)
                await until(lambda: sum(e["event"] == "part_uploaded" for e in logs) >= 2)
                store.fail_next("complete_multipart", TransientError("timeout"), times=4)
                os.ftruncate(fd, 100)
                await until(lambda: any(e["event"] == "retry" for e in logs), what="a retry")
                os.pwrite(fd, more := pattern(PART // 2, seed=2), 100)
                (watch / ".tmp").write_bytes(other := pattern(300, seed=3))
                os.replace(watch / ".tmp", path)
                os.pwrite(fd, tail := b"written after the replace", 100 + len(more))
                await until(lambda: len(videos(store)) == 3, what="three objects")
    finally:
        os.close(fd)
    held = old[:100] + more + tail
    assert sorted(videos(store).values(), key=len) == [other, held, old[: 2 * PART]]
    by_body = {body: key for key, body in videos(store).items()}
    assert metadata(store, by_body[held])["status"] == "truncated"  # ended by the replace
    assert metadata(store, by_body[old[: 2 * PART]])["status"] == "truncated"


async def test_a_truncation_while_an_outage_holds_the_tail_back_is_seen(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Finalize waits on a part S3 keeps failing; meanwhile the file is cut and grows back
    past what was uploaded. Looked at only after the part, it seemed unchanged in length
    and its parts were all sent again from the new bytes: the uploaded recording was lost
    (simulator seeds 41106, 41403). The file is looked at while waiting."""
    path = watch / "cam.mp4"
    old, new = pattern(2 * PART + 10, seed=1), pattern(3 * PART, seed=2)
    async with daemon(settings, store, prober):
        with capture() as logs:
            path.write_bytes(old)
            await until(lambda: sum(e["event"] == "part_uploaded" for e in logs) >= 2)
            store.fail_next("upload_part", TransientError("timeout"), times=12)
            await until(lambda: any(e["event"] == "retry" for e in logs), what="a retry")
            os.truncate(path, 0)
            await asyncio.sleep(5 * settings.poll_interval_seconds)  # short for 5 looks
            with path.open("ab") as f:
                f.write(new)
            await until(lambda: len(videos(store)) == 2, what="two objects")
    kept = old[: 2 * PART]
    assert sorted(videos(store).values(), key=len) == [kept, new]
    by_body = {body: key for key, body in videos(store).items()}
    assert metadata(store, by_body[kept])["status"] == "truncated"
    assert metadata(store, by_body[new])["status"] == "complete"


async def test_a_budget_smaller_than_the_upload_slots_is_named_at_start(
    settings: Settings, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Valid, but the slots never fill (the capacity bench fell 14 s behind so): one line
    names the settings and the value that would fit; the defaults say nothing."""
    with capture() as logs:
        async with daemon(settings, store, prober):
            pass
    assert not [e for e in logs if e["event"] == "settings_advice"]
    tight = settings.model_copy(
        update={"upload_concurrency": 16, "max_inflight_mb": 64, "chunk_size_mb": 5}
    )
    with capture() as logs:
        async with daemon(tight, store, prober):
            pass
    [line] = [e["advice"] for e in logs if e["event"] == "settings_advice"]
    assert "MAX_INFLIGHT_MB=64 holds 12 parts" in line
    assert "at least 90" in line


async def test_a_file_replaced_before_its_claim_is_not_streamed_twice(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """A stat names one file; by the time it is claimed and opened, another file has taken
    its path. Opening by path alone started a second stream of the newcomer (simulator
    seed 104371: two complete objects of one recording). The claimed inode is opened, or
    nothing (``source_changed``): the newcomer has its own event."""
    path = watch / "cam.mp4"
    path.write_bytes(b"first")
    # ``first`` stays open: the newcomer cannot take its inode number.
    with path.open("ab") as first, capture() as logs:
        async with daemon(settings, store, prober) as app:
            await until(lambda: b"first" in videos(store).values(), what="its object")
            (watch / ".new").write_bytes(newcomer := pattern(PART + 1, seed=5))
            os.replace(watch / ".new", path)
            await until(lambda: newcomer in videos(store).values(), what="the newcomer")
            first.write(b" grown")  # unlinked now: no event names it
            first.flush()
            app.supervisor.on_stat(path, os.fstat(first.fileno()))  # a late event
            await until(lambda: any(e["event"] == "source_changed" for e in logs))
    assert sorted(videos(store).values(), key=len) == [b"first", newcomer]


class _RefusingOwnership(LocalOwnership):
    """A peer holds every lease (or the store cannot say): counts the releases asked."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.released: list[int] = []

    async def acquire(self, ident: Any, on_lost: Any) -> bool:
        if self.error is not None:
            raise self.error
        return False

    async def release(self, inode: int) -> None:
        self.released.append(inode)


@pytest.mark.parametrize("error", [None, PermanentError("the lease store refused")])
async def test_a_claim_refused_its_lease_closes_the_descriptor_it_was_handed_and_releases_nothing(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    error: Exception | None,
) -> None:
    """A finished stream hands its descriptor to a new claim (``held_fd``). When the lease
    is refused the descriptor is closed and the claim waits; when asking for the lease
    fails, the descriptor was left open (a leak, every time). Neither releases the lease:
    a refused one may be this instance's for another file with the same inode number."""
    path = watch.parent / "handed-over.mp4"  # no stream of this instance has its inode
    path.write_bytes(b"bytes")
    async with daemon(settings, store, prober) as app:
        sup = app.supervisor
        assert sup is not None
        owner = _RefusingOwnership(error)
        sup.ownership = owner
        fd = os.open(path, os.O_RDONLY)
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if error is None:
            await sup._claim(path, ident, None, held=fd)
            assert sup._deferred[ident] == path
        else:
            with pytest.raises(PermanentError):
                await sup._claim(path, ident, None, held=fd)
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)  # closed (nothing opened since could have taken its number)
        assert owner.released == []
