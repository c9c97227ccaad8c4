"""Ending a stream with the verified file, as a state machine (SPEC §2.3, §2.4).

A stream whose follow loop stopped ends in one of two ways. Its object is the file, proved
byte for byte: every uploaded range hashed again, every part that changed sent again, the
file unchanged since it was hashed, then the Complete. Or, when the file lost bytes S3
already holds, its object is what S3 holds (``core.kept``). Which one can change at any
turn: the file shrinks while a part or the Complete is held back, S3 forgets the upload,
an object turns out to stand at the key. Every such turn is decided here;
``streams/finalize.finalize`` carries out the actions and reports what it saw.

:func:`verified_ending` is a generator (see ``core.machine``): it yields an action, is sent
the observation answering it, and returns Publish (the verified object stands) or Keep
(end with what S3 holds). Inside, a turn that ends the attempt (the file shrank, the upload
is gone, an object stands) is raised from where it is seen and caught in one place, so
each step reads top to bottom; every path is a row of ``tests/unit/test_verified.py``.

Rules it makes explicit:

* **Checkpoint first**: the end is checkpointed before anything acts on it.
* **A truncation seen is the recording's end**, even when the file grows back before the
  step that saw it returns: the parts past it are not re-sent over the bytes S3 holds.
* **A Complete is of verified bytes**: its precondition (the file's fingerprint when it
  was verified) is re-checked by the shell before every attempt; a change means verify
  again, and a Complete that went through meanwhile stands.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass

from cefmp4.checkpoint import PartRecord
from cefmp4.core.ending import (
    CompletedBy,
    End,
    Status,
    end_of,
    fate,
    keeps_what_s3_holds,
    truncated,
)
from cefmp4.core.hashing import FileDigest, RangeDigest, same_bytes
from cefmp4.core.identity import Fingerprint, Ident
from cefmp4.core.machine import Checkpoint, Checkpointed, Unexpected, expect

# --- a hashing pass, and what it shows -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Digest:
    """A hashing pass over the held file (``streams/recheck.digest_now``)."""

    fingerprint: Fingerprint  # of the file just before it was hashed
    trusted: bool  # the fingerprint proves the bytes did not change while hashed
    result: FileDigest
    mtime_ns: int  # the mtime of the bytes that were hashed


def stale_parts(digest: Digest, parts: Mapping[int, PartRecord]) -> list[RangeDigest]:
    """Ranges of the file whose uploaded part is missing or holds other bytes."""
    return [
        d for d in digest.result.parts
        if (p := parts.get(d.part_number)) is None
        or not same_bytes(p.md5, d.digest) or p.size != d.size or p.offset != d.offset
    ]


def verified(digest: Digest, parts: Mapping[int, PartRecord]) -> list[PartRecord] | None:
    """The parts making up exactly the digested bytes, or None if any differs."""
    wanted = digest.result.parts
    chosen = [parts.get(d.part_number) for d in wanted]
    for part, d in zip(chosen, wanted, strict=True):
        if part is None or not same_bytes(part.md5, d.digest) or part.size != d.size:
            return None
    return [p for p in chosen if p is not None]


# --- actions: what the shell does next ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class CancelBeyond:
    """Cancel the parts in flight past the file's size (it shrank); answered ``Done``."""


@dataclass(frozen=True, slots=True)
class Settle:
    """Wait for the parts in flight, up to the drain timeout, watching the file: answered
    ``Drained`` or ``Shrunk``. What fails here suspends the stream (its end is not
    decided yet): it resumes later, from its checkpoint."""


@dataclass(frozen=True, slots=True)
class LookFate:
    """fstat the held file and stat its path; answered ``FateSeen``."""


@dataclass(frozen=True, slots=True)
class QuickStart:
    """A file finished before its stream began and unchanged since needs no second read:
    send its missing parts; answered ``Done``, or ``NotQuick`` for any other file."""


@dataclass(frozen=True, slots=True)
class QuickFinish:
    """Its parts and the SHA-256 built as they were read, if the file is still as it was
    when the stream began; answered ``Verified`` or ``NotQuick``."""


@dataclass(frozen=True, slots=True)
class TakePredigest:
    """The pass made while the stream waited out its idle timeout, if still valid for the
    file; answered ``Digested``."""


@dataclass(frozen=True, slots=True)
class DigestNow:
    """Hash the whole file now, watching it; answered ``Digested`` or ``Shrunk``."""


@dataclass(frozen=True, slots=True)
class Look:
    """fstat the held file and read the parts ledger; answered ``Looked``."""


@dataclass(frozen=True, slots=True)
class Resend:
    """Forget the parts past the first ``keep`` and send ``ranges`` (number, offset, size)
    again; answered ``Done``."""

    keep: int
    ranges: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True, slots=True)
class Drain:
    """Wait for every part in flight, watching the file; answered ``Drained`` or
    ``Shrunk``."""


@dataclass(frozen=True, slots=True)
class PutEmpty:
    """Write the empty object of an empty recording; answered ``Completed``."""


@dataclass(frozen=True, slots=True)
class Complete:
    """CompleteMultipartUpload of ``parts``, on condition that the file's fingerprint is
    still ``unchanged`` (re-checked before every attempt, and the file watched meanwhile):
    answered ``Completed``, ``Changed``, ``Shrunk`` or ``UploadGone``."""

    parts: tuple[PartRecord, ...]
    unchanged: Fingerprint


@dataclass(frozen=True, slots=True)
class Restart:
    """S3 forgot the upload: start the stream again from byte 0 (a new upload); answered
    ``Done``, or ``ObjectThere`` when the object turns out to be complete already."""

    why: str


Action = (Checkpoint | CancelBeyond | Settle | LookFate | QuickStart | QuickFinish
          | TakePredigest | DigestNow | Look | Resend | Drain | PutEmpty | Complete | Restart)

# --- observations: what the shell saw -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    pass


@dataclass(frozen=True, slots=True)
class Drained:
    pass


@dataclass(frozen=True, slots=True)
class Shrunk:
    """The file lost uploaded bytes while the step ran (it may have grown back since)."""


@dataclass(frozen=True, slots=True)
class FateSeen:
    """``links``/``held``: fstat of the held descriptor; ``at_path``: what stands at the
    stream's path now (None: nothing)."""

    links: int
    held: Ident
    at_path: Ident | None


@dataclass(frozen=True, slots=True)
class NotQuick:
    pass


@dataclass(frozen=True, slots=True)
class Verified:
    """The object's parts, its SHA-256, the mtime of the bytes they hold, and the file's
    fingerprint when they were proved its bytes."""

    parts: tuple[PartRecord, ...]
    sha256: str
    mtime_ns: int
    fingerprint: Fingerprint


@dataclass(frozen=True, slots=True)
class Digested:
    digest: Digest | None


@dataclass(frozen=True, slots=True)
class Looked:
    """The held file's size and fingerprint, how far the uploaded parts reach, and the
    parts the stream holds."""

    size: int
    fingerprint: Fingerprint
    extent: int
    parts: Mapping[int, PartRecord]


@dataclass(frozen=True, slots=True)
class Completed:
    pass


@dataclass(frozen=True, slots=True)
class Changed:
    """The Complete was not sent: the file is no longer as it was verified."""


@dataclass(frozen=True, slots=True)
class UploadGone:
    """S3 answered NoSuchUpload, and the object is not the one these parts make."""

    why: str


@dataclass(frozen=True, slots=True)
class ObjectThere:
    """An object already stands at the key (completed before a crash): it is never
    overwritten. Any step that talks to S3 may answer this."""


Observation = (Checkpointed | Done | Drained | Shrunk | FateSeen | NotQuick | Verified
               | Digested | Looked | Completed | Changed | UploadGone | ObjectThere)

# --- outcomes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """The verified object stands: probe it, write its metadata, mark it completed."""

    end: End
    made: Verified


@dataclass(frozen=True, slots=True)
class Keep:
    """End with what S3 holds (``core.kept``), the end checkpointed. ``standing``: an
    object already stands at the key (the parts in flight are not waited for, and the
    running SHA-256 does not describe it)."""

    standing: bool = False


Outcome = Publish | Keep
Machine = Generator[Action, Observation, Outcome]


def verified_ending(
    *, resumed: bool, truncated_now: bool, recorded: End, judged: CompletedBy | None
) -> Machine:
    """The ending of a stream whose follow loop stopped. ``resumed``: its end was
    checkpointed before a restart (``recorded``); ``truncated_now``: the follow loop saw the
    file lose uploaded bytes; ``judged``: what completed it otherwise (§2.14)."""
    seen_now = False
    if truncated_now:
        expect(Done, (yield CancelBeyond()))
    elif isinstance((yield Settle()), Shrunk):
        # While a part was held back, even if the file grew back since: what was uploaded
        # stands.
        truncated_now = seen_now = True
    elif resumed:
        looked = expect(Looked, (yield Look()))
        truncated_now = seen_now = truncated(looked.size, looked.extent)  # while down
    end = recorded
    if not resumed or truncated_now:
        seen = expect(FateSeen, (yield LookFate()))
        end = end_of(truncated_now=truncated_now, fate=fate(seen.links, seen.held, seen.at_path),
                     judged=judged)
        expect(Checkpointed, (yield Checkpoint(end, seen_truncated=seen_now)))
    if keeps_what_s3_holds(end, truncated_now=truncated_now, resumed=resumed):
        return Keep()  # the end is checkpointed: parts in flight below the cut finish
    while True:
        try:
            return Publish(end, (yield from _verified_object()))
        except _Truncated:
            # Bytes S3 holds left the file while we verified: they make the object.
            expect(Checkpointed, (yield Checkpoint(End.of(Status.TRUNCATED), seen_truncated=True)))
            return Keep()
        except _Gone as gone:
            restarted = yield Restart(gone.why)
            if isinstance(restarted, ObjectThere):
                return Keep(standing=True)
            expect(Done, restarted)
        except _Standing:
            # Completed before a crash: that object stands, whatever the file holds now.
            return Keep(standing=True)


class _Truncated(Exception):
    pass


class _Gone(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _Standing(Exception):
    pass


def _ask(action: Action) -> Generator[Action, Observation, Observation]:
    """``action``'s answer; the turns that end an attempt are raised."""
    seen = yield action
    match seen:
        case Shrunk():
            raise _Truncated
        case UploadGone():
            raise _Gone(seen.why)
        case ObjectThere():
            raise _Standing
    return seen


def _verified_object() -> Generator[Action, Observation, Verified]:
    """Make the object of the verified file."""
    while True:
        made = yield from _upload_rest_verified()
        if not made.parts:
            expect(Completed, (yield from _ask(PutEmpty())))
            return made
        # A Complete retried after an outage must still be of the file's bytes: a write
        # (or an unlink) since they were verified means verify again first.
        if not isinstance((yield from _ask(Complete(made.parts, made.fingerprint))), Changed):
            return made


def _upload_rest_verified() -> Generator[Action, Observation, Verified]:
    """Upload every changed part; return only once the file is proved unchanged since it
    was hashed."""
    if isinstance((yield QuickStart()), Done):
        yield from _drain()
        quick = yield QuickFinish()
        if isinstance(quick, Verified):
            return quick
        expect(NotQuick, quick)
    digest = expect(Digested, (yield TakePredigest())).digest
    while True:
        if digest is None:
            digest = expect(Digested, (yield from _ask(DigestNow()))).digest
            if digest is None:
                raise Unexpected("DigestNow answered without a digest")
        looked = expect(Looked, (yield Look()))
        if truncated(looked.size, looked.extent):
            raise _Truncated
        stale = stale_parts(digest, looked.parts)
        expect(Done, (yield Resend(len(digest.result.parts),
                                   tuple((d.part_number, d.offset, d.size) for d in stale))))
        looked = yield from _drain()
        # Never without the fingerprint check: a write since the pass began means the
        # bytes S3 holds may not be the file's; with parts re-sent, the pass must also
        # have been trusted (settled) to prove the bytes did not move while hashed.
        if looked.fingerprint == digest.fingerprint and (not stale or digest.trusted):
            parts = verified(digest, looked.parts)
            if parts is not None:
                return Verified(tuple(parts), digest.result.sha256, digest.mtime_ns,
                                digest.fingerprint)
        digest = None  # the recorder wrote while we uploaded: hash everything again


def _drain() -> Generator[Action, Observation, Looked]:
    """Every part in flight done, and the file not shorter than they reach; what it is."""
    expect(Drained, (yield from _ask(Drain())))
    looked = expect(Looked, (yield Look()))
    if truncated(looked.size, looked.extent):
        raise _Truncated
    return looked
