"""The other party of issue #25, and the ledger its invariants are judged by.

Another host runs ``cefmp4 salvage --older-than X`` at random moments (``adapter.OtherHost``:
the command's own code, with the S3 settings only), and the recorder's host may be lost. The
ledger is written from the requests S3 carried out, not from what anybody logged or
listed: when the owner (every lifetime of the app on the recorder's host) last added to an
upload, which tail segments it wrote, what each salvage by the other party turned into an
object, and what S3 held of each upload when the host was lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cefmp4.core.keys import stream_id_in
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.storage.protection import is_bookkeeping

TAIL = ".cefmp4/tail/"


@dataclass(frozen=True)
class Salvaged:
    """An upload the other party completed: the object it made, part by part."""

    key: str
    upload_id: str
    at: float
    body: bytes
    sizes: tuple[int, ...]  # its parts' sizes, in order


@dataclass(frozen=True)
class Held:
    """What S3 held of one open upload when the host was lost: its parts contiguous from 1
    (up to the first one S3 would not take before another: shorter than a part), then the
    bytes its stream's tail segments hold from there on (SPEC §2.19, §2.20)."""

    key: str
    upload_id: str
    parts: int
    data: bytes


def segment_range(key: str) -> tuple[int, int] | None:
    """``[start, end)`` of a tail segment's key (``…/{start:016x}-{end:016x}``), or None."""
    name = key.rsplit("/", 1)[-1]
    start, dash, end = name.partition("-")
    try:
        first, last = int(start, 16), int(end, 16)
    except ValueError:
        return None
    return (first, last) if dash and first < last else None


@dataclass
class Ledger:
    s3: MemoryObjectStore
    prefix: str
    part_size: int
    now: Callable[[], float]  # the loop's clock
    activity: dict[str, float] = field(default_factory=dict)  # upload id -> the owner's last
    tail_activity: dict[str, float] = field(default_factory=dict)  # segment key -> put at
    segments: list[tuple[str, bytes]] = field(default_factory=list)  # every one it wrote
    salvaged: list[Salvaged] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    held: dict[str, Held] = field(default_factory=dict)  # upload id -> at the host loss
    # Objects the lost host completed and had not described yet: salvage looks at uploads,
    # not objects, so nobody writes their metadata (their bytes are safe, readable).
    undescribed: frozenset[str] = frozenset()
    older_than: float | None = None  # the age limit of the other party's run under way
    aborted_empty: int = 0
    tail_parts: int = 0  # last parts the other party made of tail segments
    replaced: int = 0  # objects the other party completed an upload over
    # Each completed object's part sizes (a lost host's object may have no metadata).
    part_sizes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _parts: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _before: dict[str, bytes | None] = field(default_factory=dict)

    # --- the owner -----------------------------------------------------------------------

    def carry(self, op: str, args: tuple[Any, ...]) -> None:
        """Anybody's request, about to be carried out: a Complete's part sizes."""
        if op == "complete_multipart" and (upload := self.s3._uploads.get(args[1])):
            self._parts[args[1]] = tuple(
                len(upload.parts[n][0]) for n, _etag in args[2] if n in upload.parts
            )

    def carried(self, op: str, args: tuple[Any, ...], result: object) -> None:
        if op == "complete_multipart" and (sizes := self._parts.pop(args[1], None)):
            self.part_sizes[args[0]] = sizes

    def owner_carried(self, op: str, args: tuple[Any, ...], result: object) -> None:
        """A request of the app on the recorder's host that S3 carried out."""
        self.carried(op, args, result)
        if op == "create_multipart":
            self.activity[str(result)] = self.now()
        elif op == "upload_part":
            self.activity[args[1]] = self.now()
        elif op == "put_object" and TAIL in args[0]:
            self.segments.append((args[0], bytes(args[1])))
            self.tail_activity[args[0]] = self.now()

    def last_activity(self, key: str, upload_id: str) -> float | None:
        """When the owner last added to this upload (a part, a tail segment of its stream
        that S3 still holds, its creation); None for an upload the owner never made."""
        if upload_id not in self.activity:
            return None
        head = f"{self.prefix}{TAIL}{stream_id_in(self.prefix, key)}/"
        tail = [at for k, at in self.tail_activity.items()
                if k.startswith(head) and k in self.s3.objects]
        return max([self.activity[upload_id], *tail])

    # --- the other party -----------------------------------------------------------------

    def party_carry(self, op: str, args: tuple[Any, ...]) -> None:
        """The other party's request, about to be carried out by S3: (c) the age rule, at
        the very moment it takes effect; (a) an abort throws away no part."""
        if op not in ("complete_multipart", "abort_multipart"):
            return
        key, upload_id = args[0], args[1]
        upload = self.s3._uploads.get(upload_id)
        last = self.last_activity(key, upload_id)
        limit = self.older_than
        if last is not None and limit is not None and self.now() - last < limit:
            verb = "completed" if op == "complete_multipart" else "aborted"
            self.violations.append(
                f"(c) the other party {verb} {key} (upload {upload_id}) "
                f"{self.now() - last:.2f} s after its owner last added to it "
                f"(--older-than {limit:g})"
            )
        if upload is None:
            return
        if op == "abort_multipart" and upload.parts:
            self.violations.append(
                f"(a) the other party aborted {key} (upload {upload_id}) holding "
                f"{len(upload.parts)} parts"
            )
        if op == "complete_multipart":
            self.carry(op, args)
            old = self.s3.objects.get(key)
            self._before[upload_id] = None if old is None else old.body

    def party_carried(self, op: str, args: tuple[Any, ...], result: object) -> None:
        if op == "abort_multipart":
            self.aborted_empty += 1
        elif op == "upload_part":
            self.tail_parts += 1
        if op != "complete_multipart":
            return
        key, upload_id = args[0], args[1]
        sizes = self._parts.get(upload_id)
        self.carried(op, args, result)
        stored = self.s3.objects.get(key)
        old = self._before.pop(upload_id, None)
        if sizes is None or stored is None:
            return  # completed again (AWS answers so): the first one was recorded
        self.salvaged.append(Salvaged(key, upload_id, self.now(), stored.body, sizes))
        if old is not None:
            # SPEC §2.19: salvage never replaces an object (its survey's HEAD is stale when
            # an earlier step of the same run made one at that key).
            self.replaced += 1
            if not stored.body.startswith(old):
                self.violations.append(
                    f"(a) the other party completed {key} (upload {upload_id}, "
                    f"{len(stored.body)} B) over an object of {len(old)} B it does not hold"
                )

    # --- the host loss -------------------------------------------------------------------

    def snapshot_held(self) -> None:
        """What S3 holds of every open upload under the prefix, the moment the host is lost
        (every request of its process has been reaped)."""
        objects = self.s3.objects
        self.undescribed = frozenset(
            k for k in objects
            if k.startswith(self.prefix) and not is_bookkeeping(k)
            and not k.endswith(".metadata.json") and k + ".metadata.json" not in objects
        )
        for upload_id, upload in sorted(self.s3._uploads.items()):
            if not upload.key.startswith(self.prefix) or is_bookkeeping(upload.key):
                continue
            data = bytearray()
            number = 0
            short = False
            while not short and (part := upload.parts.get(number + 1)) is not None:
                data += part[0]
                number += 1
                short = len(part[0]) < self.part_size
            if not short:
                data += self._tail_from(upload.key, len(data))
            self.held[upload_id] = Held(upload.key, upload_id, number, bytes(data))

    def _tail_from(self, key: str, offset: int) -> bytes:
        sid = stream_id_in(self.prefix, key)
        if sid is None:
            return b""
        head = f"{self.prefix}{TAIL}{sid}/"
        found = []
        for name, stored in self.s3.objects.items():
            span = segment_range(name) if name.startswith(head) else None
            if span is not None and span[1] - span[0] == len(stored.body):
                found.append((span[0], span[1], stored.body))
        out = bytearray()
        while True:
            here = [s for s in found if s[0] <= offset < s[1]]
            if not here:
                return bytes(out)
            start, end, body = max(here, key=lambda s: s[1])
            out += body[offset - start:]
            offset = end
