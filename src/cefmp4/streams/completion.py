"""When a stream is complete: the idle timeout, or the writer signals (SPEC §2.14).

:class:`CompletionPolicy` applies COMPLETE_ON_CLOSE_SECONDS, HOLD_WHILE_OPEN and
MAX_HOLD_SECONDS to what ``cefmp4.intake.writers`` sees; where neither signal is visible it falls
back to the idle timeout, so the defaults keep the behaviour without writer awareness.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from cefmp4.intake.writers import CloseWatcher, Ident, WriterScanner

log = structlog.get_logger("cefmp4.streams.completion")

Fingerprint = tuple[int, int]  # (st_size, st_mtime_ns)


class CompletedBy(enum.StrEnum):
    """What ended a stream (metadata ``completed_by``, SPEC §1.4)."""

    IDLE_TIMEOUT = "idle_timeout"
    WRITER_CLOSED = "writer_closed"
    HOLD_EXPIRED = "hold_expired"
    UPLOAD_COMMAND = "upload_command"
    TRUNCATED = "truncated"
    SOURCE_DELETED = "source_deleted"


@dataclass(frozen=True, slots=True)
class Verdict:
    """``complete``: what ends the stream now, or None to keep following it."""

    complete: CompletedBy | None
    recheck_in: float | None = None  # wake up this soon to ask again (None: no hurry)


@dataclass(slots=True)
class StreamWriters:
    """The writer signals of one stream, kept between polls."""

    ident: Ident
    close_fingerprint: Fingerprint | None = None
    close_seen_at: float | None = None
    hold_started: float | None = None
    holding: bool = False


class CompletionPolicy:
    """COMPLETE_ON_CLOSE_SECONDS / HOLD_WHILE_OPEN / MAX_HOLD_SECONDS over the two signals."""

    def __init__(
        self,
        *,
        complete_on_close: float | None,
        hold_while_open: bool,
        max_hold: float,
        closes: CloseWatcher | None,
        scanner: WriterScanner | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.complete_on_close = complete_on_close
        self.hold_while_open = hold_while_open
        self.max_hold = max_hold
        self.closes = closes
        self.scanner = scanner
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.complete_on_close is not None or self.hold_while_open

    def track(self, ident: Ident, path: str, wake: Callable[[], None]) -> StreamWriters:
        state = StreamWriters(ident)
        if self.complete_on_close is not None and self.closes is not None:
            self.closes.watch(ident, path, wake)
        return state

    def untrack(self, state: StreamWriters) -> None:
        if self.closes is not None:
            self.closes.unwatch(state.ident)

    async def _writers(self, ident: Ident) -> frozenset[int] | None:
        if self.scanner is None:
            return None
        return await self.scanner.writers_of(ident)

    async def decide(
        self, state: StreamWriters, *, fingerprint: Fingerprint, idle_for: float, timeout: float
    ) -> Verdict:
        """Whether a stream whose file is ``fingerprint`` and has not changed for
        ``idle_for`` seconds is complete now (``timeout`` is STREAM_TIMEOUT_SECONDS)."""
        now = self.clock()
        hints: list[float] = []
        if idle_for < timeout:
            state.hold_started = None
            state.holding = False
        closed = await self._closed_verdict(state, fingerprint, now, hints)
        if closed is not None:
            return closed
        if idle_for < timeout:
            return Verdict(None, min(hints) if hints else None)
        if not self.hold_while_open:
            return Verdict(CompletedBy.IDLE_TIMEOUT)
        writers = await self._writers(state.ident)
        if not writers:
            # Nobody visible holds it: closed during the hold, or never seen open.
            was_held = state.holding
            state.holding = False
            return Verdict(CompletedBy.WRITER_CLOSED if was_held else CompletedBy.IDLE_TIMEOUT)
        if state.hold_started is None:
            state.hold_started = now
            state.holding = True
            log.info("stream_held_open", writers=sorted(writers), max_hold_s=self.max_hold)
        held = now - state.hold_started
        if held >= self.max_hold:
            state.holding = False
            return Verdict(CompletedBy.HOLD_EXPIRED)
        return Verdict(None, self.max_hold - held)

    async def _closed_verdict(
        self, state: StreamWriters, fingerprint: Fingerprint, now: float, hints: list[float]
    ) -> Verdict | None:
        if self.complete_on_close is None or self.closes is None:
            return None
        closed_at = self.closes.closed_at(state.ident)
        if closed_at is None:
            return None
        if closed_at != state.close_seen_at:
            # A new close: remember what the file looked like right after it.
            state.close_seen_at = closed_at
            state.close_fingerprint = fingerprint
        elif fingerprint != state.close_fingerprint:
            # Written again after that close (a reopen): wait for the next close.
            state.close_fingerprint = None
        if state.close_fingerprint != fingerprint:
            return None
        since = now - closed_at
        if since < self.complete_on_close:
            hints.append(self.complete_on_close - since)
            return None
        if await self._writers(state.ident):
            return None  # reopened for writing and not changed yet: it is not finished
        return Verdict(CompletedBy.WRITER_CLOSED)
