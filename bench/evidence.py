"""Evidence costs (issue 23): CPU per GiB of the part digests (CRC64NVME beside SHA-256,
CRC32C and MD5), and ``cefmp4 verify``'s read of objects against two controls that read
and hash the same objects from the same server in the same run: boto3's ``get_object``
hashed with hashlib, and ``aws s3 cp s3://... - | sha256sum``.

    python -m bench.evidence [--sizes-mib 256,1024] [--runs 3] [--server weed,moto]

Each run reads every object with every reader, in a different order each run; the table
gives medians and each reader's median per-run ratio to boto3 + hashlib (the control:
the machine's load moves all of them together). CPU is the reader's (this process, or the
child processes for the command lines, which include their start-up) and the server's, in
CPU-seconds per GiB read. Numbers depend on the machine (SHA-NI, PCLMULQDQ) and on what
else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import crc32c
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tests.support.moto import MotoS3
from tests.support.seaweed import SeaweedS3

from bench.cli import find_aws
from bench.procs import proc_cpu_s
from bench.report import med
from cefmp4.cli.verify import verify_one
from cefmp4.core.hashing import crc64nvme
from cefmp4.core.keys import metadata_key
from cefmp4.core.signature import Signer
from cefmp4.storage.s3 import open_s3_store
from cefmp4.streams.source import digest_range

MiB = 1024 * 1024
GiB = 1024 * MiB


def cpu_per_gib(name: str, fn: Callable[[], object], gib: float) -> float:
    start = time.process_time()
    fn()
    cpu = time.process_time() - start
    print(f"  {name:<34} {cpu / gib:6.3f} s CPU/GiB")
    return cpu / gib


def hashing(gib: float) -> None:
    block = os.urandom(64 * MiB)
    reps = max(1, int(gib * GiB // len(block)))
    done = reps * len(block) / GiB
    print(f"digests over {done:.2f} GiB in 64 MiB blocks (in memory):")
    cpu_per_gib("CRC64NVME (awscrt)", lambda: [crc64nvme(block) for _ in range(reps)], done)
    cpu_per_gib("CRC32C (crc32c)", lambda: [crc32c.crc32c(block) for _ in range(reps)], done)
    cpu_per_gib("SHA-256 (hashlib)", lambda: [hashlib.sha256(block).digest()
                                              for _ in range(reps)], done)
    cpu_per_gib("MD5 (hashlib)", lambda: [hashlib.md5(block).digest() for _ in range(reps)], done)
    with tempfile.NamedTemporaryFile(dir=os.environ.get("TMPDIR")) as f:
        for _ in range(reps):
            f.write(block)
        f.flush()
        fd = f.fileno()
        size = reps * len(block)
        digest_range(fd, 0, size)  # into the page cache
        print(f"the part pass over a page-cached {done:.2f} GiB file (source.digest_range):")
        cpu_per_gib("CRC32C + CRC64NVME + SHA-256", lambda: digest_range(
            fd, 0, size, hashlib.sha256()), done)


PART = 64 * MiB
CONTROL = "boto3 + hashlib"
READERS = (CONTROL, "cefmp4 verify", "cefmp4 verify (CLI)", "aws s3 cp - to sha256sum")


class Objects:
    """Signed objects on one server, and each reader of them."""

    def __init__(self, server: Any, work: Path, aws: str) -> None:
        self.server = server
        self.work = work
        self.aws = aws
        self.s3 = server.boto_client()
        self.bucket = f"bench-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.private = Ed25519PrivateKey.generate()
        self.public_pem = work / "public.pem"
        self.public_pem.write_bytes(self.private.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        self.sha: dict[str, str] = {}
        # verify's store is opened once, as the boto3 client is: each read times the read.
        self.loop = asyncio.new_event_loop()
        self._close = AsyncExitStack()
        self.store = self.loop.run_until_complete(self._close.enter_async_context(
            open_s3_store(bucket=self.bucket, endpoint_url=server.endpoint_url,
                          access_key_id="test", secret_access_key="test",
                          region="us-east-1")))
        (work / "aws-config").write_text(
            "[default]\nregion = us-east-1\ns3 =\n  addressing_style = path\n")

    def put(self, size: int) -> str:
        """A random object of ``size`` bytes (64 MiB parts) and its signed metadata."""
        key = f"streams/bench/{size // MiB}mib.mp4"
        sha = hashlib.sha256()
        upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        parts = []
        for number, start in enumerate(range(0, size, PART), 1):
            chunk = os.urandom(min(PART, size - start))
            sha.update(chunk)
            etag = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                       PartNumber=number, Body=chunk)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id,
                                          MultipartUpload={"Parts": parts})
        doc = Signer(self.private).sign({
            "s3_bucket": self.bucket, "s3_key": key, "total_size_bytes": size,
            "sha256": sha.hexdigest(),
        })
        self.s3.put_object(Bucket=self.bucket, Key=metadata_key(key),
                           Body=json.dumps(doc).encode())
        self.sha[key] = sha.hexdigest()
        return key

    def read(self, reader: str, key: str) -> tuple[float, float]:
        """Wall seconds and reader CPU seconds of one read of ``key``, checked."""
        if reader == CONTROL:
            return _in_process(lambda: self._boto(key))
        if reader == "cefmp4 verify":
            return _in_process(lambda: self._verify(key))
        if reader == "cefmp4 verify (CLI)":
            return _children(lambda: self._verify_cli(key))
        return _children(lambda: self._aws(key))

    def _boto(self, key: str) -> None:
        got = hashlib.sha256()
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        for chunk in iter(lambda: body.read(MiB), b""):
            got.update(chunk)
        assert got.hexdigest() == self.sha[key], key

    def _verify(self, key: str) -> None:
        result = self.loop.run_until_complete(
            verify_one(self.store, key, self.private.public_key()))
        assert result.verdict == "ok", result

    def close(self) -> None:
        self.loop.run_until_complete(self._close.aclose())
        self.loop.close()

    def _verify_cli(self, key: str) -> None:
        env = self._env() | {
            "S3_ENDPOINT_URL": self.server.endpoint_url, "S3_ACCESS_KEY_ID": "test",
            "S3_SECRET_ACCESS_KEY": "test", "S3_REGION_NAME": "us-east-1",
            "S3_BUCKET_NAME": self.bucket, "S3_KEY_PREFIX": "streams/",
            "STATE_DIR": str(self.work / "state"), "LOG_FORMAT": "json",
        }
        out = subprocess.run(
            [sys.executable, "-m", "cefmp4", "verify", key, "--public-key", str(self.public_pem)],
            env=env, cwd=self.work, capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith("ok"), out.stdout

    def _aws(self, key: str) -> None:
        env = self._env() | {
            "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(self.work / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.work / "no-credentials"),
        }
        aws = subprocess.Popen(
            [self.aws, "--endpoint-url", self.server.endpoint_url, "s3", "cp",
             "--only-show-errors", f"s3://{self.bucket}/{key}", "-"],
            env=env, stdout=subprocess.PIPE)
        assert aws.stdout is not None
        sha = subprocess.run(["sha256sum"], stdin=aws.stdout, capture_output=True, text=True,
                             check=True)
        aws.stdout.close()
        assert aws.wait() == 0
        assert sha.stdout.split()[0] == self.sha[key], key

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}


def _in_process(fn: Callable[[], object]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _children(fn: Callable[[], object]) -> tuple[float, float]:
    def used() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    wall, cpu = time.perf_counter(), used()
    fn()
    return time.perf_counter() - wall, used() - cpu


def read_throughput(server_name: str, sizes: list[int], runs: int, aws: str) -> None:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        work = Path(tmp)
        server: Any = stack.enter_context(
            SeaweedS3(work / "weed") if server_name == "weed" else MotoS3(work / "moto.log"))
        objects = Objects(server, work, aws)
        stack.callback(objects.close)
        keys = {size: objects.put(size) for size in sizes}
        # {size: {reader: [(MiB/s, reader CPU-s/GiB, server CPU-s/GiB), ...]}}
        got: dict[int, dict[str, list[tuple[float, float, float]]]] = {}
        for run in range(runs):
            order = READERS[run % len(READERS):] + READERS[:run % len(READERS)]
            for size, key in keys.items():
                for reader in order:
                    server_cpu = proc_cpu_s(server.pid)
                    wall, cpu = objects.read(reader, key)
                    server_cpu = proc_cpu_s(server.pid) - server_cpu
                    gib = size / GiB
                    got.setdefault(size, {}).setdefault(reader, []).append(
                        (size / MiB / wall, cpu / gib, server_cpu / gib))
        name = {"weed": "SeaweedFS (weed mini)", "moto": "moto (server mode)"}[server_name]
        print(f"\nreading whole objects from {name}, {runs} runs; medians (min-max):")
        print("| object | reader | MiB/s | ratio to boto3 + hashlib | reader CPU-s/GiB "
              "| server CPU-s/GiB |")
        print("|---|---|---|---|---|---|")
        for size, readers in got.items():
            control = [m[0] for m in readers[CONTROL]]
            for reader in READERS:
                ms = readers[reader]
                speed = [m[0] for m in ms]
                ratios = [v / c for v, c in zip(speed, control, strict=True)]
                print(f"| {size // MiB} MiB | {reader} | {med(speed):.0f} "
                      f"({min(speed):.0f}-{max(speed):.0f}) | {med(ratios):.2f} "
                      f"({min(ratios):.2f}-{max(ratios):.2f}) | {med([m[1] for m in ms]):.2f} "
                      f"| {med([m[2] for m in ms]):.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.evidence")
    parser.add_argument("--gib", type=float, default=1.0, help="of in-memory digests")
    parser.add_argument("--sizes-mib", default="256,1024", help="objects read, comma list")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server", default="weed", help="weed, moto or weed,moto")
    parser.add_argument("--no-digests", action="store_true", help="only the read throughput")
    args = parser.parse_args()
    if not args.no_digests:
        hashing(args.gib)
    aws = find_aws()
    sizes = [int(v) * MiB for v in args.sizes_mib.split(",")]
    for server in args.server.split(","):
        read_throughput(server.strip(), sizes, args.runs, aws)


if __name__ == "__main__":
    main()
