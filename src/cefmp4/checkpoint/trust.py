"""Checkpoint records are input, not truth (SPEC §2.18): the pipeline reads the store
through :class:`TrustedCheckpoints`, which leaves out every record ``untrusted_reason``
flags (a path outside WATCH_DIR, a key outside S3_KEY_PREFIX, another bucket) and every
stream whose parts do not parse, with one warning each per process. Nothing reads them
behind its back: one wrapper at the composition root instead of a check at each caller.

Left out is not forgotten: :func:`held_upload_ids` tells which of some unknown uploads
they (or records the store itself quarantined) name, so that the sweeper never aborts
them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import structlog

from cefmp4.checkpoint import (
    CheckpointStore,
    CompletedFile,
    MalformedRecord,
    PartRecord,
    QuarantinedRecord,
    StreamRecord,
    untrusted_completed,
    untrusted_reason,
)
from cefmp4.checkpoint.records import StreamState
from cefmp4.runtime import logs

log = structlog.get_logger("cefmp4.checkpoint.trust")


@dataclass(frozen=True, slots=True)
class Untrusted:
    record: StreamRecord | CompletedFile
    reason: str

    def as_quarantined(self) -> QuarantinedRecord:
        r = self.record
        if isinstance(r, CompletedFile):
            upload_id, state = None, StreamState.COMPLETED.value
        else:
            upload_id, state = r.upload_id, str(r.state)
        return QuarantinedRecord(
            stream_id=r.stream_id, reason=self.reason, path=r.path, key=r.key,
            upload_id=upload_id, state=state,
        )  # fmt: skip


class TrustedCheckpoints:
    """A ``CheckpointStore`` that hides untrusted records (writes pass straight through:
    the pipeline only writes records it made, or loaded through here)."""

    def __init__(
        self, store: CheckpointStore, watch_dir: Path, key_prefix: str, bucket: str | None,
        *, warn: bool = True,
    ) -> None:  # fmt: skip
        self.store, self._warn = store, warn
        self._watch_dir, self._key_prefix, self._bucket = watch_dir, key_prefix, bucket
        roots = {os.path.abspath(watch_dir), os.path.realpath(watch_dir)}
        self._roots = tuple(os.path.join(r, "") for r in roots)  # for untrusted_completed
        self.untrusted: dict[str, Untrusted] = {}  # stream id -> why; kept for the reports

    def __repr__(self) -> str:
        return f"TrustedCheckpoints({self.store!r})"

    def _flag(self, record: StreamRecord | CompletedFile, reason: str) -> None:
        if record.stream_id not in self.untrusted:
            self.untrusted[record.stream_id] = Untrusted(record, reason)
            if not self._warn:  # ``status`` and ``check`` list them instead
                return
            log.warning(
                logs.RECORD_QUARANTINED, stream_id=record.stream_id, reason=reason,
                hint="never acted on; shown by 'cefmp4 status' and 'cefmp4 check'",
            )  # fmt: skip

    def _trusted(self, record: StreamRecord) -> bool:
        if record.stream_id in self.untrusted:
            return False
        reason = untrusted_reason(record, self._watch_dir, self._key_prefix, bucket=self._bucket)
        if reason is not None:
            self._flag(record, reason)
        return reason is None

    async def ping(self) -> None:
        await self.store.ping()

    async def put_stream(self, record: StreamRecord) -> None:
        await self.store.put_stream(record)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        record = await self.store.get_stream(stream_id)
        return record if record is not None and self._trusted(record) else None

    async def list_streams(
        self, states: frozenset[StreamState] | None = None
    ) -> list[StreamRecord]:
        return [r for r in await self.store.list_streams(states) if self._trusted(r)]

    async def list_quarantined(self) -> list[QuarantinedRecord]:
        """The store's quarantined records, then the untrusted ones met so far."""
        found = await self.store.list_quarantined()
        known = {q.stream_id for q in found}
        found.extend(u.as_quarantined() for u in self.untrusted.values() if u.record.stream_id
                     not in known)  # fmt: skip
        return found

    async def naming_uploads(
        self, upload_ids: frozenset[str]
    ) -> list[StreamRecord | QuarantinedRecord]:
        """The store's answer, with each untrusted record as its ``QuarantinedRecord``."""
        out: list[StreamRecord | QuarantinedRecord] = []
        for found in await self.store.naming_uploads(upload_ids):
            if isinstance(found, StreamRecord) and not self._trusted(found):
                out.append(self.untrusted[found.stream_id].as_quarantined())
            else:
                out.append(found)
        return out

    async def completed_files(
        self, cursor: str = "", limit: int = 5000
    ) -> tuple[list[CompletedFile], str]:
        """A page of fingerprints, each checked lexically (``untrusted_completed``)."""
        page, after = await self.store.completed_files(cursor, limit)
        kept: list[CompletedFile] = []
        for done in page:
            reason = untrusted_completed(done, self._roots, self._key_prefix, self._bucket)
            if reason is None and done.stream_id not in self.untrusted:
                kept.append(done)
            elif reason is not None:
                self._flag(done, reason)
        return kept, after

    async def find_by_inode(self, inode: int) -> list[StreamRecord]:
        return [r for r in await self.store.find_by_inode(inode) if self._trusted(r)]

    async def put_part(self, stream_id: str, part: PartRecord) -> None:
        await self.store.put_part(stream_id, part)

    async def get_parts(self, stream_id: str) -> list[PartRecord]:
        """The parts; a stream whose parts do not parse is left out from now on."""
        try:
            return await self.store.get_parts(stream_id)
        except MalformedRecord as exc:
            record = await self.store.get_stream(stream_id)
            if record is not None:
                self._flag(record, f"parts do not parse: {exc}")
            raise

    async def delete_parts(self, stream_id: str) -> None:
        await self.store.delete_parts(stream_id)

    async def delete_stream(self, stream_id: str) -> None:
        await self.store.delete_stream(stream_id)

    async def aclose(self) -> None:
        await self.store.aclose()


async def held_upload_ids(store: CheckpointStore, upload_ids: frozenset[str]) -> set[str]:
    """Which of ``upload_ids`` records that are not acted on name: never orphans to abort."""
    found = await store.naming_uploads(upload_ids)
    return {q.upload_id for q in found if isinstance(q, QuarantinedRecord) and q.upload_id}
