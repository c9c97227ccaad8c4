"""What must hold after every schedule (issue #10), checked against the model of the files.

Each check returns readable failure lines; an empty list means the schedule ran clean.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import crc32c

from cefmp4.checkpoint import StreamState
from cefmp4.core.hashing import PartDigest, same_bytes
from cefmp4.core.keys import stream_id_in
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.storage.protection import is_bookkeeping
from tests.sim.faults import Shadow
from tests.sim.party import TAIL, Ledger, segment_range
from tests.sim.world import End, Recording

META = ".metadata.json"


@dataclass(frozen=True)
class Video:
    key: str
    body: bytes
    meta: dict[str, Any] | None
    parts: tuple[int, ...] = ()  # its part sizes, when S3 was seen completing it


def durable_prefix(shadow: Shadow, streams: frozenset[str], version: bytes) -> int:
    """Longest contiguous checkpointed prefix, in any unfinished one of ``streams``, that
    holds exactly the bytes of ``version``: what a stream ending now must keep at least."""
    best = 0
    for sid in streams:
        rec = shadow.streams.get(sid)
        if rec is None or rec.state not in (StreamState.ACTIVE, StreamState.FINALIZING):
            continue
        end = 0
        parts = shadow.parts.get(sid, {})
        number = 1
        while (part := parts.get(number)) is not None and part.offset == end:
            chunk = version[part.offset : part.offset + part.size]
            if len(chunk) != part.size or not same_bytes(part.md5, _digest(chunk)):
                break
            end += part.size
            number += 1
        best = max(best, end)
    return best


def _digest(chunk: bytes) -> PartDigest:
    # Both digests: a record holds "crc32c:<hex>", or an MD5 (older checkpoints, reconcile).
    return PartDigest(crc32c.crc32c(chunk), hashlib.md5(chunk).digest())


def _status(video: Video) -> object:
    return (video.meta or {}).get("status")


def _chunks_match(
    video: Video, versions: list[bytes], segments: Sequence[tuple[str, bytes]] = ()
) -> bool:
    """Every chunk holds bytes the file held at that range at some time. A chunk may be
    made of its stream's own tail segments instead, each shipped at its own time
    (``segments``, each checked against the files by ``check_party``): the last (salvage
    appends them, and so does a stream ending with what S3 holds), or one between parts
    (a lost part filled from them: seed 14013853)."""
    chunks = _chunk_ranges(video)
    sid = video.key.split("/", 2)[1] if video.key.count("/") >= 2 else None
    # Only this stream's own segments (a splice from another's would pass otherwise).
    segments = [(k, b) for k, b in segments if sid is not None and f"{TAIL}{sid}/" in k]
    for offset, size in chunks:
        piece = video.body[offset : offset + size]
        if not _was(versions, offset, piece) and not from_segments(segments, offset, piece):
            return False
    return True


def _was(versions: list[bytes], offset: int, piece: bytes) -> bool:
    size = len(piece)
    return any(v[offset : offset + size] == piece and len(v) >= offset + size for v in versions)


def from_segments(segments: Sequence[tuple[str, bytes]], offset: int, piece: bytes) -> bool:
    """``piece`` (at ``offset`` of its file) is made of bytes tail segments held there."""
    spans = [(span, body) for key, body in segments if (span := segment_range(key))]
    done = 0
    while done < len(piece):
        at = offset + done
        for (start, end), body in spans:
            n = min(end - at, len(piece) - done)
            if start <= at < end and body[at - start : at - start + n] == piece[done:done + n]:
                done += n
                break
        else:
            return False
    return True


def _chunk_ranges(video: Video) -> list[tuple[int, int]]:
    if video.meta is None or not isinstance(video.meta.get("chunks"), list):
        if sum(video.parts) == len(video.body):  # no metadata (a lost host's): its parts
            offsets = [sum(video.parts[:i]) for i in range(len(video.parts))]
            return list(zip(offsets, video.parts, strict=True))
        return [(0, len(video.body))]
    return [(int(c["offset_bytes"]), int(c["size_bytes"])) for c in video.meta["chunks"]]


def _was_state(video: Video, rec: Recording) -> bool:
    """The object equals the whole file as it was at some moment."""
    versions = rec.final_versions()
    return any(
        len(video.body) == size and versions[v][:size] == video.body for v, size in rec.history
    )


def collect(
    s3: MemoryObjectStore, prefix: str, undescribed: frozenset[str] = frozenset(),
    part_sizes: dict[str, tuple[int, ...]] | None = None,
) -> tuple[list[Video], list[str]]:
    """The videos under ``prefix``; ``undescribed``: objects whose metadata nobody could
    write any more (a lost host's, ``Ledger.undescribed``); ``part_sizes``: of each object
    whose completion was seen (``Ledger.part_sizes``)."""
    failures: list[str] = []
    videos: list[Video] = []
    # Not cefmp4's bookkeeping (tail segments, salvage markers): ``check_party`` judges them.
    keys = {k for k in s3.objects if k.startswith(prefix) and not is_bookkeeping(k)}
    for key in sorted(keys):
        if key.endswith(META):
            if key[: -len(META)] not in keys:
                failures.append(f"metadata {key} describes no object")
            continue
        meta: dict[str, Any] | None = None
        if key + META in keys:
            try:
                meta = json.loads(s3.objects[key + META].body)
            except ValueError as exc:
                failures.append(f"metadata of {key} does not parse: {exc}")
        elif key not in undescribed:
            failures.append(f"object {key} has no metadata document")
        parts = (part_sizes or {}).get(key, ())
        videos.append(Video(key, s3.objects[key].body, meta, parts))
    return videos, failures


def check_documents(videos: list[Video]) -> list[str]:
    failures: list[str] = []
    for video in videos:
        meta = video.meta
        if meta is None:
            continue
        size = len(video.body)
        problems = []
        if meta.get("s3_key") != video.key:
            problems.append(f"s3_key {meta.get('s3_key')!r}")
        if meta.get("total_size_bytes") != size:
            problems.append(f"total_size_bytes {meta.get('total_size_bytes')} != {size}")
        if meta.get("sha256") != hashlib.sha256(video.body).hexdigest():
            problems.append("sha256 differs from the object's")
        chunks = meta.get("chunks") or []
        offset = 0
        for number, chunk in enumerate(chunks, 1):
            if chunk.get("part_number") != number or chunk.get("offset_bytes") != offset:
                problems.append(f"chunks not contiguous at #{number}")
                break
            offset += int(chunk.get("size_bytes", 0))
        if offset != size:
            problems.append(f"chunks add up to {offset}, object has {size}")
        if problems:
            status = meta.get("status")
            failures.append(f"metadata of {video.key} ({status}): " + "; ".join(problems))
    return failures


def check_recordings(
    videos: list[Video],
    recordings: list[Recording],
    purged: dict[str, float],
    observed: Callable[[End], bool],
    segments: Sequence[tuple[str, bytes]] = (),
) -> list[str]:
    failures: list[str] = []
    for video in videos:
        status = (video.meta or {}).get("status")
        owners = [r for r in recordings if _chunks_match(video, r.final_versions(), segments)]
        if video.body and not owners:
            failures.append(
                f"object {video.key} ({status}, {len(video.body)} B) holds bytes no recording "
                "ever had at those offsets (spliced or foreign)"
            )
        elif status == "complete" and not any(_was_state(video, r) for r in owners):
            failures.append(
                f"'complete' object {video.key} ({len(video.body)} B) equals no state its "
                "file was ever in"
            )
    # A truncation ends its stream with what was uploaded and starts a new one of the file
    # (SPEC §2.4): a second truncation of that new stream keeps the same prefix again, so
    # a "truncated" object may repeat another's bytes. So may a "salvaged" one: another
    # party made it of what S3 held, and its owner, finding it at its key, goes on with a
    # new stream of the whole file (issue #25). Nothing else may.
    repeat = ("truncated", "salvaged")
    bodies: dict[bytes, str] = {}
    for video in videos:
        if video.body and video.body in bodies and _status(video) not in repeat:
            failures.append(f"objects {bodies[video.body]} and {video.key} are the same bytes")
        if _status(video) not in repeat:
            bodies.setdefault(video.body, video.key)

    for rec in recordings:
        final = bytes(rec.content)
        if rec.live and not rec.lost:
            same = [v for v in videos if v.body == final and _status(v) == "complete"]
            if len(same) != 1 and not (not final and same):
                failures.append(
                    f"recording #{rec.rid} {rec.path.name} ({len(final)} B, live at the end) "
                    f"ends as {len(same)} complete objects with its final bytes, not 1"
                )
        for end in rec.ends:
            if end.kind == "truncated" and not observed(end):
                continue
            failures += _check_end(videos, rec, end, _purged(end, purged), segments)
    return failures


def _purged(end: End, purged: dict[str, float]) -> bool:
    """S3 itself forgot the upload that held the ending stream's durable parts (before or
    after the end): those bytes are gone from S3, and (truncated) from the file."""
    return any(upload_id in purged for upload_id in end.uploads)


def _check_end(videos: list[Video], rec: Recording, end: End, purged: bool,
               segments: Sequence[tuple[str, bytes]] = ()) -> list[str]:
    versions = rec.final_versions()
    name = f"recording #{rec.rid} {rec.path.name} ({end.kind} at {end.at:.2f}s)"
    if end.kind in ("deleted", "replaced") and end.held_open and not end.crashed_after:
        final = versions[-1]
        if not final:
            return []  # nothing to keep: no object is written for an empty ending stream
        if not any(v.body == final for v in videos):
            return [f"{name}: held open, so its {len(final)} B must end as one object; none does"]
        return []
    if end.required == 0 or purged:
        return []
    upto = versions if end.version is None else versions[: end.version + 1]
    for video in videos:
        # Any status: a stream already finalizing when the file shrank ends "complete"
        # with what the file still holds, which is fine if that keeps the durable bytes.
        # Its last chunk may be tail segments, shipped over time, so of several versions.
        if len(video.body) >= end.required and _chunks_match(video, upto, segments):
            return []
    return [
        f"{name}: {end.required} B of it were durably in S3 but no object holds them"
    ]


def check_outside(s3: MemoryObjectStore, prefix: str, before: dict[str, bytes],
                  uploads_before: set[str], may_stay_open: frozenset[str] = frozenset()
                  ) -> list[str]:
    failures = [f"object {k} outside {prefix} changed or vanished"
                for k, body in before.items()
                if k not in s3.objects or s3.objects[k].body != body]
    failures += [f"key {k} outside {prefix} was written" for k in sorted(s3.touched)
                 if not k.startswith(prefix)]
    open_ids = {u.upload_id for u in s3.open_uploads()}
    failures += [f"upload {u} outside {prefix} was aborted" for u in uploads_before - open_ids]
    failures += [
        f"multipart upload left open: {u.key} ({len(s3._uploads[u.upload_id].parts)} parts)"
        for u in s3.open_uploads()
        if u.key.startswith(prefix) and u.upload_id not in may_stay_open
    ]
    return failures


def check_party(
    ledger: Ledger, videos: list[Video], recordings: list[Recording], purged: dict[str, float]
) -> list[str]:
    """Issue #25, with another party salvaging and the recorder's host lost:
    (a) no byte S3 held is lost, (b) no object holds bytes that were never the recording's,
    (c) no live upload is completed (or aborted) by anyone but its owner (``Ledger``)."""
    failures = list(ledger.violations)
    objects = ledger.s3.objects
    every = [v for r in recordings for v in r.final_versions()]
    for key, body in ledger.segments:
        span = segment_range(key)
        if span is None or not _was(every, span[0], body):
            failures.append(f"(b) tail segment {key} holds bytes no recording had there")
    for done in ledger.salvaged:
        offset = 0
        for number, size in enumerate(done.sizes, 1):
            piece = done.body[offset : offset + size]
            if not _was(every, offset, piece) and not from_segments(
                ledger.segments, offset, piece
            ):
                failures.append(
                    f"(b) the other party's salvage of {done.key} at {done.at:.2f}s: part "
                    f"{number} holds bytes no recording had at offset {offset}"
                )
            offset += size
        if done.key not in objects:
            failures.append(
                f"(a) {done.key}, salvaged at {done.at:.2f}s ({len(done.body)} B), is gone"
            )
    open_ids = {u.upload_id for u in ledger.s3.open_uploads()}
    for held in ledger.held.values():
        if not held.data or held.upload_id in purged or held.upload_id in open_ids:
            continue  # nothing to keep, S3 itself forgot it, or still open (reported)
        stored = objects.get(held.key)
        if held.parts == 0 and stored is not None and any(
            o.key == held.key and o.parts and len(o.data) >= len(held.data)
            and stored.body.startswith(o.data) for o in ledger.held.values()
        ):
            # A part-less duplicate upload of a stream (a lost CreateMultipartUpload answer):
            # its "data" is the stream's tail segments from byte 0, which the stream's own
            # parts, kept in the object, hold as the recording later wrote them (seed
            # 11002321: a header patched after the first segment).
            continue
        if stored is None or not stored.body.startswith(held.data):
            has = "no object" if stored is None else f"an object of {len(stored.body)} B"
            failures.append(
                f"(a) host lost with {len(held.data)} B of {held.key} in S3 (upload "
                f"{held.upload_id}, {held.parts} parts + tail): {has} holds them"
            )
    return failures


def check_tail_left(s3: MemoryObjectStore, prefix: str, videos: list[Video]) -> list[str]:
    """Tail segments are deleted once their stream's object is complete (SPEC §2.20)."""
    done = {sid for v in videos if v.meta and (sid := stream_id_in(prefix, v.key))}
    left = sorted(k for k in s3.objects
                  if TAIL in k and k.split(TAIL, 1)[1].split("/", 1)[0] in done)
    return [f"tail segment {k} left behind after its stream's object" for k in left]
