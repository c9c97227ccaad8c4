"""CI seeds that reproduce a known, still-open hole of issue #10, as ``seed: reason``.

Each entry is an ``xfail(strict=True)``: when the hole is fixed the seed passes, the
strict xfail fails, and the entry must go. Add a seed only after showing that it fails
for that hole and nothing else.
"""

from __future__ import annotations

KNOWN_HOLES: dict[int, str] = {
    # Shown on main 787c9ec (post-fix): a crash between CompleteMultipartUpload and the
    # metadata of a truncated stream; on restart reconcile drops its parts, the stream is
    # marked failed ("lost its bytes before any part was uploaded") and the object stays
    # without a metadata document. Replay: python -m tests.sim 142
    142: "#10 hole 1 (still open in a variant): crash while a truncated stream finalizes",
}
