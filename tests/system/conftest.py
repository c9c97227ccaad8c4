"""System tests: the installed ``cefmp4`` script as real processes, killed and restarted.

``--crash-iterations N`` sets how many SIGKILLs the randomized crash loop deals (CI runs the
default 20; pass more for a soak). ``--crash-seed S`` replays one run of the loop.

Helpers shared by ``test_recovery.py`` and ``test_outages.py`` live here and reach the tests
as fixtures: ``bucket_view`` reads what the daemon wrote with a plain botocore client, and
``wait_until`` polls a condition while making sure the daemon under test is still alive.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cefmp4.config.settings import Settings
from tests.support.app import make_settings
from tests.support.media import make_mp4
from tests.support.proc import Daemon, settings_env
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3

DEFAULT_CRASH_ITERATIONS = 20
PREFIX = "streams/"


@pytest.fixture
def crash_iterations(request: pytest.FixtureRequest) -> int:
    # getoption's default covers a run where this conftest was not an initial one.
    value = int(request.config.getoption("--crash-iterations", DEFAULT_CRASH_ITERATIONS))
    if value < 1:
        raise pytest.UsageError("--crash-iterations must be at least 1")
    return value


@pytest.fixture
def crash_seed(request: pytest.FixtureRequest) -> int:
    seed = request.config.getoption("--crash-seed", None)
    return int(seed) if seed is not None else time.time_ns() % 1_000_000_007


@pytest.fixture
def redis_or_none(checkpoint_kind: str, redis_server: RedisServer) -> RedisServer | None:
    return redis_server if checkpoint_kind == "redis" else None


# --- media ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def source_25mb(media_dir: Path) -> Path:
    """A regular MP4 of about 25 MB: four full 5 MiB parts and a tail."""
    return make_mp4(media_dir / "system-25mb.mp4", seconds=8, mbytes=25)


@pytest.fixture(scope="session")
def source_12mb(media_dir: Path) -> Path:
    """A regular MP4 of about 12 MB: two full parts and a tail."""
    return make_mp4(media_dir / "system-12mb.mp4", seconds=4, mbytes=12)


@pytest.fixture(scope="session")
def source_12mb_fragmented(media_dir: Path) -> Path:
    return make_mp4(media_dir / "system-12mb-frag.mp4", seconds=4, kind="fragmented", mbytes=12)


@pytest.fixture(scope="session")
def source_7mb(media_dir: Path) -> Path:
    """A small MP4 of about 7 MB: one full part and a tail."""
    return make_mp4(media_dir / "system-7mb.mp4", seconds=2, mbytes=7)


# --- polling ---------------------------------------------------------------------------------


def _alive_check(daemons: tuple[Daemon, ...]) -> None:
    for daemon in daemons:
        if daemon.proc is not None and daemon.proc.poll() is not None:
            raise AssertionError(
                f"cefmp4 exited with {daemon.proc.returncode} while waiting:\n{daemon.log_tail()}"
            )


def wait_until_impl(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    alive: tuple[Daemon, ...] = (),
    interval: float = 0.1,
) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); fail with ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        _alive_check(alive)
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            tail = "\n".join(d.log_tail(30) for d in alive)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{tail}")
        time.sleep(interval)


@pytest.fixture
def wait_until() -> Callable[..., Any]:
    return wait_until_impl


# --- reading the bucket ----------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def describe_difference(remote: bytes, local: bytes) -> str:
    """Where two byte strings part ways, in terms of 5 MiB parts (for assertion messages)."""
    if remote == local:
        return "identical"
    first = next((i for i, (a, b) in enumerate(zip(remote, local, strict=False)) if a != b), None)
    where = min(len(remote), len(local)) if first is None else first
    return (
        f"{len(remote)} bytes in S3, {len(local)} on disk; first difference at byte {where} "
        f"(part {where // (5 * 1024 * 1024) + 1})"
    )


@dataclass
class BucketView:
    """What the daemon left in one bucket, read with a synchronous botocore client."""

    server: SeaweedS3
    bucket: str
    prefix: str = PREFIX

    def __post_init__(self) -> None:
        self.client = self.server.boto_client()

    def list_keys(self) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, **token)
            keys += [obj["Key"] for obj in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def uploads(self) -> list[dict[str, Any]]:
        """Open multipart uploads under the prefix."""
        page = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        uploads: list[dict[str, Any]] = page.get("Uploads", [])
        return uploads

    def parts(self, key: str, upload_id: str) -> list[dict[str, Any]]:
        page = self.client.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id)
        parts: list[dict[str, Any]] = page.get("Parts", [])
        return parts

    def parts_listed(self) -> int:
        """Parts visible through ListParts across every open upload (0 when none is open)."""
        return sum(len(self.parts(u["Key"], u["UploadId"])) for u in self.uploads())

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def video_keys(self, rel: str) -> list[str]:
        return [k for k in self.list_keys() if k.endswith(f"/{rel}")]

    def metadata_keys(self, rel: str) -> list[str]:
        return [k for k in self.list_keys() if k.endswith(f"/{rel}.metadata.json")]

    def metadata(self, rel: str) -> list[dict[str, Any]]:
        return [json.loads(self.get(k)) for k in self.metadata_keys(rel)]

    def wait_metadata(
        self, rels: list[str], *, timeout: float, alive: tuple[Daemon, ...] = ()
    ) -> None:
        missing = list(rels)

        def all_there() -> bool:
            keys = self.list_keys()
            missing[:] = [
                r for r in rels if not any(k.endswith(f"/{r}.metadata.json") for k in keys)
            ]
            return not missing

        wait_until_impl(
            all_there, timeout=timeout, what=f"metadata of {missing}", alive=alive, interval=0.2
        )

    def assert_converged(self, watch_dir: Path, rels: list[str]) -> dict[str, dict[str, Any]]:
        """The end state every scenario must reach: per file one video object byte-identical
        to the file, one metadata document agreeing with it, no multipart upload left open,
        and nothing else under the prefix."""
        docs: dict[str, dict[str, Any]] = {}
        keys = self.list_keys()
        for rel in rels:
            local = (watch_dir / rel).read_bytes()
            videos = [k for k in keys if k.endswith(f"/{rel}")]
            metas = [k for k in keys if k.endswith(f"/{rel}.metadata.json")]
            assert len(videos) == 1, f"{rel}: expected one video object, found {videos}"
            assert len(metas) == 1, f"{rel}: expected one metadata object, found {metas}"
            remote = self.get(videos[0])
            assert remote == local, f"{rel}: {describe_difference(remote, local)}"
            doc: dict[str, Any] = json.loads(self.get(metas[0]))
            assert doc["s3_key"] == videos[0]
            assert doc["sha256"] == sha256_bytes(local)
            assert doc["total_size_bytes"] == len(local)
            assert doc["status"] == "complete"
            chunks = doc["chunks"]
            assert [c["part_number"] for c in chunks] == list(range(1, len(chunks) + 1))
            offset = 0
            for chunk in chunks:
                assert chunk["offset_bytes"] == offset
                offset += chunk["size_bytes"]
            assert offset == len(local)
            docs[rel] = doc
        assert len(keys) == 2 * len(rels), f"unexpected objects under {self.prefix}: {keys}"
        assert self.uploads() == [], f"multipart uploads left open: {self.uploads()}"
        return docs


@pytest.fixture
def bucket_view() -> Iterator[Callable[[SeaweedS3, str], BucketView]]:
    views: list[BucketView] = []

    def make(server: SeaweedS3, bucket: str) -> BucketView:
        view = BucketView(server, bucket)
        views.append(view)
        return view

    yield make
    for view in views:
        view.client.close()


# --- daemons ----------------------------------------------------------------------------------


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Every Daemon a test appends here is SIGKILLed at teardown if still running."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()


# --- a test's rig: servers, bucket view, settings, daemons -----------------------------------


@dataclass
class Rig:
    """What most system tests start from: an S3 server and bucket (and Redis, or None for
    the embedded store), a view of the bucket, and the daemons they start."""

    tmp_path: Path
    s3: SeaweedS3
    bucket: str
    redis: RedisServer | None
    view: BucketView
    daemons: list[Daemon]
    env: dict[str, str] = field(default_factory=dict)

    def configure(self, **overrides: Any) -> Settings:
        """The settings of this rig (and ``env``, the daemons' environment, from them).
        Configured again, it keeps its Redis key prefix: the same deployment, reconfigured."""
        if self.env.get("REDIS_KEY_PREFIX"):
            overrides.setdefault("redis_key_prefix", self.env["REDIS_KEY_PREFIX"])
        settings = make_settings(
            tmp_path=self.tmp_path, s3=self.s3, bucket=self.bucket, redis=self.redis, **overrides
        )
        self.env = settings_env(settings)
        return settings

    def wait_parts_listed(self, count: int, daemon: Daemon, timeout: float = 30) -> None:
        """Until S3 lists ``count`` parts of an open upload (``daemon`` alive meanwhile)."""
        wait_until_impl(
            lambda: self.view.parts_listed() >= count, timeout=timeout,
            what=f"{count} part(s) listed", alive=(daemon,),
        )  # fmt: skip

    def daemon(self, name: str = "run") -> Daemon:
        """A daemon (not started) with the configured settings, logging to ``<name>.log``."""
        daemon = Daemon(self.env, self.tmp_path / f"{name}.log")
        self.daemons.append(daemon)
        return daemon


RigMaker = Callable[[SeaweedS3, str, "RedisServer | None"], Rig]


@pytest.fixture
def make_rig(
    tmp_path: Path, bucket_view: Callable[[SeaweedS3, str], BucketView], daemons: list[Daemon]
) -> RigMaker:
    """``make_rig(s3, bucket, redis)``: a rig on these servers (private ones, for outages)."""

    def make(s3: SeaweedS3, bucket: str, redis: RedisServer | None) -> Rig:
        return Rig(tmp_path, s3, bucket, redis, bucket_view(s3, bucket), daemons)

    return make


@pytest.fixture
def rig(request: pytest.FixtureRequest, make_rig: RigMaker, s3_server: SeaweedS3,
        s3_bucket: str) -> Rig:  # fmt: skip
    """The session's S3 with a fresh bucket; Redis where the test takes ``checkpoint_kind``
    and it is "redis" (else the embedded store)."""
    redis = (
        request.getfixturevalue("redis_or_none")
        if "checkpoint_kind" in request.fixturenames
        else None
    )
    return make_rig(s3_server, s3_bucket, redis)
