"""CI seeds that reproduce a known, still-open hole of issue #10, as ``seed: reason``.

Each entry is an ``xfail(strict=True)``: when the hole is fixed the seed passes, the
strict xfail fails, and the entry must go. Add a seed only after showing that it fails
for that hole and nothing else.
"""

from __future__ import annotations

KNOWN_HOLES: dict[int, str] = {}
