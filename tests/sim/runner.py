"""Run one schedule end to end and judge it: ``run_seed(seed)``.

The world (bucket, state directory, files) outlives every simulated process; a crash kills
the process's tasks and its store handles, then a new process starts on the same world.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import os
import random
import shutil
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.core.ending import Status
from cefmp4.core.keys import stream_id_in
from cefmp4.core.salvage import Action
from cefmp4.runtime.errors import CefmpError
from cefmp4.storage.memory import MemoryObjectStore
from tests.sim import invariants
from tests.sim.adapter import ORPHAN_GRACE, PREFIX, OtherHost, Process, virtual_time
from tests.sim.faults import FaultPlan, FaultyObjectStore, Life, Shadow
from tests.sim.party import TAIL, Ledger
from tests.sim.schedule import Crash, HostLoss, Schedule, Target, make_schedule
from tests.sim.vloop import VirtualLoop, serial
from tests.sim.world import End, Files, Recording

CONVERGE_WITHIN = 4 * 3600.0  # virtual seconds after healing before "never converged"
FINAL_OLDER_THAN = 900.0  # the other party's last run after a host loss: the default age


def replay_command(seed: int, racing: bool = False) -> str:
    if racing:
        return f"python -m tests.sim --racing {seed}"
    return f"scripts/test tests/sim -k replay --sim-seed {seed}   (or: python -m tests.sim {seed})"


@dataclass
class Result:
    seed: int
    failures: list[str]
    schedule: Schedule
    stats: dict[str, Any] = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self, verbose: bool = False) -> str:
        head = f"sim seed {self.seed}: " + ("clean" if self.ok else f"{len(self.failures)} FAILED")
        lines = [head + f"  {self.stats}"]
        lines += [f"  ✗ {f}" for f in self.failures]
        if not self.ok:
            lines.append(f"  replay: {replay_command(self.seed, self.schedule.racing)}")
        if verbose or not self.ok:
            lines.append(self.schedule.describe())
            if self.log_tail:
                lines.append("  last log events:")
                lines += [f"    {line}" for line in self.log_tail]
        return "\n".join(lines)


@contextlib.contextmanager
def captured_logs(
    loop: VirtualLoop,
    keep: int = 60,
    on_event: list[Callable[[str, Mapping[str, Any]], None]] | None = None,
) -> Iterator[tuple[deque[str], list[str]]]:
    """structlog into memory: the last ``keep`` events, and the errors in full; each
    event's name and fields are also handed to ``on_event``'s callbacks."""
    tail: deque[str] = deque(maxlen=keep)
    errors: list[str] = []

    def capture(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        name = event.pop("event", "")
        for callback in on_event or ():
            callback(name, event)
        fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("exc_info",))
        line = f"{loop.time():9.3f} {method:7} {name} {fields}"[:300]
        if name != "rescan":  # the idle tail is all rescans otherwise
            tail.append(line)
        if method in ("error", "critical", "exception"):
            errors.append(line)
        raise structlog.DropEvent

    saved = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture],
                        cache_logger_on_first_use=False)
    try:
        yield tail, errors
    finally:
        structlog.configure(**saved)


def run_seed(
    seed: int, keep: Path | None = None, log_lines: int = 60, racing: bool = False
) -> Result:
    """``racing``: the other party's age limits are shorter than the owner's quiet spells
    (see ``schedule.RACING_OLDER_THAN``)."""
    sched = make_schedule(seed, racing)
    root = Path(tempfile.mkdtemp(prefix=f"cefmp4-sim-{seed}-"))
    loop = VirtualLoop()
    # Context.retry draws its jitter from the global generator (no rng seam): seed it.
    saved_random = random.getstate()
    random.seed(f"{seed}-jitter")
    started = time.perf_counter()
    try:
        hooks: list[Callable[[str, Mapping[str, Any]], None]] = []
        with virtual_time(loop, seed), captured_logs(loop, log_lines, hooks) as (tail, errors):
            sim = Simulation(sched, root, loop)
            hooks.append(sim.on_event)
            try:
                failures = loop.run_until_complete(sim.run())
            except Exception as exc:  # the simulator's own failure: report it as one
                failures = [f"simulation aborted: {exc!r}"]
                failures += traceback.format_exc().splitlines()[-12:]
            # A process stopped cleanly leaves nothing running; cancel what a failure left.
            leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            failures += [f"logged error: {line}" for line in errors if not sim.expected(line)]
    finally:
        random.setstate(saved_random)
        loop.close()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    stats = dict(sim.stats, real_s=round(time.perf_counter() - started, 2))
    return Result(seed, failures, sched, stats, list(tail))


class Simulation:
    def __init__(self, sched: Schedule, root: Path, loop: VirtualLoop) -> None:
        self.sched = sched
        self.loop = loop
        self.root = root
        self.watch = root / "watch"
        self.state = root / "state"
        self.watch.mkdir(parents=True)
        self.home = (self.watch, self.state)  # where the next process starts
        self.rng = random.Random(f"{sched.seed}-driver")
        ids = random.Random(f"{sched.seed}-upload-ids")
        self.s3 = MemoryObjectStore(
            "sim-bucket",
            complete_again="aws" if sched.complete_again == "aws" else "minio",
            clock=lambda: datetime.fromtimestamp(loop.wall(), UTC),
            min_part_size=sched.part_size,
            body_block=16 * 1024,
            new_id=lambda: f"{ids.getrandbits(64):016x}",
            body_pause=self._body_pause,
        )
        self.plan = FaultPlan(
            random.Random(f"{sched.seed}-faults"), dict(sched.s3_rates), dict(sched.store_rates)
        )
        self.shadow = Shadow(on_put=self._checkpointed)
        self.truncation_seen: set[str] = set()  # streams cefmp4 logged as truncated
        self.files = Files(self.watch, sched.seed, loop.wall)
        self.process: Process | None = None
        self.processes: list[Process] = []
        self.driver: set[asyncio.Task[Any]] = set()
        self.crashes = 0
        self.last_write = 0.0
        self.stats: dict[str, Any] = {}
        self._crash_now = asyncio.Event()
        # Crashes due at a loop step: slot -> (the step, set once the process is dead).
        self._at_step: dict[str, tuple[int, asyncio.Event]] = {}
        self._victims: dict[str, Process | None] = {}  # slot -> the process that step killed
        self._killing = asyncio.Lock()
        # Targeted crashes still waiting for their event (by index), and its count so far.
        self._armed: dict[int, Target] = {}
        self._seen: dict[int, int] = {}
        self._target_hit = asyncio.Event()
        self.targeted = 0  # targeted crashes that happened
        self.purged: dict[str, float] = {}  # upload id -> when S3 forgot it
        self.purged_keys: dict[str, str] = {}  # upload id -> its key (the purger's)
        # The other party (issue #25): its own faults, drawn at the same rates.
        self.party_plan = FaultPlan(
            random.Random(f"{sched.seed}-party-faults"), dict(sched.s3_rates), {}
        )
        self.ledger = Ledger(self.s3, PREFIX, sched.part_size, loop.time)
        self.party_tasks: list[asyncio.Task[None]] = []
        self._party_lock = asyncio.Lock()  # one command at a time on the other host
        self.party = {"runs": 0, "errors": 0}
        self.party_failures: list[str] = []
        # Each upload's last word from the other party (after a host loss, an upload it
        # leaves to the operator may stay open: SPEC §2.19's BLOCKED and UNUSABLE).
        self.party_said: dict[str, str] = {}
        self.host_lost_at: float | None = None
        self._host_gone = asyncio.Event()

    def expected(self, line: str) -> bool:
        """Error lines that are not bugs: the simulator's own doing, or a stream whose
        bytes are gone from both the file and S3 (nothing can be saved; the invariants
        judge whether that was so)."""
        if "S3 lost the uploaded parts and the file lost its bytes" in line:
            return bool(self.purged)  # an upload purged by S3 while its file was truncated
        return "the process has crashed" in line or "lost its bytes before any part" in line

    async def _body_pause(self, key: str, part: int, sent: int) -> None:
        if self.process is not None:
            await self.process.objects.body_pause(key, part, sent)

    # --- the process ---------------------------------------------------------------------

    def _start(self) -> Process:
        life = Life()
        objects = FaultyObjectStore(self.s3, self.plan, life)
        objects.on_purge = self._purged
        objects.on_done = self.on_event
        watch, state = self.home
        objects.on_carry = self.ledger.carry
        objects.on_carried = self.ledger.carried
        if self.host_lost_at is None:  # the owner of the recordings' uploads
            objects.on_carried = self.ledger.owner_carried
        process = Process(
            self.sched, watch=watch, state=state, objects=objects, plan=self.plan,
            shadow=self.shadow, loop=self.loop,
        )
        self.process = process
        self.processes.append(process)
        return process

    async def _crash(self) -> None:
        process = self.process
        assert process is not None
        process.crash()
        self.crashes += 1
        for rec in self.files.recordings:
            for end in rec.ends:
                self._update_required(rec, end)
                end.crashed_after = True
        victims = sorted(
            (t for t in asyncio.all_tasks() if t not in self.driver and not t.done()), key=serial
        )
        for task in victims:
            task.cancel()
        await asyncio.gather(*victims, return_exceptions=True)
        self._release_locks()
        self.process = None

    def _release_locks(self) -> None:
        """The kernel closes a dead process's descriptors; a task cancelled just after it
        took the state directory's flock (inside ``to_thread``) never got to."""
        lock = str(self.home[1] / "lock")
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{name}") == lock:
                    os.close(int(name))

    def _update_required(self, recording: Recording, end: End) -> None:
        versions = recording.final_versions()
        version = versions[-1] if end.version is None else versions[end.version]
        durable = invariants.durable_prefix(self.shadow, end.streams, version)
        end.required = max(end.required, durable)
        end.uploads |= {
            rec.upload_id for sid in end.streams
            if (rec := self.shadow.streams.get(sid)) is not None and rec.upload_id
        }

    def _on_end(self, rec: Recording, kind: str, version: int | None) -> None:
        process = self.process
        st_dev = self.watch.stat().st_dev
        holder = process.holder(st_dev, rec.inode) if process and process.life.alive else None
        streams = frozenset(
            r.stream_id for r, _ in self.shadow.unfinished_of(rec.inode)
        )
        # Whoever holds the file then owes its final bytes an object, even a worker still
        # finishing a stream that a truncation ended, or one whose object is complete: the
        # file's next stream starts from that worker's descriptor when no path leads to
        # the file any more (SPEC §2.4; ``lifecycle.held_fd``).
        held = holder is not None
        end = End(kind, version, self.loop.time(), held, streams, size=len(rec.content))
        self._update_required(rec, end)
        if kind == "truncated" and len(rec.content) >= end.required:
            # Every durable byte is still in the file: the stream may go on, and the file's
            # final bytes (checked for every live recording) must hold them.
            rec.unseen.append(end)
            return
        rec.ends.append(end)

    # --- the drivers ---------------------------------------------------------------------

    async def _writer(self) -> None:
        for action in self.sched.actions:
            await asyncio.sleep(max(0.0, action.at - self.loop.time()))
            if self.host_lost_at is not None:
                return  # the recorders' host is gone
            paths = self.files.apply(action, self._on_end)
            self._note_regrowth(action.slot)
            for path in paths:
                delay = self.rng.uniform(0, self.sched.debounce)
                self.loop.call_later(delay, self._deliver, path)
            self.last_write = self.loop.time()

    def _note_regrowth(self, slot: int) -> None:
        rec = self.files.by_slot.get(slot)
        if rec is None:
            return
        for end in rec.ends:
            if end.kind == "truncated" and end.regrown_at is None and (
                len(rec.content) >= end.required
            ):
                end.regrown_at = self.loop.time()

    def _checkpointed(self, record: StreamRecord) -> None:
        """A stream cefmp4 logged as truncated and checkpointed as ended by it (a replace
        checkpoints the same status): its worker saw the file shorter
        than what it had uploaded, however soon a crash or a regrowth follows (the observer
        below only credits a worker that held the short file for a while), and what it
        checkpointed of the file before the cut must end as an object (SPEC §2.4) — also
        parts whose checkpoint landed after the cut (the truncation then looked harmless)."""
        if record.state is not StreamState.FINALIZING or record.status != Status.TRUNCATED:
            return
        if record.stream_id not in self.truncation_seen:
            return  # "truncated" by a replace (its own End judges it), not by a shrink
        for rec in self.files.recordings:
            ends = [e for e in rec.ends + rec.unseen
                    if e.kind == "truncated" and record.stream_id in e.streams]
            if not ends:
                continue
            end = max(ends, key=lambda e: e.at)
            version = rec.final_versions()[end.version if end.version is not None else -1]
            durable = invariants.durable_prefix(
                self.shadow, frozenset({record.stream_id}), version
            )
            if end in rec.unseen and durable <= end.size:
                # The cut left every byte this stream holds in S3: the truncated status
                # came from a later step (a replace, say), which its own End judges.
                continue
            if durable == 0:
                continue
            end.required = max(end.required, durable)
            end.observed = True
            end.uploads |= {record.upload_id} if record.upload_id else set()
            if end in rec.unseen:
                rec.unseen.remove(end)
                rec.ends.append(end)

    def observed(self, end: End) -> bool:
        """A worker followed the file while it was shorter than its durable bytes, or the
        file never grew back. If not, the truncation is indistinguishable from a rewrite of
        every uploaded byte (a faststart pass): the file's final bytes are all one can ask."""
        return end.observed or end.regrown_at is None

    async def _observer(self) -> None:
        """Marks truncations that a stream worker had the time to notice."""
        look = self.sched.poll_interval + 1.0
        dev = self.watch.stat().st_dev
        while self.loop.time() < self.sched.heal_at + 5.0:
            await asyncio.sleep(0.25)
            process = self.process
            for rec in self.files.recordings:
                for end in rec.ends:
                    if end.kind != "truncated" or end.observed or end.regrown_at is not None:
                        continue
                    if process is None or not process.holds(dev, rec.inode):
                        end.held_since = None
                    elif end.held_since is None:
                        end.held_since = self.loop.time()
                    elif self.loop.time() - end.held_since >= look:
                        end.observed = True

    def _deliver(self, path: Path) -> None:
        if self.process is not None:
            self.process.notify(path)

    async def _purger(self) -> None:
        for at in self.sched.purges:
            await asyncio.sleep(max(0.0, at - self.loop.time()))
            mine = sorted(
                (u for u in self.s3.open_uploads() if u.key.startswith(PREFIX)),
                key=lambda u: u.upload_id,
            )
            if mine:
                upload = self.rng.choice(mine)
                held_parts = bool(self.s3._uploads[upload.upload_id].parts)
                self.s3.expire_upload(upload.upload_id)
                self._purged(upload.upload_id)
                if held_parts:  # a part-less duplicate's purge excuses nothing
                    self.purged_keys[upload.upload_id] = upload.key

    def _purged(self, upload_id: str) -> None:
        self.purged.setdefault(upload_id, self.loop.time())

    def _purged_of_streams(self) -> None:
        """An upload S3 forgot at an ending stream's key held that stream's parts, even when
        the checkpoint never learnt its id (its record's writes failing: seed 9004048)."""
        for upload_id, key in self.purged_keys.items():
            sid = stream_id_in(PREFIX, key)
            for rec in self.files.recordings:
                for end in rec.ends:
                    if sid in end.streams:
                        end.uploads.add(upload_id)

    async def _crasher(self) -> None:
        for crash in self.sched.crashes:
            victim = await self._wait_for(crash)
            await self._kill(victim, crash.down_for)

    async def _kill(self, victim: Process | None, down_for: float) -> bool:
        """Reap a crashed process, stay down, start a new one. ``victim`` is the process
        the crash was meant for: one already reaped (by another crash) stays dead."""
        async with self._killing:
            if victim is None or self.process is not victim:
                return False
            await self._crash()
            await asyncio.sleep(down_for)
            self._start()
            return True

    async def _wait_for(self, crash: Crash) -> Process | None:
        if crash.at is not None:
            await asyncio.sleep(max(0.0, crash.at - self.loop.time()))
            return self.process
        self._crash_now.clear()
        self._crash_at_step("uniform", self.loop.steps + (crash.steps or 1), self._crash_now)
        # Steps happen only while something runs; an idle world crashes at the deadline.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.sched.heal_at + 10.0 - self.loop.time()):
                await self._crash_now.wait()
        self._at_step.pop("uniform", None)
        return self._victims.pop("uniform", self.process)

    def _crash_at_step(self, slot: str, step: int, done: asyncio.Event) -> None:
        self._at_step[slot] = (step, done)
        self.loop.on_step = self._on_step

    def _on_step(self, step: int) -> None:
        for slot, (target, done) in list(self._at_step.items()):
            if step >= target:
                del self._at_step[slot]
                self._victims[slot] = self.process
                if self.process is not None:
                    self.process.crash()  # dead at this exact step; tasks are reaped next
                done.set()
        if not self._at_step:
            self.loop.on_step = None

    # --- targeted crashes ----------------------------------------------------------------

    def on_event(self, name: str, fields: Mapping[str, Any] | None = None) -> None:
        """A pipeline phase event (a log event, or "s3:<op>" done): it may set off armed
        targeted crashes, each ``steps`` loop steps later."""
        if name == "stream_truncated" and fields and (sid := fields.get("stream_id")):
            self.truncation_seen.add(str(sid))
        for index, target in list(self._armed.items()):
            if name != target.event:
                continue
            self._seen[index] = self._seen.get(index, 0) + 1
            if self._seen[index] >= target.nth:
                del self._armed[index]
                self._crash_at_step(
                    f"target{index}", self.loop.steps + target.steps, self._target_hit
                )

    async def _targeter(self) -> None:
        """The schedule's targeted crashes, all armed at once; one whose event has not
        come when the schedule heals is dropped."""
        targets = self.sched.targets
        self._armed = dict(enumerate(targets))
        left = len(targets)
        while left:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.sched.heal_at + 10.0 - self.loop.time()):
                    await self._target_hit.wait()
            self._target_hit.clear()
            fired = sorted(slot for slot in self._victims if slot.startswith("target"))
            if not fired:
                break  # healed
            for slot in fired:
                left -= 1
                down_for = targets[int(slot.removeprefix("target"))].down_for
                if await self._kill(self._victims.pop(slot), down_for):
                    self.targeted += 1
        self._armed.clear()
        for slot in [s for s in self._at_step if s.startswith("target")]:
            del self._at_step[slot]

    # --- the other party (issue #25) -------------------------------------------------------

    def _at(self, moment: float, coro: Callable[[], Any]) -> None:
        """Start ``coro()`` at virtual time ``moment``, as a driver (no crash reaps it). A
        timer, not a sleeping task: until then the seed runs exactly as without it."""

        def spawn() -> None:
            task = asyncio.create_task(coro(), name="other-party")
            self.driver.add(task)
            self.party_tasks.append(task)

        self.loop.call_at(moment, spawn)

    async def _salvage_run(self, older_than: float) -> bool:
        """``cefmp4 salvage --older-than older_than`` from another host, now; False when
        it exits 1 for something a second run may finish (an operator runs it again)."""
        async with self._party_lock:
            objects = FaultyObjectStore(self.s3, self.party_plan, Life())
            objects.on_purge = self._purged
            objects.on_carry = self.ledger.party_carry
            objects.on_carried = self.ledger.party_carried
            host = OtherHost(objects, self.root / "other-host")
            self.party["runs"] += 1
            self.ledger.older_than = older_than
            try:
                outcomes = await host.salvage(older_than)
            except CefmpError:
                self.party["errors"] += 1  # the command failed (it tries once): exit 1
                return False
            except Exception:  # a bug of the command, or of the simulator
                self.party_failures.append(
                    f"the other party's salvage --older-than {older_than:g} raised: "
                    + " | ".join(traceback.format_exc().splitlines()[-6:])
                )
                return True
            finally:
                self.ledger.older_than = None
        left = (Action.BLOCKED, Action.UNUSABLE)  # for the operator, run after run
        self.party_said |= {o.upload_id: str(o.action) for o in outcomes}
        failed = [o for o in outcomes if not o.ok and o.action not in left]
        self.party["errors"] += bool(failed)
        return not failed

    def _may_stay_open(self) -> frozenset[str]:
        # An upload without part 1 is left to the operator by salvage (SPEC §2.19), also
        # one a live owner gave up (its stream failed with nothing it could use, seed
        # 12200334): its parts are footage, never aborted. Otherwise a live owner finishes
        # every upload of its own.
        left = {str(Action.UNUSABLE)}
        if self.host_lost_at is not None:
            left.add(str(Action.BLOCKED))
        said = {u for u, verdict in self.party_said.items() if verdict in left}
        return frozenset(said | self._without_a_start())

    def _without_a_start(self) -> set[str]:
        """Uploads S3 holds parts of but no part 1, whose stream has no tail segment from
        byte 0 either: nothing can make an object of them (salvage's UNUSABLE, whoever
        judged it: the daemon's own sweeper too, seed 13000561)."""
        starts = {k.split(TAIL, 1)[1].split("/", 1)[0] for k in self.s3.objects
                  if TAIL in k and k.rsplit("/", 1)[1].startswith("0" * 16 + "-")}
        return {u.upload_id for u in self.s3.open_uploads()
                if (parts := self.s3._uploads[u.upload_id].parts) and 1 not in parts
                and stream_id_in(PREFIX, u.key) not in starts}

    async def _last_salvage(self) -> None:
        """After a host loss: the command until it exits 0 but for what it leaves to the
        operator (an object at the key, no part 1), at most three times."""
        for _ in range(3):
            if await self._salvage_run(FINAL_OLDER_THAN):
                return

    async def _lose_host(self, loss: HostLoss) -> None:
        """The recorders' host is destroyed: the process dies, its files and its checkpoint
        store go with it; maybe a replacement starts elsewhere (empty, its own store)."""
        async with self._killing:
            if self.process is not None:
                await self._crash()
                self.crashes -= 1  # counted as the host loss
            self.host_lost_at = self.loop.time()
            self.ledger.snapshot_held()
            for rec in self.files.recordings:
                rec.lost = True
                if rec.writing:
                    os.close(rec.fd)
                    rec.writing = False
            shutil.rmtree(self.watch)
            shutil.rmtree(self.state, ignore_errors=True)
            if loss.replacement:
                self.home = (self.root / "watch-b", self.root / "state-b")
                self.home[0].mkdir()
                self._start()
        self._host_gone.set()

    def _arm_other_party(self) -> None:
        for run in self.sched.salvages:
            self._at(run.at, functools.partial(self._salvage_run, run.older_than))
        if (loss := self.sched.host_loss) is not None:
            self._at(loss.at, functools.partial(self._lose_host, loss))

    async def _after_host_loss(self, replaced: bool) -> None:
        """The other party's last run, once everything the host left is as old as its age
        limit (with a replacement: after its orphan sweeper had its hour)."""
        assert self.host_lost_at is not None
        if not replaced:
            wait = self.host_lost_at + FINAL_OLDER_THAN + 1.0 - self.loop.time()
            await asyncio.sleep(max(0.0, wait))
            await self._last_salvage()
        await asyncio.sleep(ORPHAN_GRACE + 3700.0)
        if replaced:
            await self._last_salvage()

    async def run(self) -> list[str]:
        await self._seed_outside()
        before = {k: o.body for k, o in self.s3.objects.items()}
        uploads_before = {u.upload_id for u in self.s3.open_uploads()}
        me = asyncio.current_task()
        assert me is not None
        self.driver.add(me)
        self._start()
        drivers = [
            asyncio.create_task(coro, name=name)
            for name, coro in (("writer", self._writer()), ("crasher", self._crasher()),
                               ("purger", self._purger()),
                               ("observer", self._observer()))
        ]
        if self.sched.targets:  # (no extra task otherwise: a seed's steps stay as they were)
            drivers.append(asyncio.create_task(self._targeter(), name="targeter"))
        self.driver.update(drivers)
        self._arm_other_party()
        await asyncio.gather(*drivers)
        await asyncio.sleep(max(0.0, self.sched.heal_at - self.loop.time()))
        self.plan.healed = self.party_plan.healed = True
        if self.sched.host_loss is not None:
            await self._host_gone.wait()  # due by now (it may wait for a crash's restart)
        failures: list[str] = []
        if self.process is not None and not await self._converged():
            failures.append(
                f"did not converge within {CONVERGE_WITHIN:.0f} virtual seconds of healing "
                f"(streams still running: {self._running()})"
            )
        if self.host_lost_at is not None:
            await self._after_host_loss(replaced=self.process is not None)
        else:
            # Let the sweeper's grace period pass: an upload whose CreateMultipartUpload
            # answer was lost is nobody's, and only the sweeper may abort it (SPEC §2.13).
            await asyncio.sleep(ORPHAN_GRACE + 3700.0)
        await asyncio.gather(*self.party_tasks)
        if self.process is not None:
            await self.process.stop()
        self.files.close()
        videos, found = invariants.collect(
            self.s3, PREFIX, self.ledger.undescribed, self.ledger.part_sizes
        )
        failures += found
        failures += invariants.check_documents(videos)
        self._purged_of_streams()
        failures += invariants.check_recordings(
            videos, self.files.recordings, self.purged, self.observed, self.ledger.segments
        )
        failures += invariants.check_party(
            self.ledger, videos, self.files.recordings, self.purged
        )
        failures += invariants.check_tail_left(self.s3, PREFIX, videos)
        failures += self.party_failures
        failures += invariants.check_outside(
            self.s3, PREFIX, before, uploads_before, self._may_stay_open()
        )
        for p in self.processes:
            if p.budget.over:
                over = p.budget.over[:3]
                failures.append(f"bytes in flight exceeded the cap {p.budget.limit}: {over}")
        stream_failures = sum(p.failures() for p in self.processes)
        if stream_failures:
            failures.append(f"{stream_failures} stream task(s) died of a bug (supervisor.failures)")
        failures += [f"the process failed: {p.error!r}" for p in self.processes if p.error]
        self.stats = {
            "virtual_s": round(self.loop.time(), 1),
            "steps": self.loop.steps,
            "recordings": len(self.files.recordings),
            "objects": len(videos),
            "crashes": self.crashes,
            "targeted": self.targeted,
            "faults": len(self.plan.drawn),
        }
        if self.sched.salvages or self.sched.host_loss:
            self.stats |= {
                "salvage_runs": self.party["runs"],
                "salvaged": len(self.ledger.salvaged),
                "aborted_empty": self.ledger.aborted_empty,
                "tail_parts": self.ledger.tail_parts,
                "replaced": self.ledger.replaced,
                "party_errors": self.party["errors"],
                "host_lost": int(self.host_lost_at is not None),
            }
        return failures

    def _running(self) -> list[str]:
        return self.process.running() if self.process is not None else ["(down)"]

    async def _converged(self) -> bool:
        deadline = self.loop.time() + CONVERGE_WITHIN
        quiet = self.sched.stream_timeout + 2 * self.sched.poll_interval + 1.0
        while self.loop.time() < deadline:
            await asyncio.sleep(1.0)
            process = self.process
            if (
                process is not None
                and process.ready
                and not process.busy()
                and self.loop.time() - self.last_write > quiet
            ):
                return True
        return False

    async def _seed_outside(self) -> None:
        """Objects and an upload just outside the prefix, which nothing may touch."""
        for key in ("streams-archive/old.mp4", "other/file.mp4", "streams"):
            await self.s3.put_object(key, hashlib.sha256(key.encode()).digest(), "video/mp4")
        upload_id = await self.s3.create_multipart("streams-archive/open.mp4", "video/mp4")
        body = b"x" * 100
        md5 = hashlib.md5(body).digest()
        await self.s3.upload_part("streams-archive/open.mp4", upload_id, 1, body,
                                  base64.b64encode(md5).decode())
        self.s3.touched.clear()
