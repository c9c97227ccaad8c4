"""The settings reference (docs/settings.md) generated from the settings model.

The model (``cefmp4.config.settings.Settings`` and its bases) gives every row: the name, its
group (the class that declares it), the type and accepted values, the numeric limits
(``LIMITS``), the default and, for a setting without a note here, its ``description``. The
notes below are the prose of the reference (what the README's settings table said); a note
for a setting that no longer exists fails the tests.

docs/settings.md holds the tables between markers, prose around them:

    <!-- settings-table: GROUP -->
    ...generated, do not edit...
    <!-- /settings-table -->

Run ``scripts/gen-docs`` (or ``.venv/bin/python scripts/settings_doc.py``) after changing a
setting; ``--check`` exits 1 when the page is stale (tests/unit/test_docs.py runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from cefmp4.config.evidence_settings import EvidenceSettings
from cefmp4.config.feature_settings import FeatureSettings
from cefmp4.config.settings import LIMITS, SECRET_FILES, Settings
from cefmp4.config.uplink_settings import UplinkSettings

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "settings.md"

# group -> the settings in it, in the model's order. A setting is in the group of the class
# that declares it; the core class's secret files and test switch have groups of their own.
TESTING = frozenset({"cefmp4_failpoints"})
GROUPS: dict[str, str] = {
    "core": "storage, checkpoints, the daemon (Settings)",
    "recorders": "recorder features (FeatureSettings)",
    "evidence": "evidence (EvidenceSettings)",
    "uplink": "uplink (UplinkSettings)",
    "secret-files": "secrets from files (Settings)",
    "testing": "testing only (Settings)",
}

NOTES: dict[str, str] = {
    "WATCH_DIR": (
        "directory watched recursively for `*.mp4` (any case); created if missing, must be "
        "readable"
    ),
    "CHUNK_SIZE_MB": (
        "part size in MiB, 5-5120 (S3's part limits); see [part-size "
        "schedule](s3-layout.md#part-size-schedule)"
    ),
    "STREAM_TIMEOUT_SECONDS": (
        "no growth for this long → the stream is complete; > 0, fractions allowed"
    ),
    "S3_ENDPOINT_URL": (
        "S3 endpoint; empty means AWS"
    ),
    "S3_ACCESS_KEY_ID": (
        "empty means the normal AWS credential chain (secret: never logged)"
    ),
    "S3_SECRET_ACCESS_KEY": (
        "empty means the normal AWS credential chain (secret: never logged)"
    ),
    "S3_BUCKET_NAME": (
        "bucket of videos and metadata; created on start if missing and permitted; S3's "
        "naming rules (3-63 lower-case letters, digits, `.` and `-`, starting and ending "
        "with a letter or digit, not an IP address)"
    ),
    "S3_REGION_NAME": (
        "region; empty means the SDK default (`us-east-1` when `S3_ENDPOINT_URL` is set)"
    ),
    "S3_KEY_PREFIX": (
        "prefix of every object key, a path segment: `streams` means `streams/`, never "
        "`streams-archive/`; no leading `/`, no empty, `.` or `..` segments; empty only "
        "with `S3_KEY_PREFIX_WHOLE_BUCKET`"
    ),
    "S3_KEY_TEMPLATE": (
        "the video's key below `S3_KEY_PREFIX`: `{stream_id}` (required), `{relpath}`, "
        "`{dir}`, `{name}`, `{stem}`, `{ext}`, `{started:FMT}`, `{instance}` (see [S3 "
        "layout](s3-layout.md))"
    ),
    "S3_OBJECT_LOCK_MODE": (
        "`GOVERNANCE` or `COMPLIANCE`: retention on every video and its metadata, set when "
        "each is created (see [Evidence](evidence.md))"
    ),
    "S3_OBJECT_LOCK_RETAIN_DAYS": (
        "retention after completion, 1-36500 days; required with the mode (a video: its "
        "upload's creation + days + 1 day)"
    ),
    "S3_OBJECT_LOCK_LEGAL_HOLD": (
        "legal hold ON for every video and its metadata"
    ),
    "S3_SSE": (
        "`AES256` or `aws:kms` on every object cefmp4 writes"
    ),
    "S3_SSE_KMS_KEY_ID": (
        "KMS key of `aws:kms` (empty: the bucket's default); shown masked"
    ),
    "S3_FULL_OBJECT_CHECKSUM": (
        "`auto`: a CRC64NVME of the whole video, declared at Create and verified by S3 at "
        "Complete where the store does"
    ),
    "SIGNING_KEY_FILE": (
        "Ed25519 private key (PEM): every metadata document is signed"
    ),
    "S3_KEY_PREFIX_WHOLE_BUCKET": (
        "`true` allows an empty `S3_KEY_PREFIX`: every key of the bucket is cefmp4's (the "
        "orphan sweeper then aborts unknown uploads anywhere in it)"
    ),
    "REDIS_URL": (
        "`redis://`, `rediss://` or `unix://` URL of the checkpoint store; empty means "
        "embedded SQLite under `STATE_DIR` (password masked in logs)"
    ),
    "REDIS_KEY_PREFIX": (
        "prefix of every Redis key, so several deployments can share one Redis"
    ),
    "STATE_DIR": (
        "where the embedded SQLite store (and its single-instance lock) lives"
    ),
    "LOG_LEVEL": (
        "`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL` (case-insensitive)"
    ),
    "LOG_FORMAT": (
        "`json`, `console`, or `auto` (console on a terminal, JSON otherwise)"
    ),
    "PROM_PORT": (
        "port of `/metrics`, `/healthz`, `/readyz` (bound on `PROM_HOST`); `0` disables the"
        " server; a port in use is a configuration error"
    ),
    "PROM_HOST": (
        "bind address of that server: an IPv4 or IPv6 address (`::` = all, dual-stack on "
        "Linux) or a host name"
    ),
    "FFPROBE_PATH": (
        "explicit ffprobe; empty means `ffprobe` on PATH"
    ),
    "MAX_INFLIGHT_MB": (
        "global cap on part bytes being read or sent at once across all streams (MiB); ≥ "
        "`CHUNK_SIZE_MB`. Parts are streamed from the file, so memory stays far below it. A"
        " budget of fewer than `UPLOAD_CONCURRENCY` parts is named at start-up "
        "(`settings_advice`, with the value that fits): the slots would never fill"
    ),
    "UPLOAD_CONCURRENCY": (
        "parts uploaded at once across all streams; ≥ 1"
    ),
    "POLL_INTERVAL_SECONDS": (
        "how often an active stream re-checks its file when no file-system event came; > 0"
    ),
    "WATCH_FORCE_POLLING": (
        "poll the watch dir instead of inotify (NFS, SMB, some bind mounts)"
    ),
    "PROBE_TIMEOUT_SECONDS": (
        "ffprobe time limit per file; > 0"
    ),
    "SHUTDOWN_GRACE_SECONDS": (
        "after SIGTERM/SIGINT, how long in-flight parts may finish; ≥ 0"
    ),
    "S3_STORAGE_CLASS": (
        "storage class of the objects (e.g. `STANDARD_IA`); empty = the bucket's default"
    ),
    "ABORT_ORPHAN_UPLOADS_AFTER_HOURS": (
        "the orphan sweeper: a multipart upload under the prefix that no checkpoint knows "
        "and that got no part for this long is **salvaged** into an object (SPEC §2.19); "
        "only one that holds no part is aborted; `0` = never (the name is the second "
        "round's)"
    ),
    "INSTANCE_ID": (
        "name of this instance in leases and logs; empty = `host:pid-namespace:pid`"
    ),
    "LEASE_TTL_SECONDS": (
        "a stream whose owner stops renewing its lease for this long is taken over; ≥ 1"
    ),
    "MAX_STREAMS": (
        "streams this instance works on at once (new files wait for room, each logged once "
        "as `stream_deferred` with `max_streams`); ≥ 1. Set it at or above the number of "
        "cameras that record at once, and `UPLOAD_CONCURRENCY` to about one per 6-8 of them"
        " (the capacity bench: 100 cameras at 4 Mbit/s queued parts at 4, ran flat at 16), "
        "with `MAX_INFLIGHT_MB` ≥ (`UPLOAD_CONCURRENCY` + 2) x `CHUNK_SIZE_MB`, or the byte"
        " budget, not the slots, caps the parts in flight"
    ),
    "MAX_PARTS": (
        "part limit per object, 1-10000 (S3's limit; lower only for testing)"
    ),
    "RESCAN_INTERVAL_SECONDS": (
        "full rescan of `WATCH_DIR` for whatever the watch missed (see "
        "[Discovery](discovery.md)); `0` = off"
    ),
    "WATCH_EXTENSIONS": (
        "comma-separated extensions to watch, any case (e.g. `.mp4,.mov,.mkv,.ts`); each "
        "starts with `.`; the object's Content-Type follows it (see "
        "[Containers](recorders.md#containers-watch_extensions))"
    ),
    "COMPLETE_ON_CLOSE_SECONDS": (
        "complete a stream this long after its last writer closed the file, without waiting"
        " for `STREAM_TIMEOUT_SECONDS` (Linux; see [writer-aware "
        "completion](recorders.md#writer-aware-completion-linux)); empty = off"
    ),
    "HOLD_WHILE_OPEN": (
        "do not complete an idle stream whose file a visible process still holds open for "
        "writing"
    ),
    "MAX_HOLD_SECONDS": (
        "longest `HOLD_WHILE_OPEN` delays a completion"
    ),
    "UPLOAD_BWLIMIT": (
        "cap on the bytes per second this process sends to S3, all streams together: `4M`, "
        "`512k`, or an rclone-style timetable `\"08:00,512k 19:00,8M 23:00,off\"` (local "
        "time; `k`/`M`/`G` = KiB/MiB/GiB); empty = off"
    ),
    "UPLOAD_ORDER": (
        "order of the backlog (files that are not growing), by mtime: `oldest` or `newest`;"
        " live streams always go first"
    ),
    "RPO_SECONDS": (
        "ship an active stream's bytes that are not in a part yet at least this often, as "
        "tail segments; salvage appends them when the host is lost (see [bounded "
        "loss](recovery.md)); > 0; empty = off"
    ),
    "AFTER_UPLOAD": (
        "`keep`, `delete`, `move` or `evict` the source once its object is confirmed (see "
        "[after-upload "
        "actions](recorders.md#after-upload-actions-after_uploadkeepdeletemove))"
    ),
    "EVICT_KEEP_FREE": (
        "with `AFTER_UPLOAD=evict`: free space to keep on `WATCH_DIR`'s file system, `N%` "
        "of its size or a size (`20G`, `500M`); confirmed sources are deleted, oldest "
        "first, only while there is less"
    ),
    "AFTER_UPLOAD_DIR": (
        "target directory of `move`; outside `WATCH_DIR` (or hidden inside it), writable"
    ),
    "NOTIFY_WEBHOOK_URL": (
        "POST each completed stream's metadata here (secret: never logged; see "
        "[notifications](recorders.md#notifications-notify_webhook_url-notify_redis_stream))"
    ),
    "NOTIFY_WEBHOOK_SECRET": (
        "HMAC-SHA256 key of the webhook's `X-Cefmp4-Signature: sha256=<hex>` header"
    ),
    "NOTIFY_REDIS_STREAM": (
        "`XADD` each completed stream's metadata (field `metadata`) to this Redis stream"
    ),
    "CEFMP4_FAILPOINTS": (
        "testing only: crash at these step boundaries (see [Testing](testing.md)); leave it"
        " empty"
    ),
    "S3_ACCESS_KEY_ID_FILE": (
        "read `S3_ACCESS_KEY_ID` from this file"
    ),
    "S3_SECRET_ACCESS_KEY_FILE": (
        "read `S3_SECRET_ACCESS_KEY` from this file"
    ),
    "REDIS_URL_FILE": (
        "read `REDIS_URL` (with its password) from this file"
    ),
}

_BEGIN = re.compile(r"^<!-- settings-table: ([a-z-]+) -->$")
_END = "<!-- /settings-table -->"


def group_of(name: str) -> str:
    if name in TESTING:
        return "testing"
    if name in SECRET_FILES.values():
        return "secret-files"
    for group, cls in (
        ("recorders", FeatureSettings), ("evidence", EvidenceSettings), ("uplink", UplinkSettings),
    ):
        if name in cls.__annotations__:
            return group
    return "core"


def _literal_values(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def accepts(name: str, field: FieldInfo) -> str:
    """What a value may be: from the annotation, and the numeric limits in ``LIMITS``."""
    annotation = field.annotation
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    values = _literal_values(annotation)
    if values is not None:
        text = "one of " + ", ".join(f"`{v}`" for v in values)
    elif annotation is bool:
        text = "`true` or `false`"
    elif annotation is int:
        text = "integer"
    elif annotation is float:
        unit = name.rsplit("_", 1)[-1]
        text = f"number of {unit}" if unit in ("seconds", "hours") else "number"
    elif annotation is Path:
        text = "path"
    elif annotation is SecretStr:
        text = "text, secret"
    else:
        text = "text"
    limits = [problem.removeprefix("must be ") for _, problem in LIMITS.get(name, ())]
    if limits:
        text += "; " + "; ".join(limits)
    if optional:
        text += "; or empty"
    return text


def default_of(field: FieldInfo) -> str:
    value = field.default
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, Path) and not value.is_absolute():
        return f"`./{value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(group: str) -> list[str]:
    lines = ["| env var | default | accepts | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if group_of(name) != group:
            continue
        env = name.upper()
        meaning = NOTES.get(env) or _cell(field.description or "")
        kind = _cell(accepts(name, field))
        lines.append(f"| `{env}` | {default_of(field)} | {kind} | {meaning} |")
    return lines


def render(page: str) -> str:
    """``page`` with every marked table generated afresh; ValueError for a broken marker."""
    out: list[str] = []
    seen: list[str] = []
    lines = iter(page.splitlines())
    for line in lines:
        out.append(line)
        match = _BEGIN.match(line)
        if not match:
            continue
        group = match.group(1)
        if group not in GROUPS:
            raise ValueError(f"unknown settings table {group!r} (known: {', '.join(GROUPS)})")
        seen.append(group)
        for inner in lines:
            if inner == _END:
                break
        else:
            raise ValueError(f"settings table {group!r} has no {_END}")
        out.extend(table(group))
        out.append(_END)
    missing = [g for g in GROUPS if g not in seen]
    if missing or len(seen) != len(set(seen)):
        raise ValueError(f"each table once: missing {missing}, found {seen}")
    return "\n".join(out) + "\n"


def stale_notes() -> list[str]:
    names = {name.upper() for name in Settings.model_fields}
    return sorted(set(NOTES) - names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the page is stale")
    args = parser.parse_args(argv)
    if stale_notes():
        print(f"settings_doc: notes for settings that do not exist: {stale_notes()}",
              file=sys.stderr)
        return 1
    current = PAGE.read_text(encoding="utf-8")
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(f"settings_doc: {PAGE.relative_to(ROOT)} is stale: run scripts/gen-docs",
                  file=sys.stderr)
            return 1
        return 0
    if fresh != current:
        PAGE.write_text(fresh, encoding="utf-8")
        print(f"settings_doc: wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
