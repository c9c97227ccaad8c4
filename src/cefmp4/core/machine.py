"""What the stream machines of ``core`` share: the checkpoint step, and the check that an
observation answers the action asked.

Each machine (``core.kept``, ``core.verified``) is a generator in the manner of h11: it
yields an *action*, is sent the *observation* that answers it, and returns its *outcome*.
Its runner in ``streams/finalize`` carries out one action at a time, so a checkpoint is
written before the next request starts — the one rule every ending relies on for a crash
to resume it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from cefmp4.core.ending import End


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Write the stream's record as finalizing with ``end``; answered ``Checkpointed``.
    ``seen_truncated``: the machine has just seen the file lose uploaded bytes (the
    runner says so in the log first)."""

    end: End
    seen_truncated: bool = False


@dataclass(frozen=True, slots=True)
class Checkpointed:
    pass


class Unexpected(Exception):
    """The shell answered an action with an observation that does not answer it: a bug in
    the shell, never an input to decide on."""


_O = TypeVar("_O")


def expect(kind: type[_O], seen: object) -> _O:
    if not isinstance(seen, kind):
        raise Unexpected(f"expected {kind.__name__}, got {type(seen).__name__}")
    return seen
