"""``cefmp4 verify``: prove a video object and its metadata unchanged (SPEC §2.22).

For each video: its metadata is read and its signature checked with the public key; the
object is read again in ranges (``RANGE`` bytes, ``WINDOW`` more requested ahead, so memory
stays under ``RANGE * (WINDOW + 1)`` whatever the object's size, and at a few MiB while the
hashing, not the network, is the bottleneck) and hashed as it arrives (SHA-256, and the
CRC64NVME when the metadata records one); size, SHA-256 and checksum are compared with the
metadata. One line per object, then a summary; exit 0 only if every object checked is
``ok``.

Verdicts, the first that applies: ``MISSING`` (the video or its metadata is not there),
``BAD SIGNATURE`` (signed by another key, or the document changed since it was signed: its
sizes and digests cannot be trusted), ``MISMATCH`` (the object's bytes are not the ones the
metadata describes, or the metadata names another object), ``UNSIGNED`` (bytes as
described, but nothing proves who described them), ``ok``. ``ERROR``: S3 could not be read.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cefmp4.config.adapters import open_objects
from cefmp4.config.evidence_settings import load_public_key
from cefmp4.config.settings import Settings
from cefmp4.core.hashing import crc64_b64, crc64nvme
from cefmp4.core.keys import metadata_key
from cefmp4.core.salvage import MAX_DOCUMENT_BYTES
from cefmp4.core.signature import Verdict, check_signature, key_id
from cefmp4.runtime.errors import CefmpError, ConfigError
from cefmp4.storage import ObjectInfo
from cefmp4.storage.protection import is_bookkeeping

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1

RANGE: Final = 32 * 1024 * 1024  # bytes per ranged GET
WINDOW: Final = 3  # ranged GETs requested ahead of the one being hashed
READ: Final = 1024 * 1024  # bytes hashed at a time as a range arrives
# Reads that return less than this on average: the network, not the hashing, is the
# bottleneck, and the ranges ahead are downloaded at once (``read_digests``).
NETWORK_BOUND: Final = 128 * 1024
METADATA_SUFFIX: Final = ".metadata.json"

OK: Final = "ok"
MISSING: Final = "MISSING"
BAD_SIGNATURE: Final = "BAD SIGNATURE"
MISMATCH: Final = "MISMATCH"
UNSIGNED: Final = "UNSIGNED"
ERROR: Final = "ERROR"


class VerifyStore(Protocol):
    """What verify reads: S3 (``S3ObjectStore``) or the in-memory store of the tests."""

    bucket: str

    async def head_object(self, key: str) -> ObjectInfo | None: ...
    async def get_object(self, key: str) -> bytes: ...
    async def get_range(self, key: str, start: int, end: int) -> bytes: ...
    async def list_keys(self, prefix: str) -> list[str]: ...


class RangeStream(Protocol):
    """A range's bytes as they arrive (``storage.s3_body.RangeBody``)."""

    async def read(self, size: int) -> bytes: ...
    async def aclose(self) -> None: ...


@runtime_checkable
class StreamingStore(VerifyStore, Protocol):
    """A store that streams a range (``S3ObjectStore``): each range is hashed as it
    arrives instead of joined into one ``bytes`` first (joining 16 MiB ranges, then hashing
    them in a thread, cost verify twice the CPU per GiB of boto3 + hashlib: issue 23).
    Other stores are read with ``get_range``."""

    async def open_range(self, key: str, start: int, end: int) -> RangeStream: ...


class _Whole:
    """A range read whole with ``get_range``, as a ``RangeStream`` of one chunk."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    async def read(self, size: int) -> bytes:
        data, self._data = self._data or b"", None
        return data

    async def aclose(self) -> None:
        self._data = None


@dataclass(frozen=True, slots=True)
class Result:
    key: str
    verdict: str
    reason: str = ""
    size: int | None = None
    sha256: str | None = None
    key_id: str | None = None

    @property
    def line(self) -> str:
        detail = self.reason or (
            f"{self.size} bytes, sha256 {self.sha256}, signed by key {self.key_id}"
        )
        return f"{self.verdict:<14}{self.key}  ({detail})"


@dataclass(frozen=True, slots=True)
class Digests:
    size: int
    sha256: str
    crc64nvme: str


def judge(
    key: str, doc: dict[str, Any], bucket: str, public_key: Ed25519PublicKey,
    read: Digests | None,
) -> Result:
    """The verdict on one object from its metadata ``doc`` and what reading it gave
    (``read`` None: the object is missing). Pure."""
    sig = check_signature(doc, public_key)
    if read is None:
        return Result(key, MISSING, "the video object is missing; its metadata is there")
    if sig.verdict is Verdict.BAD:
        return Result(key, BAD_SIGNATURE, sig.reason)
    problems = []
    if doc.get("s3_key") != key or doc.get("s3_bucket") != bucket:
        problems.append(f"the metadata describes s3://{doc.get('s3_bucket')}/{doc.get('s3_key')}")
    if doc.get("total_size_bytes") != read.size:
        problems.append(f"size {read.size}, metadata says {doc.get('total_size_bytes')}")
    if doc.get("sha256") != read.sha256:
        problems.append(f"sha256 {read.sha256}, metadata says {doc.get('sha256')}")
    whole = doc.get("full_object_checksum")
    if isinstance(whole, dict) and whole.get("value") not in (None, read.crc64nvme):
        problems.append(f"CRC64NVME {read.crc64nvme}, metadata says {whole.get('value')}")
    if problems:
        return Result(key, MISMATCH, "; ".join(problems))
    if sig.verdict is Verdict.UNSIGNED:
        return Result(key, UNSIGNED, f"{read.size} bytes and sha256 as described; no signature",
                      read.size, read.sha256)
    return Result(key, OK, "", read.size, read.sha256, key_id(public_key))


async def read_digests(
    store: VerifyStore, key: str, size: int, on_bytes: Callable[[int], None] = lambda _n: None
) -> Digests:
    """SHA-256 and CRC64NVME of ``size`` bytes of ``key``, read in ``RANGE`` ranges with
    ``WINDOW`` more requested ahead, each hashed ``READ`` bytes at a time as it arrives,
    on the event loop (a hop to a thread per chunk costs more than it overlaps).

    While the hashing is the bottleneck, a range requested ahead waits in its socket until
    its turn (aiohttp stops reading at 128 KiB): each byte is copied once and hashed, and
    memory stays at a few MiB. Once reads return little at a time (``NETWORK_BOUND``: the
    bytes trickle in), the ranges ahead are downloaded at once, in memory, so that a store
    that caps each connection is read over ``WINDOW + 1`` of them; memory then stays under
    ``RANGE * (WINDOW + 1)``."""
    open_range = _open(store)
    sha = hashlib.sha256()
    crc = 0
    starts = list(range(0, size, RANGE))
    ranges: list[_Range] = []  # requested, in order; the first is being hashed
    ahead = False
    try:
        for i, start in enumerate(starts):
            while len(ranges) <= WINDOW and i + len(ranges) < len(starts):
                nxt = starts[i + len(ranges)]
                ranges.append(_Range(asyncio.ensure_future(
                    open_range(key, nxt, min(size, nxt + RANGE)))))
                if ahead:
                    ranges[-1].read_ahead()
            head, want, got, reads = ranges[0], min(size, start + RANGE) - start, 0, 0
            while chunk := await head.read():
                got += len(chunk)
                reads += 1
                if got > want:
                    break
                sha.update(chunk)
                crc = crc64nvme(chunk, crc)
                on_bytes(len(chunk))
                if not ahead and got >= 4 * READ and got < reads * NETWORK_BOUND:
                    ahead = True
                    for later in ranges[1:]:
                        later.read_ahead()
            await ranges.pop(0).aclose()
            if got != want:
                raise CefmpError(f"GetObject of {key}: short range at byte {start}")
    finally:
        for left in ranges:
            await left.aclose()
    return Digests(size, sha.hexdigest(), crc64_b64(crc))


class _Range:
    """One ranged GET: read by the hasher when its turn comes, or from ``read_ahead`` on
    by a task of its own that keeps what it read for the hasher."""

    def __init__(self, opening: asyncio.Future[RangeStream]) -> None:
        self._opening = opening
        self._read: asyncio.Queue[bytes | Exception] | None = None
        self._task: asyncio.Task[None] | None = None

    def read_ahead(self) -> None:
        if self._task is None:
            self._read = asyncio.Queue()
            self._task = asyncio.ensure_future(self._fill(self._read))

    async def _fill(self, read: asyncio.Queue[bytes | Exception]) -> None:
        try:
            body = await self._opening
            while chunk := await body.read(READ):
                read.put_nowait(chunk)
            read.put_nowait(b"")
        except Exception as exc:  # the hasher raises it when it gets there
            read.put_nowait(exc)

    async def read(self) -> bytes:
        """Up to ``READ`` bytes as soon as there are any; ``b""`` at the end."""
        if self._read is None:
            return await (await self._opening).read(READ)
        chunk = await self._read.get()
        if isinstance(chunk, Exception):
            raise chunk
        return chunk

    async def aclose(self) -> None:
        for task in (self._task, self._opening):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._task, self._opening) if t is not None),
                             return_exceptions=True)
        if not self._opening.cancelled() and self._opening.exception() is None:
            await self._opening.result().aclose()


def _open(store: VerifyStore) -> Callable[[str, int, int], Awaitable[RangeStream]]:
    if isinstance(store, StreamingStore):
        return store.open_range

    async def whole(key: str, start: int, end: int) -> RangeStream:
        return _Whole(await store.get_range(key, start, end))

    return whole


async def verify_one(
    store: VerifyStore, key: str, public_key: Ed25519PublicKey,
    on_bytes: Callable[[int], None] = lambda _n: None,
) -> Result:
    try:
        meta = await store.head_object(metadata_key(key))
        if meta is None:
            video = await store.head_object(key)
            why = "no metadata" + ("" if video is not None else " and no video object")
            return Result(key, MISSING, why)
        if meta.size > MAX_DOCUMENT_BYTES:  # never read whole: it is not one of ours
            return Result(key, MISMATCH, f"the metadata is {meta.size} bytes, more than any "
                          "cefmp4 writes")
        try:
            doc = json.loads(await store.get_object(metadata_key(key)))
        except (ValueError, RecursionError):  # not JSON, or nested past Python's depth
            return Result(key, MISMATCH, "the metadata is not JSON")
        if not isinstance(doc, dict):
            return Result(key, MISMATCH, "the metadata is not a JSON object")
        return await _judged(store, key, doc, public_key, on_bytes)
    except CefmpError as exc:
        return Result(key, ERROR, str(exc))
    except RecursionError:  # parsed just under Python's depth, too deep to re-serialise
        return Result(key, MISMATCH, "the metadata is nested too deeply")


async def _judged(
    store: VerifyStore, key: str, doc: dict[str, Any], public_key: Ed25519PublicKey,
    on_bytes: Callable[[int], None],
) -> Result:
    """The verdict on the object at ``key`` against its parsed metadata ``doc``."""
    info = await store.head_object(key)
    if info is None:
        return judge(key, doc, store.bucket, public_key, None)
    if check_signature(doc, public_key).verdict is Verdict.BAD:
        # Its digests cannot be trusted: nothing to compare the bytes with.
        return judge(key, doc, store.bucket, public_key, Digests(info.size, "", ""))
    read = await read_digests(store, key, info.size, on_bytes)
    return judge(key, doc, store.bucket, public_key, read)


def video_keys(keys: list[str]) -> list[str]:
    """The videos among the keys of a listing: every metadata document's video, and every
    object that is neither metadata nor cefmp4's bookkeeping (a video without metadata is
    then reported MISSING)."""
    found = {k.removesuffix(METADATA_SUFFIX) for k in keys if k.endswith(METADATA_SUFFIX)}
    found.update(k for k in keys if not k.endswith(METADATA_SUFFIX))
    return sorted(k for k in found if not is_bookkeeping(k))


def _resolve(settings: Settings, key: str) -> str:
    """A key as given, or below S3_KEY_PREFIX when given relative to it; a metadata key
    stands for its video."""
    key = key.removeprefix(f"s3://{settings.s3_bucket_name}/").removesuffix(METADATA_SUFFIX)
    prefix = settings.s3_key_prefix
    return key if key.startswith(prefix) else prefix + key


def public_key_of(settings: Settings, path: Path | None) -> Ed25519PublicKey:
    if path is not None:
        try:
            return load_public_key(path)
        except ValueError as exc:
            raise ConfigError("--public-key", str(exc)) from None
    signer = settings.signer()
    if signer is None:
        raise ConfigError(
            "--public-key", "give the public key that signed the metadata "
            "(or set SIGNING_KEY_FILE to its private key)",
        )
    return signer.private_key.public_key()


def verify_command(
    settings: Settings, keys: list[str], *, all_keys: bool, public_key: Path | None,
    as_json: bool,
) -> int:
    if not keys and not all_keys:
        raise ConfigError("verify", "name the video keys to verify, or give --all")
    pub = public_key_of(settings, public_key)
    tty = sys.stdout.isatty() and not as_json
    results = asyncio.run(_verify(settings, keys, all_keys, pub, tty))
    if as_json:
        print(json.dumps([asdict(r) for r in results], indent=2, ensure_ascii=False))
    elif not tty:  # on a terminal each line was printed as its object was done
        for result in results:
            print(result.line, flush=True)
    counts: dict[str, int] = {}
    for result in results:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    print(f"verified {len(results)} object(s): {summary or 'none found'}",
          file=sys.stderr if as_json else sys.stdout)
    return EXIT_OK if results and all(r.verdict == OK for r in results) else EXIT_FAILED


async def _verify(
    settings: Settings, keys: list[str], all_keys: bool, pub: Ed25519PublicKey, tty: bool,
) -> list[Result]:
    async with open_objects(settings) as store:
        wanted = [_resolve(settings, k) for k in keys]
        if all_keys:
            wanted += video_keys(await store.list_keys(settings.s3_key_prefix))
        wanted = list(dict.fromkeys(wanted))
        if not tty:
            return [await verify_one(store, key, pub) for key in wanted]
        return await _with_progress(store, wanted, pub)


async def _with_progress(
    store: VerifyStore, keys: list[str], pub: Ed25519PublicKey
) -> list[Result]:
    # rich only where it draws: its import is start-up time that a pipe does not need.
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    results: list[Result] = []
    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), transient=True,
    ) as progress:
        for i, key in enumerate(keys, 1):
            info = await store.head_object(key)
            task = progress.add_task(f"{i}/{len(keys)} {key}", total=info.size if info else 0)

            def advance(n: int, task: Any = task) -> None:
                progress.advance(task, n)

            result = await verify_one(store, key, pub, advance)
            progress.remove_task(task)
            progress.console.print(result.line, highlight=False, markup=False, soft_wrap=True)
            results.append(result)
    return results
