"""A server that accepts and immediately drops. The loop must escalate, not hot-loop,
log the first immediate retry below WARNING, back off with WARNING, and give up with ERROR.

The Reconnector logs to its own logger here (`logger=`), shown on the timeline at every level, so the
DEBUG record of the quiet first retry is visible next to the WARNINGs and the ERROR."""

from __future__ import annotations

import asyncio
import logging

import tether

TITLE = "accept-then-drop server: escalating backoff, DEBUG -> WARNING -> ERROR, GaveUp"


class _ToTimeline(logging.Handler):
    def __init__(self, tl):
        super().__init__(logging.DEBUG)
        self.tl = tl

    def emit(self, record: logging.LogRecord) -> None:
        self.tl.mark(f"log {record.levelname}", record.getMessage())


async def run(tl):
    accepts = 0

    async def handle(reader, writer):
        nonlocal accepts
        accepts += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    log = logging.getLogger("tether_demo.flapping")
    handler = _ToTimeline(tl)
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    # no jitter, and a first retry at once: the delays are 0, 50, 100, 200 ms
    r = tether.Reconnector(
        tether.Backoff(0.05, 2, max_delay=0.4, jitter="none", max_attempts=4),
        stable_after=5,
        quiet_jitter=0,
        name=f"flapper:{port}",
        logger=log,
    )
    watcher = tl.watch(r, lane="reconnector")  # subscribed before the run starts: nothing is missed

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
        log.removeHandler(handler)
        log.setLevel(logging.NOTSET)
        log.propagate = True
        tether.sync_log_level()
    assert accepts == 5, accepts
    tl.note(f"{accepts} connections over the episode, no hot loop")
