"""How a recording ends, and what its object is: the pure decisions (SPEC §2.3, §2.4, §2.19).

Everything a stream's ending turns on is decided here, from observations the shell makes
(``streams/finalize`` stats the descriptor, asks S3 with HeadObject, lists parts) and passes
in as plain values. Nothing here reads a file, a clock or a store, so every case is a row of
a table in ``tests/unit/test_ending.py``.

* :class:`End` — why a stream ended and so what its metadata says (status, ``completed_by``,
  ``end_reason``). The one spelling of "truncated", "source deleted", "salvaged".
* :func:`fate` — what became of the file a stream holds open (still linked, deleted,
  replaced), and :func:`truncated` — bytes already uploaded are gone from it.
* :func:`judge_object` — what stands at the stream's key: nothing, the empty object of an
  empty recording, the object these very parts made, or something else. The one test behind
  every "was it completed before?" question.
* :func:`when_upload_gone` and :func:`kept_object` — what a stream does with those answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Protocol, TypeVar

from cefmp4.checkpoint import PartRecord
from cefmp4.core.hashing import multipart_etag
from cefmp4.core.identity import Ident
from cefmp4.core.parts import contiguous
from cefmp4.core.tail import Piece, Segment, chain


class Status(StrEnum):
    """The metadata ``status`` of a stream's object (SPEC §1.4)."""

    COMPLETE = "complete"  # the verified file (§2.3)
    TRUNCATED = "truncated"  # what S3 held when the file lost bytes, or was replaced
    SOURCE_DELETED = "source_deleted"  # what S3 held when the file was deleted
    SALVAGED = "salvaged"  # an abandoned upload made readable by salvage (§2.19)


class CompletedBy(StrEnum):
    """What ended a stream (metadata ``completed_by``, SPEC §1.4)."""

    IDLE_TIMEOUT = "idle_timeout"
    # No writer holds the file: its writers closed it (a close event), or nobody held it open
    # for writing when the stream looked (the kernel's lease or /proc proved it).
    WRITER_CLOSED = "writer_closed"
    HOLD_EXPIRED = "hold_expired"
    UPLOAD_COMMAND = "upload_command"
    TRUNCATED = "truncated"
    SOURCE_DELETED = "source_deleted"
    SALVAGE = "salvage"


@dataclass(frozen=True, slots=True)
class End:
    """Why a stream ended. Checkpointed (``status``, ``completed_by``) before anything acts
    on it, so a restart finishes the stream the same way."""

    status: Status
    completed_by: CompletedBy
    reason: str | None = None  # metadata ``end_reason``: truncated / replaced / deleted

    @property
    def kept(self) -> bool:
        """The object is what S3 already holds: the file no longer has those bytes."""
        return self.status in (Status.TRUNCATED, Status.SOURCE_DELETED)

    @classmethod
    def of(cls, status: Status, judged: CompletedBy | None = None) -> End:
        """The end with ``status``; ``judged`` is what the follow loop saw end a complete
        file (an ending that lost bytes is named by its status alone)."""
        if status is Status.TRUNCATED:
            return cls(status, CompletedBy.TRUNCATED, "truncated")
        if status is Status.SOURCE_DELETED:
            return cls(status, CompletedBy.SOURCE_DELETED, "deleted")
        if status is Status.SALVAGED:
            return cls(status, CompletedBy.SALVAGE)
        return cls(status, judged or CompletedBy.IDLE_TIMEOUT)

    @classmethod
    def recorded(cls, status: str | None, completed_by: str | None) -> End:
        """The end a checkpoint holds (a stream resumed while finalizing). A record from
        before ``completed_by`` existed, or with a value this version does not know,
        gets the one its status implies; so does ``end_reason`` (the record keeps the status,
        not the reason: a replaced file resumes as "truncated")."""
        st = _parse(Status, status) or Status.COMPLETE
        return cls.of(st, _parse(CompletedBy, completed_by))


_E = TypeVar("_E", bound=StrEnum)


def _parse(kind: type[_E], value: str | None) -> _E | None:
    try:
        return None if value is None else kind(value)
    except ValueError:
        return None


# --- the file --------------------------------------------------------------------------


def truncated(size: int, uploaded_extent: int) -> bool:
    """Bytes already uploaded are gone from the file (a truncate, or a rewrite in place
    that is shorter): what S3 holds is all there is of them."""
    return size < uploaded_extent


class Fate(Enum):
    """What became of the file a stream holds open."""

    LINKED = "linked"  # still has a name (a rename keeps the stream)
    DELETED = "deleted"  # unlinked: nothing, or only it, at its path
    REPLACED = "replaced"  # unlinked, and another file at its path


def fate(held_links: int, held: Ident, at_path: Ident | None) -> Fate:
    """``held_links``/``held``: ``fstat`` of the stream's descriptor; ``at_path``: what
    stands at the stream's path now (None: nothing)."""
    if held_links > 0:
        return Fate.LINKED
    if at_path is not None and at_path != held:
        return Fate.REPLACED
    return Fate.DELETED


def keeps_what_s3_holds(end: End, *, truncated_now: bool, resumed: bool) -> bool:
    """Whether the object is what S3 already holds rather than the verified file: the file
    no longer has those bytes. So when finalize saw the truncation itself, or resumed an end
    decided before a crash that the held descriptor cannot undo (a replaced file's held
    descriptor still has every byte while it runs, not after a restart)."""
    return truncated_now or (resumed and end.status is not Status.COMPLETE)


def end_of(*, truncated_now: bool, fate: Fate, judged: CompletedBy | None) -> End:
    """The end of a stream whose follow loop stopped: ``truncated_now`` when it saw the
    file lose uploaded bytes; ``judged``: what completed it otherwise (§2.14)."""
    if truncated_now:
        return End.of(Status.TRUNCATED)
    if fate is Fate.REPLACED:
        return End(Status.TRUNCATED, CompletedBy.TRUNCATED, "replaced")
    if fate is Fate.DELETED:
        return End.of(Status.SOURCE_DELETED)
    return End.of(Status.COMPLETE, judged)


# --- the object at the key -------------------------------------------------------------


class HeadAnswer(Protocol):
    """What HeadObject says of a key (``storage.ObjectInfo``)."""

    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str: ...


class Found(Enum):
    ABSENT = "absent"
    EMPTY = "empty"  # an empty object: only an empty recording's put writes one at a key
    OURS = "ours"  # made by Complete from the first N checkpointed parts
    FOREIGN = "foreign"  # an object these parts did not make (salvaged with tail segments…)
    # Made from this upload by a salvager (its marker, or metadata saying "salvaged"): the
    # parts may be this stream's very first N, but the Complete was not its own.
    SALVAGED = "salvaged"


@dataclass(frozen=True, slots=True)
class ObjectAt:
    """What stands at a stream's key, judged against its checkpointed parts."""

    found: Found
    parts: tuple[PartRecord, ...] = ()  # OURS: the parts that made it, in order

    def made_of_all(self, parts: Sequence[PartRecord]) -> bool:
        """The object is the one exactly ``parts`` make: a Complete of them went through."""
        return self.found is Found.OURS and list(self.parts) == list(parts)


def judge_object(head: HeadAnswer | None, checkpointed: Sequence[PartRecord], *,
                 salvaged: bool = False) -> ObjectAt:
    """Judge HeadObject's answer for a stream's key.

    A Complete is made of parts 1..N and the checkpoint may hold more (a truncation keeps
    only the contiguous run, a verification drops the parts past a shorter file), so the
    object is OURS when the first N make it: N is the multipart ETag's part count (a plain
    ETag: the run whose sizes add up to the object's), and the ETag and size must match.
    ``salvaged``: a salvager's marker or metadata names the upload (asked of OURS only)."""
    if head is None:
        return ObjectAt(Found.ABSENT)
    if salvaged:
        return ObjectAt(Found.SALVAGED)
    if head.size == 0:
        return ObjectAt(Found.EMPTY)
    run = contiguous({p.part_number: p for p in checkpointed})
    count = _etag_part_count(head.etag)
    if count is None:
        sizes = list(itertools.accumulate(p.size for p in run))
        count = sizes.index(head.size) + 1 if head.size in sizes else 0
    made = run[:count]
    if count and len(made) == count and _matches(head, made):
        return ObjectAt(Found.OURS, tuple(made))
    return ObjectAt(Found.FOREIGN)


def _matches(head: HeadAnswer, parts: Sequence[PartRecord]) -> bool:
    if head.size != sum(p.size for p in parts):
        return False
    if "-" in head.etag:
        return head.etag == multipart_etag([p.etag for p in parts])
    return True


def _etag_part_count(etag: str) -> int | None:
    _, dash, count = etag.strip('"').rpartition("-")
    return int(count) if dash and count.isdigit() else None


class Resume(Enum):
    """What a stream does when S3 no longer knows its upload id."""

    ADOPT = "adopt"  # Complete went through before a crash: finalize confirms the object
    RESTART = "restart"  # nothing made: a new upload, from byte 0
    STANDS = "stands"  # its own object is at the key: never overwritten; the stream ends with it
    # Another party made an object of the upload (salvage, §2.19: the owner was gone past the
    # age limit). It stands with the salvager's metadata; this stream is over at its key,
    # and the file's bytes go on as a new stream (a new key, from byte 0: nothing lost).
    TAKEN = "taken"


def when_upload_gone(at: ObjectAt, *, resuming: bool, finalizing: bool) -> Resume:
    """``resuming``: found by a restart's reconciliation (before the stream is followed);
    else found by the running stream (a part or Complete answered NoSuchUpload).
    ``finalizing``: the stream's checkpoint says it was finalizing, the only state that
    sends Complete or writes the empty object.

    Before finalizing, any object at the key is someone else's. A finalizing stream's own
    Complete made an object of its parts (the checkpoint may be behind S3 by one Complete);
    an object its parts do not make is a salvager's (one with tail segments appended)."""
    if at.found is Found.ABSENT:
        return Resume.RESTART
    if not finalizing or at.found in (Found.FOREIGN, Found.SALVAGED):
        return Resume.TAKEN
    if at.found is Found.OURS:
        return Resume.ADOPT if resuming else Resume.STANDS
    # The empty recording's object, written before a crash: finalize writes it again (a
    # resumed stream) or publishes it (a running one).
    return Resume.RESTART if resuming else Resume.STANDS


# --- ending with what S3 holds ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fill:
    """Tail segments' bytes that fill a gap between checkpointed parts, sent as the missing
    part ``number``: the gap spans at least one whole part, so it is never a short part."""

    number: int
    pieces: tuple[Piece, ...]

    @property
    def size(self) -> int:
        return sum(p.size for p in self.pieces)


@dataclass(frozen=True, slots=True)
class Kept:
    """What a kept ending does (``kept_object``)."""

    end: End  # as it must be checkpointed before acting (may differ from the one given)
    action: str  # "publish_empty" | "complete" | "fail"
    parts: tuple[PartRecord, ...] = ()
    why: str = ""  # "fail": the stream's error
    # "complete": tail segments' bytes (RPO_SECONDS, §2.20) that S3 holds of the recording
    # where no part does: gaps between parts (``fills``) and after the last (``tail``, sent
    # as the object's last part).
    tail: tuple[Piece, ...] = ()
    fills: tuple[Fill, ...] = ()

    @property
    def tail_bytes(self) -> int:
        return sum(p.size for p in self.tail) + sum(f.size for f in self.fills)

    PUBLISH_EMPTY = "publish_empty"
    COMPLETE = "complete"
    FAIL = "fail"


def kept_needs_head(end: End, parts: Sequence[PartRecord]) -> bool:
    """Whether ``kept_object`` needs HeadObject's answer for these: a complete end (decided
    before the file went away: was Complete made?) or nothing uploaded (an empty object?)."""
    return end.status is Status.COMPLETE or not contiguous({p.part_number: p for p in parts})


def kept_object(
    end: End, parts: Sequence[PartRecord], at: ObjectAt | None, *, file_open: bool,
    segments: Sequence[Segment] = (),
) -> Kept:
    """The object of a stream that ends with what S3 holds (the file lost those bytes):
    the contiguous parts from part 1, a gap between parts filled by tail segments that
    cover it exactly (a part lost to a restarted upload, whose bytes a segment holds), and
    the tail segments that continue the last part (S3 held those bytes too; leaving them
    out would throw footage away).

    Never an empty multipart object and never over an object already there: with nothing
    uploaded the stream fails with a reason, unless the object is the empty one its empty
    recording wrote before a crash; then that stands. ``at``: HeadObject's verdict when
    ``kept_needs_head`` asked for it."""
    run, fills, end_byte = _run_with_fills(parts, segments)
    tail = tuple(chain(segments, end_byte))
    if end.status is Status.COMPLETE and (at is None or at.found is Found.ABSENT):
        # An idle end decided before the file went away: what S3 kept is not the verified
        # file (§2.3), so the object says what ended it.
        end = End.of(Status.TRUNCATED if file_open else Status.SOURCE_DELETED)
    if at is not None and at.found is Found.EMPTY:
        # Parts sent since are of bytes the file got later: a new stream's (§2.4).
        return Kept(end, Kept.PUBLISH_EMPTY)
    if not run and not fills and not tail:
        return Kept(end, Kept.FAIL, why="the file lost its bytes before any part was uploaded")
    return Kept(end, Kept.COMPLETE, run, tail=tail, fills=fills)


def _run_with_fills(
    parts: Sequence[PartRecord], segments: Sequence[Segment]
) -> tuple[tuple[PartRecord, ...], tuple[Fill, ...], int]:
    """(the parts used, the fills between them, the byte where they end): parts from 1 on,
    and where parts are missing and a later one is there, tail segments that cover exactly
    the bytes between them, as the missing numbers (numbers stay consecutive, so the object
    is judged by its ETag's part count like any other)."""
    by_number = {p.part_number: p for p in parts}
    used: list[PartRecord] = []
    fills: list[Fill] = []
    end, n = 0, 1
    while True:
        part = by_number.get(n)
        if part is not None:
            if part.offset != end:
                break  # a short part before it: a gap in bytes
            used.append(part)
            end, n = part.offset + part.size, n + 1
            continue
        # Parts n .. m-1 missing (several may have been in flight when the file lost them):
        # segments that cover exactly the bytes up to part m fill them, split evenly so
        # each is a whole part's worth or more (11001459 and the review's two-part case).
        following = next((by_number[m] for m in sorted(by_number) if m > n), None)
        if following is None or not segments:
            break
        missing = following.part_number - n
        cuts = [end + (following.offset - end) * i // missing for i in range(missing + 1)]
        # Segments chain without a gap, so the gap is covered exactly when every split is.
        split = [_cover(segments, a, b) for a, b in itertools.pairwise(cuts)]
        if any(pieces is None for pieces in split):
            break
        fills += [Fill(n + i, pieces) for i, pieces in enumerate(split) if pieces is not None]
        end, n = following.offset, following.part_number
    return tuple(used), tuple(fills), end


def _cover(segments: Sequence[Segment], start: int, stop: int) -> tuple[Piece, ...] | None:
    """Pieces of ``segments`` that hold exactly bytes ``[start, stop)``, or None."""
    if stop <= start:
        return None
    covered: list[Piece] = []
    for piece in chain(segments, start):
        if piece.start >= stop:
            break
        covered.append(Piece(piece.segment, piece.start, min(piece.end, stop)))
    return tuple(covered) if covered and covered[-1].end == stop else None
