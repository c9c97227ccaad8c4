"""What must hold after every schedule (issue #10), checked against the model of the files.

Each check returns readable failure lines; an empty list means the schedule ran clean.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import crc32c

from cefmp4.checkpoint import StreamState
from cefmp4.core.hashing import PartDigest, same_bytes
from cefmp4.storage.memory import MemoryObjectStore
from tests.sim.faults import Shadow
from tests.sim.world import End, Recording

META = ".metadata.json"


@dataclass(frozen=True)
class Video:
    key: str
    body: bytes
    meta: dict[str, Any] | None


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


def _chunks_match(video: Video, versions: list[bytes]) -> bool:
    """Every chunk holds bytes the file held at that range at some time."""
    chunks = _chunk_ranges(video)
    for offset, size in chunks:
        piece = video.body[offset : offset + size]
        if not any(v[offset : offset + size] == piece and len(v) >= offset + size
                   for v in versions):
            return False
    return True


def _chunk_ranges(video: Video) -> list[tuple[int, int]]:
    if video.meta is None or not isinstance(video.meta.get("chunks"), list):
        return [(0, len(video.body))]
    return [(int(c["offset_bytes"]), int(c["size_bytes"])) for c in video.meta["chunks"]]


def _was_state(video: Video, rec: Recording) -> bool:
    """The object equals the whole file as it was at some moment."""
    versions = rec.final_versions()
    return any(
        len(video.body) == size and versions[v][:size] == video.body for v, size in rec.history
    )


def collect(s3: MemoryObjectStore, prefix: str) -> tuple[list[Video], list[str]]:
    failures: list[str] = []
    videos: list[Video] = []
    keys = {k for k in s3.objects if k.startswith(prefix)}
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
        else:
            failures.append(f"object {key} has no metadata document")
        videos.append(Video(key, s3.objects[key].body, meta))
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
) -> list[str]:
    failures: list[str] = []
    for video in videos:
        status = (video.meta or {}).get("status")
        owners = [r for r in recordings if _chunks_match(video, r.final_versions())]
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
    # a "truncated" object may repeat another's bytes. Nothing else may.
    bodies: dict[bytes, str] = {}
    for video in videos:
        if video.body and video.body in bodies and _status(video) != "truncated":
            failures.append(f"objects {bodies[video.body]} and {video.key} are the same bytes")
        if _status(video) != "truncated":
            bodies.setdefault(video.body, video.key)

    for rec in recordings:
        final = bytes(rec.content)
        if rec.live:
            same = [v for v in videos if v.body == final and _status(v) == "complete"]
            if len(same) != 1 and not (not final and same):
                failures.append(
                    f"recording #{rec.rid} {rec.path.name} ({len(final)} B, live at the end) "
                    f"ends as {len(same)} complete objects with its final bytes, not 1"
                )
        for end in rec.ends:
            if end.kind == "truncated" and not observed(end):
                continue
            failures += _check_end(videos, rec, end, _purged(end, purged))
    return failures


def _purged(end: End, purged: dict[str, float]) -> bool:
    """S3 itself forgot the upload that held the ending stream's durable parts (before or
    after the end): those bytes are gone from S3, and (truncated) from the file."""
    return any(upload_id in purged for upload_id in end.uploads)


def _check_end(videos: list[Video], rec: Recording, end: End, purged: bool) -> list[str]:
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
        if len(video.body) >= end.required and _chunks_match(video, upto):
            return []
    return [
        f"{name}: {end.required} B of it were durably in S3 but no object holds them"
    ]


def check_outside(s3: MemoryObjectStore, prefix: str, before: dict[str, bytes],
                  uploads_before: set[str]) -> list[str]:
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
        if u.key.startswith(prefix)
    ]
    return failures
