"""Child processes: one-shot tools measured by wait4 rusage, and a `cefmp4 run` daemon."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ChildResult:
    code: int
    wall_s: float
    cpu_s: float  # user + system of the child and its reaped descendants
    maxrss_mib: float
    output: str


def run_measured(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 1800
) -> ChildResult:
    """Run ``args`` to completion; wall time, CPU and peak RSS from wait4's rusage."""
    out_path = cwd / f"out-{os.getpid()}-{time.monotonic_ns()}.txt"
    with out_path.open("w+b") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.005)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    out_path.unlink()
    return ChildResult(
        proc.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text
    )


def proc_cpu_s(pid: int) -> float:
    """utime + stime (+ reaped children such as ffprobe) of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / _TICK


def proc_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Daemon:
    """`cefmp4 run` with JSON logs on stderr, each line stamped with its arrival time."""

    def __init__(self, cefmp4: str, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.started = time.monotonic()
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [cefmp4, "run"], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()
        self.rusage: resource.struct_rusage | None = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            now = time.monotonic()
            self._log.write(line)
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "raw", "line": line.rstrip()}
            with self._cond:
                self.events.append((now, event))
                self._cond.notify_all()

    def wait_event(self, name: str, timeout: float, count: int = 1) -> float:
        """Monotonic arrival time of the ``count``-th log event called ``name``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [t for t, e in self.events if e.get("event") == name]
                if len(hits) >= count:
                    return hits[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no {name!r} event ({len(hits)}/{count}) from cefmp4 run")
                self._cond.wait(min(left, 0.5))

    def count(self, name: str) -> int:
        with self._cond:
            return sum(1 for _, e in self.events if e.get("event") == name)

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid)

    def hwm_mib(self) -> float:
        return proc_hwm_mib(self.proc.pid)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.returncode is None:
            try:
                pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped by Popen.poll()
                break
            if pid:
                self.rusage = usage
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.proc.kill()
            time.sleep(0.02)
        self._reader.join(5)
        self._log.close()
        return self.proc.returncode or 0
