"""structlog set-up: JSON or console lines, context variables, and secret redaction.

Every module logs with ``structlog.get_logger(__name__)`` and an event-name constant below,
with values as keyword fields (``log.info(PART_UPLOADED, part_number=3)``). Stream tasks
bind ``stream_id`` and ``path`` once with ``structlog.contextvars.bound_contextvars``.

stdlib logging (botocore, aiobotocore, asyncio, watchfiles) goes through the same
processors, so redaction applies to library messages and tracebacks as well.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO, cast

if TYPE_CHECKING:  # structlog is imported where it is configured: `--help` never pays for it
    from structlog.typing import EventDict, Processor, WrappedLogger

# --- event names ----------------------------------------------------------------------------
# process lifecycle
SETTINGS_ADVICE: Final = "settings_advice"  # a valid setting that works against another
READY: Final = "ready"  # started: watching, serving, resumed what was unfinished
SIGNAL_RECEIVED: Final = "signal_received"
SHUTDOWN: Final = "shutdown"  # draining: no new work, in-flight parts finishing
FORCED_EXIT: Final = "forced_exit"  # a second signal
STOPPED: Final = "stopped"
# one stream
BUCKET_CREATED: Final = "bucket_created"  # run created S3_BUCKET_NAME: WARNING, a typo?
STREAM_STARTED: Final = "stream_started"
STREAM_RESUMED: Final = "stream_resumed"
STREAM_RENAMED: Final = "stream_renamed"
STREAM_TRUNCATED: Final = "stream_truncated"
STREAM_IDLE: Final = "stream_idle"
STREAM_SUSPENDED: Final = "stream_suspended"  # left resumable at shutdown
STREAM_COMPLETED: Final = "stream_completed"
STREAM_FAILED: Final = "stream_failed"
# A failing stream's upload holds parts it cannot use: handed to salvage (§2.19).
UPLOAD_RELEASED: Final = "upload_released"
# another party (salvage) made an object of the stream's upload: over at its key
STREAM_TAKEN: Final = "stream_taken"
SOURCE_CHANGED: Final = "source_changed"
SOURCE_GONE: Final = "source_gone"
# parts and objects
UPLOAD_CREATED: Final = "upload_created"
UPLOAD_RESTARTED: Final = "upload_restarted"  # S3 forgot the upload id: from byte 0 again
PART_UPLOADED: Final = "part_uploaded"
PART_REUPLOADED: Final = "part_reuploaded"
PART_ADOPTED: Final = "part_adopted"  # found in ListParts after a restart, bytes match
PART_MISSING: Final = "part_missing"  # checkpointed, but S3 does not list it
PART_MISMATCH: Final = "part_mismatch"  # S3 lists it with another ETag
STREAM_REBUILT: Final = "stream_rebuilt"
UPLOAD_ATTACHED: Final = "upload_attached"
LEASE_LOST: Final = "lease_lost"
LEASE_RELEASE_FAILED: Final = "lease_release_failed"
STREAM_RELINQUISHED: Final = "stream_relinquished"
STREAM_TAKEN_OVER: Final = "stream_taken_over"
SCALE_OUT: Final = "scale_out"
LEASE_RECLAIMED: Final = "lease_reclaimed"
PREDIGEST_FAILED: Final = "predigest_failed"
PREDIGEST_USED: Final = "predigest_used"
PREDIGEST_STALE: Final = "predigest_stale"
# Evidence (§2.22): a video whose retention ends before completion + days; what is protected.
OBJECT_LOCK_SHORT: Final = "object_lock_short"
EVIDENCE: Final = "evidence"
ORPHAN_ABORTED: Final = "orphan_upload_aborted"
COMPLETE_CONFIRMED: Final = "complete_confirmed"  # HeadObject shows it was completed
PROBE_FAILED: Final = "probe_failed"
PROBE_REPEATED: Final = "probe_repeated"  # debug: the file changed under the early probe
METADATA_WRITTEN: Final = "metadata_written"
# discovery (§2.1): each is logged once per path, not per event or scan
FILE_SKIPPED: Final = "file_skipped"  # not UTF-8, fifo/socket/device, key over 1,024 bytes
DIRECTORY_UNREADABLE: Final = "directory_unreadable"
DIRECTORY_READABLE: Final = "directory_readable"  # readable again: its files are found now
WATCHER_RESTARTED: Final = "watcher_restarted"
# checkpoint records (§2.18)
RECORD_QUARANTINED: Final = "record_quarantined"
# failures
RETRY: Final = "retry"
TASK_FAILED: Final = "task_failed"  # a supervised background task raised
TASK_RESTARTING: Final = "task_restarting"
RESCAN_DONE: Final = "rescan"  # a periodic look at the whole watch dir finished
STREAM_DEFERRED: Final = "stream_deferred"  # no room or no descriptor: retried later
SOURCE_UNREADABLE: Final = "source_unreadable"  # permission or I/O error opening it
ERROR: Final = "error"

MASK: Final = "***"

# scheme://user:password@host → scheme://user:***@host. The password runs to the last "@"
# before the host, so an unencoded "@" inside it is masked too.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^/\s]+)@"
)
# ?token=…, &api_key=…, &X-Amz-Signature=…: a query parameter whose name says it carries
# a credential. Names like uploadId or partNumber are left alone.
_QUERY_TOKEN = re.compile(
    r"(?P<head>[?&][^=&#\s]*(?:token|secret|passw|pwd|key|sig|auth|credential)[^=&#\s]*=)"
    r"(?P<value>[^&#\s]+)",
    re.IGNORECASE,
)

# A secret this short cannot be told from an ordinary word ("k", "local", "cefmp4"):
# searched for in text it would garble every line that holds that word, and the mask
# would tell the reader the secret ("***cale_out"). It is masked only where it is a whole
# value (a log field, a line); a URL's password and query tokens are masked by their place
# whatever their length. 8 is the shortest secret MinIO accepts; AWS secret keys have 40.
MIN_TEXT_SECRET: Final = 8
# From this length a secret cannot occur by chance: it is masked even glued to other text
# (a secret inside a longer string is still the secret). Shorter ones only as whole tokens.
ANYWHERE_SECRET: Final = 16

# Libraries that log through stdlib logging; chatty below WARNING.
_LIBRARY_LOGGERS: Final = (
    "botocore", "aiobotocore", "asyncio", "urllib3", "s3transfer", "watchfiles",
)

_OURS: Final = "_cefmp4_handler"

_whole_values: frozenset[str] = frozenset()
_in_text: re.Pattern[str] | None = None


def _token_pattern(form: str, *, anywhere: bool) -> str:
    """``form`` (a secret, or one of its escaped forms) as a regex that matches it only as a
    whole token: not preceded or followed by a word character where it begins or ends with
    one (a word boundary that also holds for secrets starting or ending with punctuation).
    ``anywhere`` (a long secret): it matches glued to other text as well."""
    escaped = re.escape(form)
    if anywhere:
        return escaped
    head = r"(?<!\w)" if re.match(r"\w", form[0]) else ""
    tail = r"(?!\w)" if re.match(r"\w", form[-1]) else ""
    return f"{head}{escaped}{tail}"


def _forms(secret: str) -> set[str]:
    """``secret`` and the forms it takes inside text that escapes it, where the secret
    itself does not occur: ``repr()`` of a str (``error=repr(exc)``, a dict rendered in a
    message; a backslash doubled, a quote escaped or not as Python picks the quotes) or
    of its UTF-8 bytes, and JSON text (a body quoted in an error; ASCII-only or not)."""
    both = "'\""  # text holding both quotes: repr escapes the single one
    return {
        secret,
        repr(secret)[1:-1],
        repr(secret + both)[1:-4],
        repr(secret.encode())[2:-1],
        repr((secret + both).encode())[2:-4],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


def set_secrets(secrets: Iterable[str]) -> None:
    """Replace the secrets ``redact`` masks (empty and blank ones are ignored). Pass only
    secrets: an access key id is an identifier, and masking it garbles what it occurs in."""
    global _whole_values, _in_text  # noqa: PLW0603  (process-wide, like the logging config)
    values = {s for s in secrets if s and s.strip()}
    _whole_values = frozenset(form for s in values for form in _forms(s))
    # Every form of each secret long enough to search for; how a form is matched (as a
    # whole token or anywhere) follows the secret's own length. Longest first, so a secret
    # that contains another, or an escaped form that contains the plain one, is masked whole.
    searched = sorted(
        {(form, len(s) >= ANYWHERE_SECRET)
         for s in values if len(s) >= MIN_TEXT_SECRET for form in _forms(s)},
        key=lambda item: len(item[0]), reverse=True,
    )  # fmt: skip
    _in_text = (
        re.compile("|".join(_token_pattern(form, anywhere=anywhere) for form, anywhere in searched))
        if searched else None
    )  # fmt: skip


def redact(text: str) -> str:
    """``text`` with every configured secret (whole, see ``MIN_TEXT_SECRET``; plain or
    escaped by repr or JSON), every URL password and every credential-named query value
    replaced by ``***``."""
    if text in _whole_values:
        return MASK
    if _in_text is not None:
        text = _in_text.sub(MASK, text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    if "=" in text:
        text = _QUERY_TOKEN.sub(lambda m: f"{m['head']}{MASK}", text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):  # keys too: a header or URL used as a key
        return {(redact(k) if isinstance(k, str) else k): _redact_value(v)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    # Any other object (an exception, a URL, a settings object) is rendered with str() or
    # repr() later; if either would show a secret, render it now, redacted.
    for render in (str, repr):
        try:
            text = render(value)
        except Exception:
            continue
        masked = redact(text)
        if masked != text:
            return masked
    return value


def redact_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secrets in every value, exception text included.

    Put it after ``format_exc_info`` so tracebacks are strings by the time it runs.
    """
    return {key: _redact_value(value) for key, value in event_dict.items()}


def _import_structlog_without_rich() -> None:
    """structlog imports rich, when installed, for pretty tracebacks and reprs. cefmp4
    renders plain ones (below), and rich's import is ~0.1 s of every command's start-up,
    ahead of the first byte of ``upload``: hide it from structlog's import alone
    (``status`` and the progress bar import rich themselves, when they draw)."""
    if "structlog" in sys.modules or "rich" in sys.modules:
        return
    sys.modules["rich"] = None  # type: ignore[assignment]  # `import rich` now fails
    try:
        import structlog  # noqa: F401
    finally:
        del sys.modules["rich"]


def _shared_processors() -> list[Processor]:
    import structlog

    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact_event,
    ]


def configure_logging(
    *,
    level: str,
    fmt: Literal["auto", "json", "console"],
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and stdlib logging for the whole process.

    ``fmt="auto"`` means console lines on a terminal, JSON lines otherwise. Logs go to
    ``stream`` (stderr by default: stdout is for command output such as ``status --json``).
    """
    _import_structlog_without_rich()
    import structlog

    out = stream if stream is not None else _STDERR
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    set_secrets(secrets)

    if fmt == "auto":
        fmt = "console" if _isatty(out) else "json"
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_isatty(out),
            # Tracebacks are already strings (format_exc_info, then redacted).
            exception_formatter=structlog.dev.plain_traceback,
        )

    structlog.configure(
        processors=[*_shared_processors(), renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        context_class=dict,
        # Not cached: configure_logging may run again (tests, the CLI after parsing flags).
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    # Replace our own handler from an earlier call; leave others' (pytest's capture) alone.
    for old in list(root.handlers):
        if getattr(old, _OURS, False):
            root.removeHandler(old)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    library_level = max(logging.WARNING, numeric)
    root.setLevel(library_level)
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    logging.captureWarnings(True)


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured:
    while ``upload`` draws its progress bar, rich puts a proxy there that prints each line
    above the bar; a handle on the real stderr taken earlier would write through the bar,
    which then draws itself again below the line (three bars for one upload)."""

    def write(self, text: str) -> int:
        stream = sys.stderr
        return len(text) if stream is None else stream.write(text)  # None: started without fd 2

    def flush(self) -> None:
        if sys.stderr is not None:
            sys.stderr.flush()

    def isatty(self) -> bool:
        return _isatty(sys.stderr)


_STDERR: Final = cast("TextIO", _Stderr())  # duck-typed: write, flush, isatty


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
