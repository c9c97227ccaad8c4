"""Evidence costs (issue 23): CPU per GiB of the part digests (CRC64NVME beside SHA-256,
CRC32C and MD5), and ``cefmp4 verify``'s throughput against a plain boto3 download hashed
with hashlib, on one object in a local SeaweedFS.

    python -m bench.evidence [--gib 1]

Numbers depend on the machine (SHA-NI, PCLMULQDQ) and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import crc32c
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.support.seaweed import SeaweedS3

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


async def verify_throughput(gib: float) -> None:
    size = int(gib * GiB)
    with tempfile.TemporaryDirectory() as tmp, SeaweedS3(Path(tmp) / "weed") as server:
        client = server.boto_client()
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        key = "streams/bench/cam.mp4"
        sha = hashlib.sha256()
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for number in range(1, size // (64 * MiB) + 1):
            chunk = os.urandom(64 * MiB)
            sha.update(chunk)
            etag = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id,
                                      PartNumber=number, Body=chunk)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                         MultipartUpload={"Parts": parts})
        private = Ed25519PrivateKey.generate()
        doc = Signer(private).sign({
            "s3_bucket": bucket, "s3_key": key, "total_size_bytes": size,
            "sha256": sha.hexdigest(),
        })
        client.put_object(Bucket=bucket, Key=metadata_key(key), Body=json.dumps(doc).encode())

        start, cpu = time.perf_counter(), time.process_time()
        got = hashlib.sha256()
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in iter(lambda: body.read(MiB), b""):
            got.update(chunk)
        ref_s, ref_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert got.hexdigest() == sha.hexdigest()

        async with open_s3_store(bucket=bucket, endpoint_url=server.endpoint_url,
                                 access_key_id="test", secret_access_key="test",
                                 region="us-east-1") as store:
            start, cpu = time.perf_counter(), time.process_time()
            result = await verify_one(store, key, private.public_key())
            ver_s, ver_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert result.verdict == "ok", result
        mib = size / MiB
        print(f"one {mib:.0f} MiB object on a local SeaweedFS:")
        print(f"  boto3 get_object + hashlib.sha256   {mib / ref_s:7.1f} MiB/s "
              f"({ref_cpu / (size / GiB):.2f} s CPU/GiB in this process)")
        print(f"  cefmp4 verify (ranged, 2 digests)   {mib / ver_s:7.1f} MiB/s "
              f"({ver_cpu / (size / GiB):.2f} s CPU/GiB in this process)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.evidence")
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    hashing(args.gib)
    asyncio.run(verify_throughput(args.gib))


if __name__ == "__main__":
    main()
