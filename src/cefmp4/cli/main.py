"""argv → Settings → run | upload | status | check | salvage | verify.

Bad configuration ends here as one line naming the setting and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cefmp4 import __version__
from cefmp4.config.settings import SECRET_FILES, Settings, check_watch_dir, load_settings
from cefmp4.runtime import logs
from cefmp4.runtime.errors import CefmpError, ConfigError, PermanentError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNFLUSHED = 120  # Python's own exit status when stdout cannot be flushed at exit

NOFILE_LIMIT = "nofile_limit"  # log event: the descriptor limits `run` starts with
WATCH_DIR_CREATED = "watch_dir_created"  # log event: `run` made the WATCH_DIR it was given


class _RefusedSecret(argparse.Action):
    """A secret given as a flag: refused in one line, since every user of the host can read
    a command line (``ps``, /proc/PID/cmdline). The value is never echoed."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        name = self.dest.upper()
        parser.exit(
            EXIT_CONFIG,
            f"cefmp4: configuration error: {name}: not accepted as a command-line flag "
            f"(every user can read it with ps); set {name} or {name}_FILE in the environment\n",
        )


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each also an environment variable)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if name in SECRET_FILES:
            group.add_argument(
                flag, dest=name, action=_RefusedSecret, metavar="VALUE",
                help=f"refused: use env {name.upper()} or {name.upper()}_FILE",
            )
            continue
        default = field.default
        if hasattr(default, "get_secret_value"):
            default = "(secret)" if default.get_secret_value() else ""
        help_text = f"{field.description} [env {name.upper()}, default {default!s:.40}]"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        if field.annotation is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                help=help_text,
            )
        else:
            group.add_argument(flag, dest=name, default=None, metavar="VALUE", help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cefmp4",
        description="Upload growing MP4 recordings to S3 while they are being recorded.",
    )
    parser.add_argument("--version", action="version", version=f"cefmp4 {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="the daemon: watch, upload, finalize",
        description="Watch WATCH_DIR, upload growing MP4 files as multipart parts, complete "
        "them after STREAM_TIMEOUT_SECONDS without growth. Serves /metrics, /healthz and "
        "/readyz on PROM_PORT. Stops cleanly on SIGTERM/SIGINT (a second signal exits at once).",
    )
    _add_setting_flags(run)

    upload = sub.add_parser(
        "upload", help="upload complete files now",
        description="Upload the given complete files now (no idle wait), with the same "
        "chunking, checkpoints and metadata as `run`. Exit 0 only if all succeeded.",
    )
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")
    _add_setting_flags(upload)

    status = sub.add_parser(
        "status", help="streams known to the checkpoint store",
        description="List streams known to the checkpoint store: id, path, state, bytes and "
        "parts uploaded, last activity.",
    )
    status.add_argument("--json", action="store_true", help="print a JSON list")
    status.add_argument(
        "--watch", action="store_true",
        help="a live table of the active streams, refreshed until Ctrl-C",
    )
    status.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS",
        help="--watch: seconds between refreshes (default 1)",
    )
    status.add_argument(
        "--count", type=int, default=0, metavar="N",
        help="--watch: stop after N refreshes (default: until Ctrl-C)",
    )
    _add_setting_flags(status)

    check = sub.add_parser(
        "check", help="validate configuration and reachability",
        description="Validate the configuration and check S3 (credentials, bucket, multipart "
        "permission), the checkpoint store and ffprobe. Non-zero exit on any failure. "
        "Read-only: a missing bucket or WATCH_DIR is reported, not created, unless --fix.",
    )
    check.add_argument(
        "--fix", action="store_true",
        help="create what is missing (the bucket, WATCH_DIR, STATE_DIR)",
    )
    _add_setting_flags(check)

    salvage = sub.add_parser(
        "salvage", help="turn abandoned multipart uploads into readable objects",
        description="From any host with the S3 settings: complete every multipart upload "
        "under S3_KEY_PREFIX that nobody adds to (no part for --older-than seconds; known to "
        "a checkpoint store only when its owner is gone) from its parts 1..n, with metadata "
        "status 'salvaged'; abort only uploads that hold nothing. Never replaces an object.",
    )
    salvage.add_argument("--dry-run", action="store_true",
                         help="change nothing; print what would be done")
    salvage.add_argument("--json", action="store_true", help="print a JSON list")
    salvage.add_argument(
        "--older-than", type=_seconds, default=900.0, metavar="SECONDS",  # DEFAULT_OLDER_THAN
        help="leave uploads that got a part within this long (default 900)",
    )
    _add_setting_flags(salvage)

    verify = sub.add_parser(
        "verify", help="prove video objects and their metadata unchanged",
        description="Read each video object again (ranged, streaming) and check its size, "
        "SHA-256 (and CRC64NVME where recorded) against its metadata, and the metadata's "
        "signature against the public key. One line per object (ok, MISMATCH, UNSIGNED, "
        "BAD SIGNATURE, MISSING), then a summary; exit 0 only if every object is ok.",
    )
    verify.add_argument("keys", nargs="*", metavar="KEY",
                        help="video keys (full, or relative to S3_KEY_PREFIX)")
    verify.add_argument("--all", action="store_true", dest="all_keys",
                        help="every video under S3_KEY_PREFIX")
    verify.add_argument("--public-key", type=Path, metavar="FILE",
                        help="Ed25519 public key, PEM (default: that of SIGNING_KEY_FILE)")
    verify.add_argument("--json", action="store_true", help="print a JSON list")
    _add_setting_flags(verify)
    for command_parser in sub.choices.values():
        # Which command's usage an unknown option is reported with (see parse_command_line).
        command_parser.set_defaults(command_parser=command_parser)
    return parser


def parse_command_line(argv: Sequence[str] | None) -> argparse.Namespace:
    """argv → the command and its options. An unknown option is reported with the usage of
    the command it was given to (argparse alone answers with the top-level usage, which
    does not list the option's siblings), exit status 2."""
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def validate(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and build the settings as :func:`main` would, and nothing else: 0, or
    2 with the same one line naming the setting. For scripts that check a configuration
    before they start anything (``scripts/run-local``)."""
    args = parse_command_line(argv)
    try:
        load_settings(**_overrides(args))
    except ConfigError as exc:
        print(f"cefmp4: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0: {text!r}")
    return value


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
    }


def _secrets(settings: Settings) -> list[str]:
    from cefmp4.config.credentials import secrets_of

    return secrets_of(settings)


def entry() -> None:
    """The ``cefmp4`` script and ``python -m cefmp4``: :func:`main`, then leave at once.

    The interpreter's own exit ends with a garbage collection over every object still alive,
    botocore's service models above all: 0.12-0.21 s after an ``upload`` here (median 0.18 s
    of 20 runs; 6 ms without it), a tenth of a one-shot command's CPU spent on memory that the
    process is about to hand back anyway. By the time ``main`` returns, every store, client
    and task it opened is closed (their context managers); what is left is the flushing the
    normal exit would do, done here. Should a thread still be running, the normal exit joins it.
    """
    import logging
    import os
    import threading

    code = main()
    if threading.active_count() > 1:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # started with that descriptor closed
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: what the interpreter's exit answers
            code = EXIT_UNFLUSHED
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command_line(argv)
    try:
        settings = load_settings(**_overrides(args))
        logs.configure_logging(
            level=settings.log_level, fmt=settings.log_format, secrets=_secrets(settings)
        )
        if args.command == "run":
            existed = settings.watch_dir.exists()
            check_watch_dir(settings.watch_dir)
            if not existed:  # a misspelled WATCH_DIR would otherwise be watched in silence
                import structlog

                structlog.get_logger("cefmp4.cli.main").warning(
                    WATCH_DIR_CREATED, path=str(settings.watch_dir.resolve()),
                    hint="WATCH_DIR did not exist; recordings written elsewhere are not seen",
                )
            return _run(settings)
        if args.command == "upload":
            from cefmp4.cli.commands import upload_command

            return upload_command(settings, args.files)
        if args.command == "status":
            from cefmp4.cli.status import status_command

            if args.watch:
                from cefmp4.cli.commands import status_watch_command

                return status_watch_command(settings, interval=args.interval, count=args.count)
            return status_command(settings, as_json=args.json)
        if args.command == "salvage":
            from cefmp4.cli.salvage import salvage_command

            return salvage_command(settings, dry_run=args.dry_run, as_json=args.json,
                                   older_than=args.older_than)
        if args.command == "verify":
            from cefmp4.cli.verify import verify_command

            return verify_command(settings, args.keys, all_keys=args.all_keys,
                                  public_key=args.public_key, as_json=args.json)
        from cefmp4.cli.check import check_command

        return check_command(settings, fix=args.fix)
    except ConfigError as exc:
        print(f"cefmp4: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except PermanentError as exc:
        print(f"cefmp4: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except CefmpError as exc:
        print(f"cefmp4: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def raise_nofile_limit() -> None:
    """The soft limit on open descriptors raised to the hard one, once, at the start of ``run``.

    systemd and Docker start services at a soft limit of 1024 (kept low for programs still
    using select()); the hard limit is what the administrator allows, and every recording,
    S3 connection and health-port client takes a descriptor. Not raising it is no failure.
    """
    import resource

    import structlog

    log = structlog.get_logger("cefmp4.cli.main")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.debug(NOFILE_LIMIT, soft=soft, hard=hard)
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:  # e.g. a hard limit of "unlimited" the kernel refuses
        log.warning(NOFILE_LIMIT, soft=soft, hard=hard, error=type(exc).__name__)
        return
    log.info(NOFILE_LIMIT, soft_was=soft, soft=hard, hard=hard)


def _run(settings: Settings) -> int:
    # Imported by the command that uses them: `--help` starts without these.
    import asyncio
    import os
    import signal

    import structlog

    from cefmp4.runtime.app import App

    log = structlog.get_logger("cefmp4.cli.main")
    raise_nofile_limit()

    async def daemon() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)

        def on_signal(signum: int) -> None:
            if stop.is_set():
                # Second signal: leave at once; every checkpoint written so far holds.
                log.warning(logs.FORCED_EXIT, signal=signal.Signals(signum).name)
                os._exit(128 + signum)
            log.info(logs.SIGNAL_RECEIVED, signal=signal.Signals(signum).name)
            stop.set()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await App(settings).run(stop)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    asyncio.run(daemon())
    return EXIT_OK
