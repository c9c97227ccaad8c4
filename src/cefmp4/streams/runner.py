"""The runner of ``core``'s state machines: one action at a time.

A machine (``core.claim``, ``core.verified``, ``core.kept``) yields an action and is sent
what the shell saw; :func:`run_machine` asks the shell to carry out each action and sends
back its answer before the machine asks the next. So no two actions of a stream overlap,
and a checkpoint action completes before the next action starts: the rule every ending
relies on for a crash to resume it the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from typing import TypeVar

_A = TypeVar("_A")
_O = TypeVar("_O")
_R = TypeVar("_R")


async def run_machine(
    machine: Generator[_A, _O, _R], carry_out: Callable[[_A], Awaitable[_O]]
) -> _R:
    """Drive ``machine`` to its outcome, ``carry_out`` answering each action."""
    seen: _O | None = None
    while True:
        try:
            action = machine.send(seen) if seen is not None else next(machine)
        except StopIteration as stop:
            outcome: _R = stop.value
            return outcome
        seen = await carry_out(action)
