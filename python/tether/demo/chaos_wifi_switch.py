"""A Wi-Fi network switch, the usual trigger of a stuck agent. The path goes silent (no FIN, no RST), reconnect
attempts vanish into the same hole, then the network comes back. Through a ChaosProxy black hole:
detection by the ping deadline, bounded attempts while the hole lasts, recovery right after heal."""

from __future__ import annotations

import asyncio

import tether
from tether.testing import ChaosProxy, SignalServer

from ._ws import until, watch

TITLE = "Wi-Fi switch (black hole, no FIN/RST): detected by ping deadline, recovered after heal"


async def run(tl):
    async with SignalServer() as srv, ChaosProxy(("127.0.0.1", srv.port)) as proxy:
        conn = await tether.connect(
            proxy.url(),
            ping_interval=0.25,
            ping_timeout=0.25,
            open_timeout=0.4,
            policy=tether.Backoff(0.1, max_delay=0.2, jitter="none"),
            name="signal",
        )
        w = watch(conn, tl)
        try:
            await conn.send("hello")
            assert await conn.recv() == "hello"
            tl.fault("Wi-Fi switch: every packet is dropped, in both directions")
            proxy.blackhole()
            await until(lambda: conn.state == "reconnecting")
            await asyncio.sleep(0.8)  # attempts time out inside the hole (open_timeout 0.4 s each)
            tl.mark("heal", "network is back")
            proxy.heal()
            await until(lambda: conn.stats()["connects"] == 2 and conn.state == "connected")
            await conn.send("after")
            while await conn.recv() != "after":
                pass
            tl.note(f"proxy saw {proxy.stats()['accepted']} connections; bounded attempts, no hot loop")
        finally:
            await conn.aclose()
        await w
