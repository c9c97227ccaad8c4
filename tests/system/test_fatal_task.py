"""The one fatal supervised task, with real processes (#9): lease renewal in Redis mode.

An instance that cannot keep its leases may not go on uploading streams it may no longer
own, so a renewal Redis refuses for good stops the process: non-zero exit, exactly one
``cefmp4: error:`` line, the task's traceback logged once; the stream is left resumable and
the restart an orchestrator would do finishes it. The restartable tasks (watcher, rescan,
sweeper) recover instead, with ``/readyz`` 503 meanwhile: ``tests/pipeline`` shows those.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from cefmp4.cli.main import EXIT_FAILED
from tests.support.media import GrowingWriter
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3
from tests.system.conftest import RigMaker

pytestmark = pytest.mark.timeout(150)


def test_a_lease_renewal_redis_refuses_for_good_stops_the_process_and_a_restart_finishes(
    make_rig: RigMaker,
    s3_server: SeaweedS3,
    s3_bucket: str,
    redis_server: RedisServer,
    source_12mb: Path,
    wait_until: Callable[..., Any],
) -> None:
    rig = make_rig(s3_server, s3_bucket, redis_server)
    settings = rig.configure(lease_ttl_seconds=3.0, stream_timeout_seconds=2.0)
    view = rig.view
    daemon = rig.daemon("run").start()
    assert daemon.http_get("/readyz")[0] == 200
    client = redis.Redis.from_url(redis_server.url)
    with GrowingWriter(source_12mb, settings.watch_dir / "cam.mp4", rate=1_000_000) as writer:
        prefix = settings.redis_key_prefix
        leases: list[bytes] = wait_until(
            lambda: client.keys(f"{prefix}lease:*"), timeout=30, what="the stream's lease",
            alive=(daemon,),
        )  # fmt: skip
        # The lease key overwritten by something else (a list): every renewal is WRONGTYPE.
        [lease] = leases
        client.delete(lease)
        client.rpush(lease, "not a lease")
        assert daemon.proc is not None
        code = daemon.proc.wait(30)
        writer.wait(60)  # the recording goes on while no instance runs
    assert code == EXIT_FAILED, daemon.log_tail()
    lines = daemon.log_path.read_text(errors="replace").splitlines()
    errors = [line for line in lines if line.startswith("cefmp4: error:")]
    assert len(errors) == 1, lines[-10:]
    assert "lease-renewal failed" in errors[0]
    assert "WRONGTYPE" in errors[0]
    failed = [e for e in daemon.events() if e.get("event") == "task_failed"]
    assert [e["task"] for e in failed] == ["lease-renewal"]
    assert "Traceback" in failed[0].get("exception", ""), failed[0]
    assert not [e for e in daemon.events() if e.get("event") == "stream_failed"]

    # Fixed (the key gone), restarted: the stream resumes from its checkpoint and completes.
    client.delete(lease)
    client.close()
    daemon.start()
    view.wait_metadata(["cam.mp4"], timeout=60, alive=(daemon,))
    assert daemon.stop() == 0
    view.assert_converged(settings.watch_dir, ["cam.mp4"])
