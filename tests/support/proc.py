"""The installed ``cefmp4`` console script as a real subprocess: start, stop, kill, restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cefmp4.config.settings import Settings

__all__ = ["Daemon", "cefmp4_bin", "free_port", "run_cli", "settings_env"]


def cefmp4_bin() -> str:
    """The console script installed next to this interpreter (tests use the real entry point)."""
    candidate = Path(sys.executable).with_name("cefmp4")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("cefmp4")
    if found is None:
        raise RuntimeError("the cefmp4 console script is not installed (pip install -e .)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The process environment that reproduces ``settings`` (plus ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = "true" if value else "false"
        if value is None:  # an optional setting that is off (e.g. COMPLETE_ON_CLOSE_SECONDS)
            value = ""
        env[name.upper()] = str(value)
    env["LOG_FORMAT"] = "json"
    env.update(extra)
    return env


def run_cli(
    args: list[str], env: dict[str, str], *, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [cefmp4_bin(), *args], env=env, capture_output=True, text=True, timeout=timeout,
        cwd=cwd, check=False,
    )


class Daemon:
    """``cefmp4 run`` in a subprocess, logging JSON lines to ``log_path``."""

    def __init__(self, env: dict[str, str], log_path: Path, *, prom_port: int | None = None,
                 wrapper: list[str] | None = None):
        self.prom_port = prom_port or free_port()
        self.wrapper = wrapper or []  # e.g. unshare: the daemon in a PID namespace of its own
        self.env = {**env, "PROM_PORT": str(self.prom_port)}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.prom_port}"

    def start(self, *, wait_ready: bool = True, timeout: float = 60) -> Daemon:
        self.starts += 1
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, cefmp4_bin(), "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the start-up scan is done (the `ready` log event of this start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"cefmp4 exited with {code}:\n{self.log_tail()}")
            if sum(1 for e in self.events() if e.get("event") == "ready") >= self.starts:
                return
            time.sleep(0.1)
        raise AssertionError(f"cefmp4 not ready after {timeout} s:\n{self.log_tail()}")

    def http_get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def restart(self, **kw: Any) -> Daemon:
        self.kill()
        return self.start(**kw)

    def events(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
