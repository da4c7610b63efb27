"""Seed 003: the signaling WebSocket drops without a close frame (TCP reset between agent and SFU).
tether detects it at once, reports it once, reconnects immediately and quietly, and the session goes on."""

from __future__ import annotations

import tether
from tether.testing import SignalServer

from ._ws import until, watch

TITLE = "signaling WS dropped by the server: detected, reported once, reconnected in ~1 ms"


async def run(tl):
    async with SignalServer() as srv:
        async with tether.connect(srv.url, ping_interval=1, ping_timeout=1, name="signal") as conn:
            w = watch(conn, tl)
            await conn.send("join")
            assert await conn.recv() == "join"
            tl.fault("server drops the TCP connection (no close frame)")
            srv.drop()
            await until(lambda: conn.stats()["connects"] == 2 and conn.state == "connected")
            await conn.send("still here")
            while (await conn.recv()) != "still here":
                pass
            tl.note(f"message after the reconnect echoed; losses reported: {conn.stats()['losses']}")
        await w
