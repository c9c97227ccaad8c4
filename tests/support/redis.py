"""A real ``redis-server`` subprocess for tests, with AOF so data survives restarts.

``redis_server`` is one session-wide server; tests isolate themselves by key prefix.
Tests that stop, kill or restart Redis build a private ``RedisServer`` instead.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server", "redis_url"]

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    """True once the server answers PING with PONG (not LOADING or an error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server`` on a free 127.0.0.1 port, data (AOF) in ``data_dir``.

    ``restart()`` keeps the port and the directory, so clients reconnect to the same URL
    and find their data again.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("redis-server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("redis-server is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server (on its previous port if it had one) and wait for PING."""
        if self.running:
            return
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.skip("redis-server is not installed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        keep_port = self._port is not None
        # A free port can be taken by someone else before redis binds it; try a few.
        for _attempt in range(5):
            port = self._port if keep_port and self._port is not None else _free_port()
            if self._launch(executable, port):
                self._port = port
                return
        raise RuntimeError(f"redis-server did not start; see {self.data_dir / 'redis.log'}")

    def _launch(self, executable: str, port: int) -> bool:
        argv = [
            executable, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "no",
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # exited: most likely the port was taken
                return False
            if _ping(port):
                self._proc = proc
                return True
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        return False

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM: redis flushes the AOF and exits), then wait."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would. AOF writes already reached the OS, so data stays."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; isolate tests by key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    # A test that crashed the shared server must not fail every test after it.
    if not redis_server.running:
        redis_server.start()
    return redis_server.url
