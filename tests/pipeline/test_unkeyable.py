"""A file whose path cannot become an object key (longer than S3's 1,024 bytes, a name
that is not UTF-8) is skipped with one warning and counted, and nothing else is disturbed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cefmp4.config.settings import Settings
from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    burst,
    capture,
    daemon,
    make_settings,
    pattern,
    until,
    videos,
)


def deep_file(watch: Path) -> Path:
    """A file whose key would be over 1,024 bytes: five directories of 220 bytes each
    (every component stays under NAME_MAX)."""
    directory = watch.joinpath(*(f"{i}" + "d" * 219 for i in range(5)))
    directory.mkdir(parents=True)
    return directory / "cam.mp4"


def failed_streams(app: Any) -> float:
    value = app.metrics.registry.get_sample_value("streams_failed_total")
    assert value is not None
    return float(value)


async def test_a_path_too_long_for_a_key_is_skipped_once_and_counted(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch, rescan_interval_seconds=1)
    long_path = deep_file(watch)
    async with daemon(settings, store, prober) as app:
        with capture() as logs:
            long_path.write_bytes(pattern(PART + 7))
            (watch / "fine.mp4").write_bytes(pattern(PART + 3, seed=1))
            await until(lambda: len(videos(store)) == 1, what="the other file's object")
            # Several rescans and stand-in watcher passes (every 20 ms) meet it again.
            await until(lambda: sum(e["event"] == "rescan" for e in logs) >= 3,
                        what="three rescans")  # fmt: skip
            assert failed_streams(app) == 1
            assert app.supervisor is not None
            assert app.supervisor.failures == 0  # no task ended in an unexpected error
    [key] = videos(store)
    assert key.endswith("/fine.mp4")
    skipped = [e for e in logs if e["event"] == "file_skipped"]
    assert len(skipped) == 1, skipped
    [event] = skipped
    assert event["log_level"] == "warning"
    assert event["path"] == str(long_path)
    assert "1024" in event["reason"] or "1,024" in event["reason"]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    assert not [e for e in logs if e["event"] == "stream_started" and "cam.mp4" in e["path"]]


async def test_a_renamed_unkeyable_file_is_uploaded_under_its_new_short_name(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch)
    long_path = deep_file(watch)
    data = pattern(PART + 11)
    async with daemon(settings, store, prober):
        with capture() as logs:
            long_path.write_bytes(data)
            await until(lambda: any(e["event"] == "file_skipped" for e in logs), what="skip")
            long_path.rename(watch / "short.mp4")
            await until(lambda: len(videos(store)) == 1, what="the object")
    [(key, body)] = videos(store).items()
    assert key.endswith("/short.mp4")
    assert body == data


async def test_upload_of_a_name_that_is_not_utf8_is_skipped_with_a_warning(
    tmp_path: Path, settings: Settings, store: MemoryObjectStore, prober: FakeProber
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    bad = Path(os.fsdecode(bytes(outside) + b"/rec\xff.mp4"))
    bad.write_bytes(pattern(PART + 1))
    good = outside / "good.mp4"
    good.write_bytes(pattern(PART + 2, seed=2))
    app_logs: list[Any]
    with capture() as app_logs:
        results = await burst(settings, store, prober, [bad, good])
    assert results[bad] is None
    assert results[good] is not None
    [key] = videos(store)
    assert key.endswith("/good.mp4")
    [event] = [e for e in app_logs if e["event"] == "file_skipped"]
    assert event["path"].endswith("rec\\xff.mp4")
    event["path"].encode("utf-8")  # printable: the bytes shown escaped
    assert "UTF-8" in event["reason"]
    assert not [e for e in app_logs if e["log_level"] in ("error", "critical")]
