"""Telling a dead predecessor's lease from a live instance's (no servers needed)."""

from __future__ import annotations

import os
import subprocess
import sys

from cefmp4.lease import dead_predecessor, default_owner


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
