"""Lose nothing: the real ``cefmp4 run`` process SIGKILLed, SIGTERMed and restarted.

Every scenario ends in the same state (``BucketView.assert_converged``): per recording one
video object byte-identical to the file, one metadata document agreeing with it, and no
multipart upload left open under the prefix.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cefmp4.core.parts import MIB
from tests.support.media import GrowingWriter
from tests.support.proc import Daemon
from tests.system.conftest import Rig, describe_difference, sha256_bytes

pytestmark = pytest.mark.timeout(240)

UPLOAD_EVENTS = ("part_uploaded", "part_reuploaded")
# Work a restart must never redo for a stream that is already complete.
WORK_EVENTS = (
    "stream_started",
    "stream_resumed",
    "upload_created",
    *UPLOAD_EVENTS,
    "part_adopted",
    "metadata_written",
    "stream_completed",
)


def _events(*runs: Daemon, names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        out += [e for e in run.events() if names is None or e.get("event") in names]
    return out


def _part_uploads(*runs: Daemon) -> Counter[tuple[str, int]]:
    """How many times each (stream, part number) was uploaded, from the logs of ``runs``."""
    return Counter(
        (str(e.get("stream_id")), int(e["part_number"]))
        for e in _events(*runs, names=UPLOAD_EVENTS)
    )


# --- 1. SIGKILL mid-stream -----------------------------------------------------------------


def test_sigkill_mid_stream_resumes_and_reuploads_at_most_inflight_parts(
    rig: Rig,
    checkpoint_kind: str,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    settings = rig.configure(stream_timeout_seconds=2)
    view = rig.view
    target = settings.watch_dir / "cam.mp4"

    first = rig.daemon("run1").start()
    writer = GrowingWriter(source_25mb, target, rate=3_000_000).start()
    try:
        rig.wait_parts_listed(2, first)
        assert not writer.done, "the writer finished before the crash: nothing was mid-stream"
        first.kill()
        before_crash = _part_uploads(first)
        [started] = _events(first, names=("stream_started",))

        second = rig.daemon("run2").start()
        writer.wait(60)
        view.wait_metadata(["cam.mp4"], timeout=60, alive=(second,))
    finally:
        writer.stop()
    assert second.stop() == 0
    docs = view.assert_converged(settings.watch_dir, ["cam.mp4"])

    doc = docs["cam.mp4"]
    assert doc["stream_id"] == started["stream_id"], "the restart began a new stream"
    assert [e["stream_id"] for e in _events(second, names=("stream_resumed",))] == [
        started["stream_id"]
    ]
    assert not _events(second, names=("stream_started",)), "a second stream for one file"
    uploads = _part_uploads(first, second)
    twice = sum(n - 1 for n in uploads.values() if n > 1)
    chunks = len(doc["chunks"])
    adopted = len(_events(second, names=("part_adopted",)))
    print(
        f"parts: {chunks} in the object, {sum(before_crash.values())} before the crash, "
        f"{sum(uploads.values())} uploads logged, {adopted} adopted, {twice} uploaded twice"
    )
    # Only parts in flight at the crash may go up again: one or two at 3 MB/s, never more
    # than MAX_PARTS_IN_FLIGHT (8); nothing checkpointed before the crash is sent again.
    assert twice <= 3
    assert all(uploads[key] == 1 for key in before_crash), "a checkpointed part went up again"
    assert sum(uploads.values()) + adopted <= chunks + 3
    # Every part of the object was either logged as uploaded or adopted after the restart.
    assert {n for _s, n in uploads} | set(range(1, chunks + 1)) == set(range(1, chunks + 1))
    assert len({n for _s, n in uploads}) + adopted >= chunks


# --- 5. SIGTERM mid-stream ----------------------------------------------------------------


def test_sigterm_mid_stream_leaves_upload_open_then_resumes(
    rig: Rig,
    checkpoint_kind: str,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    settings = rig.configure(stream_timeout_seconds=2)
    view = rig.view
    target = settings.watch_dir / "cam.mp4"

    first = rig.daemon("run1").start()
    writer = GrowingWriter(source_25mb, target, rate=3_000_000).start()
    try:
        rig.wait_parts_listed(2, first)
        assert not writer.done
        assert first.stop(timeout=30) == 0
        names = [e.get("event") for e in first.events()]
        assert "stream_suspended" in names
        assert "stream_completed" not in names
        # Resumable, not completed: the upload is still open and nothing else was written.
        [upload] = view.uploads()
        assert upload["Key"].endswith("/cam.mp4")
        assert len(view.parts(upload["Key"], upload["UploadId"])) >= 2
        assert view.list_keys() == [], "SIGTERM completed the stream or wrote metadata"

        second = rig.daemon("run2").start()
        writer.wait(60)
        view.wait_metadata(["cam.mp4"], timeout=60, alive=(second,))
    finally:
        writer.stop()
    assert second.stop() == 0
    doc = view.assert_converged(settings.watch_dir, ["cam.mp4"])["cam.mp4"]
    assert doc["s3_key"] == upload["Key"], "the restart did not continue the same upload"
    uploads = _part_uploads(first, second)
    assert all(n == 1 for n in uploads.values()), f"parts uploaded twice: {uploads}"


# --- 6. restart over completed files --------------------------------------------------------


def test_restart_over_completed_files_uploads_nothing(
    rig: Rig,
    checkpoint_kind: str,
    source_7mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    settings = rig.configure(stream_timeout_seconds=1.5,
        rescan_interval_seconds=1.0,
    )
    view = rig.view
    rels = [f"done{i}.mp4" for i in range(3)] + ["sub/done3.mp4", "sub/deeper/done4.mp4"]
    for rel in rels:
        (settings.watch_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings.watch_dir / rel).write_bytes(source_7mb.read_bytes())

    first = rig.daemon("run1").start()
    wait_until(
        lambda: len(_events(first, names=("stream_completed",))) >= len(rels),
        timeout=90,
        what="five streams completed",
        alive=(first,),
    )
    first.kill()  # a crash, not a clean stop: the completed checkpoints must already hold
    view.assert_converged(settings.watch_dir, rels)
    def etags() -> dict[str, str]:
        return {k: view.client.head_object(Bucket=rig.bucket, Key=k)["ETag"]
                for k in view.list_keys()}  # fmt: skip

    before = etags()

    second = rig.daemon("run2").start()
    # Any stream the restart started would be running at its first rescan.
    seen = len(second.events())
    wait_until(
        lambda: any(
            e.get("event") == "rescan" and e.get("streams") == 0 for e in second.events()[seen:]
        ),
        timeout=30, what="a rescan with nothing to do", alive=(second,),
    )
    status, metrics = second.http_get("/metrics")
    assert status == 200
    assert second.stop() == 0

    work = _events(second, names=WORK_EVENTS)
    assert work == [], f"the restart redid work: {work}"
    assert view.uploads() == [], "the restart created a multipart upload"
    after = etags()
    assert after == before
    chunks_line = [
        line for line in metrics.splitlines() if line.startswith("video_chunks_uploaded_total")
    ]
    assert chunks_line, "video_chunks_uploaded_total missing from /metrics"
    assert float(chunks_line[0].split()[-1]) == 0


# --- 8. idle while down --------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint_kind", ["sqlite", "redis"])
def test_stream_that_went_idle_while_down_is_finalized_promptly(
    rig: Rig,
    checkpoint_kind: str,
    source_12mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    timeout = 3.0
    # A production-like lease (30 s) makes a lease wait after the restart unmistakable.
    lease = {"lease_ttl_seconds": 30} if rig.redis is not None else {}
    settings = rig.configure(stream_timeout_seconds=timeout, **lease
    )
    view = rig.view
    target = settings.watch_dir / "cam.mp4"

    first = rig.daemon("run1").start()
    writer = GrowingWriter(source_12mb, target, rate=2_000_000).start()
    try:
        rig.wait_parts_listed(1, first)
        assert not writer.done
        first.kill()
        writer.wait(60)
    finally:
        writer.stop()
    # The file stops growing while nothing watches it, and stays idle past the timeout.
    time.sleep(timeout + 1)
    assert view.list_keys() == []

    restarted = time.monotonic()
    second = rig.daemon("run2").start()
    view.wait_metadata(["cam.mp4"], timeout=60, alive=(second,))
    elapsed = time.monotonic() - restarted
    assert second.stop() == 0
    view.assert_converged(settings.watch_dir, ["cam.mp4"])
    # Idle time already spent while down counts: no full STREAM_TIMEOUT wait after restart.
    assert elapsed < timeout + 4, f"finalized {elapsed:.1f} s after the restart"
    [idle] = _events(second, names=("stream_idle",))
    assert idle["idle_s"] >= timeout


# --- 2. randomized crash loop --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_randomized_crash_loop_converges(
    rig: Rig,
    checkpoint_kind: str,
    crash_iterations: int,
    crash_seed: int,
    source_12mb: Path,
    source_12mb_fragmented: Path,
) -> None:
    rng = random.Random(crash_seed)
    kind = "redis" if rig.redis is not None else "sqlite"
    print(
        f"\ncrash loop [{kind}]: seed={crash_seed} iterations={crash_iterations} "
        f"(replay with --crash-seed {crash_seed})"
    )
    settings = rig.configure(stream_timeout_seconds=1.5)
    view = rig.view
    watch = settings.watch_dir

    count = max(3, crash_iterations // 4)
    rels = [f"rec{i}.mp4" if i % 2 else f"cam{i % 3}/rec{i}.mp4" for i in range(count)]
    writers: list[GrowingWriter] = []
    patched = 0

    def start_recording() -> None:
        nonlocal patched
        i = len(writers)
        dest = watch / rels[i]
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Regular MP4s get their header patched at the end, as ffmpeg's muxer does.
        regular = rng.random() < 0.6
        source = source_12mb if regular else source_12mb_fragmented
        patch = (36, 40) if regular else None
        patched += regular
        writers.append(
            GrowingWriter(source, dest, rate=rng.uniform(1.5e6, 3e6), patch=patch).start()
        )

    runs: list[Daemon] = []
    outcomes: Counter[str] = Counter()
    started = time.monotonic()
    try:
        for it in range(crash_iterations):
            active = sum(not w.done for w in writers)
            remaining = count - len(writers)
            if remaining and (
                active == 0
                or remaining >= crash_iterations - it
                or (active < 2 and rng.random() < 0.4)
            ):
                start_recording()
            run = rig.daemon(f"run{it:03d}")
            runs.append(run)
            run.start(wait_ready=False)
            time.sleep(rng.uniform(0.2, 3.5))
            if run.proc is not None and run.proc.poll() is not None:
                raise AssertionError(f"cefmp4 died on its own in run {it}:\n{run.log_tail()}")
            ready = any(e.get("event") == "ready" for e in run.events())
            run.kill()
            outcomes["killed during start-up" if not ready else "killed while running"] += 1
        while len(writers) < count:
            start_recording()

        final = rig.daemon("final").start()
        runs.append(final)
        for writer in writers:
            writer.wait(120)
        view.wait_metadata(rels, timeout=120, alive=(final,))
        assert final.stop() == 0
    finally:
        for writer in writers:
            writer.stop()
    docs = view.assert_converged(watch, rels)

    uploads = _part_uploads(*runs)
    adopted = len(_events(*runs, names=("part_adopted",)))
    chunks = sum(len(doc["chunks"]) for doc in docs.values())
    extra = sum(uploads.values()) - chunks
    print(
        f"crash loop [{kind}]: {crash_iterations} kills ({dict(outcomes)}), "
        f"{count} recordings ({patched} patched at the end), {chunks} parts, "
        f"{sum(uploads.values())} part uploads logged, {adopted} adopted, "
        f"{extra} extra; converged in {time.monotonic() - started:.0f} s"
    )
    # A patched header legitimately re-uploads part 1; beyond that, a crash costs at most
    # the parts in flight at that moment.
    assert extra <= patched + 3 * outcomes["killed while running"]
    assert all(d["total_size_bytes"] > 5 * MIB for d in docs.values())


# --- the file changed name or vanished while the process was down ---------------------------


def test_file_renamed_while_down_is_resumed_by_inode(
    rig: Rig,
    checkpoint_kind: str,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    settings = rig.configure(stream_timeout_seconds=2)
    view = rig.view
    target = settings.watch_dir / "cam.mp4"
    moved = settings.watch_dir / "archive" / "cam-renamed.mp4"

    first = rig.daemon("run1").start()
    writer = GrowingWriter(source_25mb, target, rate=3_000_000).start()
    try:
        rig.wait_parts_listed(1, first)
        first.kill()
        moved.parent.mkdir()
        target.rename(moved)  # the writer keeps writing through its open descriptor
        second = rig.daemon("run2").start()
        writer.wait(60)
        view.wait_metadata(["cam.mp4"], timeout=60, alive=(second,))
    finally:
        writer.stop()
    assert second.stop() == 0
    # The key was fixed when the stream started; the bytes are those of the renamed file.
    [video] = view.video_keys("cam.mp4")
    [doc] = view.metadata("cam.mp4")
    assert view.list_keys() == sorted([video, video + ".metadata.json"])
    local = moved.read_bytes()
    remote = view.get(video)
    assert remote == local, describe_difference(remote, local)
    assert doc["sha256"] == sha256_bytes(local)
    assert doc["total_size_bytes"] == len(local)
    assert view.uploads() == []
    assert not _events(second, names=("stream_started",)), "the rename began a new stream"


def test_file_deleted_while_down_keeps_what_was_uploaded(
    rig: Rig,
    checkpoint_kind: str,
    source_25mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    settings = rig.configure(stream_timeout_seconds=2)
    view = rig.view
    target = settings.watch_dir / "cam.mp4"

    first = rig.daemon("run1").start()
    writer = GrowingWriter(source_25mb, target, rate=3_000_000).start()
    try:
        wait_until(
            lambda: len(_events(first, names=("part_uploaded",))) >= 2,
            timeout=30,
            what="two parts checkpointed",
            alive=(first,),
        )
        first.kill()
    finally:
        writer.stop()
    target.unlink()

    second = rig.daemon("run2").start()
    view.wait_metadata(["cam.mp4"], timeout=60, alive=(second,))
    assert second.stop() == 0
    # Nothing that reached S3 is thrown away: the object is the uploaded prefix of the file.
    [video] = view.video_keys("cam.mp4")
    [doc] = view.metadata("cam.mp4")
    assert view.list_keys() == sorted([video, video + ".metadata.json"])
    remote = view.get(video)
    assert len(remote) >= 2 * 5 * MIB
    assert remote == source_25mb.read_bytes()[: len(remote)]
    assert doc["status"] == "source_deleted"
    assert doc["total_size_bytes"] == len(remote)
    assert doc["sha256"] == sha256_bytes(remote)
    assert view.uploads() == [], "the orphaned upload was left open"
