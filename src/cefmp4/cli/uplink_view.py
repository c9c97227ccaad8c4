"""What ``status`` and ``status --watch`` say about the uplink (SPEC §2.21): the limit in
force now (and the next one, with a timetable), the backlog's bytes and the time to drain
it at the limits to come. The words are ``core.uplink``'s; here the files are looked at."""

from __future__ import annotations

import os
from collections.abc import Iterable

from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.config.settings import Settings
from cefmp4.core.uplink import Backlog, Pending, backlog_summary, limit_summary, split_backlog
from cefmp4.intake.discover import scan_stats
from cefmp4.streams.uplink import second_of_day


def uplink_lines(
    settings: Settings, backlog: Backlog, now: float, *, label: str = "backlog"
) -> list[str]:
    table, sod = settings.bwlimit, second_of_day(now)
    return [limit_summary(table, sod), backlog_summary(backlog, table, sod, label=label)]


def streams_backlog(rows: Iterable[tuple[str, int]], now: float, window: float) -> Backlog:
    """The backlog of the open streams alone: ``(path, bytes in S3)`` each (a gone file
    counts nothing)."""
    pending = []
    for path, in_s3 in rows:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            continue
        pending.append(Pending(st.st_size - in_s3, st.st_mtime))
    return split_backlog(pending, now, window)


def watch_dir_backlog(
    settings: Settings, records: Iterable[tuple[StreamRecord, int]], now: float
) -> Backlog:
    """Every file under WATCH_DIR not in S3 yet, whether a stream has it or not: an open
    stream's file counts what its parts do not hold, a completed and unchanged one
    nothing, any other its whole size. ``records``: each stream with its bytes in S3."""
    uploaded: dict[tuple[int, int], int] = {}
    done: set[tuple[int, int, int | None, int | None]] = set()
    for rec, in_s3 in records:
        if rec.state is StreamState.COMPLETED:
            done.add((rec.device, rec.inode, rec.final_size, rec.final_mtime_ns))
        elif rec.state in (StreamState.ACTIVE, StreamState.FINALIZING):
            uploaded[(rec.device, rec.inode)] = in_s3
    pending = []
    for _, st in scan_stats(settings.watch_dir, extensions=settings.extensions).found:
        if st is None or (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) in done:
            continue
        in_s3 = uploaded.get((st.st_dev, st.st_ino), 0)
        pending.append(Pending(st.st_size - in_s3, st.st_mtime))
    return split_backlog(pending, now, settings.stream_timeout_seconds)


