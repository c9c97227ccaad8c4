"""``cefmp4 status``: every stream the checkpoints know, the records quarantined (never
acted on, with the reason), and the multipart uploads under the prefix that no checkpoint
knows. Read-only: it works beside a running daemon. Every cell goes through
``logs.redact``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cefmp4.checkpoint import MalformedRecord, StreamRecord
from cefmp4.checkpoint.sqlite import DB_NAME
from cefmp4.checkpoint.trust import TrustedCheckpoints
from cefmp4.cli.uplink_view import streams_backlog, uplink_lines, watch_dir_backlog
from cefmp4.config.adapters import open_checkpoints, open_objects, pipeline_config
from cefmp4.config.settings import Settings
from cefmp4.runtime import logs
from cefmp4.runtime.errors import CefmpError
from cefmp4.storage import MultipartUpload

QUARANTINED = "quarantined"  # the state shown for a record that is never acted on


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


async def _status_rows(
    settings: Settings, streams: list[tuple[StreamRecord, int]] | None = None
) -> list[dict[str, Any]]:
    """``streams``: filled with each stream's record and bytes in S3 (the uplink's backlog)."""
    if not settings.redis_url.get_secret_value() and not (settings.state_dir / DB_NAME).exists():
        return []  # nothing has run with this STATE_DIR yet: no streams, not an error
    async with open_checkpoints(settings, read_only=True) as raw:
        config = pipeline_config(settings)
        store = TrustedCheckpoints(
            raw, config.watch_dir, config.key_prefix, settings.s3_bucket_name, warn=False
        )
        records = await store.list_streams()
        rows = []
        for rec in sorted(records, key=lambda r: r.started_at):
            try:
                parts = await store.get_parts(rec.stream_id)
            except MalformedRecord:
                continue  # listed below, with the quarantined records
            if streams is not None:
                streams.append((rec, sum(p.size for p in parts)))
            rows.append({
                "stream_id": rec.stream_id,
                "path": rec.path,
                "state": rec.state.value,
                "status": rec.status,
                "bytes_uploaded": sum(p.size for p in parts),
                "parts_uploaded": len(parts),
                "s3_key": rec.key,
                "upload_id": rec.upload_id,
                "started_at_utc": _iso(rec.started_at),
                "last_activity_utc": _iso(max(rec.last_activity_at, *(p.uploaded_at for p in parts))
                                          if parts else rec.last_activity_at),
                "error": rec.error,
            })
        # Records that are never acted on (they do not parse, or point outside WATCH_DIR or
        # the prefix): their own rows, the reason in ``error``.
        for q in await store.list_quarantined():
            rows.append({
                "stream_id": q.stream_id, "path": q.path, "state": QUARANTINED,
                "status": None, "bytes_uploaded": 0, "parts_uploaded": 0, "s3_key": q.key,
                "upload_id": q.upload_id, "started_at_utc": None, "last_activity_utc": None,
                "error": q.reason,
            })  # fmt: skip
        return rows


def status_command(settings: Settings, *, as_json: bool) -> int:
    uploaded: list[tuple[StreamRecord, int]] = []
    rows = asyncio.run(_status_rows(settings, uploaded))
    if as_json:
        print(logs.redact(json.dumps(rows, indent=2)))
        return 0
    streams = [row for row in rows if row["state"] != QUARANTINED]
    table = Table(title=f"cefmp4 streams ({len(streams)})")
    # The id stays whole (it is what an operator greps the logs for); the path folds.
    id_width = max((len(row["stream_id"]) for row in rows), default=len("stream_id"))
    table.add_column("stream_id", no_wrap=True, min_width=id_width)
    # The words of `--json`: "state" is where the stream is (active, finalizing, completed,
    # failed), "status" what its metadata says it is (complete, truncated, source_deleted).
    table.add_column("state", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("path", overflow="fold", min_width=16)
    for column in ("bytes", "parts", "last activity"):
        table.add_column(column, no_wrap=True)
    now = time.time()
    for row in streams:
        last = row["last_activity_utc"]
        ago = ""
        if last:
            ago = f"{now - datetime.fromisoformat(last).timestamp():.0f}s ago"
        table.add_row(*redacted([
            row["stream_id"], row["state"], row["status"] or "", row["path"],
            f"{row['bytes_uploaded']:,}", str(row["parts_uploaded"]), ago,
        ]))
    console = Console()
    if not console.is_terminal:
        # Piped or redirected: rich would assume 80 columns; lines may be as long as needed.
        console = Console(width=max(console.width, 200))
    console.print(table)
    _print_uplink(console, settings, uploaded, now)
    _print_quarantined(console, [row for row in rows if row["state"] == QUARANTINED])
    known = {row["upload_id"] for row in rows if row["upload_id"]}
    _print_unknown_uploads(console, settings, known)
    return 0


def _print_uplink(
    console: Console, settings: Settings, streams: list[tuple[StreamRecord, int]], now: float
) -> None:
    """SPEC §2.21: the limit in force, the backlog (every file under WATCH_DIR not in S3
    yet, not only the open streams') and the time to drain it."""
    try:
        backlog = watch_dir_backlog(settings, streams, now)
    except OSError as exc:  # WATCH_DIR unreadable: the limit is still worth saying
        backlog = streams_backlog([], now, settings.stream_timeout_seconds)
        console.print(logs.redact(f"(WATCH_DIR not scanned: {exc})"), markup=False)
    for line in uplink_lines(settings, backlog, now):
        console.print(logs.redact(line), markup=False)


def _print_quarantined(console: Console, rows: list[dict[str, Any]]) -> None:
    """SPEC §2.18: records kept as they are and never acted on, with the reason."""
    if not rows:
        return
    table = Table(title=f"quarantined records, never acted on ({len(rows)})")
    for column in ("stream_id", "reason", "path", "s3_key", "upload_id"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*redacted([
            str(row[name] or "") for name in ("stream_id", "error", "path", "s3_key", "upload_id")
        ]))  # fmt: skip
    console.print(table)


def _print_unknown_uploads(console: Console, settings: Settings, known: set[str]) -> None:
    """SPEC §2.13: multipart uploads under the prefix that no checkpoint knows."""
    try:
        uploads = asyncio.run(_list_uploads(settings))
    except (CefmpError, TimeoutError) as exc:
        console.print(logs.redact(
            f"(multipart uploads not listed: S3 did not answer: {exc or 'timeout'})"
        ), markup=False)
        return
    orphans = [u for u in uploads if u.upload_id not in known]
    if not orphans:
        console.print(
            f"no unknown multipart uploads under {settings.s3_key_prefix!r}", markup=False
        )
        return
    grace_h = settings.abort_orphan_uploads_after_hours
    table = Table(title=f"multipart uploads no checkpoint knows ({len(orphans)})")
    for column in ("key", "upload_id", "age", "the sweeper (salvages; aborts if empty)"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for upload in sorted(orphans, key=lambda u: u.initiated):
        age_h = (now - upload.initiated.timestamp()) / 3600
        # By its newest part: this is the earliest; each part added pushes it back.
        when = "never (ABORT_ORPHAN_UPLOADS_AFTER_HOURS=0)" if grace_h <= 0 else (
            "next sweep, if no part came since" if age_h >= grace_h
            else f"not before {grace_h - age_h:.1f} h"
        )
        table.add_row(*redacted([upload.key, upload.upload_id, f"{age_h:.1f} h", when]))
    console.print(table)


async def _list_uploads(settings: Settings) -> list[MultipartUpload]:
    async with (
        asyncio.timeout(20),
        open_objects(settings, connect_timeout=3, read_timeout=10) as store,
    ):
        return await store.list_multipart_uploads(settings.s3_key_prefix)


def redacted(cells: Sequence[str]) -> list[Text]:
    """Table cells with secrets masked, as plain text (a path is not rich markup)."""
    return [Text(logs.redact(cell)) for cell in cells]
