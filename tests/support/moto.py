"""A second real S3 for tests: moto's standalone server (``moto_server``, AWS semantics) as a
subprocess on a free 127.0.0.1 port, beside SeaweedFS (``tests/support/seaweed.py``).

It answers over HTTP like any S3 endpoint, so cefmp4's real client code talks to it; what
it does differently from SeaweedFS is written down in ``docs/s3-compatibility.md``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from cefmp4.storage.s3 import S3ObjectStore, open_s3_store
from tests.support.servers import (
    HOST,
    ManagedServer,
    ServerProcess,
    boto_s3_client,
    find_tool,
    free_port,
    http_answers,
)

__all__ = ["MotoS3", "find_moto_server", "moto_s3", "moto_store_for"]


def find_moto_server() -> str:
    """``moto_server``: next to this Python (the dev extra's moto[server]) or on PATH."""
    return find_tool("moto_server", "install the dev extra (moto[server])")


class MotoS3(ManagedServer):
    """One ``moto_server`` process. Its state lives in memory: a restart forgets it."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self._server = ServerProcess("moto_server", log_path)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60) -> None:
        # No AWS_* from the developer's shell; moto needs none.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._server.launch([find_moto_server(), "-H", HOST, "-p", str(self.port)], env)
        if not self._server.wait_ready(lambda: http_answers(self.endpoint_url + "/"), timeout):
            raise self._server.exited()

    def boto_client(self, access_key_id: str = "test", secret_access_key: str = "test") -> Any:
        """A plain (synchronous) botocore S3 client for fixtures and assertions."""
        return boto_s3_client(self.endpoint_url, access_key_id, secret_access_key)


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
