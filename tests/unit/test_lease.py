"""Telling a dead predecessor's lease from a live instance's, and what a failed renewal
means (no servers needed)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from cefmp4.runtime.errors import LeaseLost, PermanentError, TransientError
from cefmp4.streams.lease import LeaseKeeper, dead_predecessor, default_owner


def _pid_of_finished_process() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_default_owner_names_host_namespace_and_pid() -> None:
    host, namespace, pid = default_owner().split(":")
    assert host
    assert int(namespace) > 0
    assert int(pid) == os.getpid()


def test_a_dead_process_of_this_host_is_a_dead_predecessor() -> None:
    me = default_owner()
    host, namespace, _ = me.split(":")
    dead = f"{host}:{namespace}:{_pid_of_finished_process()}"
    assert dead_predecessor(me, dead)


def test_live_processes_and_other_hosts_are_never_taken_over() -> None:
    me = default_owner()
    host, namespace, _ = me.split(":")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as alive:
        try:
            assert not dead_predecessor(me, f"{host}:{namespace}:{alive.pid}")
        finally:
            alive.kill()
    assert not dead_predecessor(me, me)  # ourselves
    assert not dead_predecessor(me, f"other-host:{namespace}:{_pid_of_finished_process()}")
    assert not dead_predecessor(me, f"{host}:1:{_pid_of_finished_process()}")  # other pid ns
    assert not dead_predecessor(me, "cam-node-1")  # an explicit INSTANCE_ID
    assert not dead_predecessor("cam-node-2", f"{host}:{namespace}:1")


class _Leases:
    """The Leases port: renew answers from a script of results or errors."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)

    async def acquire(self, inode: int, owner: str, ttl: float) -> int | None:
        return 1

    async def renew(self, inode: int, owner: str, ttl: float) -> bool:
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, BaseException):
            raise answer
        return bool(answer)

    def fence(self, stream_id: str, inode: int, token: int) -> None:
        pass

    def unfence(self, stream_id: str) -> None:
        pass


async def _renewals(leases: _Leases, until_lost: bool) -> list[str]:
    """Run the renewal task until the lease is lost (or, not ``until_lost``, it ends)."""
    lost: list[str] = []
    gone = asyncio.Event()
    keeper = LeaseKeeper(leases, "me", ttl=0.03)  # type: ignore[arg-type]
    await keeper.acquire(7, lambda: (lost.append("lost"), gone.set()))
    task = asyncio.create_task(keeper.renew_forever())
    try:
        await asyncio.wait_for(gone.wait() if until_lost else task, 2)
    finally:
        task.cancel()
    return lost


async def test_a_renewal_refused_for_good_ends_the_renewal_task() -> None:
    with pytest.raises(PermanentError, match="WRONGTYPE"):
        await _renewals(_Leases(PermanentError("redis renew_lease: WRONGTYPE")), until_lost=False)


async def test_a_transient_renewal_failure_loses_the_lease_only_after_the_ttl() -> None:
    leases = _Leases(*[TransientError("connection refused")] * 100)
    assert await _renewals(leases, until_lost=True) == ["lost"]
    assert len(leases.answers) < 100  # it kept trying meanwhile, and did not raise


async def test_a_lease_another_instance_holds_is_lost_not_fatal() -> None:
    for answer in (False, LeaseLost("taken")):
        assert await _renewals(_Leases(answer), until_lost=True) == ["lost"]
