"""What is failing right now, for ``/readyz`` and ``check`` (SPEC §1.5).

Every part of the daemon that can fail for a while — a dependency ping, a supervised
background task, a stream retrying one operation — reports here under a component name.
``/readyz`` is 503 while anything is reported; its body names the component and the error
class only, never the message (messages carry endpoints, paths and sometimes credentials).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Failure:
    error_class: str
    since: float  # monotonic time of the first failure in this run of failures


class Readiness:
    """Components currently failing. Not thread-safe: touch it from the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failing: dict[str, Failure] = {}

    def fail(self, component: str, error: BaseException | str) -> None:
        """``component`` is failing with ``error`` (an exception, or an error class name)."""
        name = error if isinstance(error, str) else type(error).__name__
        previous = self._failing.get(component)
        since = previous.since if previous is not None else self._clock()
        self._failing[component] = Failure(name, since)

    def ok(self, component: str) -> None:
        """``component`` works again."""
        self._failing.pop(component, None)

    def failures(self, older_than: float = 0.0) -> dict[str, str]:
        """component -> error class, for failures that have lasted at least ``older_than`` s."""
        now = self._clock()
        return {
            name: failure.error_class
            for name, failure in sorted(self._failing.items())
            if now - failure.since >= older_than
        }
