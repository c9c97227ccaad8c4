"""Start-up: a command imports only what it uses (issue #14). Checked by module presence
in a fresh interpreter, never by timing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

_PROBE = """
import sys
from cefmp4.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("LOADED:" + ",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""
HEAVY = ("structlog", "rich", "aiobotocore", "aiohttp", "botocore", "cefmp4.runtime.app",
         "cefmp4.storage.s3")


def _loaded(*argv: str, env: dict[str, str] | None = None) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    marks = [line for line in proc.stdout.splitlines() if line.startswith("LOADED:")]
    assert marks, proc.stdout[-2000:] + proc.stderr[-2000:]
    return set(filter(None, marks[-1].removeprefix("LOADED:").split(",")))


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """Settings that load without any server. Static keys: without them the AWS credential
    chain (botocore) is asked for secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "REDIS_"))}
    env.update({"S3_BUCKET_NAME": "bucket", "STATE_DIR": str(tmp_path / "state"),
                "S3_ACCESS_KEY_ID": "key", "S3_SECRET_ACCESS_KEY": "secret",
                "WATCH_DIR": str(tmp_path), "LOG_FORMAT": "json"})
    return env


def test_help_loads_neither_the_logging_nor_the_s3_stack() -> None:
    assert _loaded("--help") == set()
    assert _loaded("upload", "--help") == set()


def test_status_watch_reads_the_store_without_the_s3_stack(tmp_path: Path) -> None:
    env = _offline_env(tmp_path)
    loaded = _loaded("status", "--watch", "--count", "1", "--interval", "0.01", env=env)
    # Logging is configured (structlog) and the table drawn (rich); S3 is never reached.
    assert loaded == {"structlog", "rich"}


def test_logging_is_configured_without_importing_rich() -> None:
    """structlog imports rich (~0.1 s) for tracebacks cefmp4 never renders: not any more."""
    probe = (
        "import sys\nfrom cefmp4.runtime import logs\n"
        "logs.configure_logging(level='info', fmt='console')\n"
        "import structlog\nstructlog.get_logger().info('x')\n"
        "print('RICH:' + ','.join(sorted(m for m in sys.modules if m.startswith('rich'))))\n"
        "from rich.table import Table\nprint('TABLE:' + Table.__name__)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert "RICH:\n" in proc.stdout  # nothing of rich imported by logging
    assert "TABLE:Table" in proc.stdout  # rich itself still imports where it draws


def test_upload_does_not_import_the_status_table(tmp_path: Path) -> None:
    """`upload` prints lines, not rich tables: `status` (and rich with it) stays unloaded."""
    env = _offline_env(tmp_path)
    loaded = _loaded("upload", str(tmp_path / "no-such-file.mp4"), env=env)
    assert "structlog" in loaded  # the command ran as far as its logging
    assert "rich" not in loaded
