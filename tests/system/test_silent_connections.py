"""Silent TCP connections to PROM_PORT against the real process with few descriptors: they
must not take the descriptors the uploads need, nor /healthz, nor flood the log.

``cefmp4 run`` starts under ``prlimit --nofile=128:256`` (a soft limit below the hard one, as
systemd and Docker give: 1024 soft). It raises its soft limit to 256, and the test then holds
more silent connections to the health port than that, opening them again as the daemon
closes them, while a new recording is uploaded.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import proc
from tests.support.proc import Daemon
from tests.system.conftest import Rig

pytestmark = pytest.mark.timeout(120)

SOFT, HARD = 128, 256
SILENT = 300  # more than the daemon may have descriptors
ACCEPT_ERRORS = ("out of system resource", "health_accept_failed")


class SilentFlood:
    """Up to ``count`` connections to ``port`` that never send a byte; ``top_up`` replaces
    the ones the server closed and opens new ones until the server stops accepting."""

    def __init__(self, port: int, count: int) -> None:
        self.port, self.count = port, count
        self.held: dict[int, socket.socket] = {}
        self.poller = select.poll()  # not select.select: descriptors here exceed 1024
        self.opened = 0
        self.closed_by_server = 0

    def top_up(self) -> None:
        for fd, _ in self.poller.poll(0):  # readable or hung up: the server closed it
            self.poller.unregister(fd)
            self.held.pop(fd).close()
            self.closed_by_server += 1
        while len(self.held) < self.count:
            sock = socket.socket()
            sock.settimeout(0.2)  # a full listen queue: the server accepts no more for now
            try:
                sock.connect(("127.0.0.1", self.port))
            except OSError:
                sock.close()
                return
            self.held[sock.fileno()] = sock
            self.poller.register(sock, select.POLLIN)
            self.opened += 1

    def fill(self, within: float) -> None:
        """``top_up`` until ``count`` were opened, or ``within`` seconds have passed."""
        deadline = time.monotonic() + within
        while self.opened < self.count and time.monotonic() < deadline:
            self.top_up()

    def close(self) -> None:
        for sock in self.held.values():
            sock.close()
        self.held.clear()


def _healthz_seconds(daemon: Daemon) -> float:
    started = time.monotonic()
    status, _ = daemon.http_get("/healthz", timeout=2)
    assert status == 200
    return time.monotonic() - started


@pytest.fixture
def limited(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Daemons start as ``prlimit --nofile=SOFT:HARD cefmp4 …`` (prlimit execs cefmp4)."""
    prlimit = shutil.which("prlimit")
    assert prlimit is not None, "prlimit (util-linux) is needed"
    script = tmp_path / "cefmp4-limited"
    script.write_text(
        f'#!/bin/sh\nexec {prlimit} --nofile={SOFT}:{HARD} {proc.cefmp4_bin()} "$@"\n'
    )
    script.chmod(0o755)
    monkeypatch.setattr(proc, "cefmp4_bin", lambda: str(script))


@pytest.mark.usefixtures("limited")
def test_silent_connections_to_the_health_port_starve_nothing(
    rig: Rig, wait_until: Callable[..., Any]
) -> None:
    settings = rig.configure()
    daemon = rig.daemon().start()

    flood = SilentFlood(daemon.prom_port, SILENT)
    try:
        flood.fill(within=3)
        assert _healthz_seconds(daemon) < 1.5
        assert flood.opened >= SILENT  # the server kept accepting, more than it can hold

        recording = settings.watch_dir / "after-the-flood.mp4"
        recording.write_bytes(os.urandom(300_000))

        def uploaded() -> bool:
            flood.top_up()  # the flood goes on while the recording is uploaded
            return bool(rig.view.metadata_keys(recording.name))

        wait_until(uploaded, timeout=30, what="the recording's metadata", alive=(daemon,),
                   interval=0.5)  # fmt: skip
        assert flood.closed_by_server > 0
        assert _healthz_seconds(daemon) < 1.5
        deferred = [e for e in daemon.events() if e.get("event") == "stream_deferred"]
        assert not deferred, deferred[:3]
    finally:
        flood.close()
    assert daemon.stop() == 0, daemon.log_tail()
    (limits,) = [e for e in daemon.events() if e.get("event") == "nofile_limit"]
    assert (limits["soft_was"], limits["soft"], limits["hard"]) == (SOFT, HARD, HARD)
    (doc,) = rig.view.metadata(recording.name)
    assert doc["status"] == "complete"
    log = daemon.log_path.read_text(errors="replace").splitlines()
    accept_errors = [line for line in log if any(s in line for s in ACCEPT_ERRORS)]
    assert len(accept_errors) <= 3, accept_errors[:5]
    assert len(log) < 200, f"{len(log)} log lines"
    assert daemon.log_path.stat().st_size < 100_000
