"""Seed 000: a server that accepts and immediately drops. The loop must escalate, not hot-loop,
log the first immediate retry below WARNING, back off with WARNING, and give up with ERROR."""

from __future__ import annotations

import asyncio

import tether

TITLE = "accept-then-drop server: escalating backoff, DEBUG -> WARNING -> ERROR, GaveUp"


async def run(tl):
    accepts = 0

    async def handle(reader, writer):
        nonlocal accepts
        accepts += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = tether.Reconnector(
        tether.Backoff(0.05, 2, max_delay=0.4, jitter="equal", max_attempts=4), stable_after=5, name=f"flapper:{port}"
    )

    async def watch():
        async for ev in r.events():
            tl.mark(type(ev).__name__, " ".join(f"{k}={getattr(ev, k)!r}" for k in ev.__dataclass_fields__))

    watcher = asyncio.ensure_future(watch())

    async def connect():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        r.connected()
        try:
            if await reader.read(1) == b"":
                raise ConnectionResetError("server closed the connection right after accepting")
        finally:
            writer.close()

    tl.fault("server accepts every connection and drops it at once")
    try:
        await r.run(connect)
    except tether.GaveUp as e:
        tl.detected(f"GaveUp after {e.attempts} attempts ({e.reason})")
    else:
        raise AssertionError("expected GaveUp")
    finally:
        server.close()
        await asyncio.wait_for(watcher, 5)
    assert accepts == 5, accepts
    tl.note(f"{accepts} connections over the episode, no hot loop")
