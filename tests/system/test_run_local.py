"""``scripts/run-local``, the README's quick start, as a newcomer meets it (issue #26 items 1,
4 and 5): run in a copy of the checkout's layout (its own ``.local`` and ``input-videos``, the
test venv as ``.venv``) on free ports, with real SeaweedFS, cefmp4 and ffmpeg processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.media import FPS
from tests.support.proc import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def _hermetic_env(**extra: str) -> dict[str, str]:
    """This environment without AWS_*/S3_*/cefmp4 settings (the script sets its own)."""
    from cefmp4.config.settings import Settings

    ours = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "S3_")) and k not in ours}
    env.update(LOG_FORMAT="json", **extra)
    return env


def _checkout(tmp: Path) -> Path:
    """The script in a directory shaped like the checkout: it works in its own parent."""
    repo = tmp / "checkout"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "run-local", repo / "scripts" / "run-local")
    (repo / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (repo / ".local").mkdir()
    (repo / ".local" / "run-local.installed").touch()  # installed: no pip run here
    return repo


@dataclass
class LocalRun:
    repo: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    out: Path

    def script(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.repo / "scripts" / "run-local"), *args], cwd=self.repo,
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )

    def events(self) -> list[dict[str, object]]:
        lines = self.out.read_text(errors="replace").splitlines()
        return [json.loads(ln) for ln in lines if ln.startswith("{")]

    def bucket_keys(self) -> list[str]:
        listing = self.script("ls")
        assert listing.returncode == 0, listing.stderr
        return [line.split()[-1] for line in listing.stdout.splitlines()[1:]]


def _wait(predicate: object, timeout: float, what: str, run: LocalRun) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if run.proc.poll() is not None:
            raise AssertionError(f"run-local exited ({run.proc.returncode}):\n"
                                 f"{run.out.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n"
                                 f"{run.out.read_text(errors='replace')[-3000:]}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRun]:
    """`scripts/run-local --stream-timeout-seconds 3`: the README's example, running."""
    repo = _checkout(tmp_path_factory.mktemp("run-local"))
    env = _hermetic_env(S3_PORT=str(free_port()), PROM_PORT=str(free_port()))
    out = repo / "run-local.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            ["bash", str(repo / "scripts" / "run-local"), "--stream-timeout-seconds", "3"],
            cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run = LocalRun(repo, env, proc, out)
    try:
        _wait(lambda: any(e.get("event") == "ready" for e in run.events()), 120, "ready", run)
        yield run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C: cefmp4, then SeaweedFS, stop
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_a_fragmented_recording_is_one_object(local_run: LocalRun) -> None:
    """Item 1: fragments 5 s apart (a keyframe, and so a fragment, every 5 s) under
    ``--stream-timeout-seconds 3``: each gap used to end the stream and each regrowth
    uploaded the whole file again. With run-local's recorder profile it is one object."""
    target = local_run.repo / "input-videos" / "first.mp4"
    ffmpeg = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-re", "-f", "lavfi",
         "-i", f"testsrc2=size=320x180:rate={FPS}", "-t", "12", "-c:v", "mpeg4",
         "-g", str(5 * FPS), "-movflags", "+frag_keyframe+empty_moov", str(target)],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert ffmpeg.returncode == 0, ffmpeg.stderr
    size = target.stat().st_size

    def whole_file_completed() -> bool:
        return any(e.get("event") == "stream_completed" and e.get("size") == size
                   for e in local_run.events())

    _wait(whole_file_completed, 40, "the whole recording's object", local_run)
    keys = local_run.bucket_keys()
    assert len([k for k in keys if k.endswith("/first.mp4")]) == 1, keys
    assert len([k for k in keys if k.endswith("/first.mp4.metadata.json")]) == 1, keys
    idle = [e for e in local_run.events() if e.get("event") == "stream_idle"]
    assert [e["completed_by"] for e in idle] == ["writer_closed"]


def test_hls_segments_and_the_helpers_a_newcomer_reaches_for(local_run: LocalRun) -> None:
    """The newcomer walkthrough of #26: `-f hls` writes .ts segments, which run-local's
    profile watches (cefmp4's default, .mp4 only, passed them by without a word), and
    `upload`/`salvage` go through run-local like `status` (before: "already running")."""
    hls = local_run.repo / "input-videos" / "hls"
    hls.mkdir()
    ffmpeg = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", f"testsrc2=size=160x90:rate={FPS}", "-t", "2", "-c:v", "mpeg4",
         "-f", "hls", "-hls_time", "1", str(hls / "live.m3u8")],
        capture_output=True, text=True, timeout=90, check=False,
    )
    assert ffmpeg.returncode == 0, ffmpeg.stderr
    segments = sorted(p.name for p in hls.glob("*.ts"))
    assert segments
    _wait(lambda: {n for n in segments}
          <= {k.rsplit("/", 1)[-1] for k in local_run.bucket_keys()}, 40,
          "every .ts segment's object", local_run)
    extra = local_run.repo / "outside.mp4"
    extra.write_bytes(b"\0" * 4096)
    upload = local_run.script("upload", str(extra))
    assert upload.returncode == 0, upload.stdout + upload.stderr
    assert upload.stdout.startswith("ok"), upload.stdout
    salvage = local_run.script("salvage", "--dry-run")
    assert salvage.returncode == 0, salvage.stdout + salvage.stderr


def test_started_twice_it_says_who_runs(local_run: LocalRun) -> None:
    began = time.monotonic()
    second = local_run.script(timeout=60)
    assert second.returncode != 0
    assert f"already running (pid {local_run.proc.pid})" in second.stderr, second.stderr
    assert "goroutine" not in second.stderr + second.stdout
    assert "starting SeaweedFS" not in second.stderr
    assert time.monotonic() - began < 20
    assert local_run.proc.poll() is None  # the first one is untouched


def test_read_only_commands_beside_it(local_run: LocalRun) -> None:
    check = local_run.script("check")
    assert check.returncode == 0, check.stdout + check.stderr
    status = local_run.script("status", "--json")
    assert status.returncode == 0, status.stderr
    assert isinstance(json.loads(status.stdout), list)
    piped = subprocess.run(
        ["bash", "-c", 'scripts/run-local ls | true; scripts/run-local status | true'],
        cwd=local_run.repo, env=local_run.env, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert "Traceback" not in piped.stderr, piped.stderr
    assert "BrokenPipe" not in piped.stderr, piped.stderr


def _listeners(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp has them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hexport = fields[1].rsplit(":", 1)
            if int(hexport, 16) == port and fields[3] == "0A":  # LISTEN
                found.add(address)
    return found


def test_the_http_server_listens_on_loopback_only(local_run: LocalRun) -> None:
    assert _listeners(int(local_run.env["PROM_PORT"])) == {"0100007F"}  # 127.0.0.1


def test_seaweedfs_knows_the_demo_key(local_run: LocalRun) -> None:
    """Item 5: weed mini started with an identity for the demo key, so no request of
    cefmp4's is logged as InvalidAccessKeyId (before: one warning per request)."""
    assert local_run.script("check").returncode == 0
    log = (local_run.repo / ".local" / "seaweedfs" / "weed.log").read_text(errors="replace")
    assert "InvalidAccessKeyId" not in log
    assert "Auth enabled: false" not in log


@pytest.mark.parametrize(("args", "expect"), [
    (["--chunk-size-mb", "2"], "configuration error: CHUNK_SIZE_MB"),
    (["--stream-timeout-secs", "3"], "usage: cefmp4 run "),
])
def test_a_mistake_is_reported_before_anything_starts(
    tmp_path: Path, args: list[str], expect: str
) -> None:
    repo = _checkout(tmp_path)
    env = _hermetic_env(S3_PORT=str(free_port()), PROM_PORT=str(free_port()))
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "run-local"), *args], cwd=repo, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert expect in result.stderr, result.stderr
    assert "starting SeaweedFS" not in result.stderr
    assert not (repo / ".local" / "seaweedfs").exists()
