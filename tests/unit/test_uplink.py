"""The uplink's decisions (SPEC §2.21, ``cefmp4.core.uplink``), from tables: what
UPLOAD_BWLIMIT says, the limit in force at a time of day, the token bucket, who goes first,
and that nothing starves. No loop, no clock."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cefmp4.config.settings import load_settings
from cefmp4.core.uplink import (
    BACKLOG_SHARE,
    BURST_S,
    KIB,
    LIVE_GRACE_S,
    MIB,
    Backlog,
    Claim,
    Pending,
    Shares,
    TokenBucket,
    backlog_holds_off,
    backlog_summary,
    drain_seconds,
    format_rate,
    gate_admits,
    gate_rank,
    gate_reserve,
    limit_summary,
    order_key,
    parse_bwlimit,
    parse_rate,
    pick,
    slice_size,
    split_backlog,
    stream_may_open,
)
from cefmp4.runtime.errors import ConfigError


def hm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60


# --- UPLOAD_BWLIMIT ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "rate"), [
    ("4M", 4 * MIB), ("512k", 512 * KIB), ("512K", 512 * KIB), ("1.5M", 3 * MIB // 2),
    ("1G", 1024 * MIB), ("2048B", 2048), ("1k", KIB), ("off", None), (" OFF ", None),
])
def test_rates(text: str, rate: int | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["4", "4MB", "4 M", "-1M", "0k", "1000B", "fast", "", "1e3k"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|smallest"):
        parse_rate(text)


def test_empty_and_off_are_no_limit_at_all() -> None:
    assert parse_bwlimit("") is None
    assert parse_bwlimit("   ") is None
    assert parse_bwlimit("off") is None


def test_a_constant_holds_all_day() -> None:
    table = parse_bwlimit("4M")
    assert table is not None
    assert table.constant
    assert {table.limit_at(s) for s in (0, 3600, 86_399.9)} == {4 * MIB}
    assert table.next_switch(1234) == math.inf
    assert table.describe() == "4M"


RCLONE = "08:00,512k 19:00,8M 23:00,off"


@pytest.mark.parametrize(("at", "limit"), [
    ("00:00", None),  # the day's last entry (23:00, off) carries over midnight ...
    ("07:59", None),  # ... into the next morning, until the first entry
    ("08:00", 512 * KIB), ("12:00", 512 * KIB), ("18:59", 512 * KIB),
    ("19:00", 8 * MIB), ("22:59", 8 * MIB), ("23:00", None), ("23:59", None),
])
def test_the_timetable_in_force(at: str, limit: int | None) -> None:
    table = parse_bwlimit(RCLONE)
    assert table is not None
    assert table.limit_at(hm(at)) == limit


def test_a_timetable_without_off_carries_its_last_rate_into_the_morning() -> None:
    table = parse_bwlimit("09:00,1M 17:30,10M")
    assert table is not None
    assert table.limit_at(hm("03:00")) == 10 * MIB
    assert table.limit_at(hm("09:00")) == MIB
    assert table.describe() == "09:00,1M 17:30,10M"
    assert parse_bwlimit(table.describe()) == table


@pytest.mark.parametrize(("at", "until"), [
    ("00:00", "08:00"), ("07:59", "08:00"), ("08:00", "19:00"), ("22:00", "23:00"),
])
def test_the_next_switch(at: str, until: str) -> None:
    table = parse_bwlimit(RCLONE)
    assert table is not None
    assert table.next_switch(hm(at)) == hm(until) - hm(at)
    # After the day's last entry the next switch is the first one of the next day.
    assert table.next_switch(hm("23:30")) == 86_400 - hm("23:30") + hm("08:00")


@pytest.mark.parametrize("text", [
    "08:00,512k 07:00,1M",  # times must increase
    "08:00,512k 08:00,1M",
    "25:00,1M", "08:60,1M", "8,1M", "08:00 512k", "Mon-08:00,512k", "08:00,4", "08:00,",
    "4M 8M",
])
def test_bad_timetables_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"timetable entry|time of day|increase|a rate|not a"):
        parse_bwlimit(text)


@pytest.mark.parametrize(("rate", "text"), [
    (None, "off"), (4 * MIB, "4 MiB/s"), (512 * KIB, "512 KiB/s"), (3 * MIB // 2, "1.50 MiB/s"),
    (500, "500 B/s"),
])
def test_format_rate(rate: int | None, text: str) -> None:
    assert format_rate(rate) == text


def test_drain_time_follows_the_timetable() -> None:
    table = parse_bwlimit("08:00,1M 09:00,2M 23:00,off")
    assert table is not None
    # 1 MiB/s from 08:30 for half an hour (1800 MiB), then 2 MiB/s: 2000 MiB left 100 s.
    assert drain_seconds(table, hm("08:30"), 1900 * MIB) == pytest.approx(1800 + 50)
    # An `off` period ahead ends the estimate there (an upper bound).
    assert drain_seconds(table, hm("22:59"), 10_000 * MIB) == pytest.approx(60)
    assert drain_seconds(table, hm("23:30"), MIB) is None  # no limit now: the link decides
    assert drain_seconds(None, 0, MIB) is None
    assert drain_seconds(parse_bwlimit("4M"), 0, 40 * MIB) == pytest.approx(10)


def test_the_settings_take_and_name_it(tmp_path: Path) -> None:
    settings = load_settings(upload_bwlimit="  08:00,512k   19:00,8M ", upload_order="Newest")
    assert settings.upload_bwlimit == "08:00,512k 19:00,8M"
    assert settings.bwlimit is not None
    assert settings.bwlimit.limit_at(hm("10:00")) == 512 * KIB
    assert settings.upload_order == "newest"
    defaults = load_settings()
    assert defaults.bwlimit is None
    assert defaults.upload_order == "oldest"
    for name, value in (("upload_bwlimit", "4"), ("upload_order", "random")):
        with pytest.raises(ConfigError, match=name.upper()):
            load_settings(**{name: value})


@pytest.mark.parametrize(("name", "value"), [
    ("UPLOAD_BWLIMIT", "4"), ("UPLOAD_BWLIMIT", "08:00,512k 07:00,1M"),
    ("UPLOAD_BWLIMIT", "0k"), ("UPLOAD_ORDER", "biggest"),
])
def test_a_bad_value_is_one_line_naming_the_setting_exit_2(
    tmp_path: Path, name: str, value: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "UPLOAD_"))}
    env.update(WATCH_DIR=str(tmp_path), STATE_DIR=str(tmp_path / "state"), PROM_PORT="0",
               S3_ENDPOINT_URL="http://127.0.0.1:9", **{name: value})
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cefmp4")), "run"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=30, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"cefmp4: configuration error: {name}: "), lines[0]


# --- the token bucket -------------------------------------------------------------------------


def send(bucket: TokenBucket, start: float, total: int, step: int) -> list[tuple[float, int]]:
    """A sender that debits ``step`` bytes and waits its debt, as the pacer does; the
    moments each slice goes out."""
    now, sent, out = start, 0, []
    while sent < total:
        now += bucket.debit(now, step)
        out.append((now, step))
        sent += step
    return out


@pytest.mark.parametrize("rate", [KIB, 512 * KIB, 4 * MIB, 100 * MIB])
def test_the_bucket_holds_any_window_to_the_rate(rate: int) -> None:
    bucket = TokenBucket(rate, stamp=0.0)
    step = slice_size(rate)
    out = send(bucket, 0.0, 200 * step, step)
    window = 10.0 if rate >= MIB else 50 * step / rate
    # Over any window: at most the rate times the window, plus the slice at its start.
    for t0, _ in out:
        inside = sum(n for t, n in out if t0 <= t < t0 + window)
        assert inside <= rate * window + step
    # It starts empty: the first slice waits its own time too. Then exactly the rate.
    assert out[0][0] == pytest.approx(step / rate)
    assert 199 * step / (out[-1][0] - out[0][0]) == pytest.approx(rate, rel=1e-6)


def test_an_idle_link_saves_up_no_burst() -> None:
    rate = 4 * MIB
    bucket = TokenBucket(rate, stamp=0.0)
    assert bucket.debit(0.0, MIB) == pytest.approx(0.25)  # it starts empty
    # An hour of outage later: only BURST_S of the rate may go at once.
    free = 0
    while bucket.debit(3600.0, slice_size(rate)) == 0:
        free += slice_size(rate)
    assert free <= rate * BURST_S


def test_a_new_rate_applies_at_once_and_a_debt_stays_a_debt() -> None:
    bucket = TokenBucket(8 * MIB, stamp=0.0)
    bucket.debit(0.0, 8 * MIB)  # one second's worth of debt at 8 MiB/s
    bucket.set_rate(0.5, 512 * KIB)  # half of it paid; 4 MiB left to pay at 512 KiB/s
    assert bucket.debit(0.5, 0) == pytest.approx(8.0)


# --- who goes first ---------------------------------------------------------------------------


def test_live_goes_first_at_the_pacer_unless_the_backlog_is_owed() -> None:
    waiting = [Claim(False, 0.0, 1), Claim(True, 0.0, 3), Claim(True, 0.0, 2)]
    assert pick(waiting, backlog_due=False) == 2  # the first live one, by arrival
    assert pick(waiting, backlog_due=True) == 0
    assert pick([Claim(False, 0.0, 5), Claim(False, 0.0, 4)], backlog_due=False) == 1
    assert pick([Claim(True, 0.0, 5)], backlog_due=True) == 0


def test_the_backlog_gets_its_share_when_live_wants_everything() -> None:
    """Live bodies that want more than the limit (they always wait) against one backlog
    body: the backlog still gets about BACKLOG_SHARE of the bytes, never nothing."""
    shares, step, now = Shares(0.0), 64 * KIB, 0.0
    sent = {True: 0, False: 0}
    for _ in range(20_000):
        waiting = [Claim(True, 0.0, 1), Claim(False, 0.0, 2)]
        claim = waiting[pick(waiting, shares.backlog_due(now))]
        shares.granted(now, claim.live, step)
        sent[claim.live] += step
        now += step / (4 * MIB)
    assert sent[False] / (sent[True] + sent[False]) == pytest.approx(BACKLOG_SHARE, abs=0.01)


def test_a_backlog_that_was_served_lets_live_go_alone() -> None:
    """After the backlog had the link to itself, a live part gets all of it: the share is
    owed over time, not taken from every live part."""
    shares = Shares(0.0)
    shares.granted(0.0, False, 40 * MIB)  # ten seconds of backlog at 4 MiB/s
    waiting = [Claim(True, 0.0, 9), Claim(False, 0.0, 1)]
    assert all(not shares.backlog_due(10.0 + i * 0.05) for i in range(50))
    assert pick(waiting, shares.backlog_due(10.0)) == 0


@pytest.mark.parametrize(("order", "first"), [("oldest", 100.0), ("newest", 300.0)])
def test_the_backlog_goes_in_upload_order(order: str, first: float) -> None:
    mtimes = [200.0, 100.0, 300.0]
    claims = [Claim(False, order_key(order, m), seq)  # type: ignore[arg-type]
              for seq, m in enumerate(mtimes)]
    claims.append(Claim(True, 0.0, 3))  # a live file, last to arrive
    ranked = sorted(claims, key=lambda c: gate_rank(c, backlog_starved=False))
    assert ranked[0].live
    assert mtimes[ranked[1].seq] == first


def test_a_starved_backlog_goes_first_at_a_gate() -> None:
    live, backlog = Claim(True, 0.0, 1), Claim(False, 5.0, 2)
    assert min([live, backlog], key=lambda c: gate_rank(c, False)) is live
    assert min([live, backlog], key=lambda c: gate_rank(c, True)) is backlog


@pytest.mark.parametrize(
    ("live", "amount", "in_use", "backlog_in_use", "admitted"),
    [
        (True, 1, 3, 3, True),  # live may take the reserve
        (False, 1, 3, 3, False),  # the backlog may not (limit 4, reserve 1)
        (False, 1, 2, 2, True),
        (False, 1, 3, 0, True),  # a backlog holding nothing gets one anyway
        (True, 1, 4, 0, False),  # full is full
        (False, 9, 0, 0, True),  # larger than the gate: alone
        (True, 9, 1, 0, False),
    ],
)
def test_gate_admission(live: bool, amount: int, in_use: int, backlog_in_use: int,
                        admitted: bool) -> None:
    claim = Claim(live, 0.0, 0)
    assert gate_admits(claim, amount, in_use=in_use, backlog_in_use=backlog_in_use, limit=4,
                       reserve=1) is admitted


def test_gate_reserves() -> None:
    assert gate_reserve(1, 1) == 0  # one upload slot: nothing to keep
    assert gate_reserve(4, 1) == 1
    assert gate_reserve(64, 1) == 8  # an eighth of MAX_STREAMS
    assert gate_reserve(64 * MIB, 10 * MIB) == 10 * MIB  # one part of the byte budget
    assert gate_reserve(15 * MIB, 10 * MIB) == 0


@pytest.mark.parametrize(
    ("live", "open_live", "open_backlog", "may"),
    [
        (True, 0, 7, True), (False, 0, 7, False),  # 8 streams, reserve 1
        (False, 0, 6, True), (True, 0, 8, False),
        (False, 7, 0, True),  # no backlog stream open: one may start
        (False, 6, 1, False),
    ],
)
def test_max_streams_keeps_room_for_live(live: bool, open_live: int, open_backlog: int,
                                         may: bool) -> None:
    assert stream_may_open(live, open_live=open_live, open_backlog=open_backlog,
                           max_streams=8, reserve=1) is may


def test_a_live_body_keeps_its_turn_for_a_moment() -> None:
    """A live body asks for its next slice once it wrote the last: the backlog waits that
    long for it, unless the backlog is owed its share."""
    assert backlog_holds_off(10.0, live_released=10.0, backlog_due=False) == pytest.approx(
        LIVE_GRACE_S)
    assert backlog_holds_off(10.0 + LIVE_GRACE_S, live_released=10.0, backlog_due=False) == 0
    assert backlog_holds_off(10.0, live_released=10.0, backlog_due=True) == 0


# --- what `status` says -----------------------------------------------------------------------


def test_the_backlog_is_what_is_not_growing() -> None:
    pending = [Pending(10 * MIB, 100.0), Pending(5 * MIB, 995.0), Pending(0, 10.0),
               Pending(2 * MIB, 50.0)]
    assert split_backlog(pending, now=1000.0, window=30.0) == Backlog(12 * MIB, 2, 5 * MIB, 1)


def test_status_lines() -> None:
    table = parse_bwlimit(RCLONE)
    assert limit_summary(table, hm("10:00")) == (
        "upload limit now: 512 KiB/s, 8 MiB/s from 19:00 (timetable " + RCLONE + ")")
    assert limit_summary(table, hm("23:30")) == (
        "upload limit now: off, 512 KiB/s from 08:00 (timetable " + RCLONE + ")")
    assert limit_summary(parse_bwlimit("4M"), 0) == "upload limit: 4 MiB/s"
    assert limit_summary(None, 0) == "upload limit: none (UPLOAD_BWLIMIT is empty)"
    backlog = Backlog(600 * MIB, 3, 20 * MIB, 1)
    line = backlog_summary(backlog, parse_bwlimit("4M"), 0)
    assert line == ("backlog: 600.0 MiB in 3 file(s) not growing; live: 20.0 MiB in 1 "
                    "recording(s), served first; drains in about 3 min at the limits in force")
    assert "as fast as the link" in backlog_summary(backlog, None, 0)
    assert "at most (the limit goes off before)" in backlog_summary(backlog, table, hm("22:59"))
