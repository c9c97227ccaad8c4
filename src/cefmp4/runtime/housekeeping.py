"""The orphan sweeper (SPEC §2.13, §2.19): multipart uploads under the prefix that no
checkpoint knows and that nobody added a part to for the grace period are salvaged into
readable objects; only an upload that holds no part is aborted. Nothing outside the prefix
is touched, and footage is never thrown away."""

from __future__ import annotations

from typing import cast

import structlog

from cefmp4.core.salvage import Action
from cefmp4.streams.context import Context
from cefmp4.streams.reconcile import unknown_uploads
from cefmp4.streams.salvage import Outcome, Salvager, SalvageStore, UrlProber

log = structlog.get_logger("cefmp4.runtime.housekeeping")


def salvager(ctx: Context, instance: str = "") -> Salvager:
    """The salvage of this daemon: its store, prober, retries and metrics."""
    prober = ctx.prober if hasattr(ctx.prober, "probe_url") else None
    return Salvager(
        cast(SalvageStore, ctx.objects), ctx.config.key_prefix,
        prober=cast(UrlProber | None, prober), clock=ctx.clock.time, retry=ctx.retry,
        salvaged=ctx.metrics.streams_salvaged.inc, instance=instance,
        template=ctx.config.key_template, seal=ctx.evidence.seal,
    )


async def sweep(ctx: Context, grace_seconds: float) -> list[Outcome]:
    """Salvage (or, when empty, abort) unknown uploads idle for ``grace_seconds``: by the
    newest part, not the initiation, so a sibling's day-long recording is never touched."""
    salvage = salvager(ctx)
    outcomes = await salvage.resume_interrupted()
    plans = await salvage.survey(await unknown_uploads(ctx), {}, older_than=grace_seconds)
    for plan in plans:
        if plan.action is Action.SKIP_LIVE:
            continue
        outcome = await salvage.carry_out(plan, None)
        if outcome.done and plan.action is Action.ABORT_EMPTY:
            ctx.metrics.orphan_uploads_aborted.inc()
        outcomes.append(outcome)
    return outcomes


async def sweep_forever(ctx: Context, grace_seconds: float, interval: float) -> None:
    """Sweep now and then every ``interval`` seconds. An error ends the task: the task
    supervisor logs it, reports it to readiness and restarts it with backoff."""
    while True:
        await sweep(ctx, grace_seconds)
        await ctx.clock.sleep(interval)
