"""A seed → one schedule: what the recorders do, when the process crashes, what fails.

Pure and deterministic (``random.Random(seed)`` only), so a seed names a schedule forever
— as long as this file does not change; ``describe()`` prints it for a failure report.

Crashes drawn uniformly (a time, a loop step) almost never land inside a short phase such
as a truncated stream's finalize, so a schedule may also arm *targeted* crashes, the way
FoundationDB's BUGGIFY does: "crash a few steps after the pipeline logs event E". They come
from a random stream of their own, so every seed draws the same base schedule as before.

Issue #25 adds *another party* from a stream of its own too: ``cefmp4 salvage --older-than X``
run from another host at random moments (an abandoned upload may be salvaged at any moment),
sometimes the loss of the recorder's host (its files and its checkpoint store gone for good,
the other party salvages what S3 holds), and sometimes ``RPO_SECONDS`` (tail segments).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tests.sim.faults import Fault

KIB = 1024
PART = 64 * KIB  # S3 scaled down: the memory store's minimum part size in the simulator


@dataclass(frozen=True, slots=True)
class Action:
    at: float  # virtual seconds since the start
    # create | copy_in | append | rewrite | truncate | replace | rename | delete | faststart
    kind: str
    slot: int  # which recorder
    size: int = 0  # bytes to write, or the size to truncate to
    offset: int = 0  # where a rewrite lands
    name: str = ""  # new name (rename) / name (create)


@dataclass(frozen=True, slots=True)
class Crash:
    at: float | None = None  # at this virtual time, or
    steps: int | None = None  # this many loop steps after the last start
    down_for: float = 0.0  # how long the process stays down


# The pipeline's phase events a targeted crash may follow (cefmp4.runtime.logs names, and the
# simulator's "s3:<op>" for a request S3 has carried out), with how often each is drawn.
TARGET_EVENTS: dict[str, float] = {
    "stream_truncated": 5,  # the truncated stream's finalize follows (4-30 steps)
    "stream_idle": 2,  # an idle stream's finalize: drain, verify, Complete
    "source_gone": 2,  # a deleted file's finalize
    "s3:complete_multipart": 2,  # Complete done, the metadata not yet written
    "metadata_written": 1,  # the metadata written, the stream not yet marked completed
    "part_reuploaded": 1,
    "upload_restarted": 1,
    "stream_resumed": 1,  # a restart picked the stream up again
}


@dataclass(frozen=True, slots=True)
class Target:
    """Crash ``steps`` loop steps after the ``nth`` time ``event`` happens."""

    event: str
    nth: int
    steps: int
    down_for: float


@dataclass(frozen=True, slots=True)
class SalvageRun:
    """``cefmp4 salvage --older-than older_than`` from another host, at virtual time ``at``."""

    at: float
    older_than: float


@dataclass(frozen=True, slots=True)
class HostLoss:
    """The recorder's host is destroyed at ``at``: the process, its files and its store are
    gone; with ``replacement`` a new instance (an empty watch directory, a store of its own)
    starts on the same bucket and prefix, whose orphan sweeper may salvage too."""

    at: float
    replacement: bool


# The other party's age limits. Honest ones exceed the longest a live owner goes without
# adding to its upload here (a stream idle for its timeout, up to 30 s, then finalize under
# 20 s S3 timeouts and 30 s backoffs, crashes down for up to 60 s): SPEC §2.19 promises
# that such an owner's uploads are never touched. Racing ones (``--racing``) are shorter
# than that: the other party then takes uploads whose owner is alive but quiet, which the
# age rule allows, and the owner must still lose no byte and publish no wrong object.
OLDER_THAN = (300.0, 600.0, 900.0)
RACING_OLDER_THAN = (1.0, 5.0, 30.0)


@dataclass(frozen=True)
class Schedule:
    seed: int
    stream_timeout: float
    poll_interval: float
    part_size: int
    max_parts: int
    parts_in_flight: int
    upload_slots: int
    budget: int
    complete_again: str
    s3_rates: dict[Fault, float]
    store_rates: dict[Fault, float]
    actions: tuple[Action, ...]
    crashes: tuple[Crash, ...]
    purges: tuple[float, ...]
    debounce: float
    heal_at: float = field(default=0.0)
    targets: tuple[Target, ...] = ()
    salvages: tuple[SalvageRun, ...] = ()
    host_loss: HostLoss | None = None
    rpo: float | None = None  # RPO_SECONDS
    racing: bool = False  # drawn with the racing age limits

    def describe(self) -> str:
        lines = [
            f"seed {self.seed}: timeout {self.stream_timeout}s poll {self.poll_interval}s "
            f"part {self.part_size} max_parts {self.max_parts} in_flight {self.parts_in_flight} "
            f"slots {self.upload_slots} budget {self.budget} complete_again {self.complete_again}",
            "  s3 faults " + _rates(self.s3_rates) + "; store faults " + _rates(self.store_rates),
            f"  crashes {list(self.crashes)}",
            f"  targeted crashes {list(self.targets)}",
            f"  purges at {[round(t, 2) for t in self.purges]}; heal at {self.heal_at:.1f}s",
            f"  other party: salvage runs {[(round(r.at, 2), r.older_than) for r in self.salvages]}"
            f"; host loss {self.host_loss}; rpo {self.rpo}",
        ]
        lines += [
            f"  {a.at:8.2f}s slot {a.slot} {a.kind} size={a.size} offset={a.offset} {a.name}"
            for a in self.actions
        ]
        return "\n".join(lines)


def _rates(rates: dict[Fault, float]) -> str:
    return ", ".join(f"{f.value}={r:.2f}" for f, r in rates.items() if r) or "none"


def make_schedule(seed: int, racing: bool = False) -> Schedule:
    rng = random.Random(seed)
    timeout = rng.choice([1.0, 2.0, 5.0, 30.0])
    part = PART
    actions: list[Action] = []
    for slot in range(rng.randint(1, 4)):
        actions += _recorder(rng, slot, timeout, part)
    actions.sort(key=lambda a: (a.at, a.slot))
    end = max((a.at for a in actions), default=0.0)
    crashes: list[Crash] = []
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3, 5])):
        down = rng.choice([0.0, rng.uniform(0, 2 * timeout)])
        if rng.random() < 0.5:
            crashes.append(Crash(steps=rng.randint(1, 4000), down_for=down))
        else:
            crashes.append(Crash(at=rng.uniform(0, end + 2 * timeout), down_for=down))
    crashes.sort(key=lambda c: (c.at is None, c.at or 0.0))

    def rates(kinds: list[Fault]) -> dict[Fault, float]:
        level = rng.choice([0.0, 0.0, 0.02, 0.05, 0.15])
        return {k: rng.choice([0.0, level]) for k in kinds}

    s3_rates = rates([Fault.ERROR, Fault.TIMEOUT, Fault.LOST, Fault.PURGE, Fault.BAD_DIGEST,
                      Fault.SLOW])
    store_rates = rates([Fault.ERROR, Fault.TIMEOUT, Fault.LOST])
    purges = tuple(sorted(rng.uniform(0, end + timeout) for _ in range(rng.choice([0, 0, 1, 3]))))
    return Schedule(
        seed=seed,
        stream_timeout=timeout,
        poll_interval=rng.choice([0.1, 0.25, 1.0]),
        part_size=part,
        max_parts=rng.choice([10_000, 10_000, 30]),
        parts_in_flight=rng.randint(1, 6),
        upload_slots=rng.randint(1, 4),
        budget=part * rng.choice([1, 2, 4, 8, 64]),
        complete_again=rng.choice(["minio", "aws"]),
        s3_rates=s3_rates,
        store_rates=store_rates,
        actions=tuple(actions),
        crashes=tuple(crashes),
        purges=purges,
        debounce=rng.choice([0.0, 0.05, 1.6]),
        heal_at=end + timeout,
        targets=_targets(random.Random(f"{seed}-targets"), timeout),
        **_other_party(random.Random(f"{seed}-salvage"), end, timeout, racing),
        racing=racing,
    )


def _other_party(rng: random.Random, end: float, timeout: float, racing: bool
                 ) -> dict[str, Any]:
    """Nothing for about a third of the seeds (the base schedule alone); else one to four
    salvage runs from another host, a host loss for about a third of those, and
    ``RPO_SECONDS`` for about a third. Honest runs come until well after the schedule
    (after a host loss, some find its uploads as old as their limit)."""
    if rng.random() < 0.3:
        return {}
    limits, until = (RACING_OLDER_THAN, 0.0) if racing else (OLDER_THAN, 1000.0)
    runs = sorted(
        (SalvageRun(rng.uniform(0, end + 2 * timeout + until), rng.choice(limits))
         for _ in range(rng.randint(1, 4))),
        key=lambda r: r.at,
    )
    loss = None
    if rng.random() < 0.35:
        loss = HostLoss(rng.uniform(0, end + timeout), replacement=rng.random() < 0.5)
    rpo = rng.choice([None, None, 0.5, 2.0])
    return {"salvages": tuple(runs), "host_loss": loss, "rpo": rpo}


def _targets(rng: random.Random, timeout: float) -> tuple[Target, ...]:
    """None for a quarter of the seeds (their crashes stay uniform); else one to three."""
    if rng.random() < 0.25:
        return ()
    events, weights = list(TARGET_EVENTS), list(TARGET_EVENTS.values())
    out = []
    for _ in range(rng.choice([1, 2, 2, 3])):
        # Log-uniform steps, mostly within the phase the event starts (a few dozen steps),
        # sometimes well after it.
        steps = int(2 ** rng.uniform(0, 6 if rng.random() < 0.8 else 11))
        down = rng.choice([0.0, rng.uniform(0, 2 * timeout), rng.uniform(0, 2 * timeout)])
        event = rng.choices(events, weights)[0]
        out.append(Target(event, rng.choice([1, 1, 1, 2]), steps, down))
    return tuple(out)


def _recorder(rng: random.Random, slot: int, timeout: float, part: int) -> list[Action]:
    """One recorder's life: a file (or several, one after another) and what it does to it."""
    t = rng.uniform(0, 3)
    out: list[Action] = []
    size = 0
    renames = 0

    def name() -> str:
        base = f"cam{slot}" if renames == 0 else f"cam{slot}-moved{renames}"
        return f"sub/{base}.mp4" if slot % 2 else f"{base}.mp4"

    if rng.random() < 0.3:
        size = rng.randint(1, 9 * part)
        out.append(Action(t, "copy_in", slot, size=size, name=name()))  # catch-up: whole file
    else:
        size = rng.randint(16, 4000)
        out.append(Action(t, "create", slot, size=size, name=name()))
    for _ in range(rng.randint(1, 7)):
        step = rng.choices(
            ["grow", "pause", "rewrite", "truncate", "replace", "rename", "delete", "faststart"],
            weights=[10, 4, 3, 1.5, 1, 1.5, 1, 1],
        )[0]
        if step == "grow":
            rate = rng.choice([part / 4, part, 3 * part])  # bytes per virtual second
            for _ in range(rng.randint(2, 20)):
                dt = rng.uniform(0.05, 1.0)
                t += dt
                n = max(1, int(rate * dt * rng.uniform(0.5, 1.5)))
                size += n
                out.append(Action(t, "append", slot, size=n))
        elif step == "pause":
            t += rng.uniform(0.2, 2.5) * timeout
        elif step == "rewrite" and size:
            t += rng.uniform(0, 0.5)
            offset = rng.choice([rng.randint(0, min(size - 1, 64)), rng.randint(0, size - 1)])
            n = min(rng.randint(1, 64), size - offset)
            out.append(Action(t, "rewrite", slot, size=n, offset=offset))
        elif step == "truncate" and size:
            t += rng.uniform(0, 0.5)
            size = rng.choice([0, rng.randint(0, size - 1)])
            out.append(Action(t, "truncate", slot, size=size))
        elif step == "replace":
            t += rng.uniform(0, 0.5)
            size = rng.randint(1, 3 * part)
            out.append(Action(t, "replace", slot, size=size))
        elif step == "rename":
            t += rng.uniform(0, 0.5)
            renames += 1
            out.append(Action(t, "rename", slot, name=name()))
        elif step == "delete":
            t += rng.uniform(0, 0.5)
            out.append(Action(t, "delete", slot))
            if rng.random() < 0.5:
                return out
            t += rng.uniform(0, 2) * timeout
            size = rng.randint(16, 4000)
            out.append(Action(t, "create", slot, size=size, name=name()))
        elif step == "faststart" and size:
            t += rng.uniform(0, 0.5)
            size += rng.randint(0, 2000)
            out.append(Action(t, "faststart", slot, size=size))
    return out
