"""The one supervisor of the daemon's long-lived tasks (watcher, rescan, sweeper,
takeover, lease renewal): structured concurrency written once.

An unexpected exception in a task is logged with its traceback once and reported to
``Readiness`` under the task's name; then the task is restarted with backoff, or — for a
task marked fatal — the supervisor records the error and sets ``failed`` so that the app
stops with a non-zero exit and one ``cefmp4: error:`` line. Nothing dies silently. A
restarted task that has run ``healthy_after`` seconds without failing is reported ok again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from cefmp4.runtime import logs
from cefmp4.runtime.clock import Clock
from cefmp4.runtime.readiness import Readiness
from cefmp4.runtime.retry import Backoff

log = structlog.get_logger("cefmp4.runtime.tasks")

TaskFactory = Callable[[], Awaitable[None]]


class TaskSupervisor:
    def __init__(
        self,
        readiness: Readiness,
        clock: Clock,
        *,
        backoff: Backoff | None = None,
        healthy_after: float = 10.0,
    ) -> None:
        self._readiness = readiness
        self._clock = clock
        self._backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self._healthy_after = healthy_after
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.failed = asyncio.Event()
        self.error: str | None = None

    def start(self, name: str, factory: TaskFactory, *, fatal: bool = False) -> None:
        """Run ``factory()`` under supervision until ``aclose`` (or it returns)."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} already supervised")
        self._tasks[name] = asyncio.create_task(self._run(name, factory, fatal), name=name)

    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    async def _run(self, name: str, factory: TaskFactory, fatal: bool) -> None:
        retry = 0
        while True:
            attempt = asyncio.ensure_future(factory())
            try:
                if retry:
                    ended = asyncio.Event()
                    attempt.add_done_callback(_setter(ended))
                    if not await self._clock.wait(ended, self._healthy_after):
                        self._readiness.ok(name)
                        retry = 0
                await attempt
                return  # a task that ends by itself is done (its stop event was set)
            except asyncio.CancelledError:
                attempt.cancel()
                await asyncio.gather(attempt, return_exceptions=True)
                raise
            except Exception as exc:
                log.error(logs.TASK_FAILED, task=name, error=repr(exc), exc_info=exc)
                self._readiness.fail(name, exc)
                if fatal:
                    self.error = f"{name} failed: {exc!r}"
                    self.failed.set()
                    return
            delay = self._backoff.delay(retry)
            retry += 1
            log.warning(logs.TASK_RESTARTING, task=name, delay_s=round(delay, 2))
            await self._clock.sleep(delay)

    async def aclose(self) -> None:
        """Cancel every task and wait for them (shutdown)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _future: event.set()
