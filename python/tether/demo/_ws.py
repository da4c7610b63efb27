"""Shared bits for the WebSocket demo scenarios."""

from __future__ import annotations

import asyncio

from .. import events as ev


def describe(e) -> str:
    return " ".join(f"{k}={getattr(e, k)!r}" for k in e.__dataclass_fields__)


def watch(source, tl) -> asyncio.Task[None]:
    """Put every event of `source.events()` on the timeline; losses count as detection, reconnects as
    recovery. Subscribes here, before the task runs: a task that called `events()` itself would see
    only what happens after its first run, which may come after the fault."""
    stream = source.events()

    async def run():
        async for e in stream:
            if isinstance(e, ev.ConnectionLost):
                tl.detected(f"ConnectionLost {e.reason}")
            elif isinstance(e, ev.Reconnected):
                tl.recovered(f"Reconnected after {e.downtime * 1000:.2f} ms (attempt {e.attempts})")
            else:
                tl.mark(type(e).__name__, describe(e))

    return asyncio.ensure_future(run())


async def until(pred, timeout=10.0, step=0.002):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)
