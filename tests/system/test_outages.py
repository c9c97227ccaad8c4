"""Outages of what the daemon depends on, and impatient operators, with real processes.

Each test owns PRIVATE servers (``SeaweedS3``, ``RedisServer``) so it can stop and restart
them without disturbing the session-wide ones other tests use.
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.media import GrowingWriter
from tests.support.proc import Daemon
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3
from tests.system.conftest import RigMaker  # the type only; the instance is a fixture

pytestmark = pytest.mark.timeout(240)

OUTAGE_SECONDS = 10.0


@pytest.fixture
def private_s3(tmp_path: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path / "seaweedfs")
    server.start()
    try:
        yield server
    finally:
        server.kill()  # private and disposable: no need to wait for a graceful stop


@pytest.fixture
def private_bucket(private_s3: SeaweedS3) -> str:
    name = f"outage-{uuid.uuid4().hex[:12]}"
    client = private_s3.boto_client()
    try:
        client.create_bucket(Bucket=name)
    finally:
        client.close()
    return name


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path / "redis") as server:
        yield server


def _get(daemon: Daemon, path: str) -> tuple[int, str]:
    """``http_get``, with "nobody listening" as status 0 instead of an exception."""
    try:
        return daemon.http_get(path)
    except OSError as exc:
        return 0, repr(exc)


def _ride_out_outage(daemon: Daemon, seconds: float, down: str) -> list[tuple[int, str]]:
    """Poll /healthz and /readyz for ``seconds``; the process must stay up throughout.

    Returns every /readyz answer; /healthz must answer 200 every time.
    """
    answers: list[tuple[int, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, f"cefmp4 died during the outage:\n{daemon.log_tail()}"
        health = _get(daemon, "/healthz")[0]
        assert health == 200, f"/healthz answered {health} during the {down} outage"
        answers.append(_get(daemon, "/readyz"))
        time.sleep(0.5)
    return answers


def _assert_reported_down(answers: list[tuple[int, str]], check: str) -> None:
    unavailable = [json.loads(body) for status, body in answers if status == 503]
    assert unavailable, f"/readyz never answered 503 during the outage: {answers[:3]}"
    assert all(status in (200, 503) for status, _ in answers)
    # The body names what is down (after the first second or two, at least).
    assert any(doc["checks"][check].startswith("down") for doc in unavailable), unavailable[-1]


def _wait_ready_again(daemon: Daemon, wait_until: Callable[..., Any]) -> None:
    wait_until(
        lambda: daemon.http_get("/readyz")[0] == 200,
        timeout=30,
        what="/readyz 200 after the outage",
        alive=(daemon,),
        interval=0.25,
    )


def _retries(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == "retry"]


# --- 3. S3 outage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint_kind", "phase"), [("sqlite", "growing"), ("redis", "finalizing")]
)
def test_s3_outage_mid_stream(
    make_rig: RigMaker,
    private_s3: SeaweedS3,
    private_bucket: str,
    redis_or_none: RedisServer | None,
    phase: str,
    source_25mb: Path,
    source_12mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    rig = make_rig(private_s3, private_bucket, redis_or_none)
    settings = rig.configure(stream_timeout_seconds=2.5)
    view = rig.view
    daemon = rig.daemon("run").start()
    target = settings.watch_dir / "cam.mp4"
    # growing: the recording outlasts the outage; finalizing: it ends and goes idle during it.
    if phase == "growing":
        writer = GrowingWriter(source_25mb, target, rate=1_500_000).start()
    else:
        writer = GrowingWriter(source_12mb, target, rate=3_000_000).start()
    try:
        rig.wait_parts_listed(1, daemon)
        assert not writer.done
        private_s3.stop()
        answers = _ride_out_outage(daemon, OUTAGE_SECONDS, "S3")
        if phase == "finalizing":
            assert writer.done
            assert any(e.get("event") == "stream_idle" for e in daemon.events())
        private_s3.start()
        _assert_reported_down(answers, "s3")
        _wait_ready_again(daemon, wait_until)
        writer.wait(60)
        view.wait_metadata(["cam.mp4"], timeout=90, alive=(daemon,))
    finally:
        writer.stop()
    assert daemon.stop() == 0
    view.assert_converged(settings.watch_dir, ["cam.mp4"])
    assert {e.get("operation") for e in _retries(daemon)} & {
        "upload_part",
        "create",
        "complete",
        "put_metadata",
    }
    assert not [e for e in daemon.events() if e.get("event") == "stream_failed"]


# --- starting while a dependency is down ------------------------------------------------------


@pytest.mark.parametrize("down", ["s3", "redis"])
def test_start_while_dependency_down_waits_then_converges(
    make_rig: RigMaker,
    private_s3: SeaweedS3,
    private_bucket: str,
    private_redis: RedisServer,
    source_12mb: Path,
    down: str,
    wait_until: Callable[..., Any],
) -> None:
    rig = make_rig(private_s3, private_bucket, private_redis)
    settings = rig.configure(stream_timeout_seconds=1.5)
    view = rig.view
    (settings.watch_dir / "early.mp4").write_bytes(source_12mb.read_bytes())
    server = private_s3 if down == "s3" else private_redis
    server.stop()
    daemon = rig.daemon("run")
    daemon.start(wait_ready=False)
    # The health server must come up (and stay up) although start-up cannot finish.
    wait_until(
        lambda: _get(daemon, "/healthz")[0] == 200,
        timeout=20,
        what="/healthz while a dependency is down",
        alive=(daemon,),
        interval=0.2,
    )
    answers = _ride_out_outage(daemon, 6.0, down)
    assert not any(e.get("event") == "ready" for e in daemon.events())
    server.start()
    _assert_reported_down(answers, "s3" if down == "s3" else "checkpoint_store")
    daemon.wait_ready(60)
    view.wait_metadata(["early.mp4"], timeout=60, alive=(daemon,))
    assert daemon.stop() == 0
    view.assert_converged(settings.watch_dir, ["early.mp4"])


# --- 4. Redis outage -----------------------------------------------------------------------


def test_redis_outage_mid_stream(
    make_rig: RigMaker,
    s3_server: SeaweedS3,
    s3_bucket: str,
    private_redis: RedisServer,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    rig = make_rig(s3_server, s3_bucket, private_redis)
    settings = rig.configure(stream_timeout_seconds=2.5)
    view = rig.view
    daemon = rig.daemon("run").start()
    target = settings.watch_dir / "cam.mp4"
    writer = GrowingWriter(source_25mb, target, rate=1_500_000).start()
    try:
        rig.wait_parts_listed(1, daemon)
        assert not writer.done
        private_redis.stop()  # SIGTERM: redis flushes the AOF; restart finds the data
        answers = _ride_out_outage(daemon, OUTAGE_SECONDS, "Redis")
        private_redis.start()
        _assert_reported_down(answers, "checkpoint_store")
        _wait_ready_again(daemon, wait_until)
        writer.wait(60)
        view.wait_metadata(["cam.mp4"], timeout=90, alive=(daemon,))
    finally:
        writer.stop()
    assert daemon.stop() == 0
    view.assert_converged(settings.watch_dir, ["cam.mp4"])
    assert any(e.get("operation") == "checkpoint" for e in _retries(daemon))
    assert not [e for e in daemon.events() if e.get("event") == "stream_failed"]

    # The checkpoints written around the outage are all there: a restart redoes nothing.
    # A rescan that finds no stream open is the sign that it looked at everything.
    rig.configure(stream_timeout_seconds=2.5, rescan_interval_seconds=1)
    again = rig.daemon("again").start()
    wait_until(
        lambda: any(e.get("event") == "rescan" and e.get("streams") == 0 for e in again.events()),
        timeout=30, what="a quiet rescan", alive=(again,),
    )  # fmt: skip
    assert again.stop() == 0
    work = [
        e
        for e in again.events()
        if e.get("event") in ("stream_started", "stream_resumed", "part_uploaded")
    ]
    assert work == []


# --- a crash while the checkpoint store is down: the part S3 got is adopted ----------------


def test_kill_during_redis_outage_adopts_parts_s3_already_has(
    make_rig: RigMaker,
    s3_server: SeaweedS3,
    s3_bucket: str,
    private_redis: RedisServer,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    rig = make_rig(s3_server, s3_bucket, private_redis)
    settings = rig.configure(stream_timeout_seconds=2.5)
    view = rig.view
    first = rig.daemon("run1").start()
    target = settings.watch_dir / "cam.mp4"
    writer = GrowingWriter(source_25mb, target, rate=3_000_000).start()

    def checkpointed() -> int:
        return sum(e.get("event") == "part_uploaded" for e in first.events())

    try:
        wait_until(
            lambda: checkpointed() >= 1, timeout=30, what="a part checkpointed", alive=(first,)
        )
        private_redis.stop()
        # S3 accepts the next part; its checkpoint cannot be written while Redis is down.
        wait_until(
            lambda: view.parts_listed() > checkpointed(),
            timeout=30,
            what="a part in S3 but not in the checkpoint",
            alive=(first,),
        )
        in_s3_only = view.parts_listed() - checkpointed()
        first.kill()
        private_redis.start()
        second = rig.daemon("run2").start()
        writer.wait(60)
        view.wait_metadata(["cam.mp4"], timeout=90, alive=(second,))
    finally:
        writer.stop()
    assert second.stop() == 0
    view.assert_converged(settings.watch_dir, ["cam.mp4"])
    adopted = [e for e in second.events() if e.get("event") == "part_adopted"]
    assert len(adopted) >= in_s3_only >= 1
    uploaded = [
        int(e["part_number"])
        for run in (first, second)
        for e in run.events()
        if e.get("event") in ("part_uploaded", "part_reuploaded")
    ]
    assert len(uploaded) == len(set(uploaded)), f"parts uploaded twice: {sorted(uploaded)}"
    assert not set(uploaded) & {int(e["part_number"]) for e in adopted}


# --- one SIGTERM while S3 is down: the drain is bounded ----------------------------------------


def test_sigterm_during_s3_outage_exits_zero_within_grace(
    make_rig: RigMaker,
    private_s3: SeaweedS3,
    private_bucket: str,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    grace = 3.0
    rig = make_rig(private_s3, private_bucket, None)
    settings = rig.configure(stream_timeout_seconds=2.5, shutdown_grace_seconds=grace)
    view = rig.view
    daemon = rig.daemon("run1").start()
    target = settings.watch_dir / "cam.mp4"
    writer = GrowingWriter(source_25mb, target, rate=3_000_000).start()
    try:
        rig.wait_parts_listed(1, daemon)
        private_s3.stop()
        wait_until(
            lambda: any(e.get("operation") == "upload_part" for e in _retries(daemon)),
            timeout=30,
            what="a part upload retrying",
            alive=(daemon,),
        )
        signalled = time.monotonic()
        assert daemon.stop(timeout=grace + 15) == 0
        took = time.monotonic() - signalled
        assert took < grace + 6, f"shutdown took {took:.1f} s with a {grace} s grace"

        private_s3.start()
        again = rig.daemon("run2").start()
        writer.wait(60)
        view.wait_metadata(["cam.mp4"], timeout=90, alive=(again,))
    finally:
        writer.stop()
    assert again.stop() == 0
    view.assert_converged(settings.watch_dir, ["cam.mp4"])


# --- 7. a second signal during the shutdown grace -------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)],
    ids=["term-term", "int-term"],
)
def test_second_signal_during_grace_exits_at_once(
    make_rig: RigMaker,
    private_s3: SeaweedS3,
    private_bucket: str,
    source_25mb: Path,
    first: signal.Signals,
    second: signal.Signals,
    wait_until: Callable[..., Any],
) -> None:
    rig = make_rig(private_s3, private_bucket, None)
    settings = rig.configure(stream_timeout_seconds=2.5, shutdown_grace_seconds=30)
    view = rig.view
    daemon = rig.daemon("run1").start()
    target = settings.watch_dir / "cam.mp4"
    writer = GrowingWriter(source_25mb, target, rate=3_000_000).start()
    try:
        rig.wait_parts_listed(1, daemon)
        # With S3 down, the next part cannot finish: the graceful drain has to wait for it.
        private_s3.stop()
        wait_until(
            lambda: any(e.get("operation") == "upload_part" for e in _retries(daemon)),
            timeout=30,
            what="a part upload retrying",
            alive=(daemon,),
        )
        daemon.signal(first)
        wait_until(
            lambda: any(e.get("event") == "shutdown" for e in daemon.events()),
            timeout=10, what="the first signal acknowledged", alive=(daemon,),
        )  # fmt: skip
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, "shutdown did not wait for the part in flight"
        signalled = time.monotonic()
        daemon.signal(second)
        code = daemon.proc.wait(10)
        assert time.monotonic() - signalled < 3, "the second signal did not exit at once"
        assert code != 0
        assert any(e.get("event") == "forced_exit" for e in daemon.events())

        private_s3.start()
        again = rig.daemon("run2").start()
        writer.wait(60)
        view.wait_metadata(["cam.mp4"], timeout=90, alive=(again,))
    finally:
        writer.stop()
    assert again.stop() == 0
    view.assert_converged(settings.watch_dir, ["cam.mp4"])
