"""The command line's answers to a mistake: the command's own usage, and ``validate``."""

from __future__ import annotations

from pathlib import Path

import pytest

from cefmp4.cli.main import main, validate


@pytest.mark.parametrize(("argv", "usage", "unknown"), [
    (["run", "--stream-timeout-secs", "3"], "usage: cefmp4 run ", "--stream-timeout-secs 3"),
    (["status", "--jsn"], "usage: cefmp4 status ", "--jsn"),
    (["upload", "a.mp4", "--bogus"], "usage: cefmp4 upload ", "--bogus"),
])
def test_an_unknown_option_gets_its_commands_usage(
    argv: list[str], usage: str, unknown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert f"cefmp4 {argv[0]}: error: unrecognized arguments: {unknown}" in err


def test_validate_builds_the_settings_and_nothing_else(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert validate(["run", "--chunk-size-mb", "2"]) == 2
    assert "configuration error: CHUNK_SIZE_MB" in capsys.readouterr().err
    missing = tmp_path / "not-yet"
    assert validate(["run", "--watch-dir", str(missing), "--stream-timeout-seconds", "2.5"]) == 0
    assert not missing.exists()  # validating creates nothing
