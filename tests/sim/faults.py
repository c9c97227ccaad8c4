"""Fault injection around the stores, and the crash gate of one process lifetime.

Every call first checks its ``Life``: once the simulated process has crashed, nothing it
still runs (a ``finally`` block, a cancelled retry) may reach S3 or the checkpoint store,
as nothing reaches them from a SIGKILLed process. Faults are drawn from the schedule's own
random stream, and stop once the plan is ``healed`` (the end of a schedule).
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from cefmp4.checkpoint import (
    CheckpointStore,
    CompletedFile,
    PartRecord,
    QuarantinedRecord,
    StreamRecord,
    StreamState,
)
from cefmp4.runtime.errors import ContentChanged, TransientError
from cefmp4.storage import (
    ListedObject,
    MultipartUpload,
    ObjectInfo,
    PartBody,
    PartCheck,
    UploadedPart,
)
from cefmp4.storage.memory import MemoryObjectStore

T = TypeVar("T")


class Fault(enum.Enum):
    ERROR = "5xx"  # the request fails before it does anything
    TIMEOUT = "timeout"  # no answer for a long while, then a transport error
    LOST = "lost"  # the request succeeded; the answer never arrived
    PURGE = "purge"  # the upload was purged (MinIO's stale-upload expiry) just before
    BAD_DIGEST = "bad_digest"  # the body was corrupted in transit
    SLOW = "slow"  # the body trickles


@dataclass
class FaultPlan:
    rng: random.Random
    s3_rates: dict[Fault, float] = field(default_factory=dict)
    store_rates: dict[Fault, float] = field(default_factory=dict)
    s3_latency: float = 0.02
    store_latency: float = 0.001
    timeout_s: float = 20.0
    slow_block_s: float = 0.05
    healed: bool = False
    drawn: list[str] = field(default_factory=list)  # what was injected, for the report

    def draw(self, rates: dict[Fault, float], op: str, allowed: frozenset[Fault]) -> Fault | None:
        if self.healed:
            return None
        roll = self.rng.random()
        for fault, rate in rates.items():
            if fault in allowed:
                if roll < rate:
                    self.drawn.append(f"{op}:{fault.value}")
                    return fault
                roll -= rate
        return None

    def latency(self, base: float) -> float:
        return base * (0.5 + self.rng.random())


class Life:
    """One process lifetime; ``crash()`` makes every later store call die with it."""

    def __init__(self) -> None:
        self.alive = True

    def check(self) -> None:
        if not self.alive:
            raise asyncio.CancelledError("the process has crashed")


_PLAIN = frozenset({Fault.ERROR, Fault.TIMEOUT, Fault.LOST})
_READ = frozenset({Fault.ERROR, Fault.TIMEOUT})
_UPLOAD = frozenset({Fault.ERROR, Fault.TIMEOUT, Fault.LOST, Fault.PURGE})
_BODY = frozenset({Fault.BAD_DIGEST, Fault.SLOW})


class FaultyObjectStore:
    """An ObjectStore over the shared MemoryObjectStore, seen from one process lifetime."""

    def __init__(self, inner: MemoryObjectStore, plan: FaultPlan, life: Life) -> None:
        self.inner = inner
        self.plan = plan
        self.life = life
        self.bucket = inner.bucket
        self.slow: dict[tuple[str, int], float] = {}  # (key, part) -> seconds per block
        self.on_purge: Callable[[str], None] | None = None
        self.on_done: Callable[[str], None] | None = None  # "s3:<op>": S3 carried it out
        # For the invariants of the other party (issue #25): the request ``op`` with its
        # arguments just before S3 carries it out, and just after (with its result).
        self.on_carry: Callable[[str, tuple[Any, ...]], None] | None = None
        self.on_carried: Callable[[str, tuple[Any, ...], object], None] | None = None

    async def _call(
        self,
        op: str,
        fn: Callable[[], Awaitable[T]],
        allowed: frozenset[Fault],
        upload_id: str | None = None,
        args: tuple[Any, ...] = (),
    ) -> T:
        plan = self.plan
        self.life.check()
        await asyncio.sleep(plan.latency(plan.s3_latency))
        self.life.check()
        fault = plan.draw(plan.s3_rates, op, allowed)
        if fault is Fault.ERROR:
            raise TransientError(f"{op} failed: 503 (ServiceUnavailable, simulated)")
        if fault is Fault.TIMEOUT:
            await asyncio.sleep(plan.timeout_s)
            raise TransientError(f"{op} failed: ReadTimeoutError (simulated)")
        purged = fault is Fault.PURGE and upload_id is not None
        if purged and self.inner.expire_upload(upload_id or "") and self.on_purge is not None:
            self.on_purge(upload_id or "")
        if self.on_carry is not None:
            self.on_carry(op, args)
        result = await fn()
        if self.on_carried is not None:
            self.on_carried(op, args, result)
        self.life.check()
        if self.on_done is not None:
            self.on_done(f"s3:{op}")
        if fault is Fault.LOST:
            raise TransientError(f"{op} failed: ConnectionClosedError after sending (simulated)")
        return result

    async def ping(self) -> None:
        await self._call("ping", self.inner.ping, _READ)

    async def ensure_bucket(self) -> None:
        await self._call("ensure_bucket", self.inner.ensure_bucket, _READ)

    async def create_multipart(self, key: str, content_type: str) -> str:
        return await self._call(
            "create_multipart", lambda: self.inner.create_multipart(key, content_type), _PLAIN,
            args=(key,),
        )

    async def part_checksum(self) -> PartCheck:
        return await self.inner.part_checksum()

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: PartBody,
        md5_b64: str = "", *, crc32c_b64: str = "", crc64nvme_b64: str = "",
    ) -> str:
        plan = self.plan
        self.life.check()
        fault = plan.draw(plan.s3_rates, "upload_part_body", _BODY)
        if fault is Fault.BAD_DIGEST:
            await asyncio.sleep(plan.latency(plan.s3_latency))
            raise ContentChanged("UploadPart failed: BadDigest (simulated corruption)")
        if fault is Fault.SLOW:
            self.slow[(key, part_number)] = plan.slow_block_s
        try:
            return await self._call(
                "upload_part",
                lambda: self.inner.upload_part(
                    key, upload_id, part_number, body, md5_b64, crc32c_b64=crc32c_b64,
                    crc64nvme_b64=crc64nvme_b64,
                ),
                _UPLOAD,
                upload_id,
                args=(key, upload_id, part_number),
            )
        finally:
            self.slow.pop((key, part_number), None)

    async def body_pause(self, key: str, part_number: int, sent: int) -> None:
        delay = self.slow.get((key, part_number))
        await asyncio.sleep(delay if delay is not None else 0)

    async def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        return await self._call(
            "list_parts", lambda: self.inner.list_parts(key, upload_id), _UPLOAD, upload_id
        )

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]], *, crc64nvme_b64: str = ""
    ) -> str:
        return await self._call(
            "complete_multipart",
            lambda: self.inner.complete_multipart(
                key, upload_id, parts, crc64nvme_b64=crc64nvme_b64
            ),
            _PLAIN,
            args=(key, upload_id, tuple(parts)),
        )

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._call(
            "abort_multipart", lambda: self.inner.abort_multipart(key, upload_id), _PLAIN,
            args=(key, upload_id),
        )

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        return await self._call(
            "list_multipart_uploads", lambda: self.inner.list_multipart_uploads(prefix), _READ
        )

    async def head_object(self, key: str) -> ObjectInfo | None:
        return await self._call("head_object", lambda: self.inner.head_object(key), _READ)

    async def list_keys(self, prefix: str) -> list[str]:
        return await self._call("list_keys", lambda: self.inner.list_keys(prefix), _READ)

    async def put_object(self, key: str, body: bytes, content_type: str) -> None:
        await self._call(
            "put_object", lambda: self.inner.put_object(key, body, content_type), _PLAIN,
            args=(key, body),
        )

    async def get_object(self, key: str) -> bytes:
        return await self._call("get_object", lambda: self.inner.get_object(key), _READ)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        return await self._call(
            "get_range", lambda: self.inner.get_range(key, start, end), _READ
        )

    async def list_objects(self, prefix: str) -> list[ListedObject]:
        return await self._call("list_objects", lambda: self.inner.list_objects(prefix), _READ)

    async def delete_object(self, key: str) -> None:
        await self._call("delete_object", lambda: self.inner.delete_object(key), _PLAIN,
                         args=(key,))

    async def presign_get(self, key: str, expires_s: int) -> str | None:
        return await self.inner.presign_get(key, expires_s)  # no request: nothing to fail


@dataclass
class Shadow:
    """What the checkpoint store durably holds, kept beside it for the invariants."""

    streams: dict[str, StreamRecord] = field(default_factory=dict)
    parts: dict[str, dict[int, PartRecord]] = field(default_factory=dict)
    upload_ids: dict[str, set[str]] = field(default_factory=dict)  # every one a stream had
    on_put: Callable[[StreamRecord], None] | None = None  # each stream record stored

    def unfinished_of(self, inode: int) -> list[tuple[StreamRecord, list[PartRecord]]]:
        return [
            (rec, [p for _, p in sorted(self.parts.get(sid, {}).items())])
            for sid, rec in self.streams.items()
            if rec.inode == inode and rec.state in (StreamState.ACTIVE, StreamState.FINALIZING)
        ]


class FaultyCheckpointStore:
    """A CheckpointStore over the real SQLite store, seen from one process lifetime."""

    def __init__(
        self, inner: CheckpointStore, plan: FaultPlan, life: Life, shadow: Shadow
    ) -> None:
        self.inner = inner
        self.plan = plan
        self.life = life
        self.shadow = shadow

    async def _call(
        self, op: str, fn: Callable[[], Awaitable[T]], then: Callable[[], None] | None = None
    ) -> T:
        plan = self.plan
        self.life.check()
        await asyncio.sleep(plan.latency(plan.store_latency))
        self.life.check()
        fault = plan.draw(plan.store_rates, op, _PLAIN)
        if fault is Fault.ERROR:
            raise TransientError(f"checkpoint {op} failed: connection refused (simulated)")
        if fault is Fault.TIMEOUT:
            await asyncio.sleep(plan.timeout_s)
            raise TransientError(f"checkpoint {op} failed: timed out (simulated)")
        result = await fn()
        if then is not None:
            then()
        self.life.check()
        if fault is Fault.LOST:
            raise TransientError(f"checkpoint {op} failed: connection lost (simulated)")
        return result

    async def ping(self) -> None:
        await self._call("ping", self.inner.ping)

    async def put_stream(self, record: StreamRecord) -> None:
        snapshot = replace(record)  # the caller may mutate its record later

        def then() -> None:
            self.shadow.streams[record.stream_id] = snapshot
            if self.shadow.on_put is not None:
                self.shadow.on_put(snapshot)
            if snapshot.upload_id is not None:
                self.shadow.upload_ids.setdefault(snapshot.stream_id, set()).add(
                    snapshot.upload_id
                )

        await self._call("put_stream", lambda: self.inner.put_stream(record), then)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        return await self._call("get_stream", lambda: self.inner.get_stream(stream_id))

    async def list_streams(
        self, states: frozenset[StreamState] | None = None
    ) -> list[StreamRecord]:
        return await self._call("list_streams", lambda: self.inner.list_streams(states))

    async def list_quarantined(self) -> list[QuarantinedRecord]:
        return await self._call("list_quarantined", self.inner.list_quarantined)

    async def naming_uploads(
        self, upload_ids: frozenset[str]
    ) -> list[StreamRecord | QuarantinedRecord]:
        return await self._call("naming_uploads", lambda: self.inner.naming_uploads(upload_ids))

    async def completed_files(
        self, cursor: str = "", limit: int = 5000
    ) -> tuple[list[CompletedFile], str]:
        return await self._call(
            "completed_files", lambda: self.inner.completed_files(cursor, limit)
        )

    async def find_by_inode(self, inode: int) -> list[StreamRecord]:
        return await self._call("find_by_inode", lambda: self.inner.find_by_inode(inode))

    async def put_part(self, stream_id: str, part: PartRecord) -> None:
        def then() -> None:
            self.shadow.parts.setdefault(stream_id, {})[part.part_number] = part

        await self._call("put_part", lambda: self.inner.put_part(stream_id, part), then)

    async def get_parts(self, stream_id: str) -> list[PartRecord]:
        return await self._call("get_parts", lambda: self.inner.get_parts(stream_id))

    async def delete_parts(self, stream_id: str) -> None:
        def then() -> None:
            self.shadow.parts.pop(stream_id, None)

        await self._call("delete_parts", lambda: self.inner.delete_parts(stream_id), then)

    async def delete_stream(self, stream_id: str) -> None:
        def then() -> None:
            self.shadow.parts.pop(stream_id, None)
            self.shadow.streams.pop(stream_id, None)

        await self._call("delete_stream", lambda: self.inner.delete_stream(stream_id), then)

    async def aclose(self) -> None:
        await self.inner.aclose()
