"""Crash points for tests: end the process at an exact step boundary.

``CEFMP4_FAILPOINTS=after_create,after_upload_part`` makes the daemon exit abruptly (no
cleanup, like SIGKILL) the first time it reaches a named point, so tests can prove that every
step boundary converges after a restart. Unset in production: ``hit`` is then a set lookup.
"""

from __future__ import annotations

import os
import sys

POINTS = frozenset({
    "after_create", "after_upload_part", "after_complete", "after_metadata",
    # after-upload actions (cefmp4.after.after_upload): completion + intent written, the source
    # renamed to its hidden name (delete), placed in the target (move), removed.
    "after_outbox", "after_upload_staged", "after_upload_copied", "after_upload_done",
})
CRASH_EXIT_STATUS = 86


class Failpoints:
    def __init__(self, spec: str = "") -> None:
        names = {name.strip() for name in spec.split(",") if name.strip()}
        unknown = names - POINTS
        if unknown:
            raise ValueError(f"unknown failpoint(s): {', '.join(sorted(unknown))}")
        self.armed = frozenset(names)

    def hit(self, name: str) -> None:
        if name in self.armed:
            sys.stderr.write(f"cefmp4: failpoint {name} reached, exiting\n")
            sys.stderr.flush()
            os._exit(CRASH_EXIT_STATUS)
