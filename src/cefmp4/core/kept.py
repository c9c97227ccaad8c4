"""Ending a stream with what S3 holds, as a state machine (SPEC §2.4, §2.19, §2.20).

A stream whose file lost bytes S3 already holds (truncated, deleted, replaced, rewritten
while nobody watched) ends with an object made of those bytes. Making it takes a dozen
requests whose answers change what comes next: HeadObject (was it completed before a
crash?), the tail segments, the parts S3 holds, a part sent from segments, the Complete,
and NoSuchUpload at any of them. Every such turn is decided here; the shell
(``streams/finalize.finish_kept``) only carries out the actions and reports what it saw.

It is sans-I/O in the manner of h11: :func:`kept_ending` is a generator that yields an
*action*, is sent the *observation* that answers it, and returns the *outcome* (publish,
publish the empty object, fail, taken). A generator keeps the flow readable top to bottom
while staying a pure function of its observations, so every path, each crash point and
each simulator seed's situation is a row of ``tests/unit/test_kept.py``.

Rules it makes explicit:

* **Checkpoint first.** An end is checkpointed (``Checkpoint``, answered ``Checkpointed``)
  before any request acts on it, so a crash meanwhile resumes the stream the same way.
* **Destroy only on proof.** An upload is aborted only when S3 lists no part in it, or its
  bytes go on as the file's next stream (the file is still open). An upload that holds
  parts the object cannot use (none the checkpoint knows as part 1) is left open and
  handed to salvage (§2.19); the stream's error says so.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

from cefmp4.checkpoint import PartRecord
from cefmp4.core.ending import (
    End,
    Found,
    Kept,
    ObjectAt,
    Resume,
    kept_needs_head,
    kept_object,
    when_upload_gone,
)
from cefmp4.core.machine import Checkpoint, Checkpointed, expect
from cefmp4.core.tail import Piece, Segment

# --- actions: what the shell does next ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Head:
    """HeadObject of the stream's key, judged against ``parts``; answered ``HeadSaid``."""

    parts: tuple[PartRecord, ...]


@dataclass(frozen=True, slots=True)
class ListSegments:
    """List the stream's tail segments; answered ``SegmentsListed``."""


@dataclass(frozen=True, slots=True)
class ListParts:
    """List the parts S3 holds in the stream's upload; answered ``PartsListed``."""


@dataclass(frozen=True, slots=True)
class Abort:
    """Abort the stream's upload (gone already is fine); answered ``Aborted``."""


@dataclass(frozen=True, slots=True)
class SendPiece:
    """Send tail segments' ``pieces`` as part ``number``, checkpointed like any part;
    answered ``PieceSent`` or ``UploadGone``."""

    number: int
    pieces: tuple[Piece, ...]


@dataclass(frozen=True, slots=True)
class Complete:
    """CompleteMultipartUpload of ``parts``; answered ``Completed`` or ``UploadGone``."""

    parts: tuple[PartRecord, ...]


Action = Checkpoint | Head | ListSegments | ListParts | Abort | SendPiece | Complete

# --- observations: what the shell saw -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeadSaid:
    at: ObjectAt


@dataclass(frozen=True, slots=True)
class SegmentsListed:
    segments: tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class PartsListed:
    count: int


@dataclass(frozen=True, slots=True)
class Aborted:
    pass


@dataclass(frozen=True, slots=True)
class PieceSent:
    part: PartRecord


@dataclass(frozen=True, slots=True)
class Completed:
    pass


@dataclass(frozen=True, slots=True)
class UploadGone:
    """S3 answered NoSuchUpload: it purged the upload, or another party completed it."""


Observation = (Checkpointed | HeadSaid | SegmentsListed | PartsListed | Aborted | PieceSent
               | Completed | UploadGone)

# --- outcomes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """The object stands: write its metadata and mark the stream completed.
    ``running_sha``: the SHA-256 built while the parts were read covers exactly these
    parts (else the shell reads the object). ``tail_bytes``: bytes from tail segments."""

    end: End
    parts: tuple[PartRecord, ...]
    running_sha: bool
    tail_bytes: int | None


@dataclass(frozen=True, slots=True)
class PublishEmpty:
    """The empty recording's object stands (written before a crash): publish it."""

    end: End


@dataclass(frozen=True, slots=True)
class Fail:
    """The stream fails with ``why``. ``release``: its upload holds parts that are not
    its object's and is handed to salvage: the record stops naming it, so the orphan
    sweeper (or ``cefmp4 salvage``) makes what it can of it after the age limit (§2.19)."""

    why: str
    release: bool = False


@dataclass(frozen=True, slots=True)
class Taken:
    """Another party made the object of this upload (``Resume.TAKEN``)."""


Outcome = Publish | PublishEmpty | Fail | Taken
Machine = Generator[Action, Observation, Outcome]


def kept_ending(
    end: End,
    parts: Sequence[PartRecord],
    *,
    finalizing: bool,
    file_open: bool,
    has_upload: bool,
    segments: bool,
    running_sha: bool,
) -> Machine:
    """The ending of a stream with what S3 holds. ``end``: as its record says (or as the
    caller decided); ``parts``: every checkpointed part; ``finalizing``: that end is
    checkpointed already; ``file_open``: the shell holds the file (its bytes go on as a
    new stream); ``has_upload``: the record names an upload; ``segments``: RPO_SECONDS is
    on, so tail segments may hold bytes; ``running_sha``: the shell has a SHA-256 built
    while the contiguous parts were read."""
    if not finalizing:
        yield from _checkpoint(end)
    at = (yield from _head(parts)) if kept_needs_head(end, parts) else None
    listed: tuple[Segment, ...] = ()
    if segments and has_upload:
        listed = expect(SegmentsListed, (yield ListSegments())).segments
    plan = kept_object(end, parts, at, file_open=file_open, segments=listed)
    if plan.end != end:
        end = plan.end
        yield from _checkpoint(end)
    if plan.action == Kept.PUBLISH_EMPTY:
        # Parts sent since the empty object are of bytes the file got later: they go on as
        # its next stream while it is open, else they are left for salvage.
        if has_upload:
            yield from _abort_on_proof(safe=file_open)
        return PublishEmpty(end)
    if plan.action == Kept.FAIL:
        held = (yield from _abort_on_proof(safe=False)) if has_upload else 0
        if held:
            return Fail(f"{plan.why}; its upload holds {held} parts the checkpoint does not "
                        "know as part 1 and is left open for salvage", release=True)
        return Fail(plan.why)
    kept = list(plan.parts)
    sent: list[PartRecord] = []
    for number, pieces in [*((f.number, f.pieces) for f in plan.fills),
                           *([(len(plan.parts) + len(plan.fills) + 1, plan.tail)]
                             if plan.tail else [])]:
        seen = yield SendPiece(number, pieces)
        if isinstance(seen, UploadGone):
            return (yield from _upload_gone(end, kept, sent))
        sent.append(expect(PieceSent, seen).part)
        kept = sorted([*kept, sent[-1]], key=lambda p: p.part_number)
    seen = yield Complete(tuple(kept))
    if isinstance(seen, UploadGone):
        return (yield from _upload_gone(end, kept, sent))
    expect(Completed, seen)
    return Publish(end, tuple(kept), running_sha=running_sha and not sent,
                   tail_bytes=plan.tail_bytes if sent else None)


def _checkpoint(end: End) -> Generator[Action, Observation, None]:
    expect(Checkpointed, (yield Checkpoint(end)))


def _head(parts: Sequence[PartRecord]) -> Generator[Action, Observation, ObjectAt]:
    return expect(HeadSaid, (yield Head(tuple(parts)))).at


def _abort_on_proof(*, safe: bool) -> Generator[Action, Observation, int]:
    """Abort the upload when that destroys nothing: ``safe``, or S3 lists no part in it.
    The number of parts it holds (0 when aborted)."""
    held = 0 if safe else expect(PartsListed, (yield ListParts())).count
    if held == 0:
        expect(Aborted, (yield Abort()))
    return held


def _upload_gone(
    end: End, kept: Sequence[PartRecord], sent: Sequence[PartRecord]
) -> Generator[Action, Observation, Outcome]:
    """NoSuchUpload while making the object: S3 purged the upload, another party made an
    object of it, or this stream's own Complete went through before a crash."""
    at = yield from _head(kept)
    gone = when_upload_gone(at, resuming=False, finalizing=True)
    if gone is Resume.TAKEN:
        return Taken()
    if at.found is not Found.OURS:
        return Fail("an object not made of the checkpointed parts is already at the key"
                    if gone is Resume.STANDS
                    else "S3 lost the uploaded parts and the file lost its bytes")
    # This stream's own Complete of its first parts went through before a crash (the parts
    # sent since are of bytes the file got later: a new stream's, §2.4): that object
    # stands and is published (simulator seed 2022346).
    from_segments = sum(p.size for p in at.parts if p in sent)
    return Publish(end, at.parts, running_sha=False, tail_bytes=from_segments or None)

