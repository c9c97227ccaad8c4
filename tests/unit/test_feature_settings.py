"""The settings of writer-aware completion, after-upload actions, notifications, containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cefmp4.config.settings import load_settings
from cefmp4.runtime.errors import ConfigError
from tests.unit.test_settings_errors import _assert_one_line, _env, _run


def test_defaults_keep_todays_behaviour() -> None:
    s = load_settings()
    assert s.extensions == (".mp4",)
    assert s.complete_on_close_seconds is None
    assert s.hold_while_open is False
    assert s.max_hold_seconds == 3600
    assert s.after_upload == "keep"
    assert s.after_upload_dir is None
    assert s.notify_webhook_url.get_secret_value() == ""
    assert s.notify_redis_stream == ""


def test_values_are_parsed(tmp_path: Path) -> None:
    s = load_settings(
        watch_dir=tmp_path / "in", watch_extensions=".MP4,.Mkv", complete_on_close_seconds="2.5",
        hold_while_open="true", after_upload="MOVE", after_upload_dir=tmp_path / "done",
        notify_webhook_url="https://hooks.example/x?token=abc",
    )
    assert s.extensions == (".mp4", ".mkv")
    assert s.watch_extensions == ".mp4,.mkv"
    assert s.complete_on_close_seconds == 2.5
    assert s.hold_while_open is True
    assert s.after_upload == "move"


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"watch_extensions": "mp4"}, "WATCH_EXTENSIONS"),
        ({"watch_extensions": ".a/b"}, "WATCH_EXTENSIONS"),
        ({"complete_on_close_seconds": "0"}, "COMPLETE_ON_CLOSE_SECONDS"),
        ({"complete_on_close_seconds": "soon"}, "COMPLETE_ON_CLOSE_SECONDS"),
        ({"max_hold_seconds": "-1"}, "MAX_HOLD_SECONDS"),
        ({"after_upload": "shred"}, "AFTER_UPLOAD"),
        ({"after_upload": "move"}, "AFTER_UPLOAD_DIR"),
        ({"notify_webhook_url": "ftp://host/x"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": "http://"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": "http://host:99999/"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": "http://host:0/"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": "http://host:port/"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": "http://ex..ample/"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": "https://.example/hook"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": "http://a..b./"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": "http://exämple..de/"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": f"http://{'a' * 64}.example/"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_webhook_url": f"http://{'a.' * 127}ab/"}, "NOTIFY_WEBHOOK_URL"),
        ({"notify_redis_stream": "done"}, "NOTIFY_REDIS_STREAM"),
    ],
)
def test_bad_values_name_the_setting(overrides: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(**overrides)
    assert err.value.setting == setting


def test_move_target_inside_watch_dir_is_refused_unless_hidden(tmp_path: Path) -> None:
    watch = tmp_path / "in"
    watch.mkdir()
    for bad in (watch, watch / "done", watch / "a" / "b"):
        with pytest.raises(ConfigError) as err:
            load_settings(watch_dir=watch, after_upload="move", after_upload_dir=bad)
        assert err.value.setting == "AFTER_UPLOAD_DIR"
    ok = load_settings(watch_dir=watch, after_upload="move", after_upload_dir=watch / ".done")
    assert ok.after_upload_dir == watch / ".done"
    # A symlink into the watch dir is inside it too.
    link = tmp_path / "link"
    link.symlink_to(watch / "x", target_is_directory=True)
    with pytest.raises(ConfigError):
        load_settings(watch_dir=watch, after_upload="move", after_upload_dir=link)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://[::1]:8080/x", "https://hooks.example./x",
     "https://exämple.de/hook", "https://user:pw@hooks.example/x?token=t", "http://localhost/"],
)
def test_good_webhook_urls(url: str) -> None:
    assert load_settings(notify_webhook_url=url).notify_webhook_url.get_secret_value() == url


@pytest.mark.parametrize(
    "url", ["gopher://user:hunter2@host/", "http://user:hunter2@ex..ample/?token=hunter2"]
)
def test_webhook_url_and_secret_never_appear_in_errors(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(notify_webhook_url=url)
    assert "hunter2" not in str(err.value)
    assert "ex..ample" not in str(err.value)


def test_a_malformed_webhook_host_is_one_line_exit_2(tmp_path: Path) -> None:
    # The review's case: it passed the checks, then failed every delivery for ever.
    env = _env(tmp_path, NOTIFY_WEBHOOK_URL="http://user:CONFIGTEST@ex..ample/")
    line = _assert_one_line(_run(tmp_path, env), "NOTIFY_WEBHOOK_URL")
    assert "CONFIGTEST" not in line
