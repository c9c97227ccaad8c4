"""``status --watch``: the table's caption tells how to stop it only where Ctrl-C can."""

from __future__ import annotations

import io

from rich.console import Console

from cefmp4.cli.commands import WatchRow, watch_table


def _text(live: bool) -> str:
    out = io.StringIO()
    row = WatchRow("s1", "/w/a.mp4", "active", 6 << 20, 5 << 20, 1, 1000.0)
    Console(file=out, width=200).print(watch_table([row], 1010.0, live=live))
    return out.getvalue()


def test_piped_it_does_not_say_ctrl_c() -> None:
    text = _text(live=False)
    assert "cefmp4 active streams (1)" in text
    assert "Ctrl-C" not in text


def test_on_a_terminal_it_does() -> None:
    assert "Ctrl-C to stop" in _text(live=True)
