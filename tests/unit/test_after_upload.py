"""AFTER_UPLOAD=delete|move: only a confirmed, unchanged file; idempotent after any crash."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cefmp4.after.after_upload import (
    AfterUploadSink,
    Intent,
    _kept_size,
    move_targets,
    staged_name,
)
from cefmp4.after.outbox import OutboxItem
from cefmp4.runtime.errors import PermanentError, TransientError

ETAG = "0123456789abcdef0123456789abcdef-2"


@dataclass
class Info:
    size: int
    etag: str


class FakeHead:
    def __init__(self) -> None:
        self.objects: dict[str, Info] = {}
        self.down = False

    async def __call__(self, key: str) -> Info | None:
        if self.down:
            raise TransientError("s3 down")
        return self.objects.get(key)


class Crash(Exception):
    pass


def _crash_at(point: str):  # type: ignore[no-untyped-def]
    def hit(name: str) -> None:
        if name == point:
            raise Crash(name)
    return hit


def _setup(tmp_path: Path, action: str = "delete", target: Path | None = None) -> tuple[
    Path, Intent, FakeHead
]:
    watch = tmp_path / "in"
    (watch / "cam").mkdir(parents=True)
    path = watch / "cam" / "rec.mp4"
    data = os.urandom(10_000)
    path.write_bytes(data)
    st = path.stat()
    intent = Intent(
        action=action, stream_id="sid1", status="complete", path=str(path), rel_path="cam/rec.mp4",
        device=st.st_dev, inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns,
        sha256=hashlib.sha256(data).hexdigest(), key="p/sid1/cam/rec.mp4", etag=ETAG,
        metadata_key="p/sid1/cam/rec.mp4.metadata.json",
        target_dir=str(target) if target else None,
    )
    head = FakeHead()
    head.objects[intent.key] = Info(intent.size, f'"{ETAG}"')
    head.objects[intent.metadata_key] = Info(100, '"abc"')
    return path, intent, head


def _item(intent: Intent) -> OutboxItem:
    return OutboxItem(1, "after_upload", intent.stream_id, intent.to_json(), 0.0)


async def test_delete_after_confirmation(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    await AfterUploadSink(head).deliver(_item(intent))
    assert not path.exists()
    assert os.listdir(path.parent) == []  # no staged leftovers


@pytest.mark.parametrize(
    "breakage",
    ["no_object", "wrong_size", "wrong_etag", "no_metadata", "touched", "grown", "replaced",
     "truncated_status", "source_deleted_status"],
)
async def test_delete_keeps_the_file_unless_everything_matches(
    tmp_path: Path, breakage: str
) -> None:
    path, intent, head = _setup(tmp_path)
    if breakage == "no_object":
        del head.objects[intent.key]
    elif breakage == "wrong_size":
        head.objects[intent.key] = Info(intent.size - 1, ETAG)
    elif breakage == "wrong_etag":
        head.objects[intent.key] = Info(intent.size, "ffffffffffffffffffffffffffffffff-2")
    elif breakage == "no_metadata":
        del head.objects[intent.metadata_key]
    elif breakage == "touched":
        os.utime(path, ns=(intent.mtime_ns + 10**9, intent.mtime_ns + 10**9))
    elif breakage == "grown":
        with open(path, "ab") as f:
            f.write(b"more")
    elif breakage == "replaced":
        path.rename(path.with_name("old.mp4"))
        path.write_bytes(b"x" * intent.size)
        os.utime(path, ns=(intent.mtime_ns, intent.mtime_ns))
    elif breakage == "truncated_status":
        intent = replace(intent, status="truncated")
    elif breakage == "source_deleted_status":
        intent = replace(intent, status="source_deleted")
    before = path.read_bytes()
    with pytest.raises(PermanentError):
        await AfterUploadSink(head).deliver(_item(intent))
    assert path.read_bytes() == before
    assert not staged_name(path, intent.stream_id).exists()


async def test_delete_keeps_a_file_still_open_for_writing(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    with open(path, "ab"), pytest.raises(PermanentError, match="open for writing"):
        await AfterUploadSink(head).deliver(_item(intent))
    assert path.exists()


async def test_s3_outage_is_transient_and_keeps_the_file(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    head.down = True
    with pytest.raises(TransientError):
        await AfterUploadSink(head).deliver(_item(intent))
    assert path.exists()


@pytest.mark.parametrize("point", ["after_upload_staged", "after_upload_done"])
async def test_delete_crash_at_each_step_converges(tmp_path: Path, point: str) -> None:
    path, intent, head = _setup(tmp_path)
    with pytest.raises(Crash):
        await AfterUploadSink(head, hit=_crash_at(point)).deliver(_item(intent))
    await AfterUploadSink(head).deliver(_item(intent))  # the redo after the restart
    assert not path.exists()
    assert not staged_name(path, intent.stream_id).exists()


def _late_writer(target: Path, data: bytes) -> subprocess.Popen[bytes]:
    """Another process opens ``target`` to append ``data`` while the proof holds its lease:
    returns once the open waits on the lease (the kernel shows the lease BREAKING)."""
    writer = subprocess.Popen(["sh", "-c", f'printf %s "$1" >> "{target}"', "sh",
                               data.decode()])
    deadline = time.monotonic() + 10
    while "BREAKING" not in Path("/proc/locks").read_text():
        assert time.monotonic() < deadline, "the writer never reached the lease"
        assert writer.poll() is None, "the writer was not held back by the lease"
        time.sleep(0.01)
    return writer


async def test_delete_puts_back_a_file_opened_for_writing_while_staged(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    writers: list[subprocess.Popen[bytes]] = []

    def grow(name: str) -> None:
        if name == "after_upload_staged":
            writers.append(_late_writer(staged_name(path, intent.stream_id), b"late bytes"))

    with pytest.raises(PermanentError, match="opened the source for writing"):
        await AfterUploadSink(head, hit=grow).deliver(_item(intent))
    assert writers[0].wait(10) == 0  # it went on once the lease was let go
    assert path.read_bytes().endswith(b"late bytes")


async def test_move_same_file_system(tmp_path: Path) -> None:
    done = tmp_path / "done"
    path, intent, head = _setup(tmp_path, "move", done)
    data = path.read_bytes()
    await AfterUploadSink(head).deliver(_item(intent))
    assert not path.exists()
    assert (done / "cam" / "rec.mp4").read_bytes() == data


async def test_move_never_overwrites_another_file(tmp_path: Path) -> None:
    done = tmp_path / "done"
    (done / "cam").mkdir(parents=True)
    (done / "cam" / "rec.mp4").write_bytes(b"someone else's")
    path, intent, head = _setup(tmp_path, "move", done)
    data = path.read_bytes()
    await AfterUploadSink(head).deliver(_item(intent))
    assert (done / "cam" / "rec.mp4").read_bytes() == b"someone else's"
    assert move_targets(intent)[1].read_bytes() == data
    assert not path.exists()


def _other_fs() -> Path | None:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat("/tmp").st_dev:
        return shm
    return None


@pytest.mark.parametrize("point", [None, "after_upload_copied", "after_upload_done"])
async def test_move_across_file_systems_copies_and_converges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str | None
) -> None:
    other = _other_fs()
    if other is None:
        real_link = os.link

        def no_cross_link(src: str, dst: str) -> None:
            if ".partial" not in str(src):
                raise OSError(errno.EXDEV, "cross-device link")
            real_link(src, dst)

        monkeypatch.setattr(os, "link", no_cross_link)
        done = tmp_path / "done"
    else:
        done = other / f"cefmp4-test-{os.getpid()}-{tmp_path.name}"
    try:
        path, intent, head = _setup(tmp_path, "move", done)
        data = path.read_bytes()
        if point is not None:
            with pytest.raises(Crash):
                await AfterUploadSink(head, hit=_crash_at(point)).deliver(_item(intent))
            assert (done / "cam" / "rec.mp4").read_bytes() == data
        await AfterUploadSink(head).deliver(_item(intent))
        assert not path.exists()
        assert (done / "cam" / "rec.mp4").read_bytes() == data
        assert sorted(os.listdir(done / "cam")) == ["rec.mp4"]  # no partial copies left
    finally:
        if other is not None:
            import shutil

            shutil.rmtree(done, ignore_errors=True)


async def test_move_refuses_a_copy_with_other_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, intent, head = _setup(tmp_path, "move", tmp_path / "done")
    intent = replace(intent, sha256="0" * 64)

    def no_link(*_a: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_link)  # force the copy path
    with pytest.raises(PermanentError, match="bytes differ"):
        await AfterUploadSink(head).deliver(_item(intent))
    assert path.exists()
    assert not list((tmp_path / "done").rglob("*.mp4*"))


def test_bad_intent_is_permanent() -> None:
    with pytest.raises(PermanentError):
        Intent.from_json(b"not json")
    with pytest.raises(PermanentError):
        Intent.from_json(b'{"action": "delete"}')
    with pytest.raises(PermanentError):  # nested past Python's depth: no RecursionError
        Intent.from_json(b"[" * 200_000)
    assert _kept_size(b"[" * 200_000) == 0


def test_move_target_stays_inside_the_target_dir() -> None:
    intent = Intent("move", "sid", "complete", "/in/x.mp4", "../../etc/x.mp4", 1, 2, 3, 4, "s",
                    "k", None, "m", "/done")
    first, fallback = move_targets(intent)
    assert first == Path("/done/x.mp4")
    assert fallback == Path("/done/x.sid.mp4")


def _record(**kw: object):  # type: ignore[no-untyped-def]
    from cefmp4.checkpoint import StreamRecord, StreamState

    rec = StreamRecord(
        stream_id="sid", path="/in/cam/a.mp4", rel_path="cam/a.mp4", device=1, inode=2,
        bucket="b", key="p/sid/cam/a.mp4", part_size=5 << 20, max_parts=10_000,
        state=StreamState.COMPLETED, started_at=1.0, last_activity_at=2.0, status="complete",
        final_size=10, final_mtime_ns=123, sha256="ab" * 32,
    )
    return replace(rec, **kw)


def test_completion_outbox_items() -> None:
    from cefmp4.after.after_upload import CompletionOutbox
    from cefmp4.checkpoint import PartRecord
    from cefmp4.core.hashing import multipart_etag

    # The object's ETag is built from the parts' ETags (S3's MD5s), whatever digest cefmp4
    # recorded for its own verification.
    parts = [PartRecord(1, 0, 10, "a" * 32, "crc32c:0badcafe", 1.0)]
    keep = CompletionOutbox(("webhook", "redis"))
    assert keep.items(_record(), parts, b"{doc}", status="complete", metadata_key="m") == [
        ("webhook", b"{doc}"), ("redis", b"{doc}")]
    delete = CompletionOutbox((), "delete")
    [(sink, payload)] = delete.items(_record(), parts, b"{}", status="complete",
                                     metadata_key="m")
    intent = Intent.from_json(payload)
    assert sink == "after_upload"
    assert (intent.inode, intent.size, intent.mtime_ns) == (2, 10, 123)
    assert intent.etag == multipart_etag(["a" * 32])
    # Never for truncated or source_deleted streams, nor without a known final state.
    for status in ("truncated", "source_deleted"):
        assert delete.items(_record(), parts, b"{}", status=status, metadata_key="m") == []
    assert delete.items(_record(final_mtime_ns=None), parts, b"{}", status="complete",
                        metadata_key="m") == []
    assert not CompletionOutbox().enabled


async def test_free_bytes_tracker(tmp_path: Path) -> None:
    import asyncio

    from cefmp4.runtime.feature_wiring import track_free_bytes

    seen: list[float] = []
    got = asyncio.Event()

    def record(value: float) -> None:
        seen.append(value)
        got.set()

    task = asyncio.create_task(track_free_bytes(tmp_path, record, interval=3600))
    async with asyncio.timeout(5):
        await got.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    st = os.statvfs(tmp_path)
    assert abs(seen[0] - st.f_bavail * st.f_frsize) < 1 << 30
    seen.clear()
    got.clear()
    task = asyncio.create_task(track_free_bytes(tmp_path / "gone", record, interval=3600))
    async with asyncio.timeout(5):
        await got.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen[0] != seen[0]  # NaN: unknown, not 0


# --- §2.25: act only on proof -------------------------------------------------------------


def _fake_proc(tmp_path: Path, fs_type: str, *, host_ns: bool = True) -> Path:
    """A /proc whose mountinfo puts everything on ``fs_type``; the rest is the real one's."""
    proc = tmp_path / "proc"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(
        f"22 1 0:21 / / rw,relatime shared:1 - {fs_type} server:/export rw\n")
    real_ns = Path("/proc/self/ns/pid")
    (proc / "self" / "ns" / "pid").symlink_to(real_ns if host_ns else proc / "self")
    (proc / "self" / "status").write_text(Path("/proc/self/status").read_text())
    return proc


@pytest.mark.parametrize("fs_type", ["nfs4", "cifs", "fuse.sshfs", "9p"])
async def test_writers_on_other_hosts_cannot_be_ruled_out(tmp_path: Path, fs_type: str) -> None:
    path, intent, head = _setup(tmp_path)
    sink = AfterUploadSink(head, proc=_fake_proc(tmp_path, fs_type))
    with pytest.raises(PermanentError, match=rf"file system is {fs_type}.*kept"):
        await sink.deliver(_item(intent))
    assert path.exists()
    assert sorted(os.listdir(path.parent)) == ["rec.mp4"]  # put back, nothing staged


def test_a_writer_in_another_pid_namespace_keeps_the_file(tmp_path: Path) -> None:
    """cefmp4 in its own PID namespace (a container) with the recorder outside it: /proc
    shows nothing of the recorder, the kernel's lease does. The action runs in a child
    under ``unshare --pid --mount-proc``; this test process is the recorder."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed for this test")
    path, intent, _head = _setup(tmp_path)
    script = (
        "import sys\n"
        "from cefmp4.after.after_upload import AfterUploadSink, Intent\n"
        "from cefmp4.runtime.errors import PermanentError\n"
        "intent = Intent.from_json(sys.stdin.buffer.read())\n"
        "try:\n"
        "    print(AfterUploadSink(None).apply(intent))\n"
        "except PermanentError as exc:\n"
        "    print('kept:', exc)\n"
    )
    with open(path, "ab"):  # the recorder, paused with its file open
        for action, target in (("delete", None), ("move", tmp_path / "done")):
            act = replace(intent, action=action, target_dir=str(target) if target else None)
            out = subprocess.run(
                ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
                input=act.to_json(), capture_output=True, timeout=60, check=True)
            assert out.stdout.decode().startswith("kept: a process holds the file open"), (
                out.stdout, out.stderr)
            assert sorted(os.listdir(path.parent)) == ["rec.mp4"]
    assert not (tmp_path / "done").exists()
    # The recorder closed: the same child now acts.
    out = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script],
        input=intent.to_json(), capture_output=True, timeout=60, check=True)
    assert out.stdout.decode().strip() == "deleted", (out.stdout, out.stderr)
    assert not path.exists()


async def test_without_a_lease_only_the_hosts_whole_proc_is_proof(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel refuses the lease (another user's file, no CAP_LEASE): in its own PID
    namespace cefmp4 cannot see the recorder, so it keeps the file and says why."""
    import fcntl

    path, intent, head = _setup(tmp_path)
    real_fcntl = fcntl.fcntl

    def refuse(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETLEASE and arg == fcntl.F_RDLCK:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_fcntl(fd, cmd, arg)

    monkeypatch.setattr(fcntl, "fcntl", refuse)
    sink = AfterUploadSink(head, proc=_fake_proc(tmp_path, "ext4", host_ns=False))
    with pytest.raises(PermanentError, match=r"own PID namespace.*CAP_LEASE"):
        await sink.deliver(_item(intent))
    assert sorted(os.listdir(path.parent)) == ["rec.mp4"]
    # From the host's namespace, a complete /proc walk that finds no writer is proof.
    await AfterUploadSink(head).deliver(_item(intent))
    assert not path.exists()


def test_a_lease_break_is_seen_and_survived(tmp_path: Path) -> None:
    """An open for writing while the proof is held breaks it: holds() turns False (and the
    break's signal does not end the process); the opener proceeds once we let go."""
    import subprocess
    import time

    from cefmp4.intake.writers import NoWriterProof

    path = tmp_path / "f.mp4"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    try:
        with NoWriterProof(fd, str(path)) as proof:
            assert proof.holds()
            opener = subprocess.Popen(["sh", "-c", f'echo y >> "{path}"'])
            deadline = time.monotonic() + 10
            while proof.holds() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not proof.holds()
            assert opener.poll() is None  # waits for the lease to be let go
        assert opener.wait(10) == 0
    finally:
        os.close(fd)
    assert path.read_bytes() == b"xy\n"


async def test_move_is_never_of_a_file_renamed_onto_the_path_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new recording renamed onto the path while the old one is being proven is neither
    moved nor unlinked (before, it was unlinked by name after the check)."""
    import cefmp4.after.after_upload as au

    done = tmp_path / "done"
    path, intent, head = _setup(tmp_path, "move", done)
    newcomer = tmp_path / "new.mp4"
    newcomer.write_bytes(b"a new recording")
    real = au.NoWriterProof

    class Racing(real):  # type: ignore[misc,valid-type]
        def __enter__(self) -> object:
            os.rename(newcomer, path)  # the slow part of the check is where it lands
            return super().__enter__()

    monkeypatch.setattr(au, "NoWriterProof", Racing)
    with pytest.raises(PermanentError, match="another file took the source's path"):
        await AfterUploadSink(head).deliver(_item(intent))
    assert path.read_bytes() == b"a new recording"
    assert sorted(os.listdir(path.parent)) == ["rec.mp4"]
    assert not list(done.rglob("*")) if done.exists() else True


async def test_move_does_not_take_a_same_size_same_mtime_file_for_its_copy(
    tmp_path: Path,
) -> None:
    """Two recordings named alike with the same size and mtime (a camera without a clock,
    rsync -t): the one in AFTER_UPLOAD_DIR is not this one's copy."""
    done = tmp_path / "done"
    path, intent, head = _setup(tmp_path, "move", done)
    data = path.read_bytes()
    (done / "cam").mkdir(parents=True)
    twin = done / "cam" / "rec.mp4"
    twin.write_bytes(os.urandom(len(data)))
    os.utime(twin, ns=(intent.mtime_ns, intent.mtime_ns))
    twin_bytes = twin.read_bytes()
    await AfterUploadSink(head).deliver(_item(intent))
    assert not path.exists()
    assert twin.read_bytes() == twin_bytes
    assert move_targets(intent)[1].read_bytes() == data


async def test_delete_refuses_same_size_same_mtime_other_bytes(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    other = os.urandom(intent.size)
    with open(path, "r+b") as f:
        f.write(other)
    os.utime(path, ns=(intent.mtime_ns, intent.mtime_ns))
    with pytest.raises(PermanentError, match="bytes differ"):
        await AfterUploadSink(head).deliver(_item(intent))
    assert path.read_bytes() == other


async def test_acts_only_after_the_quiet_time_since_completion(tmp_path: Path) -> None:
    """Completed on close at t=100; with STREAM_TIMEOUT_SECONDS=30 the action waits until
    t=130, and a writer that came back meanwhile keeps its file."""
    path, intent, head = _setup(tmp_path)
    now = [110.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds
        with open(path, "ab") as f:  # the writer reopened and appended
            f.write(b"more")

    sink = AfterUploadSink(head, quiet_s=30.0, clock=lambda: now[0], sleep=sleep)
    item = OutboxItem(1, "after_upload", intent.stream_id, intent.to_json(), 100.0)
    with pytest.raises(PermanentError, match="changed since"):
        await sink.deliver(item)
    assert slept == [pytest.approx(20.0)]
    assert path.exists()
    # Past its time, no wait at all.
    path2, intent2, head2 = _setup(tmp_path / "b")
    sink2 = AfterUploadSink(head2, quiet_s=30.0, clock=lambda: 500.0, sleep=sleep)
    slept.clear()
    await sink2.deliver(OutboxItem(2, "after_upload", intent2.stream_id, intent2.to_json(),
                                   100.0))
    assert slept == []
    assert not path2.exists()


async def test_put_back_never_overwrites_a_file_that_took_the_path(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    writers: list[subprocess.Popen[bytes]] = []

    def race(name: str) -> None:
        if name == "after_upload_staged":
            # The staged file is opened for writing (it goes back) ...
            writers.append(_late_writer(staged_name(path, intent.stream_id), b"late"))
            path.write_bytes(b"but a new file took its path")  # ... beside this one

    with pytest.raises(PermanentError):
        await AfterUploadSink(head, hit=race).deliver(_item(intent))
    assert writers[0].wait(10) == 0
    assert path.read_bytes() == b"but a new file took its path"
    kept = path.with_name(f"rec.kept-{intent.stream_id}.mp4")
    assert kept.read_bytes().endswith(b"late")


# --- review findings: hostile names, stuck items, hidden files -------------------------------


@pytest.mark.parametrize("where", ["partial", "subdir"])
async def test_move_never_writes_through_a_planted_symlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A local user plants a symlink at the copy's temporary name, or makes a directory of
    AFTER_UPLOAD_DIR a symlink: the victim is never written, nothing lands outside."""
    done = tmp_path / "done"
    path, intent, head = _setup(tmp_path, "move", done)
    data = path.read_bytes()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    outside = tmp_path / "outside"
    outside.mkdir()
    if where == "partial":
        (done / "cam").mkdir(parents=True)
        (done / "cam" / f".cefmp4-{intent.stream_id}.partial").symlink_to(victim)

        def no_cross_link(src: str, dst: str) -> None:
            raise OSError(errno.EXDEV, "cross-device link")

        monkeypatch.setattr(os, "link", no_cross_link)  # the copy path
        await AfterUploadSink(head).deliver(_item(intent))
        monkeypatch.undo()
        moved = done / "cam" / "rec.mp4"
        assert not moved.is_symlink()
        assert moved.read_bytes() == data
    else:
        done.mkdir()
        (done / "cam").symlink_to(outside)
        with pytest.raises(PermanentError, match="outside AFTER_UPLOAD_DIR"):
            await AfterUploadSink(head).deliver(_item(intent))
        assert path.read_bytes() == data  # kept, in view
    assert victim.read_bytes() == b"precious"
    assert os.listdir(outside) == []


async def test_a_name_too_long_to_stage_is_kept_in_view_and_the_queue_goes_on(
    tmp_path: Path,
) -> None:
    """A 250-byte name: the hidden name is short, so it stages and is deleted; and an error
    of the same kind is a PermanentError (the queue moves on), never a retry loop."""
    path, intent, head = _setup(tmp_path)
    long_path = path.with_name("x" * 246 + ".mp4")
    path.rename(long_path)
    st = long_path.stat()
    intent = replace(intent, path=str(long_path), inode=st.st_ino)
    await AfterUploadSink(head).deliver(_item(intent))
    assert not long_path.exists()
    # A read-only directory: EACCES on the rename, as root only through a hook here.
    path2, intent2, head2 = _setup(tmp_path / "b")

    def refuse(name: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    import cefmp4.after.after_upload as au

    real_rename = os.rename
    try:
        au.os.rename = lambda *_a: refuse("")  # type: ignore[assignment]
        with pytest.raises(PermanentError, match="EACCES"):
            await AfterUploadSink(head2).deliver(_item(intent2))
    finally:
        au.os.rename = real_rename  # type: ignore[assignment]
    assert path2.exists()


async def test_a_file_left_hidden_by_a_crash_is_put_back_even_if_the_action_is_refused(
    tmp_path: Path,
) -> None:
    """Crash after staging, then the object is gone (a lifecycle rule): the file must come
    back into view, not stay at its hidden name for ever."""
    path, intent, head = _setup(tmp_path)
    os.rename(path, staged_name(path, intent.stream_id))  # what the crash left
    del head.objects[intent.key]
    with pytest.raises(PermanentError, match="video object not found"):
        await AfterUploadSink(head).deliver(_item(intent))
    assert path.exists()
    assert sorted(os.listdir(path.parent)) == ["rec.mp4"]


async def test_a_file_planted_at_the_hidden_name_is_left_alone(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    planted = staged_name(path, intent.stream_id)
    planted.write_bytes(b"not the recording")
    os.unlink(path)  # the real file is gone (say, deleted by hand)
    with pytest.raises(PermanentError, match="changed since"):
        await AfterUploadSink(head).deliver(_item(intent))
    assert planted.read_bytes() == b"not the recording"
    assert not path.exists()  # the planted file was not published as a recording


@pytest.mark.parametrize("field", ["path", "key", "metadata_key", "target_dir"])
async def test_an_intent_outside_the_settings_is_never_acted_on(
    tmp_path: Path, field: str
) -> None:
    """Intents are read back from the store (§2.18): one whose file is outside WATCH_DIR,
    whose keys are outside the prefix, or whose target is not AFTER_UPLOAD_DIR is refused."""
    from cefmp4.after.after_upload import Scope

    path, intent, head = _setup(tmp_path, "move", tmp_path / "done")
    scope = Scope(tmp_path / "in", "p/", str(tmp_path / "done"))
    outside = tmp_path / "outside.conf"
    outside.write_bytes(path.read_bytes())
    bad = {
        "path": replace(intent, path=str(outside)),
        "key": replace(intent, key="elsewhere/x.mp4", metadata_key="elsewhere/x.mp4.metadata.json"),
        "metadata_key": replace(intent, metadata_key="p/other.json"),
        "target_dir": replace(intent, target_dir=str(tmp_path)),
    }[field]
    with pytest.raises(PermanentError, match="not acted on"):
        await AfterUploadSink(head, scope=scope).deliver(_item(bad))
    assert outside.exists()
    assert path.exists()
    await AfterUploadSink(head, scope=scope).deliver(_item(intent))  # the real one acts
    assert not path.exists()


def test_the_hash_stops_as_soon_as_a_writer_breaks_the_lease(tmp_path: Path) -> None:
    from cefmp4.after.after_upload import _sha256_of

    big = tmp_path / "big"
    big.write_bytes(b"x" * (3 * 4 * 1024 * 1024))
    calls = []

    def still() -> bool:
        calls.append(1)
        return len(calls) < 2

    fd = os.open(big, os.O_RDONLY)
    try:
        with pytest.raises(PermanentError, match="opened the source for writing"):
            _sha256_of(fd, still)
    finally:
        os.close(fd)
    assert len(calls) == 2  # stopped after the second block of three


async def test_a_clock_stepped_back_never_makes_the_wait_longer_than_the_quiet_time(
    tmp_path: Path,
) -> None:
    _path, intent, head = _setup(tmp_path)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    sink = AfterUploadSink(head, quiet_s=30.0, clock=lambda: 0.0, sleep=sleep)
    await sink.deliver(OutboxItem(1, "after_upload", intent.stream_id, intent.to_json(),
                                  10_000.0))  # completed "in the future"
    assert slept == [30.0]


async def test_after_switching_to_keep_a_pending_action_puts_its_file_back(
    tmp_path: Path,
) -> None:
    """Crash after staging, restart with AFTER_UPLOAD=keep: the intent is ended and the file
    comes back into view (it used to stay at its hidden name, said nowhere)."""
    path, intent, head = _setup(tmp_path)
    os.rename(path, staged_name(path, intent.stream_id))
    with pytest.raises(PermanentError, match="keep now"):
        await AfterUploadSink(head, keep_only=True).deliver(_item(intent))
    assert sorted(os.listdir(path.parent)) == ["rec.mp4"]
