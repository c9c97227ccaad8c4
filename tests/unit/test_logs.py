"""Logging: JSON lines, context variables, and no secret ever reaching the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from structlog.testing import capture_logs

from cefmp4.runtime import logs
from cefmp4.runtime.logs import configure_logging, redact, redact_event

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
REDIS_PASSWORD = "hunter2-redis"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    library_levels = {n: logging.getLogger(n).level for n in ("botocore", "asyncio")}
    yield
    structlog.reset_defaults()
    logs.set_secrets(())
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in library_levels.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)


def _json_lines(buf: io.StringIO) -> list[dict[str, object]]:
    lines = buf.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # one object per line, each valid JSON


def test_json_lines_have_timestamp_level_event_and_fields() -> None:
    buf = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=buf)
    log = structlog.get_logger("test")
    log.info(logs.PART_UPLOADED, part_number=3, size_bytes=10)
    log.debug("not shown at INFO")
    (line,) = _json_lines(buf)
    assert line["event"] == "part_uploaded"
    assert line["level"] == "info"
    assert line["part_number"] == 3
    ts = str(line["timestamp"])
    assert ts.startswith("20")
    assert ts.endswith(("Z", "+00:00"))


def test_auto_is_json_when_not_a_tty() -> None:
    buf = io.StringIO()
    configure_logging(level="info", fmt="auto", stream=buf)
    structlog.get_logger().warning(logs.SHUTDOWN, reason="signal")
    assert _json_lines(buf)[0]["event"] == "shutdown"


def test_console_format_is_not_json() -> None:
    buf = io.StringIO()
    configure_logging(level="info", fmt="console", secrets=[SECRET], stream=buf)
    structlog.get_logger().info(logs.STREAM_STARTED, key=SECRET)
    out = buf.getvalue()
    assert "stream_started" in out
    assert SECRET not in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[0])


def test_contextvars_are_merged() -> None:
    buf = io.StringIO()
    configure_logging(level="info", fmt="json", stream=buf)
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(stream_id="s-1", path="/in/a.mp4"):
        log.info(logs.PART_UPLOADED, part_number=1)
    log.info(logs.SHUTDOWN)
    first, second = _json_lines(buf)
    assert first["stream_id"] == "s-1"
    assert first["path"] == "/in/a.mp4"
    assert "stream_id" not in second


def test_secrets_never_reach_the_stream() -> None:
    buf = io.StringIO()
    configure_logging(level="debug", fmt="json", secrets=[SECRET, "", REDIS_PASSWORD],
                      stream=buf)
    log = structlog.get_logger()
    log.info("configured", key=SECRET, nested={"list": [f"x{SECRET}y"]}, empty="")
    log.info(f"event text with {SECRET}")
    log.info("connect", url=f"redis://default:{REDIS_PASSWORD}@redis:6379/0")
    try:
        raise RuntimeError(f"auth failed for {SECRET} at redis://:{REDIS_PASSWORD}@h/1")
    except RuntimeError as exc:
        log.exception(logs.ERROR, error=exc)
    logging.getLogger("botocore").warning("signature with %s", SECRET)
    out = buf.getvalue()
    assert SECRET not in out
    assert REDIS_PASSWORD not in out
    lines = _json_lines(buf)
    assert lines[0]["key"] == "***"
    assert lines[0]["nested"] == {"list": ["x***y"]}
    assert lines[0]["empty"] == ""
    assert lines[2]["url"] == "redis://default:***@redis:6379/0"
    assert "RuntimeError" in str(lines[3]["exception"])
    assert "redis://:***@h/1" in str(lines[3]["exception"])
    assert lines[4]["logger"] == "botocore"


def test_stdlib_libraries_routed_at_warning() -> None:
    buf = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=buf)
    logging.getLogger("botocore.endpoint").debug("noise")
    logging.getLogger("asyncio").info("noise")
    logging.getLogger("aiobotocore").warning("kept")
    (line,) = _json_lines(buf)
    assert line["event"] == "kept"
    assert line["level"] == "warning"


def test_unknown_level_rejected() -> None:
    with pytest.raises(ValueError, match="VERBOSE"):
        configure_logging(level="VERBOSE", fmt="json", stream=io.StringIO())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("redis://user:pass@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://:pass@host", "rediss://:***@host"),
        ("redis://u:p@ss@host/0", "redis://u:***@host/0"),
        ("http://minio:9000/bucket", "http://minio:9000/bucket"),
        ("see redis://host:6379 and https://a:b@c/d", "see redis://host:6379 and https://a:***@c/d"),
        ("no url here", "no url here"),
    ],
)
def test_url_passwords_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redacting_processor_with_capture_logs() -> None:
    logs.set_secrets([SECRET])

    class Holder:
        def __repr__(self) -> str:
            return f"Holder(key={SECRET!r})"

    processors = [structlog.contextvars.merge_contextvars, redact_event]
    with (
        capture_logs(processors=processors) as cap,
        structlog.contextvars.bound_contextvars(stream_id="s-9"),
    ):
        structlog.get_logger().info(
            logs.RETRY, operation="upload_part", obj=Holder(), n=3, token=SECRET
        )
    (entry,) = cap
    assert entry["stream_id"] == "s-9"
    assert entry["n"] == 3
    assert entry["token"] == "***"
    assert SECRET not in repr(entry)


def test_event_name_constants() -> None:
    names = {
        logs.STREAM_STARTED, logs.PART_UPLOADED, logs.PART_REUPLOADED, logs.STREAM_IDLE,
        logs.STREAM_COMPLETED, logs.METADATA_WRITTEN, logs.RETRY, logs.ERROR, logs.SHUTDOWN,
        logs.STREAM_RESUMED, logs.STREAM_FAILED,
    }
    assert len(names) == 11
    events = [v for k, v in vars(logs).items()
              if k.isupper() and not k.startswith("_") and k != "MASK"]
    assert names <= set(events)
    assert len(set(events)) == len(events), "two event constants share a name"
    assert all(n.isidentifier() and n.islower() for n in names)


# --- whole secrets only (review #9): no garbled words, no secret handed out by a mask ------


def test_a_short_secret_never_garbles_text() -> None:
    """A one-letter key used to turn ``scale_out`` into ``***cale_out`` (and told the
    reader the key was ``s``). Below 8 characters a secret cannot be told from an ordinary
    word: it is masked only where it is a whole value."""
    logs.set_secrets(["k", "local", "cefmp4"])
    for text in ("scale_out", "k8s", "http://localhost:9999", "sqlite in ./.local/state",
                 "cefmp4 check", "/var/lib/cefmp4/state", "key k is not masked in text"):
        assert redact(text) == text
    assert redact("k") == "***"
    assert redact("local") == "***"
    event = redact_event(None, "info", {"event": "scale_out", "access": "cefmp4", "n": 1})
    assert event == {"event": "scale_out", "access": "***", "n": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password rot13-pass!", "password ***!"),
        ("'rot13-pass'", "'***'"),
        ("key=rot13-pass&x=1", "key=***&x=1"),
        ("rot13-pass", "***"),
        ("xrot13-pass", "xrot13-pass"),  # inside a longer word: not this secret
        ("rot13-passage", "rot13-passage"),
        ("rot13_pass", "rot13_pass"),
    ],
)
def test_a_secret_is_masked_as_a_whole_token_only(text: str, expected: str) -> None:
    logs.set_secrets(["rot13-pass"])
    assert redact(text) == expected


def test_a_long_secret_is_masked_wherever_it_appears() -> None:
    """16 characters and more cannot occur by chance: glued to other text it is still it."""
    logs.set_secrets([SECRET])
    assert redact(f"x{SECRET}y") == "x***y"
    assert redact(f"Signature={SECRET}{SECRET}") == "Signature=******"


def test_a_secret_containing_another_is_masked_whole() -> None:
    logs.set_secrets(["rot13-pass", "rot13-pass-longer"])
    assert redact("a rot13-pass-longer b rot13-pass") == "a *** b ***"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://hooks.example/in?token=abc123&channel=ops",
         "https://hooks.example/in?token=***&channel=ops"),
        ("https://h/x?api_key=k1&Signature=s2&X-Amz-Security-Token=t3",
         "https://h/x?api_key=***&Signature=***&X-Amz-Security-Token=***"),
        ("https://h/x?access_token=abc#frag", "https://h/x?access_token=***#frag"),
        ("https://h/x?page=2&sort=asc", "https://h/x?page=2&sort=asc"),
        ("https://h/x?uploadId=abc&partNumber=3", "https://h/x?uploadId=abc&partNumber=3"),
    ],
)
def test_url_query_tokens_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


# --- escaped forms (review D): repr(exc) and JSON text double a backslash, escape a quote --

ESCAPED_SECRET = 'Sup3r\\Secret"Key_long_enough'  # Sup3r\Secret"Key_long_enough


def _escaped_forms(secret: str) -> list[str]:
    """How ``secret`` reads inside repr() (either quote) and inside JSON text."""
    return [repr(secret)[1:-1], repr(secret + "'\"")[1:-4], json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret.encode())[2:-1]]


@pytest.mark.parametrize(
    "secret",
    [ESCAPED_SECRET, "it's\\a \"long\" secret", "pässwört\\long-enough", 'sh\\rt"pw9'],
)
def test_a_secret_is_masked_in_its_repr_and_json_escaped_forms(secret: str) -> None:
    logs.set_secrets([secret])
    texts = [
        repr(RuntimeError(f"auth failed for {secret}")),
        repr(RuntimeError(f"it's {secret}, \"quoted\"")),  # repr escapes ' here
        repr({"password": secret}),
        json.dumps({"password": secret}),
        json.dumps({"password": secret}, ensure_ascii=False),
        repr(f"auth {secret}".encode()),
    ]
    for text in texts:
        masked = redact(text)
        assert "***" in masked, text
        for form in {secret, *_escaped_forms(secret)}:
            assert form not in masked, (text, form)


def test_a_logged_repr_of_an_error_shows_no_escaped_secret() -> None:
    buf = io.StringIO()
    configure_logging(level="debug", fmt="json", secrets=[ESCAPED_SECRET], stream=buf)
    exc = RuntimeError(f"auth failed for {ESCAPED_SECRET}")
    structlog.get_logger().error("delivery_error", error=repr(exc), exc_info=exc)
    out = buf.getvalue()
    for form in (ESCAPED_SECRET, *_escaped_forms(ESCAPED_SECRET)):
        assert form not in out, form
    [line] = _json_lines(buf)
    assert line["error"] == "RuntimeError('auth failed for ***')"


def test_a_secret_in_a_mapping_key_is_masked() -> None:
    logs.set_secrets([SECRET])
    event = redact_event(None, "info", {"event": "x", "seen": {SECRET: 1, "ok": SECRET}})
    assert event["seen"] == {"***": 1, "ok": "***"}
