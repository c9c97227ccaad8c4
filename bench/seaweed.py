"""A private SeaweedFS (``weed mini``) on free 127.0.0.1 ports, with one S3 identity.

Same approach as tests/support/seaweed.py (which imports pytest, so it is not reused):
every port weed opens is chosen here, and the admin gRPC port is HTTP port + 10000.
"""

from __future__ import annotations

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
from pathlib import Path

HOST = "127.0.0.1"
ACCESS_KEY = "benchkey"
SECRET_KEY = "benchsecret"

_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
)
_GRPC_OFFSET = 10000


def tool(name: str) -> str:
    """A binary next to this Python (the venv's bin), else on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found in the venv or on PATH")
    return found


def _free_ports(count: int) -> tuple[list[int], int]:
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket()
            sock.bind((HOST, 0))
            held.append(sock)
            ports.append(sock.getsockname()[1])
        for _ in range(200):
            sock = socket.socket()
            sock.bind((HOST, 0))
            held.append(sock)
            admin = sock.getsockname()[1]
            if admin + _GRPC_OFFSET > 65535:
                continue
            pair = socket.socket()
            try:
                pair.bind((HOST, admin + _GRPC_OFFSET))
            except OSError:
                pair.close()
                continue
            held.append(pair)
            return ports, admin
        raise RuntimeError("no free port pair for the SeaweedFS admin server")
    finally:
        for sock in held:
            sock.close()


class Seaweed:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        ports, admin = _free_ports(len(_PORT_FLAGS))
        self.ports = dict(zip(_PORT_FLAGS, ports, strict=True))
        self.ports["admin.port"] = admin
        self.ports["admin.port.grpc"] = admin + _GRPC_OFFSET
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    def start(self, timeout: float = 60) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "bench",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        args = [
            tool("weed"), "mini", f"-dir={self.data_dir / 'data'}", f"-ip={HOST}",
            f"-ip.bind={HOST}", "-admin.ui=false", "-webdav=false",
            "-master.telemetry=false", "-s3.port.https=0", f"-s3.config={config}",
            "-volume.max=20000",  # a bucket per run: do not run out of volume slots
        ] + [f"-{flag}={port}" for flag, port in self.ports.items()]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        with (self.data_dir / "weed.log").open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"SeaweedFS not ready after {timeout}s")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                return True
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except OSError:
            return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
