"""CI seeds that reproduce a known, still-open hole of issue #10, as ``seed: reason``.

Each entry is an ``xfail(strict=True)``: when the hole is fixed the seed passes, the
strict xfail fails, and the entry must go. Add a seed only after showing that it fails
for that hole and nothing else.
"""

from __future__ import annotations

# Seed 142 was here: on main 787c9ec a crash between CompleteMultipartUpload and the
# metadata of a truncated stream left the object without a metadata document. After the
# merges of core's later fixes and the trust wrapper it runs clean (the schedule it draws
# differs too, so the variant is not proven gone: the soak still finds such seeds).
KNOWN_HOLES: dict[int, str] = {}
