"""Shared bits for the demo scenarios: a source's events on the timeline, and waiting for a condition."""

from __future__ import annotations

import asyncio

from ..testing._timeline import describe

__all__ = ["describe", "until", "watch"]


def watch(source, tl, lane=None) -> asyncio.Task[None]:
    """Put every event of `source.events()` on the timeline; losses count as detection, reconnects as
    recovery. Subscribes here, before the task runs: a task that called `events()` itself would see
    only what happens after its first run, which may come after the fault."""
    task: asyncio.Task[None] = tl.watch(source, lane=lane)
    tl.outcome_lanes.add(tl.lanes[-1])  # before the task first runs: no event is recorded yet
    return task


async def until(pred, timeout=10.0, step=0.002):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)
