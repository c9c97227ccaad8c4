"""``cefmp4 run`` raises its soft limit on open descriptors to the hard one (systemd and
Docker start services at 1024); a limit it cannot raise is logged, never fatal."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys

import pytest
from structlog.testing import capture_logs

from cefmp4.cli import main as cli

RAISE_AND_PRINT = (
    "import resource\n"
    "from cefmp4.cli.main import raise_nofile_limit\n"
    "raise_nofile_limit()\n"
    "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n"
)


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    prlimit = shutil.which("prlimit")
    assert prlimit is not None, "prlimit (util-linux) is needed"
    proc = subprocess.run(
        [prlimit, "--nofile=64:512", sys.executable, "-c", RAISE_AND_PRINT],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    *logged, limits = proc.stdout.splitlines()  # structlog unconfigured: its line to stdout
    assert limits.split() == ["512", "512"]
    assert "nofile_limit" in logged[0]


def test_a_limit_that_cannot_be_raised_is_logged_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(_which: int, _limits: tuple[int, int]) -> None:
        raise ValueError("not allowed to raise maximum limit")

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", refused)
    with capture_logs() as cap:
        cli.raise_nofile_limit()
    assert cap == [
        {"event": cli.NOFILE_LIMIT, "log_level": "warning", "soft": 1024, "hard": 4096,
         "error": "ValueError"}
    ]  # fmt: skip


def test_the_raise_is_logged_once_with_the_values(monkeypatch: pytest.MonkeyPatch) -> None:
    set_to: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _which, limits: set_to.append(limits))
    with capture_logs() as cap:
        cli.raise_nofile_limit()
    assert set_to == [(4096, 4096)]
    assert cap == [
        {"event": cli.NOFILE_LIMIT, "log_level": "info", "soft_was": 1024, "soft": 4096,
         "hard": 4096}
    ]  # fmt: skip
