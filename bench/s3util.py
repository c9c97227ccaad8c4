"""Plain botocore helpers: buckets, sha256 of an object, metadata and part watchers."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.support.servers import boto_s3_client

from bench.seaweed import ACCESS_KEY, SECRET_KEY


def client(endpoint_url: str) -> Any:
    return boto_s3_client(
        endpoint_url, ACCESS_KEY, SECRET_KEY, attempts=3, max_pool_connections=4
    )


def sha256_of_object(s3: Any, bucket: str, key: str) -> str:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    sha = hashlib.sha256()
    for block in iter(lambda: body.read(8 << 20), b""):
        sha.update(block)
    return sha.hexdigest()


def delete_prefix(s3: Any, bucket: str, prefix: str = "") -> None:
    """Free the server's disk between runs (best effort)."""
    with contextlib.suppress(Exception):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])


def keys_ending(s3: Any, bucket: str, prefix: str, suffix: str) -> list[str]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
    return found


def wait_for_keys(
    s3: Any, bucket: str, prefix: str, suffixes: set[str], *, timeout: float,
    interval: float = 0.05,
) -> dict[str, float]:
    """Poll ListObjectsV2 until a key ends with each suffix: suffix -> monotonic time seen."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(suffixes) and time.monotonic() < deadline:
        now = time.monotonic()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                for suffix in suffixes - seen.keys():
                    if obj["Key"].endswith(suffix):
                        seen[suffix] = now
        time.sleep(interval)
    return seen


@dataclass
class Track:
    """One growing file: when each full part's last byte was written / first listed."""

    written: dict[int, float] = field(default_factory=dict)
    listed: dict[int, float] = field(default_factory=dict)
    key: str | None = None
    upload_id: str | None = None


class PartWatch:
    """Polls ListParts (only for files with a written-but-unlisted part) every ``interval``.

    ``mark(name, nbytes)`` is called by the writer after each write; a part's last byte is
    written when the file reaches ``n * part_size``. Lag = first listed - written; the
    polling interval bounds the measurement error (reported with the table).
    """

    def __init__(
        self, s3: Any, bucket: str, prefix: str, part_size: int, interval: float = 0.05
    ) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.part_size, self.interval = part_size, interval
        self.tracks: dict[str, Track] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="partwatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, settle: float = 5.0) -> None:
        """Keep polling up to ``settle`` s for parts still unlisted, then stop."""
        deadline = time.monotonic() + settle
        while self._pending() and time.monotonic() < deadline:
            time.sleep(self.interval)
        self._stop.set()
        self._thread.join()

    def mark(self, name: str, size: int) -> None:
        now = time.monotonic()
        with self._lock:
            track = self.tracks.setdefault(name, Track())
            for n in range(len(track.written) + 1, size // self.part_size + 1):
                track.written[n] = now

    def _pending(self) -> dict[str, Track]:
        with self._lock:
            return {
                name: t for name, t in self.tracks.items() if set(t.written) - set(t.listed)
            }

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self._poll()
            self._stop.wait(self.interval)

    def _poll(self) -> None:
        pending = self._pending()
        if any(t.upload_id is None for t in pending.values()):
            self._find_uploads(pending)
        for track in pending.values():
            if track.upload_id is None:
                continue
            now = time.monotonic()
            resp = self.s3.list_parts(Bucket=self.bucket, Key=track.key, UploadId=track.upload_id)
            with self._lock:
                for part in resp.get("Parts", []):
                    track.listed.setdefault(part["PartNumber"], now)

    def _find_uploads(self, pending: dict[str, Track]) -> None:
        resp = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix)
        for upload in resp.get("Uploads", []):
            for name, track in pending.items():
                if track.upload_id is None and upload["Key"].endswith("/" + name):
                    track.key, track.upload_id = upload["Key"], upload["UploadId"]

    def lags(self) -> list[float]:
        with self._lock:
            return [
                t.listed[n] - w
                for t in self.tracks.values()
                for n, w in t.written.items()
                if n in t.listed
            ]

    def missing(self) -> int:
        with self._lock:
            return sum(len(set(t.written) - set(t.listed)) for t in self.tracks.values())
