"""``cefmp4 check``: every dependency probed, each failure with what to do about it.

Read-only unless ``--fix``: a missing bucket or watch directory is reported (a typo'd
bucket name must not be created as a side effect), and ``--fix`` creates them. The one write
without ``--fix`` is a multipart upload that is created and aborted at once under
``{S3_KEY_PREFIX}.cefmp4-check/``: nothing else proves the permission. Every printed line
goes through ``logs.redact`` (endpoint userinfo, keys, passwords).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from cefmp4.checkpoint import UNFINISHED, CheckpointStore, QuarantinedRecord
from cefmp4.checkpoint.sqlite import DB_NAME
from cefmp4.checkpoint.trust import TrustedCheckpoints
from cefmp4.config.adapters import open_checkpoints, open_objects, pipeline_config
from cefmp4.config.settings import Settings, check_watch_dir
from cefmp4.core.keys import new_stream_id
from cefmp4.intake.writers import probe_signals, visibility_problems
from cefmp4.runtime import logs
from cefmp4.runtime.errors import CefmpError, ConfigError, PermanentError
from cefmp4.storage.s3 import S3ObjectStore
from cefmp4.streams.probe import FfprobeProber


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""


async def _check_s3(settings: Settings, *, fix: bool) -> list[CheckResult]:
    results: list[CheckResult] = []
    where = settings.s3_endpoint_url or "AWS"
    creds_fix = (
        "check S3_ENDPOINT_URL, S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY "
        "(or the AWS credential chain when they are empty)"
    )
    try:
        async with asyncio.timeout(30), open_objects(settings) as store:
            if not await _bucket_ready(store, settings, where, fix, results):
                return results
            key = f"{settings.s3_key_prefix}.cefmp4-check/{new_stream_id()}"
            upload_id = await store.create_multipart(key, "application/octet-stream")
            results.append(await _abort_check_upload(store, key, upload_id))
            results.extend(await _check_evidence(store, settings))
    except PermanentError as exc:
        results.append(CheckResult("s3", False, str(exc), creds_fix))
    except (CefmpError, TimeoutError) as exc:
        results.append(CheckResult(
            "s3", False, f"{where} unreachable: {exc or 'timed out'}",
            "is the S3 server running and S3_ENDPOINT_URL right?",
        ))
    return results


async def _abort_check_upload(store: S3ObjectStore, key: str, upload_id: str) -> CheckResult:
    try:
        await store.abort_multipart(key, upload_id)
    except PermanentError as exc:
        if "AccessDenied" not in str(exc) and "denied" not in str(exc).lower():
            raise
        # The evidence policy (deploy/iam-policy-evidence.json) grants no abort, on purpose.
        return CheckResult(
            "s3 multipart", True,
            f"create allowed; abort denied (least-privilege policy): {key} stays open",
        )
    return CheckResult("s3 multipart", True, "create and abort allowed")


async def _check_evidence(store: S3ObjectStore, settings: Settings) -> list[CheckResult]:
    """Object Lock on the bucket when asked for (§2.22), SSE and the signing key as set."""
    results: list[CheckResult] = []
    protection = store.protection
    if protection.locks:
        try:
            await store.check_object_lock()
            what = ", ".join(filter(None, [
                protection.lock_mode and f"{protection.lock_mode} "
                f"{protection.retain_days} days after completion",
                "legal hold" if protection.legal_hold else "",
            ]))
            results.append(CheckResult("s3 object lock", True, f"bucket has it; {what}"))
        except ConfigError as exc:
            results.append(CheckResult(
                "s3 object lock", False, str(exc),
                "create the bucket with Object Lock (aws s3api create-bucket "
                "--object-lock-enabled-for-bucket), or unset the Object Lock settings",
            ))
    if protection.sse is not None:
        described = protection.describe()
        key = f" key {described['kms_key_id']}" if described["kms_key_id"] else ""
        results.append(CheckResult("s3 encryption", True, f"{protection.sse}{key}"))
    if settings.s3_full_object_checksum != "off":
        mode = await store.part_checksum()
        results.append(CheckResult(
            "s3 full-object checksum", True,
            "CRC64NVME, verified by the store" if mode == "crc64nvme"
            else f"not verified by this store; parts carry {mode}",
        ))
    signer = settings.signer()
    if signer is not None:
        results.append(CheckResult("signing key", True, f"ed25519 key_id {signer.key_id}"))
    return results


async def _bucket_ready(
    store: S3ObjectStore, settings: Settings, where: str, fix: bool,
    results: list[CheckResult],
) -> bool:
    """HeadBucket; a missing bucket is created only with ``fix``."""
    bucket = f"s3://{store.bucket} at {where}"
    try:
        await store.ping()
        results.append(CheckResult("s3 bucket", True, bucket))
        return True
    except PermanentError as exc:
        # ping() words a missing bucket "S3_BUCKET_NAME: bucket ... does not exist"; any
        # other permanent error (access denied) is reported by the caller.
        if "does not exist" not in str(exc):
            raise
    if not fix:
        results.append(CheckResult(
            "s3 bucket", False, f"{bucket} does not exist",
            "`cefmp4 check --fix` creates it (so does `run`, if permitted); "
            "or correct S3_BUCKET_NAME",
        ))
        return False
    await store.ensure_bucket()
    results.append(CheckResult("s3 bucket", True, f"{bucket} created (--fix)"))
    return True


def _check_new_state_dir(state_dir: Path) -> CheckResult:
    """No database yet is fine (``run`` creates it) if STATE_DIR can be created and written.

    Nothing is created here: the nearest existing ancestor must be a writable directory.
    """
    existing = state_dir.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return CheckResult(
            "checkpoint store", False, f"STATE_DIR: {existing} is not a directory",
            "point STATE_DIR at a directory cefmp4 may create and write",
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return CheckResult(
            "checkpoint store", False, f"STATE_DIR: {existing} is not writable",
            "point STATE_DIR at a directory cefmp4 may create and write, or fix its permissions",
        )
    return CheckResult(
        "checkpoint store", True,
        f"sqlite: no database yet; will be created in STATE_DIR {state_dir}",
    )


async def _check_checkpoints(settings: Settings) -> CheckResult | list[CheckResult]:
    redis_mode = bool(settings.redis_url.get_secret_value())
    kind = "redis" if redis_mode else f"sqlite in {settings.state_dir}"
    if not redis_mode and not (settings.state_dir / DB_NAME).exists():
        return _check_new_state_dir(settings.state_dir)
    try:
        async with asyncio.timeout(15), open_checkpoints(settings, read_only=True) as store:
            await store.ping()
            quarantined = await _quarantined(settings, store)
    except ConfigError as exc:
        return CheckResult("checkpoint store", False, str(exc), "fix the named setting")
    except (CefmpError, TimeoutError) as exc:
        return CheckResult(
            "checkpoint store", False, f"{kind}: {exc or 'timed out'}",
            "is Redis running and REDIS_URL right (redis://[:password@]host:port/db)?",
        )
    results = [CheckResult("checkpoint store", True, kind)]
    for q in quarantined:
        results.append(CheckResult(
            "checkpoint record", False,
            f"{q.stream_id} quarantined, never acted on: {q.reason}"
            f" (path {q.path!r}, key {q.key!r})",
            "see `cefmp4 status`; delete the record once understood (its upload is kept)",
        ))  # fmt: skip
    return results


async def _quarantined(settings: Settings, store: CheckpointStore) -> list[QuarantinedRecord]:
    """Records that do not parse, and unfinished ones that point outside WATCH_DIR or the
    prefix (completed ones are never acted on anyway; ``status`` lists every record)."""
    config = pipeline_config(settings)
    trusted = TrustedCheckpoints(
        store, config.watch_dir, config.key_prefix, settings.s3_bucket_name, warn=False
    )
    await trusted.list_streams(UNFINISHED)
    return await trusted.list_quarantined()


async def _check_ffprobe(settings: Settings) -> CheckResult:
    prober = FfprobeProber(settings.ffprobe_path, settings.probe_timeout_seconds)
    try:
        await prober.ping()
        found = settings.ffprobe_path or shutil.which("ffprobe") or "ffprobe"
        return CheckResult("ffprobe", True, found)
    except CefmpError as exc:
        return CheckResult(
            "ffprobe", False, str(exc),
            "install ffmpeg (apt-get install ffmpeg) or set FFPROBE_PATH",
        )


def _check_watch_dir(settings: Settings, *, fix: bool) -> CheckResult:
    path = settings.watch_dir
    if not path.exists() and not fix:
        return CheckResult(
            "watch dir", False, f"WATCH_DIR: {path.absolute()} does not exist",
            "`cefmp4 check --fix` creates it (so does `run`); or correct WATCH_DIR",
        )
    existed = path.exists()
    try:
        check_watch_dir(path)  # creates it when missing: only reached with --fix
    except ConfigError as exc:
        return CheckResult("watch dir", False, str(exc), "create it or fix WATCH_DIR")
    done = "" if existed else " created (--fix)"
    return CheckResult("watch dir", True, f"{path.resolve()}{done}")


def _check_writer_signals(settings: Settings) -> CheckResult:
    """Which writer signals this deployment has (§2.14); informational unless a setting
    that needs one has none at all."""
    report = probe_signals()
    detail = "; ".join(report.lines)
    if settings.complete_on_close_seconds is not None and report.close_events is not None:
        return CheckResult(
            "writer signals", False, detail,
            "COMPLETE_ON_CLOSE_SECONDS needs inotify (Linux); unset it or run on Linux",
        )
    if settings.hold_while_open and report.open_writers is not None and (
        "not mounted" in report.open_writers
    ):
        return CheckResult(
            "writer signals", False, detail, "HOLD_WHILE_OPEN needs /proc; unset it or mount /proc"
        )
    return CheckResult("writer signals", True, detail)


def _check_after_upload(settings: Settings) -> list[CheckResult]:
    if settings.after_upload == "keep":
        return []
    results = []
    problems = visibility_problems(settings.watch_dir)
    if problems:
        results.append(CheckResult(
            "after-upload proof", False,
            f"AFTER_UPLOAD={settings.after_upload} keeps files it cannot prove writer-free: "
            + "; ".join(problems),
            "see README, recorder profile: run cefmp4 where it sees every writer (the host's "
            "PID namespace, the recorders' user or CAP_LEASE, a local file system), or "
            "AFTER_UPLOAD=keep",
        ))
    else:
        results.append(CheckResult(
            "after-upload proof", True,
            "the kernel can prove a file writer-free before it is deleted or moved"))
    if settings.after_upload != "move" or settings.after_upload_dir is None:
        return results
    target = settings.after_upload_dir.absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        results.append(CheckResult(
            "after-upload dir", False, f"AFTER_UPLOAD_DIR: {existing} is not a writable directory",
            "point AFTER_UPLOAD_DIR at a directory cefmp4 may create and write",
        ))
    else:
        results.append(CheckResult("after-upload dir", True, f"move to {target}"))
    return results


def _fix_state_dir(settings: Settings) -> None:
    """--fix: the embedded store's directory, so the check below sees it."""
    if settings.redis_url.get_secret_value():
        return
    with contextlib.suppress(OSError):  # reported by _check_checkpoints, with its fix
        settings.state_dir.mkdir(parents=True, exist_ok=True)


async def _check_abandoned(settings: Settings) -> CheckResult:
    """Multipart uploads nobody adds to (SPEC §2.19): what `cefmp4 salvage` would do now.
    Read-only (its dry run). An upload that must stay open (an object at its key, no part
    1) is a FAIL: only an operator can decide about it."""
    from cefmp4.cli.salvage import DEFAULT_OLDER_THAN, abandoned

    try:
        async with asyncio.timeout(60):
            outcomes = await abandoned(settings, older_than=DEFAULT_OLDER_THAN)
    except (CefmpError, TimeoutError) as exc:
        return CheckResult("abandoned uploads", False,
                           f"could not list them: {type(exc).__name__}",
                           "`cefmp4 salvage --dry-run` says more")
    stuck = [o for o in outcomes if not o.ok]
    todo = [o for o in outcomes if o.ok and o.action in ("complete", "resumed", "abort_empty")]
    if stuck:
        return CheckResult(
            "abandoned uploads", False,
            f"{len(stuck)} cannot be salvaged as they are: "
            + "; ".join(f"{o.key}: {o.detail}" for o in stuck[:3]),
            "`cefmp4 salvage --dry-run` lists them; move the object at the key away, or "
            "complete the upload by hand",
        )
    if not todo:
        return CheckResult("abandoned uploads", True, "none")
    size = sum(o.bytes for o in todo) / 2**20
    return CheckResult(
        "abandoned uploads", True,
        f"{len(todo)} abandoned ({size:.1f} MiB): `cefmp4 salvage` makes them objects now; "
        "the daemon's sweeper does after ABORT_ORPHAN_UPLOADS_AFTER_HOURS",
    )


async def run_checks(settings: Settings, *, fix: bool = False) -> list[CheckResult]:
    if fix:
        _fix_state_dir(settings)
    probes: list[Callable[[], Awaitable[CheckResult | list[CheckResult]]]] = [
        lambda: _check_s3(settings, fix=fix),
        lambda: _check_checkpoints(settings),
        lambda: _check_ffprobe(settings),
    ]
    results = [_check_watch_dir(settings, fix=fix)]
    results.append(await asyncio.to_thread(_check_writer_signals, settings))
    results.extend(await asyncio.to_thread(_check_after_upload, settings))
    for outcome in await asyncio.gather(*(probe() for probe in probes)):
        results.extend(outcome if isinstance(outcome, list) else [outcome])
    # After the others (--fix may have created the bucket), and only where S3 and the store
    # answer: their own lines already say what is wrong otherwise.
    if all(r.ok for r in results if r.name.startswith(("s3", "checkpoint"))):
        results.append(await _check_abandoned(settings))
    return results


def check_command(settings: Settings, *, fix: bool = False) -> int:
    results = asyncio.run(run_checks(settings, fix=fix))
    for result in results:
        mark = "ok  " if result.ok else "FAIL"
        print(logs.redact(f"{mark} {result.name}: {result.detail}"))
        if not result.ok and result.fix:
            print(logs.redact(f"     fix: {result.fix}"))
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} check(s) failed", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0
