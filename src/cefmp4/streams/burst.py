"""Burst mode (``cefmp4 upload``): run until no stream is starting, running or able to start."""

from __future__ import annotations

import asyncio

from cefmp4.streams.supervisor import StreamSupervisor


async def wait_idle(supervisor: StreamSupervisor, patience: int = 3) -> None:
    """Files that failed to open for a passing reason (EMFILE, EIO) are retried with
    backoff, and given up on after ``patience`` rounds without progress (a later run
    takes them); files another instance owns are not waited for."""
    ctx = supervisor.ctx
    rounds, waiting = 0, len(supervisor.startable()) + 1
    while True:
        while tasks := supervisor.tasks():
            await asyncio.gather(*tasks, return_exceptions=True)
        retry = supervisor.startable()
        if not retry:
            return
        rounds = rounds + 1 if len(retry) >= waiting else 0
        waiting = len(retry)
        if rounds >= patience:
            return
        await ctx.clock.sleep(ctx.config.poll_interval * 2**rounds)
        supervisor.retry_deferred()
