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
    """Components currently failing. Not thread-safe: touch it from the event loop only.

    A component can fail on behalf of several holders at once (each stream's retry loop
    of an S3 operation): it stays failing until every holder is ok again, so one stream's
    successful retry does not hide another's that still fails. Its age is its oldest
    holder's."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failing: dict[str, dict[object, Failure]] = {}

    def fail(self, component: str, error: BaseException | str, holder: object = None) -> None:
        """``component`` is failing with ``error`` (an exception, or an error class name),
        as seen by ``holder`` (None: the component itself)."""
        name = error if isinstance(error, str) else type(error).__name__
        holders = self._failing.setdefault(component, {})
        previous = holders.get(holder)
        since = previous.since if previous is not None else self._clock()
        holders[holder] = Failure(name, since)

    def ok(self, component: str, holder: object = None) -> None:
        """``component`` works again for ``holder``."""
        holders = self._failing.get(component)
        if holders is None:
            return
        holders.pop(holder, None)
        if not holders:
            del self._failing[component]

    def failures(self, older_than: float = 0.0) -> dict[str, str]:
        """component -> error class, for components failing for at least ``older_than`` s
        (by any one holder)."""
        now = self._clock()
        found: dict[str, str] = {}
        for name, holders in sorted(self._failing.items()):
            oldest = min(holders.values(), key=lambda failure: failure.since)
            if now - oldest.since >= older_than:
                found[name] = oldest.error_class
        return found
