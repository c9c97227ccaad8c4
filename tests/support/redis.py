"""A real ``redis-server`` subprocess for tests, with AOF so data survives restarts.

``redis_server`` is one session-wide server; tests isolate themselves by key prefix.
Tests that stop, kill or restart Redis build a private ``RedisServer`` instead.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import HOST, ManagedServer, ServerProcess, free_port

__all__ = ["RedisServer", "redis_server", "redis_url"]

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0


def _ping(port: int) -> bool:
    """True once the server answers PING with PONG (not LOADING or an error)."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ManagedServer):
    """``redis-server`` on a free 127.0.0.1 port, data (AOF) in ``data_dir``.

    ``restart()`` keeps the port and the directory, so clients reconnect to the same URL
    and find their data again.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._port: int | None = None
        self._server = ServerProcess("redis-server", self.data_dir / "redis.log")

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("redis-server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = _START_TIMEOUT) -> None:
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
            port = self._port if keep_port and self._port is not None else free_port()
            if self._launch(executable, port, timeout):
                self._port = port
                return
        raise RuntimeError(f"redis-server did not start; see {self.data_dir / 'redis.log'}")

    def _launch(self, executable: str, port: int, timeout: float) -> bool:
        argv = [
            executable, "--port", str(port), "--bind", HOST, "--protected-mode", "no",
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--dir", str(self.data_dir), "--daemonize", "no",
        ]  # fmt: skip
        self._server.launch(argv)
        # Exited before answering: most likely the port was taken.
        return self._server.wait_ready(lambda: _ping(port), timeout, interval=0.02)

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown (SIGTERM: redis flushes the AOF and exits), then wait."""
        super().stop(_STOP_TIMEOUT if timeout is None else timeout)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; isolate tests by key prefix."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    # A test that crashed the shared server must not fail every test after it.
    if not redis_server.running:
        redis_server.start()
    return redis_server.url
