"""Nothing is lost silently: sends made while the server is unreachable wait in the bounded buffer
and are delivered, in order, after the reconnect; each send() resolves once it was written, and
flush() once the server confirmed everything sent before it."""

from __future__ import annotations

import asyncio

import tether
from tether.testing import SignalServer

from ._ws import until, watch

TITLE = "sends during an outage are buffered and delivered in order after the reconnect"


async def run(tl):
    async with SignalServer() as srv:
        async with tether.connect(
            srv.url,
            ping_interval=0.5,
            ping_timeout=0.5,
            policy=tether.Backoff(0.05, max_delay=0.1, jitter="none"),
            name="signal",
        ) as conn:
            w = watch(conn, tl)
            tl.fault("server goes away (connections refused)")
            srv.listening(False)
            # the server counts a connection once it has answered its handshake, which can be just after
            # connect() returns: a drop before that would find nothing to drop
            await srv.wait_for(1)
            assert srv.drop() == 1
            await until(lambda: conn.state == "reconnecting")
            sends = [asyncio.ensure_future(conn.send(f"offer-{i}")) for i in range(10)]
            await asyncio.sleep(0.3)
            tl.note(f"{sum(not s.done() for s in sends)} sends waiting, send_queue={conn.stats()['send_queue']}")
            srv.listening(True)
            await asyncio.gather(*sends)
            await conn.flush()
            got = [await conn.recv() for _ in range(10)]
            assert got == [f"offer-{i}" for i in range(10)], got
            tl.note("all 10 confirmed by the server and echoed back in order")
        await w
