"""The signaling WebSocket drops without a close frame (TCP reset between agent and SFU).
tether detects it at once, reports it once, reconnects immediately and quietly, and the session goes on.

A single client here, so `quiet_jitter=0`: the first retry starts at once. The default (1 s) spreads a
fleet that lost the same server over a second instead."""

from __future__ import annotations

import tether
from tether.testing import SignalServer

from ._ws import until, watch

TITLE = "signaling WS dropped by the server: detected, reported once, reconnected at once (no backoff)"


async def run(tl):
    async with SignalServer() as srv:
        async with tether.connect(srv.url, ping_interval=1, ping_timeout=1, quiet_jitter=0, name="signal") as conn:
            w = watch(conn, tl)
            await conn.send("join")
            assert await conn.recv() == "join"
            tl.fault("server drops the TCP connection (no close frame)")
            srv.drop()
            await until(lambda: conn.stats()["connects"] == 2 and conn.state == "connected")
            await conn.send("still here")
            while (await conn.recv()) != "still here":
                pass
            await until(lambda: tl.recovered_at is not None)  # the watcher has seen Reconnected
            tl.note(f"message after the reconnect echoed; losses reported: {conn.stats()['losses']}")
            assert conn.stats()["losses"] == 1 and tl.seen("DETECTED") == 1, tl.marks
            assert tl.seen("Reconnecting", "delay=0.0 ") == 1, tl.marks
        await w
