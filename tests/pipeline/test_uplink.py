"""UPLOAD_BWLIMIT and UPLOAD_ORDER (SPEC §2.21) through the whole pipeline, on the memory
store in virtual time: the bytes sent stay within the limit over every 10 s window (retries,
tail segments and an outage included), live recordings go first and stay about one part
behind their writer while a backlog drains, the backlog goes in UPLOAD_ORDER and never
starves, a deferred live file jumps the backlog, and the timetable switches by itself.

The store records every body block as it is sent (the memory store reads a body in 64 KiB
blocks during the call, as aiohttp does), so what is measured is what went on the wire.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cefmp4.core.uplink import MIB
from cefmp4.runtime.errors import TransientError
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.uplink import LIMIT_CHANGED
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    burst,
    capture,
    daemon,
    make_settings,
    pattern,
    until,
    videos,
)


class Wire(MemoryObjectStore):
    """A memory store that notes every body byte when it goes out, each part's arrival,
    and the order of completions."""

    def __init__(self) -> None:
        super().__init__("test-bucket", body_pause=self._block)
        self.sent: list[tuple[float, str, int]] = []  # (time, key, bytes)
        self.arrived: dict[tuple[str, int], float] = {}  # (key, part) -> time
        self.completed: list[str] = []
        self._got: dict[tuple[str, int], int] = {}
        self.fail_blocks: set[tuple[str, int]] = set()  # (key suffix, part): break once
        self.down_until = 0.0  # every UploadPart refused until then (an outage)

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    async def _block(self, key: str, part: int, got: int) -> None:
        last = self._got.get((key, part), 0)
        self._got[(key, part)] = got
        self.sent.append((self.now(), key, got - last if got > last else got))
        for suffix, number in list(self.fail_blocks):
            if key.endswith(suffix) and number == part and got >= PART // 2:
                self.fail_blocks.discard((suffix, number))  # the connection breaks midway
                raise TransientError("UploadPart failed: connection reset mid-body")

    async def upload_part(self, key: str, upload_id: str, part_number: int, body, *a, **kw):  # type: ignore[no-untyped-def]
        if self.now() < self.down_until:
            raise TransientError("UploadPart failed: connection refused")
        etag = await super().upload_part(key, upload_id, part_number, body, *a, **kw)
        self.arrived[(key, part_number)] = self.now()
        return etag

    async def put_object(self, key: str, body: bytes, content_type: str) -> None:
        await super().put_object(key, body, content_type)
        self.sent.append((self.now(), key, len(body)))

    async def complete_multipart(self, key: str, *a, **kw):  # type: ignore[no-untyped-def]
        etag = await super().complete_multipart(key, *a, **kw)
        self.completed.append(key)
        return etag

    def total(self, t0: float = 0.0, t1: float = float("inf"), part_of: str = "") -> int:
        return sum(n for t, k, n in self.sent if t0 <= t < t1 and part_of in k)

    def max_window(self, window: float, t0: float = 0.0) -> int:
        events = [(t, n) for t, _, n in self.sent if t >= t0]
        return max((sum(n for t, n in events if s <= t < s + window) for s, _ in events),
                   default=0)


@pytest.fixture
def wire() -> Wire:
    return Wire()


def backlog(watch: Path, names: list[str], size: int, *, hours_old: list[float]) -> list[Path]:
    """Finished files, ``hours_old`` old (their mtime)."""
    paths = []
    for seed, (name, age) in enumerate(zip(names, hours_old, strict=True)):
        path = watch / name
        path.write_bytes(pattern(size, seed=seed + 10))
        then = time.time() - age * 3600
        os.utime(path, (then, then))
        paths.append(path)
    return paths


async def write_live(path: Path, data: bytes, rate: float, wall: object) -> list[float]:
    """Append ``data`` at ``rate`` bytes/s in 64 KiB writes (the mtime follows the virtual
    wall clock); the moment each full part was written."""
    step, done = 64 * 1024, []
    clock = wall  # the app's clock: its wall time is the virtual one
    with path.open("wb") as f:
        for offset in range(0, len(data), step):
            f.write(data[offset:offset + step])
            f.flush()
            now = clock.time()  # type: ignore[attr-defined]
            os.utime(path, (now, now))
            if (offset + step) % PART == 0:
                done.append(Wire.now())
            await asyncio.sleep(step / rate)
    return done


def within_limit(wire: Wire, rate: int, t0: float = 0.0) -> None:
    """SPEC §2.21: over any 10 s window, the limit's bytes, ± one part."""
    assert wire.max_window(10.0, t0) <= rate * 10 + PART, wire.max_window(10.0, t0) / MIB


# --- the limit ------------------------------------------------------------------------------


async def test_upload_keeps_to_the_limit_and_off_does_not(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """``cefmp4 upload`` of three files at 2 MiB/s: 45 MiB take 22.5 s (± 2 %), every
    10 s window within the limit. Without UPLOAD_BWLIMIT the same files take no time."""
    files = backlog(watch, ["a.mp4", "b.mp4", "c.mp4"], 3 * PART, hours_old=[3, 2, 1])
    results = await burst(make_settings(tmp_path, watch, upload_bwlimit="2M"), wire, prober)
    assert all(results[f] is not None for f in files)
    start, end = wire.sent[0][0], wire.sent[-1][0]
    assert wire.total() == 9 * PART + sum(len(b) for k, b in _metadata(wire).items())
    assert wire.total() / (end - start) / (2 * MIB) == pytest.approx(1.0, abs=0.02)
    within_limit(wire, 2 * MIB)

    unlimited = Wire()
    again = make_settings(tmp_path / "2", watch, state_dir=tmp_path / "state2")
    await burst(again, unlimited, prober)
    assert unlimited.sent[-1][0] - unlimited.sent[0][0] < 1.0


def _metadata(store: MemoryObjectStore) -> dict[str, bytes]:
    return {k: o.body for k, o in store.objects.items() if k.endswith(".metadata.json")}


async def test_retried_and_resent_parts_count_against_the_limit(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """A part whose connection breaks halfway is sent again: its first half was sent too,
    and both are paced; the limit holds over the bytes sent, not the bytes stored."""
    backlog(watch, ["a.mp4"], 4 * PART, hours_old=[1])
    wire.fail_blocks = {("a.mp4", 2), ("a.mp4", 3)}
    settings = make_settings(tmp_path, watch, upload_bwlimit="1M")
    await burst(settings, wire, prober)
    assert len(videos(wire)) == 1
    sent = wire.total(part_of="a.mp4") - sum(len(b) for b in _metadata(wire).values())
    assert sent >= 5 * PART  # two half parts more than the file
    start, end = wire.sent[0][0], wire.sent[-1][0]
    assert wire.total() / (end - start) <= 1.02 * MIB
    within_limit(wire, MIB)


async def test_after_an_outage_no_burst(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """S3 refuses every part for 30 s; when it comes back, what waited goes at the
    limit, not at once: the bucket saved nothing up meanwhile."""
    backlog(watch, ["a.mp4", "b.mp4"], 4 * PART, hours_old=[2, 1])
    wire.down_until = 30.0
    settings = make_settings(tmp_path, watch, upload_bwlimit="2M")
    await burst(settings, wire, prober)
    assert len(videos(wire)) == 2
    start = wire.sent[0][0]
    assert start >= 30  # the parts waited out the outage
    within_limit(wire, 2 * MIB)
    assert wire.max_window(1.0) <= 2 * MIB * 1.1 + 64 * 1024


# --- live first --------------------------------------------------------------------------------


async def test_a_live_recording_stays_one_part_behind_while_the_backlog_drains(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """40 MiB of backlog at 2 MiB/s (20 s of work) and a live camera at 0.5 MiB/s: each
    live part is in S3 within its own time at the full limit (2.5 s) and a second of the
    writer finishing it, instead of queuing behind the backlog; the backlog still drains."""
    backlog(watch, ["old1.mp4", "old2.mp4"], 4 * PART, hours_old=[2, 1])
    settings = make_settings(tmp_path, watch, upload_bwlimit="2M", stream_timeout_seconds=3.0)
    data = pattern(4 * PART, seed=1)
    async with daemon(settings, wire, prober) as app:
        written = await write_live(watch / "live.mp4", data, 0.5 * MIB, app.clock)
        await until(lambda: len(videos(wire)) == 3, timeout=120, what="everything")
    live = next(k for k in wire.completed if k.endswith("live.mp4"))
    lags = [wire.arrived[(live, n + 1)] - at for n, at in enumerate(written[:-1])]
    assert len(lags) == 3, wire.arrived
    assert max(lags) <= PART / (2 * MIB) + 1.0, lags
    # The backlog went meanwhile, with whatever the camera left: the link was busy until it
    # was done (2 MiB/s all along), and it was done before the recording ended.
    done = max(t for t, k, _ in wire.sent if "/old" in k)
    assert done <= wire.total(0, done) / (2 * MIB) + 1.0
    assert done < written[-1]
    within_limit(wire, 2 * MIB)


async def test_the_backlog_is_not_starved_by_live_recordings_that_want_everything(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """Three cameras at 1 MiB/s each against a 1 MiB/s limit: live demand alone is three
    times the link. A backlog file that turns up once they are going still gets its share
    (about a fifth: a slot, budget, and slices), not nothing."""
    settings = make_settings(tmp_path, watch, upload_bwlimit="1M", stream_timeout_seconds=3.0,
                             shutdown_grace_seconds=0.5)
    async with daemon(settings, wire, prober) as app:
        cams = [asyncio.create_task(
            write_live(watch / f"cam{i}.mp4", pattern(4 * PART, seed=i), MIB, app.clock))
            for i in range(3)]
        await asyncio.sleep(6.0)  # every camera has a part waiting by now
        appeared = Wire.now()
        backlog(watch, ["old.mp4"], 2 * PART, hours_old=[1])
        await asyncio.gather(*cams)
        seconds = Wire.now() - appeared
        old = wire.total(part_of="old.mp4")
    assert old >= 0.1 * MIB * seconds, (old / MIB, seconds)
    within_limit(wire, MIB)


@pytest.mark.parametrize(("order", "expected"), [
    ("oldest", ["b.mp4", "d.mp4", "a.mp4", "c.mp4"]),
    ("newest", ["c.mp4", "a.mp4", "d.mp4", "b.mp4"]),
])
async def test_the_backlog_goes_in_upload_order(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber, order: str,
    expected: list[str],
) -> None:
    backlog(watch, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"], 2 * PART, hours_old=[2, 4, 1, 3])
    settings = make_settings(tmp_path, watch, upload_bwlimit="4M", upload_order=order)
    await burst(settings, wire, prober)
    assert [key.rsplit("/", 1)[1] for key in wire.completed] == expected


async def test_upload_starts_the_backlog_in_upload_order_at_max_streams(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """``cefmp4 upload`` with MAX_STREAMS=1: the files start oldest first, not in the
    scan's (name) order; with no limit set too (the order is not the pacer's alone)."""
    backlog(watch, ["a.mp4", "b.mp4", "c.mp4"], PART, hours_old=[1, 3, 2])
    with capture() as logs:
        await burst(make_settings(tmp_path, watch, max_streams=1), wire, prober)
    started = [Path(e["path"]).name for e in logs if e["event"] == "stream_started"]
    assert started == ["b.mp4", "c.mp4", "a.mp4"]


async def test_max_streams_a_deferred_live_file_jumps_the_backlog(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """MAX_STREAMS=3 with a limit: one room is kept for live recordings, so a camera that
    starts while five backlog files wait starts at once; a second camera, deferred for
    lack of room, gets the next room before the backlog files that waited longer."""
    files = backlog(watch, [f"old{i}.mp4" for i in range(5)], PART, hours_old=[5, 4, 3, 2, 1])
    settings = make_settings(tmp_path, watch, upload_bwlimit="2M", max_streams=3,
                             stream_timeout_seconds=3.0)
    with capture() as logs:
        async with daemon(settings, wire, prober) as app:
            rate = MIB / 4
            first = asyncio.create_task(
                write_live(watch / "cam1.mp4", pattern(3 * PART, seed=1), rate, app.clock))
            await asyncio.sleep(1.0)
            second = asyncio.create_task(
                write_live(watch / "cam2.mp4", pattern(2 * PART, seed=2), rate, app.clock))
            await asyncio.gather(first, second)
            await until(lambda: len(videos(wire)) == 7, timeout=120, what="everything")
    started = [Path(e["path"]).name for e in logs if e["event"] == "stream_started"]
    deferred = [Path(e["path"]).name for e in logs if e["event"] == "stream_deferred"]
    assert "cam2.mp4" in deferred
    # Two backlog files, then the camera at once, in the room kept for live; the second
    # camera waited for room and went before the backlog files that waited longer.
    assert started[:4] == ["old0.mp4", "old1.mp4", "cam1.mp4", "cam2.mp4"], started
    # The backlog itself went oldest first.
    assert [n for n in started if n.startswith("old")] == [f.name for f in files], started


# --- the timetable --------------------------------------------------------------------------


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _hhmm(unix: float) -> str:
    return time.strftime("%H:%M", time.gmtime(unix))


async def test_the_timetable_switches_by_itself(
    utc: None, tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """"HH:MM,1M HH:MM+1,4M": 1 MiB/s until the next minute, then 4 MiB/s, without a
    restart: the gauge, one INFO line, and the bytes sent follow."""
    backlog(watch, ["a.mp4", "b.mp4", "c.mp4"], 10 * PART, hours_old=[3, 2, 1])
    now = time.time()
    # The next minute at least 10 s away, in the app's (virtual) wall time too.
    switch = (now // 60 + (1 if now % 60 < 50 else 2)) * 60
    table = " ".join(sorted([f"{_hhmm(now // 60 * 60)},1M", f"{_hhmm(switch)},4M"]))
    settings = make_settings(tmp_path, watch, upload_bwlimit=table, shutdown_grace_seconds=0.5)
    with capture() as logs:
        async with daemon(settings, wire, prober) as app:
            gauge = app.metrics.upload_rate_limit
            assert gauge._value.get() == MIB
            at_switch = Wire.now() + (switch - app.clock.time())
            await until(lambda: gauge._value.get() == 4 * MIB, timeout=70, what="the switch")
            await asyncio.sleep(20)
    changes = [e for e in logs if e["event"] == LIMIT_CHANGED]
    assert [(e["limit"], e["reason"]) for e in changes] == [
        ("1 MiB/s", "start"), ("4 MiB/s", "timetable")]
    assert all(e["log_level"] == "info" for e in changes)
    begin = max(wire.sent[0][0], at_switch - 20)
    before = wire.total(begin, at_switch) / (at_switch - begin)
    after = wire.total(at_switch + 1, at_switch + 19) / 18
    assert before == pytest.approx(MIB, rel=0.05)
    assert after == pytest.approx(4 * MIB, rel=0.05)


async def test_off_in_the_timetable_is_unlimited(
    utc: None, tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    backlog(watch, ["a.mp4"], 6 * PART, hours_old=[1])
    now = time.time()
    # Off now; sorted, as the other test does, so that a run near midnight does not wrap.
    table = " ".join(sorted([f"{_hhmm(now - 120)},off", f"{_hhmm(now + 3600)},1k"]))
    async with daemon(make_settings(tmp_path, watch, upload_bwlimit=table), wire, prober) as app:
        assert app.metrics.upload_rate_limit._value.get() == 0
        await until(lambda: len(videos(wire)) == 1, timeout=5, what="the object")
    assert wire.sent[-1][0] - wire.sent[0][0] < 1.0


# --- tail segments ---------------------------------------------------------------------------


async def test_tail_segments_count_against_the_limit(
    tmp_path: Path, watch: Path, wire: Wire, prober: FakeProber
) -> None:
    """RPO_SECONDS sends each byte twice (a segment, then its part): both within the limit,
    next to a backlog that takes whatever is left."""
    backlog(watch, ["old.mp4"], 6 * PART, hours_old=[1])
    settings = make_settings(tmp_path, watch, upload_bwlimit="1M", rpo_seconds=1.0,
                             stream_timeout_seconds=3.0)
    async with daemon(settings, wire, prober) as app:
        await write_live(watch / "cam.mp4", pattern(3 * PART, seed=3), 0.3 * MIB, app.clock)
        await until(lambda: len(videos(wire)) == 2, timeout=120, what="both objects")
    tails = [n for _, k, n in wire.sent if "/.cefmp4/tail/" in k]
    assert sum(tails) >= 2 * PART  # the live recording's bytes went as segments too
    within_limit(wire, MIB)
