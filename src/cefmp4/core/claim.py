"""Claiming a file, as a state machine (SPEC §2.4, §2.6, §2.13).

A file the supervisor considers (an event, a rescan, start-up, a descriptor handed over by
a finished stream) becomes a stream only after several answers: the ownership lease,
which checkpoint the file's inode has now (another instance may have moved it on), whether
a completed stream's file is unchanged at its path, and what resuming the stream found
(the stream goes on, ended here, the file found is another recording, unreadable now).
Each turn is decided here; ``streams/supervisor`` carries out the actions. What a claimed
file becomes from its checkpoint is ``core.resume.on_claim``; whether the file found is
still the recording is ``core.resume.recording``, asked while resuming.

A lease lost at any step ends the claim: the shell raises it past the machine, as the
lease's owner now holds the file (``LeaseLost``), and releases what it holds.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from enum import Enum

from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.core.identity import SizeMtime
from cefmp4.core.machine import Unexpected, expect
from cefmp4.core.resume import OnClaim, on_claim

# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take the file's ownership lease; answered ``Acquired``."""


@dataclass(frozen=True, slots=True)
class CloseHeld:
    """Close the descriptor handed over with the claim (a peer owns the file); ``Done``."""


@dataclass(frozen=True, slots=True)
class FindByInode:
    """Read the newest checkpoint of the file's inode from the shared store; ``Found``."""


@dataclass(frozen=True, slots=True)
class Remember:
    """Keep a completed stream's file in the completed history; ``Done``."""

    record: StreamRecord


@dataclass(frozen=True, slots=True)
class StatPath:
    """stat the file's path; answered ``AtPath``."""


@dataclass(frozen=True, slots=True)
class AskRunning:
    """Which streams this instance runs now (after the awaits before: one may have started
    or ended meanwhile); answered ``RunningHere``."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Resume the unfinished stream ``record`` from its checkpoint (``taken_over``: of
    another instance, says the log); answered ``Resumed``, ``EndedHere``, ``Reused``,
    ``Unreadable``, ``Deferred`` or ``Malformed``."""

    record: StreamRecord
    taken_over: bool


@dataclass(frozen=True, slots=True)
class Forget:
    """The unfinished stream is dealt with: drop it from the start-up list; ``Done``."""


@dataclass(frozen=True, slots=True)
class StartNew:
    """Start a new stream of the file: from the descriptor the resume found
    (``from_found``), the one handed over with the claim, else its path; answered
    ``Started``, ``NotStarted`` or ``Deferred``."""

    from_found: bool


Action = (Acquire | CloseHeld | FindByInode | Remember | StatPath | AskRunning | Resume | Forget
          | StartNew)

# --- observations -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    pass


@dataclass(frozen=True, slots=True)
class Acquired:
    ok: bool  # False: a peer holds the lease


@dataclass(frozen=True, slots=True)
class Found:
    latest: StreamRecord | None


@dataclass(frozen=True, slots=True)
class AtPath:
    size_mtime: SizeMtime | None  # None: nothing there, or it cannot be stat'ed


@dataclass(frozen=True, slots=True)
class RunningHere:
    stream_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class Resumed:
    """The stream goes on: its worker is ready to run."""


@dataclass(frozen=True, slots=True)
class EndedHere:
    """The stream ended while resuming (its file gone: finished with what S3 holds)."""


@dataclass(frozen=True, slots=True)
class Reused:
    """The file found is not the stream's recording any more: the stream ended, and the
    file found (held open) is a new stream, never reopened by its path."""


@dataclass(frozen=True, slots=True)
class Unreadable:
    """The file cannot be read (warned): the stream stays unfinished, nothing is lost."""


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not now (out of descriptors, an I/O error): the file waits to be claimed again."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """The stream's checkpoint does not parse: quarantined by the store, never acted on."""


@dataclass(frozen=True, slots=True)
class Started:
    """A new stream's worker is ready to run."""


@dataclass(frozen=True, slots=True)
class NotStarted:
    """No stream: the file changed or went before it was opened, or its path cannot be a
    key (skipped, warned once)."""


Observation = (Done | Acquired | Found | AtPath | RunningHere | Resumed | EndedHere | Reused
               | Unreadable | Deferred | Malformed | Started | NotStarted)

# --- outcomes -------------------------------------------------------------------------------


class Claimed(Enum):
    RUN = "run"  # the worker made runs
    DEFER = "defer"  # the file waits (a peer's lease, or not now)
    NOTHING = "nothing"  # uploaded already, running here, ended, or no stream to make


Machine = Generator[Action, Observation, Claimed]


def claiming(*, held: bool, shared: bool, known: StreamRecord | None) -> Machine:
    """``held``: the claim came with a descriptor no path reaches (its checkpoint is not
    asked: it is a new stream); ``shared``: instances share the store (leases);
    ``known``: the unfinished checkpoint of the file's inode read at start-up."""
    if not expect(Acquired, (yield Acquire())).ok:
        if held:
            expect(Done, (yield CloseHeld()))
        return Claimed.DEFER
    latest = None if held else known
    if shared and not held:  # another instance may have moved it on
        latest = expect(Found, (yield FindByInode())).latest
    at_path = None
    if latest is not None and latest.state is StreamState.COMPLETED:
        expect(Done, (yield Remember(latest)))
        at_path = expect(AtPath, (yield StatPath())).size_mtime
    running = expect(RunningHere, (yield AskRunning())).stream_ids
    verdict = on_claim(latest, running=running, at_path=at_path)
    if verdict in (OnClaim.UPLOADED, OnClaim.RUNNING):
        return Claimed.NOTHING
    from_found = False
    if verdict is OnClaim.RESUME and latest is not None:
        resumed = yield from _resume(latest, shared)
        if resumed is not None:
            return resumed
        from_found = True  # the file found is another recording: a new stream of it
    seen = yield StartNew(from_found)
    match seen:
        case Started():
            return Claimed.RUN
        case Deferred():
            return Claimed.DEFER
        case _:
            expect(NotStarted, seen)
            return Claimed.NOTHING


def _resume(latest: StreamRecord, shared: bool) -> Generator[Action, Observation, Claimed | None]:
    """Resume the stream: how the claim ends, or None when the file found is a new stream."""
    seen = yield Resume(latest, taken_over=shared)
    if not isinstance(seen, Unreadable | Deferred):
        expect(Done, (yield Forget()))
    match seen:
        case Resumed():
            return Claimed.RUN
        case Deferred():
            return Claimed.DEFER
        case Reused():
            return None
        case EndedHere() | Unreadable() | Malformed():
            return Claimed.NOTHING
    raise Unexpected(f"Resume answered {type(seen).__name__}")
