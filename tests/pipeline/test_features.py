"""The recorder features through the real App on the memory store (§2.14-§2.17): fast."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    burst,
    capture,
    daemon,
    make_settings,
    metadata,
    pattern,
    records,
    until,
)


async def test_watch_extensions_and_content_types(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch, watch_extensions=".mp4,.MKV,.ts")
    files = {"a.MP4": pattern(PART + 1), "b.mkv": pattern(10, 1), "c.ts": b"",
             "d.mov": pattern(10, 2)}
    for name, data in files.items():
        (watch / name).write_bytes(data)
    await burst(settings, store, prober)
    by_name = {k.rsplit("/", 1)[1]: o for k, o in store.objects.items()
               if not k.endswith(".json")}
    assert set(by_name) == {"a.MP4", "b.mkv", "c.ts"}
    assert by_name["a.MP4"].content_type == "video/mp4"
    assert by_name["b.mkv"].content_type == "video/x-matroska"
    assert by_name["c.ts"].content_type == "video/mp2t"  # the empty-object PutObject too
    for rec in await records(settings):
        doc = metadata(store, rec.key)
        assert doc["completed_by"] == "upload_command"
        assert doc["content_type"] == by_name[rec.rel_path].content_type


async def test_after_upload_delete_in_burst_mode(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch, after_upload="delete")
    data = pattern(2 * PART + 7)
    (watch / "cam.mp4").write_bytes(data)
    await burst(settings, store, prober)
    assert not (watch / "cam.mp4").exists()
    [rec] = await records(settings)
    assert store.objects[rec.key].body == data
    assert metadata(store, rec.key)["status"] == "complete"


async def test_after_upload_move_keeps_subdirectories(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    done = tmp_path / "done"
    settings = make_settings(tmp_path, watch, after_upload="move", after_upload_dir=done)
    (watch / "cam").mkdir()
    (watch / "cam" / "x.mp4").write_bytes(b"abc")
    await burst(settings, store, prober)
    assert (done / "cam" / "x.mp4").read_bytes() == b"abc"
    assert not (watch / "cam" / "x.mp4").exists()


async def test_writer_closed_completes_long_before_the_idle_timeout(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch, stream_timeout_seconds=60,
                             complete_on_close_seconds=0.3)
    async with daemon(settings, store, prober):
        path = watch / "rec.mp4"
        with path.open("wb") as out:
            out.write(pattern(PART + 3))
            out.flush()
            # A recorder holds its file for longer than cefmp4 takes to start following it;
            # a close before that is not seen, and the idle timeout rules (documented).
            await until(lambda: bool(store._uploads), what="the stream to start")
        loop = asyncio.get_running_loop()
        closed = loop.time()
        await until(lambda: any(k.endswith(".json") for k in store.objects), timeout=10,
                    what="metadata after the close")
        assert loop.time() - closed < 5
    [rec] = await records(settings)
    doc = metadata(store, rec.key)
    assert doc["completed_by"] == "writer_closed"
    assert store.objects[rec.key].body == path.read_bytes()


async def test_a_header_rewritten_at_close_is_hashed_inside_the_close_window(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    # A recorder that rewrites its header in part 1 when it closes (an MP4's moov): the
    # whole file must be hashed again before Complete. With COMPLETE_ON_CLOSE_SECONDS that
    # pass must start inside the close window, not after half the idle timeout, or it
    # runs after the close decision and delays the metadata (bench writer-aware, 30 s runs).
    settings = make_settings(tmp_path, watch, stream_timeout_seconds=60,
                             complete_on_close_seconds=2)
    with capture() as logs:
        async with daemon(settings, store, prober):
            path = watch / "rec.mp4"
            with path.open("wb") as out:
                out.write(pattern(PART + 3))
                out.flush()
                await until(lambda: bool(store._uploads), what="the stream to start")
                await until(lambda: any(e["event"] == "part_uploaded" for e in logs),
                            what="part 1 uploaded")
                out.seek(0)
                out.write(b"moov")
            await until(lambda: any(k.endswith(".json") for k in store.objects), timeout=10,
                        what="metadata after the close")
    # The pass ran during the close window and finalize took it instead of hashing again.
    assert "predigest_used" in [e["event"] for e in logs]
    [rec] = await records(settings)
    assert metadata(store, rec.key)["completed_by"] == "writer_closed"
    assert store.objects[rec.key].body == path.read_bytes()
