"""The ghost room: the connection reads "connected" but no media frames arrive.
A Watchdog liveness key beaten per frame raises an alarm after the silence limit, naming the key."""

from __future__ import annotations

import asyncio

import tether
from tether.testing import SignalServer

TITLE = "ghost room: connected but no frames -> liveness alarm naming the track"


async def run(tl):
    async with SignalServer() as srv:
        srv.echo(False)
        wd = tether.Watchdog("room")
        async with tether.connect(srv.url, ping_interval=1, ping_timeout=1, name="media") as conn:
            w = tl.watch(conn)  # stays "connected" throughout: only the liveness key sees the silence
            audio = wd.liveness("audio:remote-participant", 0.3)  # production: 5-10 s
            frames = 0

            async def consume():
                nonlocal frames
                async for _ in conn:
                    frames += 1
                    audio.beat()

            consumer = asyncio.ensure_future(consume())
            alarms = wd.alarms()

            async def produce(n):
                for _ in range(n):
                    srv.push(b"\x00" * 160)  # a 20 ms audio frame
                    await asyncio.sleep(0.02)

            await produce(25)
            tl.note(f"{frames} frames received, state={conn.state}")
            tl.fault("frames stop while the connection stays 'connected'")
            alarm = await asyncio.wait_for(alarms.__anext__(), 5)
            tl.detected(alarm.message)
            assert alarm.kind == "liveness" and conn.state == "connected"
            tl.note("action: force-recreate the session (here: frames resume)")
            await produce(5)
            assert not audio.alarmed
            tl.recovered("frames flowing again, liveness re-armed")
            consumer.cancel()
        wd.close()
        await w
