"""A second real S3 for tests: moto's standalone server (``moto_server``, AWS semantics) as a
subprocess on a free 127.0.0.1 port, beside SeaweedFS (``tests/support/seaweed.py``).

It answers over HTTP like any S3 endpoint, so cefmp4's real client code talks to it; what
it does differently from SeaweedFS is written down in ``docs/s3-compatibility.md``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import botocore.session  # type: ignore[import-untyped]
import pytest
from botocore.config import Config  # type: ignore[import-untyped]

from cefmp4.storage.s3 import S3ObjectStore, open_s3_store

__all__ = ["MotoS3", "find_moto_server", "moto_s3", "moto_store_for"]

_HOST = "127.0.0.1"


def find_moto_server() -> str:
    """``moto_server``: next to this Python (the dev extra's moto[server]) or on PATH."""
    found = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if found is None:
        raise RuntimeError("moto_server not found; install the dev extra (moto[server])")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


class MotoS3:
    """One ``moto_server`` process. Its state lives in memory: a restart forgets it."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("MotoS3 is not running")
        return self._proc.pid

    def start(self, timeout: float = 60) -> None:
        # No AWS_* from the developer's shell; moto needs none.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [find_moto_server(), "-H", _HOST, "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self._proc.returncode}:\n"
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"moto_server not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> MotoS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

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


def moto_store_for(
    server: MotoS3, bucket: str, **options: Any
) -> AbstractAsyncContextManager[S3ObjectStore]:
    """``open_s3_store`` for ``server``: ``async with moto_store_for(server, b) as store``."""
    return open_s3_store(
        bucket=bucket,
        endpoint_url=server.endpoint_url,
        access_key_id="test",
        secret_access_key="test",
        region="us-east-1",
        **options,
    )


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with MotoS3(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server
