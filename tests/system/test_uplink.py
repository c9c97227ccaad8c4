"""UPLOAD_BWLIMIT (SPEC §2.21) with the installed ``cefmp4`` against a real SeaweedFS,
measured where the bytes arrive: a proxy in front of the server notes every byte with the
moment it came. ``cefmp4 upload`` honours the limit (and without it the same upload takes a
fraction of the time); the daemon keeps to it through an outage of the link, with no burst
when the link returns, says it on /metrics, and ``status`` says it and the backlog."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.app import make_settings
from tests.support.proc import Daemon, run_cli, settings_env
from tests.support.rateproxy import RateProxy
from tests.support.seaweed import SeaweedS3

MIB = 1 << 20
PART = 5 * MIB


class _Endpoint:
    """What ``make_settings`` needs of a server: the proxy's address."""

    def __init__(self, url: str) -> None:
        self.endpoint_url = url


@pytest.fixture
def proxy(s3_server: SeaweedS3) -> Iterator[RateProxy]:
    upstream = urlsplit(s3_server.endpoint_url)
    assert upstream.hostname is not None
    assert upstream.port is not None
    with RateProxy(upstream.hostname, upstream.port) as rate_proxy:
        yield rate_proxy


def _backlog(watch: Path, names: list[str], size: int) -> list[Path]:
    paths = []
    for name in names:
        path = watch / name
        path.write_bytes(os.urandom(size))
        then = time.time() - 3600
        os.utime(path, (then, then))
        paths.append(path)
    return paths


def _body_span(proxy: RateProxy, t0: float) -> tuple[float, float, int]:
    """(first, last, bytes) of the big arrivals after ``t0``: the bodies, not the probes."""
    arrivals = [(t, n) for t, n in proxy.arrivals() if t >= t0]
    return arrivals[0][0], arrivals[-1][0], sum(n for _, n in arrivals)


def test_upload_honours_the_limit(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, proxy: RateProxy
) -> None:
    """24 MiB at 2 MiB/s: about 12 s of sending at 0.95-1.02 of the limit, never more
    than ten seconds' worth and a part in any 10 s; with no limit a second or two."""
    settings = make_settings(tmp_path=tmp_path, s3=_Endpoint(proxy.endpoint_url),  # type: ignore[arg-type]
                             bucket=s3_bucket)
    [source] = _backlog(settings.watch_dir, ["r.mp4"], 24 * MIB)
    t0 = time.monotonic()
    result = run_cli(["upload", str(source)], settings_env(settings, UPLOAD_BWLIMIT="2M"))
    assert result.returncode == 0, result.stderr
    first, last, sent = _body_span(proxy, t0)
    assert sent >= 24 * MIB
    assert 0.95 <= sent / (last - first) / (2 * MIB) <= 1.02, sent / (last - first) / MIB
    assert proxy.max_window(10.0, t0) <= 20 * MIB + PART

    (tmp_path / "off").mkdir()
    unlimited = make_settings(tmp_path=tmp_path / "off", s3=_Endpoint(proxy.endpoint_url),  # type: ignore[arg-type]
                              bucket=s3_bucket)
    [again] = _backlog(unlimited.watch_dir, ["r.mp4"], 24 * MIB)
    t1 = time.monotonic()
    result = run_cli(["upload", str(again)], settings_env(unlimited))
    assert result.returncode == 0, result.stderr
    first, last, _ = _body_span(proxy, t1)
    assert last - first < 4.0


def test_the_daemon_keeps_the_limit_through_an_outage(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, proxy: RateProxy
) -> None:
    """Two backlog files at 4 MiB/s; the link is cut for 3 s two seconds in. When it comes
    back the parts that waited are sent at the limit, not all at once: no 2 s window holds
    more than 2 s of the limit (and the bucket's tenth of a second). /metrics and `status`
    say the limit; `status` says the backlog left and its drain time."""
    settings = make_settings(tmp_path=tmp_path, s3=_Endpoint(proxy.endpoint_url),  # type: ignore[arg-type]
                             bucket=s3_bucket, stream_timeout_seconds=1.0)
    env = settings_env(settings, UPLOAD_BWLIMIT="4M")
    _backlog(settings.watch_dir, ["a.mp4", "b.mp4"], 3 * PART)
    with Daemon(env, tmp_path / "run.log") as daemon:
        daemon.start()
        status, text = daemon.http_get("/metrics")
        assert status == 200
        gauge = [line for line in text.splitlines()
                 if line.startswith("upload_rate_limit_bytes_per_second ")]
        assert [float(line.split()[1]) for line in gauge] == [4 * MIB], gauge
        shown = run_cli(["status"], env)
        assert "upload limit: 4 MiB/s" in shown.stdout, shown.stdout
        assert "drains in about" in shown.stdout, shown.stdout
        time.sleep(2.0)
        proxy.go_down()
        time.sleep(3.0)
        proxy.come_up()
        back = time.monotonic()
        deadline = back + 40
        done = 0
        while time.monotonic() < deadline and done < 2:
            done = sum(1 for e in daemon.events() if e.get("event") == "stream_completed")
            time.sleep(0.2)
        assert done == 2, daemon.log_tail()
        assert daemon.stop() == 0
    assert any(e.get("event") == "retry" for e in daemon.events())  # the outage was felt
    assert proxy.max_window(2.0, back) <= 2 * 4 * MIB + 0.1 * 4 * MIB + 64 * 1024
    assert proxy.max_window(10.0) <= 40 * MIB + PART
