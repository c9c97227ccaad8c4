"""Driving a ``core`` state machine from scripted answers, without an event loop."""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Generic, TypeVar

_A = TypeVar("_A")
_O = TypeVar("_O")
_R = TypeVar("_R")


def drive(
    machine: Generator[_A, _O, _R], answer: Callable[[_A], _O], *, limit: int = 100
) -> tuple[list[_A], _R]:
    """The actions ``machine`` asks for, each answered by ``answer``, and its outcome.
    More than ``limit`` actions fails: a machine that does not end is a bug."""
    actions: list[_A] = []
    seen: _O | None = None
    while True:
        try:
            action = machine.send(seen) if seen is not None else next(machine)
        except StopIteration as stop:
            outcome: _R = stop.value
            return actions, outcome
        actions.append(action)
        assert len(actions) < limit, "the machine does not end"
        seen = answer(action)


class Script(Generic[_O]):
    """Answers by action kind: the next scripted answer for it, else ``usual``'s. ``done``
    says whether every scripted answer was used."""

    def __init__(
        self, usual: Mapping[str, _O], answers: Mapping[str, Sequence[_O]] | None = None
    ) -> None:
        self.usual = usual
        self.left = {kind: list(seen) for kind, seen in (answers or {}).items()}

    def __call__(self, action: object) -> _O:
        kind = type(action).__name__
        return self.left[kind].pop(0) if self.left.get(kind) else self.usual[kind]

    def done(self) -> bool:
        return not any(self.left.values())
