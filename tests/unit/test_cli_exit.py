"""``cli.entry``, the ``cefmp4`` script: it leaves with ``os._exit`` after ``main`` (the
interpreter's final garbage collection is skipped) and must still lose no output, keep
``main``'s exit status, and let a thread that is still working finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _entry(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``entry()`` with ``main`` replaced by ``body`` (a function named fake_main)."""
    code = f"from cefmp4.cli import main as cli\n{body}\ncli.main = fake_main\ncli.entry()\n"
    # Block-buffered output, as a service's stdout normally is: the flush is entry()'s.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False, env=env)


def test_the_exit_status_and_all_buffered_output_survive() -> None:
    # Piped stdout is block-buffered: 200,000 characters are still in the buffer at exit.
    proc = _entry(
        "import logging, sys\n"
        "def fake_main():\n"
        "    print('x' * 200_000)\n"
        "    print('to stderr', file=sys.stderr, end='')\n"
        "    logging.basicConfig(stream=sys.stderr, format='%(message)s')\n"
        "    logging.getLogger('t').warning('logged')\n"
        "    return 3\n"
    )
    assert proc.returncode == 3
    assert proc.stdout == "x" * 200_000 + "\n"
    assert proc.stderr == "to stderrlogged\n"


def test_a_closed_stdout_at_start_is_no_failure() -> None:
    # Started with fd 1 closed, Python has sys.stdout None: nothing to flush, status kept.
    code = ("import sys\nfrom cefmp4.cli import main as cli\ncli.main = lambda: 0\n"
            "print('x', file=sys.stderr)\ncli.entry()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=False, text=True,
                          stdout=None, stderr=subprocess.PIPE, timeout=60, check=False,
                          preexec_fn=lambda: os.close(1))
    assert (proc.returncode, proc.stderr) == (0, "x\n")


def test_output_that_cannot_be_flushed_exits_as_python_would() -> None:
    proc = _entry(
        "import os\n"
        "def fake_main():\n"
        "    print('buffered, never delivered')\n"
        "    os.close(1)\n"
        "    return 0\n"
    )
    assert proc.returncode == 120  # the interpreter's own status for an unflushable stdout


def test_a_thread_still_running_is_joined_by_the_normal_exit(tmp_path: Path) -> None:
    done = tmp_path / "done"
    proc = _entry(
        "import threading, time\n"
        "def work():\n"
        "    time.sleep(0.3)\n"
        f"    open({str(done)!r}, 'w').write('finished')\n"
        "def fake_main():\n"
        "    threading.Thread(target=work).start()\n"
        "    return 0\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert done.read_text() == "finished"


def test_the_script_and_python_m_go_through_entry(tmp_path: Path) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cefmp4"] == "cefmp4.cli.main:entry"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "REDIS_"))}
    env.update({"S3_BUCKET_NAME": "bucket", "STATE_DIR": str(tmp_path / "state"),
                "S3_ACCESS_KEY_ID": "key", "S3_SECRET_ACCESS_KEY": "secret",
                "WATCH_DIR": str(tmp_path)})
    proc = subprocess.run([sys.executable, "-m", "cefmp4", "status", "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []  # printed, and flushed before os._exit
