"""After a restart, a full part goes to S3 as soon as its bytes exist (issue #26 item 6).

The report: ``stream_resumed`` and ``ready`` at 14:26:07, then nothing until parts 2 and 3
at 14:26:20, right after an ``s3_part_checksum`` line, with no request reaching SeaweedFS in
between. Nothing in the resume path waits that long with nothing to do: no backoff (a retry
logs ``retry``), no predigest (its own task; it never holds a part back), no byte budget
(empty after a start), and the checksum probe runs at start-up (its line comes before
``ready``). A part is started only once all of its bytes are on disk (SPEC §2.2); a
fragmented MP4 grows by one fragment per keyframe interval (8-10 s with x264's defaults),
and one fragment can hold two parts' worth of bytes. So thirteen quiet seconds followed by two
parts at once is a recorder that wrote less than a full part after the restart and then one
big fragment. These tests hold both halves: a part that is complete when the daemon comes back
is sent at once, and a fragment that completes two parts has both sent at once, the moment
it lands, however long the recorder was quiet before.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.media import make_mp4
from tests.support.proc import Daemon
from tests.system.conftest import Rig, wait_until_impl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MIB = 1 << 20
PROMPT = 2.0  # a part's bytes on disk -> its UploadPart done, on this loaded 2-core host


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def _events(daemon: Daemon, name: str, since: float = 0.0) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if e.get("event") == name and _at(e) >= since]


class Recorder:
    """Holds the file open for writing, as a live recorder does, and appends on request."""

    def __init__(self, source: bytes, path: Path) -> None:
        self.source, self.written = source, 0
        self.out = path.open("wb")

    def append(self, nbytes: int) -> float:
        chunk = self.source[self.written:self.written + nbytes]
        self.out.write(chunk)
        self.out.flush()
        self.written += len(chunk)
        return time.time()

    def close(self) -> None:
        self.out.write(self.source[self.written:])
        self.out.close()


@pytest.fixture
def recording(media_dir: Path) -> bytes:
    return make_mp4(media_dir / "resume-24mb.mp4", seconds=6, mbytes=24).read_bytes()


def _profile(rig: Rig, name: str, recording: bytes) -> Recorder:
    """The recorder profile (run-local's), and a recorder with its file open in WATCH_DIR."""
    rig.configure(stream_timeout_seconds=30, complete_on_close_seconds=2, hold_while_open=True)
    return Recorder(recording, Path(rig.env["WATCH_DIR"]) / name)


def _restarted(rig: Rig, recorder: Recorder) -> tuple[Daemon, float]:
    daemon = rig.daemon()
    daemon.start()
    recorder.append(6 * MIB)  # part 1 and a little
    wait_until_impl(lambda: _events(daemon, "part_uploaded"), timeout=30, what="part 1",
                    alive=(daemon,))
    daemon.kill()  # as a crash, or Ctrl-C twice
    daemon.start()
    [ready] = _events(daemon, "ready")[-1:]
    return daemon, _at(ready)


def test_a_part_complete_at_restart_is_sent_at_once(
    rig: Rig, recording: bytes
) -> None:
    recorder = _profile(rig, "live.mp4", recording)
    try:
        daemon, _ = _restarted(rig, recorder)
        daemon.kill()
        landed = recorder.append(9 * MIB)  # parts 2 and 3 complete while it is down
        started = time.time()
        daemon.start()
        ready = _at(_events(daemon, "ready")[-1])
        # The resumed stream may send them before `ready` is logged (the start-up scan): so
        # counted from this start, and measured against `ready` (negative: sooner still).
        wait_until_impl(lambda: len(_events(daemon, "part_uploaded", started)) >= 2,
                        timeout=30, what="parts 2 and 3", alive=(daemon,))
        sent = sorted(_at(e) for e in _events(daemon, "part_uploaded", started))
        checksum = _events(daemon, "s3_part_checksum", landed)
        print(f"ready -> parts 2, 3: {sent[0] - ready:.2f} s, {sent[1] - ready:.2f} s")
        assert sent[1] - ready < PROMPT
        assert checksum, "the start-up probe said nothing"
        assert _at(checksum[-1]) <= ready  # probed at start-up, not on a part's demand
    finally:
        recorder.close()
    assert daemon.stop() == 0


def test_two_parts_in_one_late_fragment_go_when_it_lands(rig: Rig, recording: bytes) -> None:
    recorder = _profile(rig, "frag.mp4", recording)
    try:
        daemon, ready = _restarted(rig, recorder)
        time.sleep(6)  # the recorder between two keyframes (the report's gap was 13 s)
        landed = recorder.append(10 * MIB)  # one fragment: parts 2 and 3 at once
        wait_until_impl(lambda: len(_events(daemon, "part_uploaded", ready)) >= 2, timeout=30,
                        what="parts 2 and 3", alive=(daemon,))
        sent = sorted(_at(e) for e in _events(daemon, "part_uploaded", ready))
        print(f"fragment -> parts 2, 3: {sent[0] - landed:.2f} s, {sent[1] - landed:.2f} s")
        assert sent[1] - landed < PROMPT
        assert not _events(daemon, "retry", ready)
    finally:
        recorder.close()
    assert daemon.stop() == 0
