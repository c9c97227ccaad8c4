"""Several ``cefmp4 run`` processes sharing one Redis, one watch dir and one bucket (§2.11).

Every instance is a real subprocess (``Daemon``) with its own ``INSTANCE_ID``, ``PROM_PORT``
and ``STATE_DIR``; they share the session's redis-server under a per-test key prefix. The
scenarios: work spread under ``MAX_STREAMS`` with no duplicate upload, takeover of a
SIGKILLed owner's stream, a SIGSTOPped owner that must back off once it wakes up, and the
embedded store's refusal of a second instance on the same ``STATE_DIR``.
"""

from __future__ import annotations

import re
import shutil
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cefmp4.config.settings import Settings
from tests.support.media import GrowingWriter
from tests.support.proc import Daemon, free_port, run_cli
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3
from tests.system.conftest import Rig, RigMaker, wait_until_impl

pytestmark = pytest.mark.timeout(150)

LEASE_TTL = 3.0
STREAM_TIMEOUT = 2.0

# Events that make a stream one of an instance's active streams, and that end it there.
_STREAM_IN = ("stream_started", "stream_resumed")
_STREAM_OUT = ("stream_completed", "stream_relinquished", "stream_suspended", "stream_failed")


# --- a cluster of daemons --------------------------------------------------------------------


@pytest.fixture
def cluster_rig(make_rig: RigMaker, s3_server: SeaweedS3, s3_bucket: str,
                redis_server: RedisServer) -> Rig:  # fmt: skip
    """The session's S3 (a fresh bucket) and Redis: what every cluster here shares."""
    return make_rig(s3_server, s3_bucket, redis_server)


def cluster_settings(rig: Rig, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "stream_timeout_seconds": STREAM_TIMEOUT,
        "poll_interval_seconds": 0.25,
        "chunk_size_mb": 5,
        "lease_ttl_seconds": LEASE_TTL,
    }
    values.update(overrides)
    return rig.configure(**values)


def start_cluster(rig: Rig, count: int) -> list[Daemon]:
    """``count`` instances on one Redis prefix and one watch dir (the rig's configured
    settings), started in parallel."""
    started: list[Daemon] = []
    for n in range(count):
        state = rig.tmp_path / f"state-i{n}"
        state.mkdir()
        env = {**rig.env, "INSTANCE_ID": f"i{n}", "STATE_DIR": str(state)}
        daemon = Daemon(env, rig.tmp_path / f"i{n}.log")
        rig.daemons.append(daemon)
        daemon.start(wait_ready=False)
        started.append(daemon)
    for daemon in started:
        daemon.wait_ready(60)
    return started


def name_of(daemon: Daemon) -> str:
    return daemon.env["INSTANCE_ID"]


def events_of(daemon: Daemon, *names: str) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") in names]


def stream_ids_of(daemons: list[Daemon], rel: str) -> set[str]:
    """Every stream any instance started for the file ``rel``."""
    return {
        e["stream_id"]
        for d in daemons
        for e in events_of(d, "stream_started")
        if str(e.get("path", "")).endswith(f"/{rel}")
    }


def owner_of(daemons: list[Daemon], rel: str) -> tuple[Daemon, str] | None:
    """(instance, stream id) of the instance that started the stream of ``rel``."""
    for daemon in daemons:
        for e in events_of(daemon, "stream_started"):
            if str(e.get("path", "")).endswith(f"/{rel}"):
                return daemon, str(e["stream_id"])
    return None


def parts_uploaded(daemon: Daemon, stream_id: str) -> list[int]:
    return [
        int(e["part_number"])
        for e in events_of(daemon, "part_uploaded")
        if e.get("stream_id") == stream_id
    ]


def completions(daemons: list[Daemon], stream_id: str) -> list[str]:
    return [
        name_of(d)
        for d in daemons
        for e in events_of(d, "stream_completed")
        if e.get("stream_id") == stream_id
    ]


_GAUGE = re.compile(r"^active_streams(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.MULTILINE)


@contextmanager
def active_stream_sampler(daemons: list[Daemon], interval: float = 0.1) -> Iterator[dict[str, int]]:
    """Scrape each instance's ``active_streams`` gauge in the background; yields the maxima."""
    peaks: dict[str, int] = defaultdict(int)
    samples: Counter[str] = Counter()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for daemon in daemons:
                if daemon.proc is None or daemon.proc.poll() is not None:
                    continue
                try:
                    status, body = daemon.http_get("/metrics", timeout=2)
                except OSError:
                    continue
                match = _GAUGE.search(body) if status == 200 else None
                if match:
                    name = name_of(daemon)
                    samples[name] += 1
                    peaks[name] = max(peaks[name], int(float(match.group(1))))
            stop.wait(interval)

    thread = threading.Thread(target=loop, name="metrics-sampler", daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        stop.set()
        thread.join(10)
    assert all(samples[name_of(d)] > 0 for d in daemons), f"no metrics scraped: {samples}"


def peak_streams_from_logs(daemon: Daemon) -> int:
    """Most streams the instance worked on at once, counted from its log."""
    active: set[str] = set()
    peak = 0
    for e in daemon.events():
        sid = e.get("stream_id")
        if sid is None:
            continue
        if e.get("event") in _STREAM_IN:
            active.add(sid)
            peak = max(peak, len(active))
        elif e.get("event") in _STREAM_OUT:
            active.discard(sid)
    return peak


def assert_no_errors(daemons: list[Daemon]) -> None:
    bad = [
        (name_of(d), e.get("event"), e.get("error"))
        for d in daemons
        for e in d.events()
        if e.get("level") == "error" or e.get("event") in ("error", "stream_failed")
    ]
    assert bad == [], bad


def stop_all(daemons: list[Daemon]) -> None:
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.signal(signal.SIGTERM)
    for daemon in daemons:
        if daemon.proc is not None:
            code = daemon.proc.wait(60)
            assert code == 0, f"{name_of(daemon)} exited {code}:\n{daemon.log_tail()}"


# --- 1. sharing the work ----------------------------------------------------------------------


def share_files(
    rig: Rig, sample: Path, *, max_streams: int, instances: int = 3
) -> tuple[list[Daemon], dict[str, int]]:
    """Two growing recordings and four complete copies dropped at once on ``instances``
    instances; checks the bucket and the logs (one stream, one completion, no part twice)
    and returns the instances and the peak of each one's ``active_streams`` gauge."""
    settings = cluster_settings(rig, max_streams=max_streams, rescan_interval_seconds=1.0)
    cluster = start_cluster(rig, instances)
    view = rig.view
    watch = settings.watch_dir
    growing = ["live-0.mp4", "live-1.mp4"]
    complete = [f"copy-{n}.mp4" for n in range(4)]
    rels = growing + complete

    with active_stream_sampler(cluster) as peaks:
        writers = [GrowingWriter(sample, watch / rel, rate=2_500_000).start() for rel in growing]
        try:
            for rel in complete:
                shutil.copyfile(sample, watch / rel)
            for writer in writers:
                writer.wait(60)
            # About 10 s when every stream waits for a free slot somewhere.
            view.wait_metadata(rels, timeout=40, alive=tuple(cluster))
            # A (wrong) second stream of some file would be open at an instance's next
            # rescan: wait for one on every instance that finds nothing to work on.
            seen = [len(d.events()) for d in cluster]
            for daemon, start in zip(cluster, seen, strict=True):
                wait_until_impl(
                    lambda d=daemon, n=start: any(
                        e.get("event") == "rescan" and e.get("streams") == 0
                        for e in d.events()[n:]
                    ),
                    timeout=30, what="a rescan with nothing to do", alive=tuple(cluster),
                )
        finally:
            for writer in writers:
                writer.stop()
    stop_all(cluster)

    view.assert_converged(watch, rels)
    # One stream per file, completed exactly once, by one instance.
    for rel in rels:
        [stream_id] = stream_ids_of(cluster, rel)
        assert len(completions(cluster, stream_id)) == 1, (rel, completions(cluster, stream_id))
    # No part of any stream uploaded twice (a rewrite would show as part_reuploaded).
    uploaded = Counter(
        (e["stream_id"], e["part_number"]) for d in cluster for e in events_of(d, "part_uploaded")
    )
    assert [k for k, n in uploaded.items() if n > 1] == []
    assert not [e for d in cluster for e in events_of(d, "stream_taken_over", "lease_lost")]
    assert_no_errors(cluster)
    return cluster, dict(peaks)


def test_instances_share_files_without_duplicates(
    cluster_rig: Rig,
    sample_mp4: Path,
) -> None:
    """Every instance races for every file (room for all): each is uploaded exactly once."""
    share_files(cluster_rig, sample_mp4, max_streams=64)


def test_files_wait_for_room_under_max_streams(
    cluster_rig: Rig,
    sample_mp4: Path,
) -> None:
    """Six files, three instances of MAX_STREAMS=1: the files wait for room (README), the
    work is spread, and no instance ever works on more than one stream at once.

    Four complete copies outnumber the three slots, so at least one copy finds every
    instance full while it is written, and it is never written again afterwards."""
    max_streams = 1
    cluster, peaks = share_files(cluster_rig, sample_mp4, max_streams=max_streams)
    completed_by = {name_of(d) for d in cluster if events_of(d, "stream_completed")}
    assert len(completed_by) >= 2, completed_by
    for daemon in cluster:
        assert peaks[name_of(daemon)] <= max_streams, peaks
        assert peak_streams_from_logs(daemon) <= max_streams, name_of(daemon)


# --- 2. the owner dies -------------------------------------------------------------------------


def test_a_killed_owners_stream_is_taken_over(
    cluster_rig: Rig,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    settings = cluster_settings(cluster_rig)
    cluster = start_cluster(cluster_rig, 3)
    bucket = cluster_rig.view
    rel = "cam.mp4"
    writer = GrowingWriter(source_25mb, settings.watch_dir / rel, rate=2_500_000).start()
    try:
        owner, stream_id = wait_until(
            lambda: owner_of(cluster, rel),
            timeout=20,
            what="a stream_started",
            alive=tuple(cluster),
        )
        wait_until(
            lambda: parts_uploaded(owner, stream_id),
            timeout=20,
            what="the owner's first part",
            alive=tuple(cluster),
        )
        owner.kill()
        killed_at = time.monotonic()
        before = set(parts_uploaded(owner, stream_id))
        assert not writer.done, "the recording ended before the owner was killed"
        survivors = [d for d in cluster if d is not owner]

        taker = wait_until(
            lambda: next(
                (
                    d
                    for d in survivors
                    if any(
                        e.get("stream_id") == stream_id for e in events_of(d, "stream_taken_over")
                    )
                ),
                None,
            ),
            timeout=4 * LEASE_TTL,
            what="stream_taken_over",
            alive=tuple(survivors),
        )
        taken_after = time.monotonic() - killed_at
        writer.wait(60)
        bucket.wait_metadata([rel], timeout=60, alive=tuple(survivors))
        time.sleep(STREAM_TIMEOUT + 1)
    finally:
        writer.stop()
    stop_all(survivors)

    # The lease had to expire first: nobody took over a live lease.
    assert taken_after >= LEASE_TTL - 1.0, taken_after
    bucket.assert_converged(settings.watch_dir, [rel])
    assert stream_ids_of(cluster, rel) == {stream_id}, "a second stream was started for it"
    assert completions(cluster, stream_id) == [name_of(taker)]
    resumed = events_of(taker, "stream_resumed")
    assert any(e.get("stream_id") == stream_id for e in resumed)
    # Parts the dead owner checkpointed are not uploaded again; nothing twice by anyone.
    again = [n for d in survivors for n in parts_uploaded(d, stream_id) if n in before]
    assert again == [], f"parts {again} re-uploaded after takeover (done before: {before})"
    total = Counter(n for d in cluster for n in parts_uploaded(d, stream_id))
    assert [n for n, c in total.items() if c > 1] == []
    other = next(d for d in survivors if d is not taker)
    assert not parts_uploaded(other, stream_id)
    assert_no_errors(survivors)


# --- 3. the owner pauses -----------------------------------------------------------------------


def test_a_paused_owner_backs_off_after_takeover(
    cluster_rig: Rig,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    settings = cluster_settings(cluster_rig)
    cluster = start_cluster(cluster_rig, 2)
    bucket = cluster_rig.view
    rel = "paused.mp4"
    # ~17 s of recording: still growing when the paused owner wakes up.
    writer = GrowingWriter(source_25mb, settings.watch_dir / rel, rate=1_500_000).start()
    stopped = False
    owner: Daemon | None = None
    try:
        owner, stream_id = wait_until(
            lambda: owner_of(cluster, rel),
            timeout=20,
            what="a stream_started",
            alive=tuple(cluster),
        )
        wait_until(
            lambda: parts_uploaded(owner, stream_id),
            timeout=20,
            what="the owner's first part",
            alive=tuple(cluster),
        )
        owner.signal(signal.SIGSTOP)
        stopped = True
        before = set(parts_uploaded(owner, stream_id))
        paused_at = time.monotonic()
        other = next(d for d in cluster if d is not owner)
        wait_until(
            lambda: any(
                e.get("stream_id") == stream_id for e in events_of(other, "stream_taken_over")
            ),
            timeout=3 * LEASE_TTL,
            what="stream_taken_over",
            alive=(other,),
        )
        time.sleep(max(0.0, paused_at + 3 * LEASE_TTL - time.monotonic()))
        assert not writer.done, "the recording ended while the owner was paused"
        owner.signal(signal.SIGCONT)
        stopped = False

        def backed_off() -> bool:
            return any(
                e.get("stream_id") == stream_id or stream_id in e.get("streams", [])
                for e in events_of(owner, "stream_relinquished", "lease_lost")
            )

        wait_until(
            backed_off, timeout=3 * LEASE_TTL, what="the owner backing off", alive=tuple(cluster)
        )
        writer.wait(60)
        bucket.wait_metadata([rel], timeout=60, alive=tuple(cluster))
        time.sleep(STREAM_TIMEOUT + 1)
    finally:
        if stopped and owner is not None:
            owner.signal(signal.SIGCONT)
        writer.stop()
    stop_all(cluster)

    bucket.assert_converged(settings.watch_dir, [rel])
    assert stream_ids_of(cluster, rel) == {stream_id}
    assert completions(cluster, stream_id) == [name_of(other)]
    assert not [
        e
        for e in events_of(owner, "stream_completed", "metadata_written")
        if e.get("stream_id") == stream_id
    ]
    # Parts the owner finished before the pause are not uploaded again, and the woken owner
    # cannot checkpoint anything any more (its writes are fenced): no part logged twice.
    again = [n for n in parts_uploaded(other, stream_id) if n in before]
    assert again == [], f"parts {again} re-uploaded after takeover (done before: {before})"
    total = Counter(n for d in cluster for n in parts_uploaded(d, stream_id))
    assert [n for n, c in total.items() if c > 1] == []
    assert_no_errors(cluster)


# --- 4. the embedded store is single-instance --------------------------------------------------


def test_sqlite_refuses_a_second_instance_on_the_same_state_dir(
    rig: Rig, sample_mp4: Path
) -> None:
    settings = rig.configure(stream_timeout_seconds=STREAM_TIMEOUT)
    env = rig.env
    first = Daemon({**env, "INSTANCE_ID": "first"}, rig.tmp_path / "first.log")
    rig.daemons.append(first)
    first.start()

    started = time.monotonic()
    second = run_cli(
        ["run"], {**env, "INSTANCE_ID": "second", "PROM_PORT": str(free_port())}, timeout=60
    )
    elapsed = time.monotonic() - started
    assert second.returncode == 2, (second.returncode, second.stderr)
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, second.stderr
    assert "STATE_DIR" in lines[0], lines[0]
    assert str(settings.state_dir) in lines[0], lines[0]
    assert "Traceback" not in second.stderr + second.stdout
    assert elapsed < 30

    # The first instance is untouched and keeps working.
    bucket = rig.view
    shutil.copyfile(sample_mp4, settings.watch_dir / "single.mp4")
    bucket.wait_metadata(["single.mp4"], timeout=60, alive=(first,))
    assert first.stop() == 0
    assert_no_errors([first])
    bucket.assert_converged(settings.watch_dir, ["single.mp4"])
