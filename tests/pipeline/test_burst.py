"""Burst mode end to end: what exists is uploaded, completed, described, then it returns."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from cefmp4.checkpoint import StreamState
from cefmp4.config.settings import Settings
from cefmp4.core.metadata import ProbeResult
from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    burst,
    capture,
    metadata,
    pattern,
    records,
    videos,
)


async def test_one_file_is_one_identical_object_with_metadata(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    data = pattern(2 * PART + 123)
    (watch / "cam.mp4").write_bytes(data)
    results = await burst(settings, store, prober)
    [record] = [r for r in results.values() if r is not None]
    assert videos(store) == {record.key: data}
    doc = metadata(store, record.key)
    assert doc["status"] == "complete"
    assert doc["total_size_bytes"] == len(data)
    assert [c["size_bytes"] for c in doc["chunks"]] == [PART, PART, 123]
    assert await store.list_multipart_uploads("") == []
    [rec] = await records(settings)
    assert rec.state is StreamState.COMPLETED
    assert rec.final_size == len(data)


async def test_empty_file_is_an_empty_object(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    (watch / "empty.mp4").write_bytes(b"")
    results = await burst(settings, store, prober)
    [record] = list(results.values())
    assert record is not None
    assert videos(store) == {record.key: b""}
    assert metadata(store, record.key)["chunks"] == []


async def test_exact_multiple_of_the_part_size(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    data = pattern(2 * PART, seed=3)
    (watch / "even.mp4").write_bytes(data)
    await burst(settings, store, prober)
    [body] = videos(store).values()
    assert body == data


async def test_several_files_and_subdirectories(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    (watch / "a").mkdir()
    sources = {watch / "one.mp4": pattern(PART + 1, 1), watch / "a" / "two.mp4": pattern(7, 2)}
    for path, data in sources.items():
        path.write_bytes(data)
    await burst(settings, store, prober)
    assert sorted(videos(store).values()) == sorted(sources.values())
    keys = sorted(videos(store))
    assert keys[0].endswith("/a/two.mp4") or keys[1].endswith("/a/two.mp4")


async def test_an_unchanged_completed_file_is_never_uploaded_again(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    (watch / "cam.mp4").write_bytes(pattern(PART + 5))
    await burst(settings, store, prober)
    creates = store.calls["create_multipart"]
    results = await burst(settings, store, prober)
    assert store.calls["create_multipart"] == creates
    assert all(r is not None for r in results.values())
    assert len(await records(settings)) == 1


async def test_a_completed_file_that_grew_is_a_new_stream_of_the_whole_file(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    path.write_bytes(pattern(PART + 5))
    await burst(settings, store, prober)
    grown = pattern(2 * PART + 9)
    path.write_bytes(grown)
    await burst(settings, store, prober)
    assert grown in videos(store).values()
    assert len(videos(store)) == 2


async def test_upload_of_named_files_outside_the_watch_dir(
    settings: Settings, tmp_path: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(pattern(PART + 77))
    results = await burst(settings, store, prober, [outside])
    record = results[outside.resolve()]
    assert record is not None
    assert record.key.endswith("/elsewhere.mp4")
    assert store.objects[record.key].body == outside.read_bytes()


async def test_metrics_count_what_happened(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    from tests.pipeline.conftest import make_app

    (watch / "cam.mp4").write_bytes(pattern(2 * PART + 1))
    app = make_app(settings, store, prober)
    await app.run_burst()
    m = app.metrics
    assert m.chunks_uploaded._value.get() == 3
    assert m.bytes_uploaded_value() == 2 * PART + 1
    assert m.streams_started._value.get() == 1
    assert m.streams_completed._value.get() == 1
    assert m.metadata_written._value.get() == 1


async def test_max_streams_caps_open_streams_and_every_file_waits_its_turn(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    from tests.pipeline.conftest import capture, make_app, make_settings

    settings = make_settings(tmp_path, watch, max_streams=2)
    for i in range(7):
        (watch / f"cam{i}.mp4").write_bytes(pattern(1000 + i, i))
    app = make_app(settings, store, prober)
    peak = 0
    real_put = store.put_object

    async def watching_put(key: str, body: bytes, content_type: str) -> None:
        nonlocal peak
        assert app.supervisor is not None
        peak = max(peak, len(app.supervisor.workers))
        await real_put(key, body, content_type)

    store.put_object = watching_put  # type: ignore[method-assign]
    with capture() as logs:
        await app.run_burst()
    assert len(videos(store)) == 7
    assert 1 <= peak <= 2
    # An operator sees why files wait: one warning per waiting file, naming the cap.
    waiting = [e for e in logs if e["event"] == "stream_deferred"]
    assert waiting
    assert all(e["max_streams"] == 2 for e in waiting)
    assert len({e["path"] for e in waiting}) == len(waiting) <= 5
    assert os.listdir(watch)  # nothing was deleted or moved


async def test_the_byte_budget_bounds_part_bytes_in_flight_across_streams(
    tmp_path: Path, watch: Path, prober: FakeProber
) -> None:
    from cefmp4.storage import PartBody
    from tests.pipeline.conftest import make_settings

    class Peak(MemoryObjectStore):
        def __init__(self) -> None:
            super().__init__("test-bucket")
            self.now = self.peak = 0

        async def upload_part(
            self, key: str, upload_id: str, part_number: int, body: PartBody,
            md5_b64: str = "", *, crc32c_b64: str = "",
        ) -> str:
            size = len(body)
            self.now += size
            self.peak = max(self.peak, self.now)
            try:
                await asyncio.sleep(0.01)  # long enough for others to pile up if allowed
                return await super().upload_part(
                    key, upload_id, part_number, body, md5_b64, crc32c_b64=crc32c_b64
                )
            finally:
                self.now -= size

    settings = make_settings(tmp_path, watch, max_inflight_mb=10, upload_concurrency=4)
    for i in range(3):
        (watch / f"cam{i}.mp4").write_bytes(pattern(3 * PART, i))
    store = Peak()
    await burst(settings, store, prober)
    assert len(videos(store)) == 3
    assert PART <= store.peak <= 10 * 1024 * 1024


class _WatchingProber(FakeProber):
    """Notes, at each probe, whether the object was complete yet; the first probe can also
    change the file (a write the early probe must not describe)."""

    def __init__(self, store: MemoryObjectStore, append_to: Path | None = None) -> None:
        super().__init__()
        self.store = store
        self.append_to = append_to
        self.object_existed: list[bool] = []

    async def probe(self, path: Path) -> ProbeResult:
        self.object_existed.append(bool(videos(self.store)))
        if self.append_to is not None and len(self.probed) == 0:
            with self.append_to.open("ab") as f:
                f.write(b"written under the probe")
        self.probed.append(path)
        return ProbeResult(float(len(self.probed)), None, "mov,mp4", "h264", 320, 240)


def _finished_long_ago(path: Path) -> None:
    """A recording whose last write is minutes old: settled, so probed early."""
    old = time.time() - 600
    os.utime(path, (old, old))


async def test_the_probe_runs_beside_the_upload_and_its_answer_is_used(
    settings: Settings, watch: Path, store: MemoryObjectStore
) -> None:
    data = pattern(3 * PART + 7, seed=5)
    (watch / "cam.mp4").write_bytes(data)
    _finished_long_ago(watch / "cam.mp4")
    prober = _WatchingProber(store)
    results = await burst(settings, store, prober)
    [record] = [r for r in results.values() if r is not None]
    assert prober.object_existed == [False]  # probed once, before Complete
    assert videos(store) == {record.key: data}
    assert metadata(store, record.key)["duration_seconds"] == 1.0


async def test_a_file_changed_under_the_early_probe_is_probed_again(
    settings: Settings, watch: Path, store: MemoryObjectStore
) -> None:
    path = watch / "cam.mp4"
    data = pattern(2 * PART + 11, seed=6)
    path.write_bytes(data)
    _finished_long_ago(path)
    prober = _WatchingProber(store, append_to=path)
    with capture() as logs:
        await burst(settings, store, prober, [path])
    [(key, body)] = videos(store).items()
    assert body == data + b"written under the probe"  # the object is the file as it ended
    assert prober.object_existed == [False, True]  # probed again, after Complete
    assert metadata(store, key)["duration_seconds"] == 2.0  # the second probe's answer
    assert "probe_repeated" in [e["event"] for e in logs]


async def test_a_file_written_just_now_is_probed_after_complete(
    settings: Settings, watch: Path, store: MemoryObjectStore
) -> None:
    """Its fingerprint could miss a write within the mtime granularity (verify.settled): no
    early probe, so the one probe sees the bytes as they were completed."""
    (watch / "cam.mp4").write_bytes(pattern(PART + 3, seed=7))
    prober = _WatchingProber(store)
    await burst(settings, store, prober)
    assert prober.object_existed == [True]
