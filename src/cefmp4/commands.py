"""``cefmp4 upload`` and ``cefmp4 status``: one-shot commands on the same pipeline."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from cefmp4.app import App, open_checkpoints, open_objects
from cefmp4.checkpoint import StreamRecord
from cefmp4.checkpoint.sqlite import DB_NAME
from cefmp4.errors import CefmpError
from cefmp4.settings import Settings
from cefmp4.storage import MultipartUpload

EXIT_OK = 0
EXIT_FAILED = 1


def upload_command(settings: Settings, files: list[Path]) -> int:
    missing = [f for f in files if not f.is_file()]
    for path in missing:
        print(f"cefmp4: error: {path}: not a readable file", file=sys.stderr)
    todo = [f for f in files if f.is_file()]
    if not todo:
        return EXIT_FAILED
    total = sum(f.stat().st_size for f in todo)
    tty = sys.stdout.isatty()
    began = time.time()
    results = asyncio.run(_upload_with_progress(settings, todo, total, tty))
    failed = bool(missing)
    for path, record in results.items():
        if record is None:
            failed = True
            print(f"FAILED  {path}", file=sys.stderr)
        else:
            # Completed before this command started: the unchanged file was not sent again.
            earlier = record.completed_at is not None and record.completed_at < began
            print(
                f"{'same' if earlier else 'ok':<8}{path} -> s3://{record.bucket}/{record.key} "
                f"({record.final_size} bytes, sha256 {record.sha256}"
                f"{', already uploaded' if earlier else ''})"
            )
    return EXIT_FAILED if failed else EXIT_OK


async def _upload_with_progress(
    settings: Settings, files: list[Path], total: int, tty: bool
) -> dict[Path, StreamRecord | None]:
    if not tty:
        return await upload_files(settings, files)
    apps: list[App] = []
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), transient=True,
    )

    async def refresh(task_id: Any) -> None:
        while True:
            await asyncio.sleep(0.2)
            if apps:
                uploaded = apps[0].metrics.bytes_uploaded_value()
                progress.update(task_id, completed=min(uploaded, total))

    with progress:
        task_id = progress.add_task(f"uploading {len(files)} file(s)", total=total)
        ticker = asyncio.create_task(refresh(task_id))
        try:
            return await upload_files(settings, files, apps.append)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)


async def upload_files(
    settings: Settings, files: list[Path], on_start: Callable[[App], None] | None = None
) -> dict[Path, StreamRecord | None]:
    """``cefmp4 upload``: the burst path with no idle wait."""
    return await App(settings).run_burst(files, on_start=on_start)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


async def _status_rows(settings: Settings) -> list[dict[str, Any]]:
    if not settings.redis_url.get_secret_value() and not (settings.state_dir / DB_NAME).exists():
        return []  # nothing has run with this STATE_DIR yet: no streams, not an error
    async with open_checkpoints(settings, read_only=True) as store:
        records = await store.list_streams()
        rows = []
        for rec in sorted(records, key=lambda r: r.started_at):
            parts = await store.get_parts(rec.stream_id)
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
        return rows


def status_command(settings: Settings, *, as_json: bool) -> int:
    rows = asyncio.run(_status_rows(settings))
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = Table(title=f"cefmp4 streams ({len(rows)})")
    # The id stays whole (it is what an operator greps the logs for); the path folds.
    id_width = max((len(row["stream_id"]) for row in rows), default=len("stream_id"))
    table.add_column("stream_id", no_wrap=True, min_width=id_width)
    table.add_column("state", no_wrap=True)
    table.add_column("path", overflow="fold", min_width=16)
    for column in ("bytes", "parts", "last activity"):
        table.add_column(column, no_wrap=True)
    now = time.time()
    for row in rows:
        last = row["last_activity_utc"]
        ago = ""
        if last:
            ago = f"{now - datetime.fromisoformat(last).timestamp():.0f}s ago"
        table.add_row(
            row["stream_id"], row["status"] or row["state"], row["path"],
            f"{row['bytes_uploaded']:,}", str(row["parts_uploaded"]), ago,
        )
    console = Console()
    if not console.is_terminal:
        # Piped or redirected: rich would assume 80 columns; lines may be as long as needed.
        console = Console(width=max(console.width, 200))
    console.print(table)
    known = {row["upload_id"] for row in rows if row["upload_id"]}
    _print_unknown_uploads(console, settings, known)
    return EXIT_OK


def _print_unknown_uploads(console: Console, settings: Settings, known: set[str]) -> None:
    """SPEC §2.13: multipart uploads under the prefix that no checkpoint knows."""
    try:
        uploads = asyncio.run(_list_uploads(settings))
    except (CefmpError, TimeoutError) as exc:
        console.print(f"(multipart uploads not listed: S3 did not answer: {exc or 'timeout'})")
        return
    orphans = [u for u in uploads if u.upload_id not in known]
    if not orphans:
        console.print(f"no unknown multipart uploads under {settings.s3_key_prefix!r}")
        return
    grace_h = settings.abort_orphan_uploads_after_hours
    table = Table(title=f"multipart uploads no checkpoint knows ({len(orphans)})")
    for column in ("key", "upload_id", "age", "aborted by the sweeper"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for upload in sorted(orphans, key=lambda u: u.initiated):
        age_h = (now - upload.initiated.timestamp()) / 3600
        when = "never (ABORT_ORPHAN_UPLOADS_AFTER_HOURS=0)" if grace_h <= 0 else (
            "next sweep" if age_h >= grace_h else f"in {grace_h - age_h:.1f} h"
        )
        table.add_row(upload.key, upload.upload_id, f"{age_h:.1f} h", when)
    console.print(table)


async def _list_uploads(settings: Settings) -> list[MultipartUpload]:
    async with (
        asyncio.timeout(20),
        open_objects(settings, connect_timeout=3, read_timeout=10) as store,
    ):
        return await store.list_multipart_uploads(settings.s3_key_prefix)
