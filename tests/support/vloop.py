"""An event loop whose clock is virtual and whose executor is the loop thread itself.

When nothing is ready, the loop jumps its clock to the next timer instead of sleeping, so a
30 s idle timeout passes in microseconds. Executor work (hashing, SQLite) runs inline, one
job per loop step, which makes a run a pure function of its seed: no thread decides an
interleaving. Tasks get a creation number, so "every task" can be walked in a fixed order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import itertools
import selectors
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, TypeVar

from cefmp4.runtime.clock import SystemClock

T = TypeVar("T")

# A fixed start: virtual wall time is this plus the loop's clock (2026-01-01T00:00:00Z).
EPOCH = 1_767_225_600.0
STEP_COST = 1e-6
REAL_BUDGET_S = 120.0  # one schedule takes well under a second; this is a livelock


class _JumpingSelector(selectors.DefaultSelector):
    """Polls the real selector without blocking; a wait becomes a clock jump."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            # Nothing scheduled and nothing ready: every task waits for something that
            # can never happen in a closed world.
            raise SimulationDeadlock("no timer is scheduled and no task can run")
        self._advance(timeout)
        return []


class SimulationDeadlock(RuntimeError):
    pass


class SimulationStuck(RuntimeError):
    """A schedule spins without end in real time (a busy loop that never yields time)."""


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self._advance))
        self.steps = 0
        self.real_deadline = time.perf_counter() + REAL_BUDGET_S
        self._serial = itertools.count()
        self.set_task_factory(self._make_task)
        self.on_step: Callable[[int], None] | None = None

    def _advance(self, seconds: float) -> None:
        self._now += seconds

    def time(self) -> float:
        return self._now

    def wall(self) -> float:
        return EPOCH + self._now

    def _run_once(self) -> None:
        # Every step costs a microsecond: real work takes time, and a loop that waits for
        # "a little longer" (a float rounding to zero) still reaches its deadline.
        self._now += STEP_COST
        self.steps += 1
        if self.steps % 4096 == 0 and time.perf_counter() > self.real_deadline:
            raise SimulationStuck(f"still running after {REAL_BUDGET_S:.0f} s of real time")
        if self.on_step is not None:
            self.on_step(self.steps)
        super()._run_once()  # type: ignore[misc]

    def _make_task(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        task.sim_serial = next(self._serial)  # type: ignore[attr-defined]
        return task

    def run_in_executor(  # type: ignore[override]
        self, executor: concurrent.futures.Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        """Run ``func`` now, on this thread; its caller resumes on the next step."""
        future: asyncio.Future[T] = self.create_future()
        context = contextvars.copy_context()
        try:
            result = context.run(func, *args)
        except BaseException as exc:  # handed to the awaiting caller
            self.call_soon(_settle, future, None, exc)
        else:
            self.call_soon(_settle, future, result, None)
        return future


def _settle(future: asyncio.Future[T], result: T | None, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def serial(task: asyncio.Task[Any]) -> int:
    """The task's creation number (tasks created before the loop ran: -1)."""
    return int(getattr(task, "sim_serial", -1))


class LoopClock(SystemClock):
    """cefmp4's ``Clock`` on whichever loop runs it: monotonic time is the loop's (virtual
    on a ``VirtualLoop``; sleeping and waiting already are), and wall time moves with it
    from the real time at the loop's zero, so a file written "now" looks as old as the
    virtual time since."""

    def __init__(self) -> None:
        self._zero = time.time() - asyncio.get_running_loop().time()

    def time(self) -> float:
        return self._zero + asyncio.get_running_loop().time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()
