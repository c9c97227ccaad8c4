"""How a stream resumes after a restart: the pure decisions (SPEC §2.6, §2.13, §2.4).

The shell (``streams/reconcile``, ``streams/lifecycle``) lists what S3 holds, reads the
file where a decision needs its bytes, and passes the answers in; nothing here reads a file
or asks S3. What an unknown upload id means is ``core.ending.when_upload_gone``.

* :func:`plan_parts` — for each part S3 lists: kept (the checkpoint knows it, same ETag),
  a candidate to adopt (a crash between UploadPart and its checkpoint: adopted when the
  file's MD5 there is the ETag), or neither; and the checkpointed parts S3 lost.
* :class:`Recording` — whether the file found for a stream is still its recording (by the
  bytes of its parts), asked one question at a time so the file is read only as far as
  the answer needs.
* :func:`resuming` — the whole resume of a stream as a state machine (``core.machine``):
  open the file, ask it the questions above, reconcile with S3, and end the stream with
  what S3 holds when its file is gone or is not the recording any more.
* :func:`on_claim` — what a file that is claimed becomes: skipped (uploaded already, or
  followed by a running stream), the resumed stream of its checkpoint, or a new stream.
* :func:`unknown_upload` — what start-up does with an upload no checkpoint knows (rebuild
  the stream, attach the upload to it, or leave it to the sweeper), and
  :func:`superseded` — whether such an upload belongs to a stream that moved on.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from cefmp4.checkpoint import UNFINISHED, PartRecord, StreamRecord, StreamState
from cefmp4.core.ending import End, Status
from cefmp4.core.identity import SizeMtime
from cefmp4.core.machine import Checkpoint, Checkpointed, expect
from cefmp4.core.parts import PartSchedule


class ListedPart(Protocol):
    """One part as ListParts gives it (``storage.UploadedPart``)."""

    @property
    def part_number(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def etag(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """A part S3 holds that no checkpoint knows (or knows with another ETag): adopt it as
    ``number`` at ``offset``/``size`` when the file's MD5 of those bytes is ``etag``."""

    number: int
    offset: int
    size: int
    etag: str


@dataclass(frozen=True, slots=True)
class PartsPlan:
    kept: tuple[PartRecord, ...]  # checkpointed, and S3 holds them with the same ETag
    candidates: tuple[Candidate, ...]  # adopt when the file's bytes match
    mismatched: tuple[int, ...]  # checkpointed with another ETag than S3's (a re-sent part)
    missing: tuple[int, ...]  # checkpointed, but S3 lost them: uploaded again


def plan_parts(
    schedule: PartSchedule, remote: Sequence[ListedPart], known: Sequence[PartRecord], *,
    file_open: bool,
) -> PartsPlan:
    """Judge what S3 lists for an upload against the checkpoint. Without the file nothing is
    adopted: bytes are adopted only when they are proven the file's."""
    checkpointed = {p.part_number: p for p in known}
    kept: list[PartRecord] = []
    candidates: list[Candidate] = []
    mismatched: list[int] = []
    for part in sorted(remote, key=lambda p: p.part_number):
        number = part.part_number
        mine = checkpointed.get(number)
        if mine is not None and mine.etag == part.etag:
            kept.append(mine)
            continue
        if mine is not None:
            mismatched.append(number)
        if not file_open or not 1 <= number <= schedule.max_parts:
            continue
        offset, size = schedule.offset_of(number), schedule.size_of(number)
        if part.size == size:  # else a tail an interrupted finalize sent: finalize redoes it
            candidates.append(Candidate(number, offset, size, part.etag))
    listed = {p.part_number for p in remote}
    missing = sorted(n for n in checkpointed if n not in listed)
    return PartsPlan(tuple(kept), tuple(candidates), tuple(mismatched), tuple(missing))


# --- is the file found still the recording? ----------------------------------------------


class Recording(Enum):
    """The answer, or the next question, about a file found for a resumed stream.

    Appends and a recorder's header patch (the ``mdat`` size, in part 1) keep the last part.
    Otherwise either another file took a deleted one's inode number (file systems hand it to
    the next new file at once: found elsewhere, holding neither of the first parts either),
    or the recording was cut and written again past what was uploaded while nobody watched,
    which its size cannot tell from a whole rewrite (a faststart pass then leaves its old
    parts as an object of their own): nothing is lost either way. A one-part stream at its
    own path has only the part a header patch changes: it is judged by part 1's bytes past
    the header (its second half, ``core.hashing.header_window``), which a patch leaves and
    another file given the recording's inode number there does not have (hole 74393). A
    part recorded before that digest existed, or too short to have one, is trusted."""

    IS_IT = "is it"  # the stream goes on with this file
    ASK_LAST = "ask last"  # does the file hold the last checkpointed part?
    ASK_FIRST = "ask first"  # does it hold either of the first two parts?
    ASK_BODY = "ask body"  # does it hold part 1's bytes past its header?
    REWRITTEN = "rewritten"  # cut and written again while nobody watched: ends truncated
    REUSED = "reused"  # another file with the inode number: the stream ends, source gone


def recording(*, parts: int, here: bool, body_known: bool = False,
              holds_last: bool | None = None, holds_first: bool | None = None,
              holds_body: bool | None = None) -> Recording:
    """``parts``: how many the checkpoint holds; ``here``: found at the stream's own path
    (its last or original one); ``body_known``: the only part's record has the digest of
    its bytes past the header; ``holds_*``: the answers so far."""
    if not parts:
        return Recording.IS_IT
    if here and parts < 2:
        if not body_known:
            return Recording.IS_IT
        if holds_body is None:
            return Recording.ASK_BODY
        return Recording.IS_IT if holds_body else Recording.REWRITTEN
    if holds_last is None:
        return Recording.ASK_LAST
    if holds_last:
        return Recording.IS_IT
    if here:
        return Recording.REWRITTEN
    if holds_first is None:
        return Recording.ASK_FIRST
    return Recording.REWRITTEN if holds_first else Recording.REUSED


# --- a claimed file --------------------------------------------------------------------


class OnClaim(Enum):
    UPLOADED = "uploaded"  # a completed stream's file, unchanged since: never again
    RUNNING = "running"  # a stream of it runs here already
    RESUME = "resume"  # its unfinished stream goes on
    NEW = "new"  # a new stream of the file


def on_claim(latest: StreamRecord | None, *, running: Collection[str],
             at_path: SizeMtime | None) -> OnClaim:
    """``latest``: the newest checkpoint of the file's inode (None: none); ``running``: the
    stream ids this instance runs; ``at_path``: (size, mtime_ns) of the file at its path now
    (asked only of a completed stream's file; None when unknown or gone)."""
    if latest is None:
        return OnClaim.NEW
    if latest.state is StreamState.COMPLETED:
        done = (latest.final_size, latest.final_mtime_ns)
        return OnClaim.UPLOADED if at_path is not None and at_path == done else OnClaim.NEW
    if latest.state not in UNFINISHED:
        return OnClaim.NEW  # failed for good: the file may start a new stream
    return OnClaim.RUNNING if latest.stream_id in running else OnClaim.RESUME


# --- uploads no checkpoint knows (start-up) ------------------------------------------------


class Unknown(Enum):
    REBUILD = "rebuild"  # the store lost the stream: rebuild it from S3 and the file
    ATTACH = "attach"  # created just before a crash, before its id was checkpointed
    LEAVE = "leave"  # not ours to act on here (the sweeper's grace period decides)


def unknown_upload(key: str, stream_id: str | None, known: StreamRecord | None) -> Unknown:
    """``stream_id``: parsed from the upload's key (None: not a key we make); ``known``:
    the checkpoint of that stream, if any."""
    if stream_id is None:
        return Unknown.LEAVE
    if known is None:
        return Unknown.REBUILD
    if known.upload_id is None and known.state in UNFINISHED and known.key == key:
        return Unknown.ATTACH
    return Unknown.LEAVE


def superseded(upload_id: str, initiated_at: float, known: StreamRecord | None, *,
               now: float, grace: float) -> bool:
    """An upload of a stream that has moved on to another upload id, older than ``grace``
    (never one a peer has just created and not checkpointed yet)."""
    if known is None or known.upload_id is None or known.upload_id == upload_id:
        return False
    return now - initiated_at >= grace


# --- resuming a stream, as a state machine -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Open:
    """Open the stream's file by its path and inode; answered ``Opened``, ``FileGone``
    (nothing there, or another file) or ``CannotRead`` (warned; it stays unfinished)."""


@dataclass(frozen=True, slots=True)
class SayGone:
    """Log that the stream's file is gone (``found``: the file found instead, and why it
    is not the recording); answered ``Done``."""

    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind the stream to this instance's lease before its first write; ``Done``."""


@dataclass(frozen=True, slots=True)
class GetParts:
    """Read the stream's checkpointed parts; answered ``PartsRead``."""


@dataclass(frozen=True, slots=True)
class Ask:
    """Read the file found to answer ``question`` (``Recording.ASK_*``); ``Holds``."""

    question: Recording


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Bring the checkpoint in line with what S3 holds (``with_file``: parts may be adopted
    from the file found); answered ``Reconciled`` or ``Taken``."""

    with_file: bool


@dataclass(frozen=True, slots=True)
class FinishKept:
    """End the stream with what S3 holds (``core.kept``); ``Done``."""


@dataclass(frozen=True, slots=True)
class MarkTaken:
    """Another party made the stream's object: record it salvaged and over; ``Done``."""


ResumeAction = (Open | SayGone | Bind | GetParts | Ask | Reconcile | Checkpoint | FinishKept
                | MarkTaken)


@dataclass(frozen=True, slots=True)
class Done:
    pass


@dataclass(frozen=True, slots=True)
class Opened:
    here: bool  # at the stream's own path (its last or original one)


@dataclass(frozen=True, slots=True)
class FileGone:
    pass


@dataclass(frozen=True, slots=True)
class CannotRead:
    pass


@dataclass(frozen=True, slots=True)
class PartsRead:
    count: int
    body_known: bool  # the only part's record has the digest of its second half


@dataclass(frozen=True, slots=True)
class Holds:
    yes: bool


@dataclass(frozen=True, slots=True)
class Reconciled:
    pass


@dataclass(frozen=True, slots=True)
class Taken:
    """``UploadTaken``: another party made an object of the stream's upload."""


ResumeObservation = (Done | Opened | FileGone | CannotRead | PartsRead | Holds | Reconciled
                     | Taken | Checkpointed)


class Resumed(Enum):
    GOES_ON = "goes on"  # a worker for the stream follows the file found
    ENDED = "ended"  # its file gone: it ended here with what S3 holds
    REUSED = "reused"  # the file found is a new stream (from the descriptor held)
    UNREADABLE = "unreadable"  # it stays unfinished: looked at again later


def resuming() -> Generator[ResumeAction, ResumeObservation, Resumed]:
    """Resuming an unfinished stream from its checkpoint. The shell holds what the steps
    read (the descriptor, the record, the parts); an I/O error while asking the file's
    bytes defers the stream, raised past the machine (it says nothing of the bytes)."""
    opened = yield Open()
    if isinstance(opened, FileGone):  # only ENOENT or another file: end with what S3 holds
        _done((yield SayGone()))
        _done((yield Bind()))
        expect(PartsRead, (yield GetParts()))
        if isinstance((yield Reconcile(with_file=False)), Taken):
            _done((yield MarkTaken()))
            return Resumed.ENDED
        _done((yield FinishKept()))
        return Resumed.ENDED
    if isinstance(opened, CannotRead):
        return Resumed.UNREADABLE
    here = expect(Opened, opened).here
    _done((yield Bind()))
    parts = expect(PartsRead, (yield GetParts()))
    answers: dict[Recording, bool] = {}
    while (verdict := recording(
            parts=parts.count, here=here, body_known=parts.body_known,
            holds_last=answers.get(Recording.ASK_LAST),
            holds_first=answers.get(Recording.ASK_FIRST),
            holds_body=answers.get(Recording.ASK_BODY))) in _QUESTIONS:
        answers[verdict] = expect(Holds, (yield Ask(verdict))).yes
    if verdict is not Recording.IS_IT:
        reused = verdict is Recording.REUSED
        _done((yield SayGone("inode reused by another file" if reused
                             else "rewritten while nobody watched")))
        if isinstance((yield Reconcile(with_file=False)), Taken):
            _done((yield MarkTaken()))
            return Resumed.REUSED
        if not reused:
            # Checkpointed before anything acts on it, also over an end decided earlier (a
            # finalizing stream's idle end): a crash after the object is made must not
            # resume it as that earlier end (simulator seed 2001351).
            expect(Checkpointed, (yield Checkpoint(End.of(Status.TRUNCATED))))
        _done((yield FinishKept()))
        return Resumed.REUSED
    if isinstance((yield Reconcile(with_file=True)), Taken):
        _done((yield MarkTaken()))
        return Resumed.REUSED  # the file's bytes: a new stream, from this descriptor
    return Resumed.GOES_ON


_QUESTIONS = (Recording.ASK_LAST, Recording.ASK_FIRST, Recording.ASK_BODY)


def _done(seen: ResumeObservation) -> None:
    expect(Done, seen)
