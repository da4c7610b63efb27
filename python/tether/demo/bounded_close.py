"""`await session.aclose()` / `await room.disconnect()` can wait forever on a wedged connection.
tether.bounded returns within its bound, cancels the inner call, and does not wait for a call that
swallows the cancellation."""

from __future__ import annotations

import asyncio
import time

import tether

TITLE = "disconnect() that never returns: bounded() frees the caller at its 0.5 s bound"


class WedgedRoom:
    def __init__(self):
        self.unwedge = asyncio.Event()

    async def disconnect(self):
        while not self.unwedge.is_set():  # stuck, and swallows cancellation
            try:
                await self.unwedge.wait()
            except asyncio.CancelledError:
                pass


async def run(tl):
    room = WedgedRoom()
    tl.fault("room.disconnect() hangs and ignores cancellation")
    t0 = time.monotonic()
    try:
        await tether.bounded(room.disconnect(), 0.5, what="room.disconnect()")
    except tether.TimeoutError as e:
        tl.detected(str(e))
    took = time.monotonic() - t0
    assert took < 0.7, took
    tl.recovered(f"caller free after {took * 1000:.0f} ms; teardown continues")
    room.unwedge.set()  # end the simulated wedge, or asyncio.run would wait for it at exit
