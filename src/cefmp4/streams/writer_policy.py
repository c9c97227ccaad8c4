"""When a stream is complete: the idle timeout, or the writer signals (SPEC §2.14).

:class:`CompletionPolicy` applies COMPLETE_ON_CLOSE_SECONDS, HOLD_WHILE_OPEN and
MAX_HOLD_SECONDS to what ``cefmp4.intake.writers`` sees; where neither signal is visible it falls
back to the idle timeout, so the defaults keep the behaviour without writer awareness.

A file can be finished before cefmp4 looks at it: a segment that ffmpeg ``-f segment``/``-f
hls``, splitmuxsink, MediaMTX or Frigate wrote and closed in one burst, a finished file moved
or copied in, a file found at start-up. Its close happened before the close watch existed, so
no close event will ever come. For such a file the close window runs from when the stream saw
it (and from each later change), and at its end the stream asks for positive evidence that
nobody writes: the kernel's read lease, taken and given back at once (granted only while no
process anywhere holds the file open for writing), or a complete /proc walk where the lease
is not ours to take. Proven, the stream completes as ``writer_closed``; refused or unprovable,
it waits for a close event, a change, or the idle timeout (HOLD_WHILE_OPEN as before). The
answer is asked once per unchanged fingerprint, so a writer that holds the file open through
a pause costs one refused lease per quiet period.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from cefmp4.core.ending import CompletedBy
from cefmp4.core.identity import Ident, SizeMtime
from cefmp4.intake.writers import CloseWatcher, WriterScanner

log = structlog.get_logger("cefmp4.streams.writer_policy")

@dataclass(frozen=True, slots=True)
class Verdict:
    """``complete``: what ends the stream now, or None to keep following it."""

    complete: CompletedBy | None
    recheck_in: float | None = None  # wake up this soon to ask again (None: no hurry)


@dataclass(slots=True)
class StreamWriters:
    """The writer signals of one stream, kept between polls."""

    ident: Ident
    fd: int | None = None  # the stream's read-only descriptor: what the lease is asked on
    path: str = ""
    close_fingerprint: SizeMtime | None = None
    close_seen_at: float | None = None
    hold_started: float | None = None
    holding: bool = False
    # Without a close event: the file as first seen (or last changed), since when, and the
    # fingerprint for which the evidence of no writer was refused (not asked again).
    settled_fingerprint: SizeMtime | None = None
    settled_since: float = 0.0
    unproven: SizeMtime | None = None


# Blocking-free proof that no process holds the file open for writing: None when proven,
# else why not (``cefmp4.intake.writers.prove_no_writer``).
NoWriterProver = Callable[[int, str], Awaitable[str | None]]


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
        prove_no_writer: NoWriterProver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.complete_on_close = complete_on_close
        self.hold_while_open = hold_while_open
        self.max_hold = max_hold
        self.closes = closes
        self.scanner = scanner
        self.prove_no_writer = prove_no_writer
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.complete_on_close is not None or self.hold_while_open

    def track(
        self, ident: Ident, path: str, wake: Callable[[], None], fd: int | None = None
    ) -> StreamWriters:
        state = StreamWriters(ident, fd, path)
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
        self, state: StreamWriters, *, fingerprint: SizeMtime, idle_for: float, timeout: float
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
        self, state: StreamWriters, fingerprint: SizeMtime, now: float, hints: list[float]
    ) -> Verdict | None:
        if self.complete_on_close is None:
            return None
        closed_at = None if self.closes is None else self.closes.closed_at(state.ident)
        if closed_at is not None:
            if closed_at != state.close_seen_at:
                # A new close: remember what the file looked like right after it.
                state.close_seen_at = closed_at
                state.close_fingerprint = fingerprint
            elif fingerprint != state.close_fingerprint:
                # Written again after that close (a reopen): wait for the next close.
                state.close_fingerprint = None
            if state.close_fingerprint == fingerprint:
                since = now - closed_at
                if since < self.complete_on_close:
                    hints.append(self.complete_on_close - since)
                    return None
                if await self._writers(state.ident):
                    return None  # reopened for writing and not changed yet: not finished
                return Verdict(CompletedBy.WRITER_CLOSED)
        return await self._settled_verdict(state, fingerprint, now, hints)

    async def _settled_verdict(
        self, state: StreamWriters, fingerprint: SizeMtime, now: float, hints: list[float]
    ) -> Verdict | None:
        """No close event applies (the file was closed before the watch existed, or written
        again since): the close window runs from when this fingerprint was first seen, then
        the kernel (or /proc) must prove that nobody holds the file open for writing."""
        assert self.complete_on_close is not None
        if self.prove_no_writer is None or state.fd is None:
            return None
        if fingerprint != state.settled_fingerprint:
            state.settled_fingerprint, state.settled_since = fingerprint, now
        since = now - state.settled_since
        if since < self.complete_on_close:
            hints.append(self.complete_on_close - since)
            return None
        if state.unproven == fingerprint:
            return None  # refused for these very bytes: a close event or a change comes next
        why = await self.prove_no_writer(state.fd, state.path)
        if why is None:
            return Verdict(CompletedBy.WRITER_CLOSED)
        state.unproven = fingerprint
        log.debug("writer_not_ruled_out", reason=why)
        return None
