"""Salvage (SPEC §2.19): what to do with a multipart upload nobody is finishing. Pure.

An upload's parts are footage. Whoever finds an upload that no live process adds to — the
daemon's orphan sweeper, a live instance taking over a dead one's stream, the
``cefmp4 salvage`` command on any host — turns it into a readable object with its parts
contiguous from part 1 (a gap ends it), and aborts only an upload that holds nothing. The
decision is made here, from what the shell observed; the shell carries it out.

Abandoned means "no live process is adding to it": for an upload no checkpoint store
knows, its last activity (its newest part, else its initiation) is older than the age
limit; several instances with separate stores share a prefix safely so, as long as each
of them adds a part more often than that. An upload a store knows belongs to that store's
owner, which resumes it; it is abandoned only when its owner is provably gone (the shell
says so: an expired lease and a file nobody here can open).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from enum import StrEnum

from cefmp4.core.keys import segment_prefix
from cefmp4.core.tail import Piece, Segment, chain

# S3's smallest part, for every part but the last one of an object.
MIN_PART_BYTES = 5 * 1024 * 1024


class Action(StrEnum):
    """What happens to one upload."""

    COMPLETE = "complete"  # its contiguous parts become the object, then metadata
    ABORT_EMPTY = "abort_empty"  # no parts: nothing to keep
    SKIP_LIVE = "skip_live"  # a part was added within the age limit: someone is at it
    SKIP_OWNED = "skip_owned"  # a checkpoint store knows it and its owner may be alive
    BLOCKED = "blocked"  # another object stands at its key: left open, reported
    UNUSABLE = "unusable"  # parts that S3 cannot complete (a short part before the last)


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    size: int
    etag: str
    added_at: float | None  # when S3 got it (LastModified), None when not listed


@dataclass(frozen=True, slots=True)
class Upload:
    """One multipart upload as listed, with what the checkpoint store says of it."""

    key: str
    upload_id: str
    initiated_at: float
    parts: tuple[Part, ...]
    known: bool = False  # a checkpoint record names this upload
    owner_gone: bool = False  # known, and its owner is provably gone (lease expired, ...)
    tail: tuple[Segment, ...] = ()  # its stream's tail segments (RPO_SECONDS, §2.20)


@dataclass(frozen=True, slots=True)
class Plan:
    action: Action
    upload: Upload
    used: tuple[Part, ...] = ()  # the parts of the object, 1..n
    ignored: tuple[Part, ...] = ()  # parts after the first gap
    reason: str = ""
    tail: tuple[Piece, ...] = ()  # then these bytes of tail segments, as one last part
    older_than: float = 0.0  # the age limit it was made with (carried out: surveyed again)

    def same_as(self, other: Plan) -> bool:
        """``other`` (a survey made just before acting) would do what this plan does: the
        same action on the same parts and tail bytes. Else the upload changed since this
        plan was made (its owner lives) and acting on it would drop what was added."""
        def shape(p: Plan) -> tuple[object, ...]:
            return (p.action, [(x.number, x.etag) for x in p.used],
                    [(t.segment.key, t.start, t.end) for t in p.tail])
        return shape(self) == shape(other)

    @property
    def part_bytes(self) -> int:
        return sum(p.size for p in self.used)

    @property
    def tail_bytes(self) -> int:
        return sum(p.size for p in self.tail)

    @property
    def bytes(self) -> int:
        return self.part_bytes + self.tail_bytes

    @property
    def gap_after(self) -> int | None:
        """The last part used when parts after a gap are left out (None: no gap)."""
        return self.used[-1].number if self.ignored and self.used else None


def last_activity(upload: Upload) -> float:
    """When something was last added to the upload: its newest part, else its initiation."""
    times = [p.added_at for p in upload.parts if p.added_at is not None]
    times += [s.added_at for s in upload.tail if s.added_at is not None]
    return max([upload.initiated_at, *times])


def contiguous(parts: tuple[Part, ...]) -> tuple[tuple[Part, ...], tuple[Part, ...]]:
    """(parts 1..n without a gap, the parts after the first gap), by part number."""
    ordered = sorted(parts, key=lambda p: p.number)
    used: list[Part] = []
    for part in ordered:
        if part.number != len(used) + 1:
            break
        used.append(part)
    return tuple(used), tuple(ordered[len(used):])


def plan(upload: Upload, *, now: float, older_than: float, object_exists: bool) -> Plan:
    """The action for ``upload``. ``object_exists``: HeadObject found an object at its key
    (S3 can complete an upload only at its own key, and an object there is never replaced)."""
    return replace(_plan(upload, now=now, older_than=older_than, object_exists=object_exists),
                   older_than=older_than)


def _plan(upload: Upload, *, now: float, older_than: float, object_exists: bool) -> Plan:
    if upload.known and not upload.owner_gone:
        return Plan(Action.SKIP_OWNED, upload, reason="a checkpoint store knows it: its owner "
                    "resumes it")
    idle = now - last_activity(upload)
    if idle < older_than:
        return Plan(Action.SKIP_LIVE, upload, reason=f"a part was added {idle:.0f} s ago, "
                    f"less than the age limit of {older_than:.0f} s")
    used, ignored = contiguous(upload.parts)
    if not upload.parts and not upload.tail:
        return Plan(Action.ABORT_EMPTY, upload, reason="it holds no part")
    short = [p for p in used[:-1] if p.size < MIN_PART_BYTES]
    if short:
        # Only the last part may be short: stop before the first short one that is not.
        cut = used.index(short[0]) + 1
        used, ignored = used[:cut], used[cut:] + ignored
    pieces: tuple[Piece, ...] = ()
    if not used or used[-1].size >= MIN_PART_BYTES:  # else a short part must stay the last
        pieces = tuple(chain(upload.tail, sum(p.size for p in used)))
    if not used and not pieces:
        if not upload.parts:
            # Its stream's segments belong to the stream, not to this upload (one whose
            # CreateMultipartUpload answer was lost, say): it holds nothing to salvage, and
            # aborting it deletes no segment.
            return Plan(Action.ABORT_EMPTY, upload, reason="it holds no part (its stream's "
                        "tail segments do not start at byte 0; they are left as they are)")
        first = f"first part {ignored[0].number}" if ignored else "no tail segment from byte 0"
        return Plan(Action.UNUSABLE, upload, ignored=ignored,
                    reason=f"it has no part 1 ({first}); left open")
    if object_exists:
        return Plan(Action.BLOCKED, upload, used, ignored, tail=pieces,
                    reason="an object already stands at its key; S3 completes an upload only "
                           "at its own key, so it is left open")
    gap = f"; parts after {used[-1].number} left out (a gap)" if ignored and used else ""
    tail = f" + {sum(p.size for p in pieces)} bytes of tail segments" if pieces else ""
    return Plan(Action.COMPLETE, upload, used, ignored, tail=pieces,
                reason=f"{len(used)} parts{tail}{gap}")


def marker_prefix(prefix: str) -> str:
    """Where salvage markers live: ``{S3_KEY_PREFIX}.cefmp4/salvage/``."""
    return f"{segment_prefix(prefix)}.cefmp4/salvage/"


def marker_key(prefix: str, upload_id: str) -> str:
    """The marker of a salvage of ``upload_id``: written before its Complete, deleted after
    its metadata. Its owner reads it as proof that a salvager made the object (§2.19)."""
    return marker_prefix(prefix) + hashlib.sha256(upload_id.encode()).hexdigest()[:32] + ".json"


# A document cefmp4 writes (a metadata document, a salvage marker) is a few KiB, and lists
# at most 10,000 parts at ~150 bytes each: anything larger at such a key is not one, and is
# never read whole.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024


def document_status(raw: bytes | None) -> str | None:
    """The ``status`` the metadata document at a key says; None when there is none, or one
    that does not parse or names no status (input, not truth: it proves nothing)."""
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):  # nested past the interpreter's depth
        return None
    status = doc.get("status") if isinstance(doc, dict) else None
    return status if isinstance(status, str) else None


def published_by_owner(raw: bytes | None) -> bool:
    """Whether the metadata document at a salvaged key (None: none there) says its owner
    published the object: a Complete of the same first parts by the owner and by an
    interrupted salvage make the same object, and then the owner's document stands (a
    salvage resumed from its marker would otherwise relabel it "salvaged")."""
    status = document_status(raw)
    return status is not None and status != "salvaged"


def salvaged_document(raw: bytes | None) -> bool:
    """Whether the metadata document at a stream's key says a salvager made the object
    (only salvage writes "salvaged"): its owner then finds its upload taken."""
    return document_status(raw) == "salvaged"
