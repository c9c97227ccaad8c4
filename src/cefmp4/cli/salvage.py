"""``cefmp4 salvage``: from any host with the S3 settings, turn the abandoned multipart
uploads under ``S3_KEY_PREFIX`` into readable objects (SPEC §1.1, §2.19).

The checkpoint store is consulted when there is one to consult (``REDIS_URL``, or an
embedded store at ``STATE_DIR``): an upload it names is its owner's, unless the owner is
provably gone (Redis: the file's lease expired and the file cannot be opened from here).
Exit 0 when everything found was salvaged or was not abandoned (and always for
``--dry-run``); 1 when an upload had to be left open (an object at its key, no part 1) or
a step failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, replace

from cefmp4.checkpoint import CheckpointStore, StreamRecord, StreamState
from cefmp4.checkpoint.sqlite import DB_NAME
from cefmp4.config.adapters import open_checkpoints, open_objects, protection_of
from cefmp4.config.settings import Settings
from cefmp4.core.ending import CompletedBy, Status
from cefmp4.core.keys import within_prefix
from cefmp4.core.salvage import Action
from cefmp4.runtime import logs
from cefmp4.runtime.errors import CefmpError
from cefmp4.storage.protection import is_bookkeeping
from cefmp4.streams.evidence import Evidence
from cefmp4.streams.probe import FfprobeProber
from cefmp4.streams.salvage import Known, Outcome, Salvager

_NOT_DONE = frozenset({StreamState.ACTIVE, StreamState.FINALIZING})
DEFAULT_OLDER_THAN = 900.0


async def abandoned(settings: Settings, *, older_than: float) -> list[Outcome]:
    """What ``cefmp4 salvage`` would do now (a dry run: changes nothing)."""
    return await _salvage(settings, dry_run=True, older_than=older_than)


def salvage_command(settings: Settings, *, dry_run: bool, as_json: bool,
                    older_than: float) -> int:
    outcomes = asyncio.run(_salvage(settings, dry_run=dry_run, older_than=older_than))
    if as_json:
        print(json.dumps([asdict(o) for o in outcomes], indent=2, ensure_ascii=False))
    else:
        for outcome in outcomes:
            print(logs.redact(outcome.line()))
        done = sum(o.done and o.action == Action.COMPLETE for o in outcomes)
        left = [o for o in outcomes if not o.ok]
        print(f"{len(outcomes)} uploads considered, {done} salvaged, {len(left)} left open"
              + (" (dry run: nothing changed)" if dry_run else ""), file=sys.stderr)
    return 0 if dry_run or all(o.ok for o in outcomes) else 1


async def _salvage(settings: Settings, *, dry_run: bool, older_than: float) -> list[Outcome]:
    prefix = settings.s3_key_prefix
    async with AsyncExitStack() as stack:
        objects = await stack.enter_async_context(open_objects(settings))
        store = await _open_store(settings, stack)
        records = await _records(store)
        salvager = Salvager(
            objects, prefix, prober=FfprobeProber(settings.ffprobe_path,
                                                  settings.probe_timeout_seconds),
            clock=time.time, instance=socket.gethostname(), template=settings.key_template,
            seal=Evidence(settings.signer(), protection_of(settings)).seal,
        )
        outcomes = await salvager.resume_interrupted(dry_run=dry_run)
        # Never our own bookkeeping (a checksum probe's upload, made and aborted at once).
        uploads = [u for u in await objects.list_multipart_uploads(prefix)
                   if within_prefix(prefix, u.key) and not is_bookkeeping(u.key)]
        known = {rid: await _known(store, rec) for rid, rec in records.items()}
        for plan in await salvager.survey(uploads, known, older_than=older_than):
            record = records.get(plan.upload.upload_id)
            try:
                outcome = await salvager.carry_out(plan, known.get(plan.upload.upload_id),
                                                   dry_run=dry_run)
            except CefmpError as exc:
                outcome = Outcome(plan.upload.key, plan.upload.upload_id, len(plan.used),
                                  plan.bytes, str(plan.action), f"failed: {exc}", done=False,
                                  ok=False)
            if outcome.done and record is not None and store is not None:
                # Its owner is gone: the record says what became of the stream, so that no
                # instance resumes an upload that is now an object.
                await store.put_stream(replace(
                    record, state=StreamState.COMPLETED, status=Status.SALVAGED.value,
                    completed_by=CompletedBy.SALVAGE.value, completed_at=time.time(),
                    final_size=plan.bytes))
            outcomes.append(outcome)
        return outcomes
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: the stack never swallows)


async def _open_store(settings: Settings, stack: AsyncExitStack) -> CheckpointStore | None:
    """The checkpoint store, when this host has one: Redis, or an existing embedded store
    (a fresh host has none, and none is created)."""
    if not settings.redis_url.get_secret_value() and not (
            settings.state_dir / DB_NAME).exists():
        return None
    return await stack.enter_async_context(open_checkpoints(settings, read_only=True))


async def _records(store: CheckpointStore | None) -> dict[str, StreamRecord]:
    if store is None:
        return {}
    records = await store.list_streams(_NOT_DONE)
    return {r.upload_id: r for r in records if r.upload_id}


async def _known(store: CheckpointStore | None, record: StreamRecord) -> Known:
    holder = getattr(store, "holder", None)
    gone = False
    if holder is not None:  # Redis: a lease per file, renewed while its owner lives
        with contextlib.suppress(CefmpError):
            gone = await holder(record.inode) is None and not await asyncio.to_thread(
                os.path.exists, record.path)
    return Known(record.stream_id, record.path, record.rel_path, record.started_at,
                 owner_gone=gone)
