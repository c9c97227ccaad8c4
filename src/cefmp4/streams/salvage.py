"""Salvage (SPEC §2.19), the shell: observe the uploads under the prefix, let
``core.salvage`` decide, carry it out. Used by the orphan sweeper, by ``cefmp4 salvage``
and by a live instance for a dead one's stream.

Carrying out a completion never reads a local file and survives a crash at every step:

1. A marker ``{prefix}.cefmp4/salvage/<id>.json`` records the plan (key, upload id, the
   parts used and the ETag the object will have) before anything changes.
2. CompleteMultipartUpload with the contiguous parts (S3 drops the rest).
3. HeadObject confirms size and ETag.
4. The object is read back in bounded ranges: its SHA-256 and each part's CRC32C.
5. ffprobe reads the object through a presigned URL (a regular MP4 whose ``moov`` was still
   to be written does not play; a fragmented MP4, ``.ts`` or ``.mkv`` does: ``playable``).
6. The metadata (``status: salvaged``, ``completed_by: salvage``) beside the object.
7. The marker is deleted.

A run first finishes what the markers of interrupted runs name: an upload completed before
a crash is no longer listed, and only its marker says that its metadata is missing.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any, Protocol

import crc32c
import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.core import salvage as decide
from cefmp4.core.containers import content_type
from cefmp4.core.ending import CompletedBy, Status
from cefmp4.core.hashing import (
    CRC32C_PREFIX,
    crc64_b64,
    crc64nvme,
    multipart_etag,
    normalize_etag,
)
from cefmp4.core.keys import (
    KeyTemplate,
    metadata_key,
    new_stream_id,
    parse_key,
    segment_prefix,
    stream_id_in,
    within_prefix,
)
from cefmp4.core.metadata import ProbeResult, build_metadata, to_json_bytes
from cefmp4.core.tail import Segment, parse_segment, tail_prefix
from cefmp4.runtime import logs
from cefmp4.runtime.errors import PermanentError, UploadNotFound
from cefmp4.storage import (
    ListedObject,
    MultipartUpload,
    ObjectInfo,
    PartBody,
    PartCheck,
    UploadedPart,
)

log = structlog.get_logger("cefmp4.streams.salvage")

READ_BLOCK = 8 * 1024 * 1024  # bytes per ranged GET: memory stays bounded at any part size
PRESIGN_S = 3600


class SalvageStore(Protocol):
    """What salvage needs of the object store (``S3ObjectStore``, ``MemoryObjectStore``)."""

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]: ...
    async def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]: ...
    async def head_object(self, key: str) -> ObjectInfo | None: ...
    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str: ...
    async def abort_multipart(self, key: str, upload_id: str) -> None: ...
    async def put_object(self, key: str, body: bytes, content_type: str) -> None: ...
    async def get_object(self, key: str) -> bytes: ...
    async def get_range(self, key: str, start: int, end: int) -> bytes: ...
    async def list_keys(self, prefix: str) -> list[str]: ...
    async def list_objects(self, prefix: str) -> list[ListedObject]: ...
    async def delete_object(self, key: str) -> None: ...
    async def part_checksum(self) -> PartCheck: ...
    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: PartBody, md5_b64: str = "",
        *, crc32c_b64: str = "", crc64nvme_b64: str = "") -> str: ...
    async def presign_get(self, key: str, expires_s: int) -> str | None: ...


class UrlProber(Protocol):
    async def probe_url(self, url: str, name: str) -> ProbeResult: ...


@dataclass(frozen=True, slots=True)
class Known:
    """What a checkpoint store says of an upload it names."""

    stream_id: str
    path: str | None
    rel_path: str | None
    started_at: float | None
    owner_gone: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """One upload considered: one line of ``cefmp4 salvage``, one item of ``--json``."""

    key: str
    upload_id: str
    parts: int
    bytes: int
    action: str  # what was done, or would be (dry run): core.salvage.Action or "resumed"
    detail: str
    done: bool  # carried out (False: a dry run, or nothing to do)
    playable: bool | None = None
    ok: bool = True  # False: left open for the operator (BLOCKED, UNUSABLE, an error)

    def line(self) -> str:
        size = f"{self.bytes / 2**20:.1f} MiB"
        verb = self.action if self.done or self.action.startswith("skip") else (
            f"would {self.action}")
        play = "" if self.playable is None else (
            "; plays" if self.playable else "; does not play (no index: a regular MP4 cut off)")
        return f"{self.key}  upload {self.upload_id[:16]}  {self.parts} parts  {size}  " \
               f"{verb}: {self.detail}{play}"


Retry = Callable[[str, Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def _once(_operation: str, op: Callable[[], Awaitable[Any]]) -> Any:
    return await op()


class Documents(Protocol):
    """What reading a small document needs of the object store."""

    async def head_object(self, key: str) -> ObjectInfo | None: ...
    async def get_object(self, key: str) -> bytes: ...


class DocumentTooLarge(PermanentError):
    """An object at a document's key larger than any document cefmp4 writes: not read."""


async def read_document(objects: Documents, retry: Retry, key: str) -> bytes | None:
    """The small JSON document cefmp4 keeps at ``key`` (a metadata document, a salvage
    marker), or None when there is none (or it went between HEAD and GET). Input, not
    truth: one larger than cefmp4 ever writes (``core.salvage.MAX_DOCUMENT_BYTES``) is
    never read whole (``DocumentTooLarge``), so a hostile object there cannot fill memory.
    The HEAD's own errors are the caller's, as any request's."""
    info = await retry("head", functools.partial(objects.head_object, key))
    if info is None:
        return None
    if info.size > decide.MAX_DOCUMENT_BYTES:
        raise DocumentTooLarge(f"{key} is {info.size} bytes, more than any document cefmp4 "
                               f"writes ({decide.MAX_DOCUMENT_BYTES})")
    try:
        raw: bytes = await retry("get", functools.partial(objects.get_object, key))
    except PermanentError:
        return None  # gone between the two requests: nobody's document
    return raw


class Salvager:
    """Salvage under one prefix. ``retry`` wraps each store call (the daemon's retries
    transient errors without limit; the command's tries once and reports)."""

    def __init__(
        self,
        objects: SalvageStore,
        prefix: str,
        *,
        prober: UrlProber | None,
        clock: Callable[[], float],
        retry: Retry = _once,
        salvaged: Callable[[], None] = lambda: None,
        instance: str = "",
        template: KeyTemplate | None = None,
        seal: Callable[[dict[str, object]], dict[str, object]] = lambda doc: doc,
    ) -> None:
        self.objects = objects
        self.prefix = prefix
        self.prober = prober
        self.clock = clock
        self.retry = retry
        self.salvaged = salvaged
        self.instance = instance
        self.template = template  # S3_KEY_TEMPLATE: where the stream id is in a key
        self.seal = seal  # SIGNING_KEY_FILE: signs the document last, as finalize's

    @property
    def marker_prefix(self) -> str:
        return decide.marker_prefix(self.prefix)

    def marker_key(self, upload_id: str) -> str:
        return decide.marker_key(self.prefix, upload_id)

    # --- observe and decide --------------------------------------------------------------

    async def survey(
        self, uploads: Sequence[MultipartUpload], known: dict[str, Known], *,
        older_than: float,
    ) -> list[decide.Plan]:
        """A plan for each upload (the store calls: ListParts and HeadObject each)."""
        plans = []
        now = self.clock()
        for up in uploads:
            info = known.get(up.upload_id)
            upload = decide.Upload(up.key, up.upload_id, up.initiated.timestamp(), (),
                                   known=info is not None,
                                   owner_gone=info is not None and info.owner_gone)
            if (upload.known and not upload.owner_gone) or (
                    now - upload.initiated_at < older_than):
                # Owned, or begun within the age limit: nothing else can change the answer.
                plans.append(decide.plan(upload, now=now, older_than=older_than,
                                         object_exists=False))
                continue
            try:
                listed = await self.retry("list_parts", functools.partial(
                    self.objects.list_parts, up.key, up.upload_id))
            except UploadNotFound:
                continue  # completed or aborted since it was listed
            upload = replace(upload, parts=tuple(
                decide.Part(p.part_number, p.size, p.etag,
                            p.modified.timestamp() if p.modified else None) for p in listed),
                tail=await self._segments(up.key))
            first = decide.plan(upload, now=now, older_than=older_than, object_exists=False)
            if first.action is decide.Action.COMPLETE:
                head = await self.retry("head", functools.partial(
                    self.objects.head_object, up.key))
                first = decide.plan(upload, now=now, older_than=older_than,
                                    object_exists=head is not None)
            plans.append(first)
        # One object per key: when a stream left several uploads (a CreateMultipartUpload
        # answer lost, a restart), the one holding the most bytes is carried out first; the
        # others are then blocked by its object (surveyed again before acting) and stay open.
        return sorted(plans, key=lambda p: (p.upload.key, -p.bytes))

    async def _segments(self, key: str) -> tuple[Segment, ...]:
        """The tail segments of the stream whose video ``key`` is (RPO_SECONDS, §2.20)."""
        stream_id = stream_id_in(self.prefix, key, self.template)
        if stream_id is None:
            return ()
        listed = await self.retry("list_tail", functools.partial(
            self.objects.list_objects, tail_prefix(self.prefix, stream_id)))
        found = (parse_segment(self.prefix, stream_id, o.key, o.size,
                               o.modified.timestamp() if o.modified else None) for o in listed)
        return tuple(s for s in found if s is not None)

    async def _delete_segments(self, key: str) -> None:
        stream_id = stream_id_in(self.prefix, key, self.template)
        if stream_id is None:
            return
        head = tail_prefix(self.prefix, stream_id)
        for segment in await self.retry("list_tail", functools.partial(
                self.objects.list_keys, head)):
            await self.retry("delete_tail", functools.partial(
                self.objects.delete_object, segment))

    async def _upload_tail(self, plan: decide.Plan) -> tuple[int, int, str, float | None]:
        """The tail segments' bytes after the parts, uploaded as the last part."""
        up = plan.upload
        chunks = []
        for piece in plan.tail:
            seg = piece.segment
            chunks.append(await self.retry("get_range", functools.partial(
                self.objects.get_range, seg.key, piece.start - seg.start,
                piece.end - seg.start)))
        body = b"".join(chunks)
        if len(body) != plan.tail_bytes:
            raise PermanentError(f"tail segments of {up.key} gave {len(body)} bytes, "
                                 f"expected {plan.tail_bytes}")
        number = len(plan.used) + 1
        md5 = hashlib.md5(body, usedforsecurity=False)
        crc = crc32c.crc32c(body).to_bytes(4, "big")
        etag = await self.retry("upload_part", lambda: self.objects.upload_part(
            up.key, up.upload_id, number, body, base64.b64encode(md5.digest()).decode(),
            crc32c_b64=base64.b64encode(crc).decode(),
            crc64nvme_b64=crc64_b64(crc64nvme(body))))
        return number, len(body), etag, self.clock()

    # --- carry out -----------------------------------------------------------------------

    async def carry_out(self, plan: decide.Plan, known: Known | None, *,
                        dry_run: bool = False) -> Outcome:
        actionable = (decide.Action.COMPLETE, decide.Action.ABORT_EMPTY)
        if not dry_run and plan.action in actionable:
            # Surveyed again just before acting: a plan carried out late (a retried request,
            # a slow step before it) must not abort or complete an upload its owner added
            # to since, nor complete one over an object another upload of the key became.
            # What the fresh survey says is acted on: it is as fresh as any.
            fresh = await self._survey_again(plan, known)
            if fresh is None:
                up = plan.upload
                return Outcome(up.key, up.upload_id, len(plan.used), plan.bytes, "gone",
                               "completed or aborted by someone else since the survey",
                               done=False)
            if not plan.same_as(fresh):
                log.info("salvage_replanned", key=plan.upload.key,
                         upload_id=plan.upload.upload_id, was=str(plan.action),
                         now=str(fresh.action))
                plan = fresh
        up = plan.upload
        base = Outcome(up.key, up.upload_id, len(plan.used), plan.bytes, str(plan.action),
                       plan.reason, done=False,
                       ok=plan.action not in (decide.Action.BLOCKED, decide.Action.UNUSABLE))
        if dry_run or plan.action not in actionable:
            if plan.action in (decide.Action.BLOCKED, decide.Action.UNUSABLE):
                log.warning("salvage_blocked", key=up.key, upload_id=up.upload_id,
                            reason=plan.reason)
            return base
        if plan.action is decide.Action.ABORT_EMPTY:
            with contextlib.suppress(UploadNotFound):
                await self.retry("abort", lambda: self.objects.abort_multipart(
                    up.key, up.upload_id))
            log.info(logs.ORPHAN_ABORTED, key=up.key, upload_id=up.upload_id, reason=plan.reason)
            return replace(base, done=True)
        tail = [await self._upload_tail(plan)] if plan.tail else []
        marker = _Marker.of(plan, known, started_at=self.clock(), instance=self.instance,
                            tail=tail)
        await self.retry("put_object", lambda: self.objects.put_object(
            self.marker_key(up.upload_id), marker.to_json(), "application/json"))
        # UploadNotFound: completed by an earlier attempt, or taken by someone: HEAD tells.
        with contextlib.suppress(UploadNotFound):
            await self.retry("complete", lambda: self.objects.complete_multipart(
                up.key, up.upload_id, [(n, etag) for n, _size, etag, _at in marker.parts]))
        return await self._publish(marker, base)

    async def _survey_again(self, plan: decide.Plan, known: Known | None) -> decide.Plan | None:
        """The plan a survey of the upload makes now (None: S3 no longer lists it)."""
        up = plan.upload
        listed = MultipartUpload(up.key, up.upload_id,
                                 datetime.fromtimestamp(up.initiated_at, UTC))
        fresh = await self.survey([listed], {} if known is None else {up.upload_id: known},
                                  older_than=plan.older_than)
        return fresh[0] if fresh else None

    async def resume_interrupted(self, *, dry_run: bool = False) -> list[Outcome]:
        """Finish the salvages a crash interrupted (their markers remain)."""
        outcomes = []
        keys = await self.retry("list_keys", lambda: self.objects.list_keys(self.marker_prefix))
        for key in keys:
            try:
                raw = await read_document(self.objects, self.retry, key)
                if raw is None:
                    continue  # deleted since it was listed: done meanwhile
                marker = _Marker.from_json(raw)
                if not within_prefix(self.prefix, marker.key) or not marker.parts:
                    raise ValueError("it names no upload under the prefix")
            except (PermanentError, ValueError, TypeError, KeyError, RecursionError) as exc:
                # Input, not truth (§2.18): never acted on, kept for the operator. (A JSON
                # nested past the interpreter's depth raises RecursionError.)
                log.warning("salvage_marker_unreadable", marker=key, error=str(exc))
                continue
            base = Outcome(marker.key, marker.upload_id, len(marker.parts),
                           sum(p[1] for p in marker.parts), "resumed",
                           "an interrupted salvage: metadata written now", done=False)
            if dry_run:
                outcomes.append(base)
                continue
            outcomes.append(await self._publish(marker, base))
        return outcomes

    async def _publish(self, marker: _Marker, base: Outcome) -> Outcome:
        """Steps 3-7 for a completed upload (or one whose completion cannot be proven: then
        the marker stays, and the next run looks again)."""
        key = marker.key
        info = await self.retry("head", lambda: self.objects.head_object(key))
        size = sum(p[1] for p in marker.parts)
        etag = None if info is None else normalize_etag(info.etag)
        if info is None or info.size != size or ("-" in (etag or "") and etag != marker.etag):
            if await self._still_open(marker):
                return replace(base, action="retry", ok=False,
                               detail="the upload is still open: Complete did not take")
            # Not ours: someone else completed or aborted it. Nothing of ours to publish.
            await self.retry("delete", lambda: self.objects.delete_object(
                self.marker_key(marker.upload_id)))
            return replace(base, action="gone", ok=False,
                           detail="the upload was finished or aborted by someone else")
        if decide.published_by_owner(await self._metadata_there(key)):
            await self.retry("delete", lambda: self.objects.delete_object(
                self.marker_key(marker.upload_id)))
            return replace(base, action="gone", ok=False,
                           detail="its owner completed the same parts and published them")
        sha, crcs = await self._read_back(key, marker.parts)
        probe = await self._probe(key)
        doc = self.seal(self._metadata(marker, sha, crcs, probe))
        await self.retry("put_object", lambda: self.objects.put_object(
            metadata_key(key), to_json_bytes(doc), "application/json"))
        await self._delete_segments(key)  # the object holds every byte they did
        await self.retry("delete", lambda: self.objects.delete_object(
            self.marker_key(marker.upload_id)))
        self.salvaged()
        playable = probe.duration_seconds is not None
        log.warning("stream_salvaged", key=key, upload_id=marker.upload_id,
                    parts=len(marker.parts), bytes=size, playable=playable,
                    duration_s=probe.duration_seconds)
        return replace(base, done=True, playable=playable)

    async def _metadata_there(self, key: str) -> bytes | None:
        try:
            return await read_document(self.objects, self.retry, metadata_key(key))
        except DocumentTooLarge:
            return None  # not a document cefmp4 writes: it proves nothing

    async def _still_open(self, marker: _Marker) -> bool:
        try:
            await self.retry("list_parts", lambda: self.objects.list_parts(
                marker.key, marker.upload_id))
        except UploadNotFound:
            return False
        return True

    async def _read_back(
        self, key: str, parts: Sequence[tuple[int, int, str, float | None]]
    ) -> tuple[str, list[str]]:
        """SHA-256 of the object and the CRC32C of each part, in bounded ranged reads."""
        sha = hashlib.sha256()
        crcs: list[str] = []
        offset = 0
        for _number, size, _etag, _at in parts:
            crc = 0
            end = offset + size
            while offset < end:
                stop = min(end, offset + READ_BLOCK)
                block = await self.retry("get_range", functools.partial(
                    self.objects.get_range, key, offset, stop))
                if len(block) != stop - offset:
                    raise PermanentError(f"GetObject of {key} returned {len(block)} bytes, "
                                         f"expected {stop - offset}")
                sha.update(block)
                crc = crc32c.crc32c(block, crc)
                offset = stop
            crcs.append(f"{CRC32C_PREFIX}{crc:08x}")
        return sha.hexdigest(), crcs

    async def _probe(self, key: str) -> ProbeResult:
        if self.prober is None:
            return ProbeResult(None, error="not probed: no ffprobe here")
        url = await self.retry("presign", lambda: self.objects.presign_get(key, PRESIGN_S))
        if url is None:
            return ProbeResult(None, error="not probed: the store gives no URL")
        return await self.prober.probe_url(url, key)

    def _metadata(self, marker: _Marker, sha: str, crcs: list[str],
                  probe: ProbeResult) -> dict[str, object]:
        now = self.clock()
        parsed = parse_key(self.prefix, marker.key, self.template)
        stream_id = (marker.stream_id or stream_id_in(self.prefix, marker.key, self.template)
                     or new_stream_id())
        rel = marker.rel_path or (parsed[1] if parsed else _below(self.prefix, marker.key))
        size = sum(p[1] for p in marker.parts)
        record = StreamRecord(
            stream_id=stream_id, path=marker.path or "", rel_path=rel, device=0, inode=0,
            bucket=getattr(self.objects, "bucket", ""), key=marker.key,
            part_size=marker.parts[0][1] if marker.parts else 0, max_parts=10_000,
            state=StreamState.COMPLETED, started_at=marker.started_stream_at,
            last_activity_at=now, upload_id=marker.upload_id, status=Status.SALVAGED.value,
            completed_at=marker.started_at, final_size=size, sha256=sha,
            completed_by=CompletedBy.SALVAGE.value,
        )
        records, offset = [], 0
        for (number, part_size, etag, at), crc in zip(marker.parts, crcs, strict=True):
            records.append(PartRecord(number, offset, part_size, etag, crc,
                                      at if at is not None else marker.initiated_at))
            offset += part_size
        doc = build_metadata(
            record=record, parts=records, probe=probe, status=Status.SALVAGED.value,
            processed_at=now,
            extra={
                "completed_by": CompletedBy.SALVAGE.value,
                "salvage": {
                    "upload_id": marker.upload_id,
                    "parts_used": len(marker.parts),
                    "parts_left_out": marker.left_out,
                    "gap_after_part": marker.parts[-1][0] if marker.left_out else None,
                    "tail_bytes": marker.tail_bytes,
                    "playable": probe.duration_seconds is not None,
                    "by": marker.instance or None,
                },
            },
        )
        doc["original_file_path"] = marker.path  # null when nothing recorded it
        doc["content_type"] = content_type(rel)
        return doc


def _below(prefix: str, key: str) -> str:
    head = segment_prefix(prefix)
    return key[len(head):] if key.startswith(head) else PurePosixPath(key).name


@dataclass(frozen=True, slots=True)
class _Marker:
    key: str
    upload_id: str
    etag: str
    parts: list[tuple[int, int, str, float | None]]
    left_out: list[int]
    initiated_at: float
    started_at: float  # when salvage began: the metadata's completion time
    started_stream_at: float
    stream_id: str | None
    path: str | None
    rel_path: str | None
    instance: str
    tail_bytes: int = 0  # of the last part: bytes from tail segments (RPO_SECONDS)

    @classmethod
    def of(cls, plan: decide.Plan, known: Known | None, *, started_at: float,
           instance: str, tail: list[tuple[int, int, str, float | None]]) -> _Marker:
        up = plan.upload
        parts = [(p.number, p.size, p.etag, p.added_at) for p in plan.used] + tail
        return cls(
            key=up.key, upload_id=up.upload_id,
            etag=multipart_etag([etag for _n, _s, etag, _a in parts]),
            parts=parts, tail_bytes=sum(size for _n, size, _e, _a in tail),
            left_out=[p.number for p in plan.ignored], initiated_at=up.initiated_at,
            started_at=started_at,
            started_stream_at=(known.started_at if known and known.started_at
                               else up.initiated_at),
            stream_id=known.stream_id if known else None, path=known.path if known else None,
            rel_path=known.rel_path if known else None, instance=instance,
        )

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> _Marker:
        """A marker read back. It is input, not truth: ``ValueError`` for one that is not
        what cefmp4 writes (a field of another type would fail later, outside the check)."""
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        parts = data.get("parts")
        if not isinstance(parts, list) or not all(map(_is_marker_part, parts)):
            raise ValueError("its parts are not [number, size, etag, time] lists")
        texts = [data.get(k) for k in ("key", "upload_id", "etag", "instance")]
        maybe = [data.get(k) for k in ("stream_id", "path", "rel_path")]
        times = [data.get(k) for k in ("initiated_at", "started_at", "started_stream_at")]
        left_out, tail = data.get("left_out"), data.get("tail_bytes", 0)
        if (not all(isinstance(v, str) for v in texts)
                or not all(v is None or isinstance(v, str) for v in maybe)
                or not all(_is_time(v) for v in times)
                or not isinstance(left_out, list) or not all(map(_is_count, left_out))
                or not _is_count(tail)):
            raise ValueError("a field is not of the type cefmp4 writes")
        data["parts"] = [tuple(p) for p in parts]
        return cls(**data)


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _is_time(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _is_marker_part(part: object) -> bool:
    return (isinstance(part, list) and len(part) == 4 and _is_count(part[0]) and part[0] >= 1
            and _is_count(part[1]) and isinstance(part[2], str)
            and (part[3] is None or _is_time(part[3])))
