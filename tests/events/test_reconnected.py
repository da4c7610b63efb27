"""`Reconnected(downtime, attempts)`: a connection back after a loss, its downtime the gap since that loss.
Against a `websockets` server."""

from __future__ import annotations

import asyncio
import logging
import socket

from websockets.asyncio.server import serve

import tether
from support import records
from tether import events as ev

FLAPS = dict(policy=tether.Backoff(0.05, 2, max_delay=0.2, jitter="none"), stable_after=30, quiet_jitter=0)


async def next_of(stream, kinds):
    while True:
        e = await asyncio.wait_for(stream.__anext__(), 20)
        if isinstance(e, kinds):
            return e


async def test_each_reconnect_of_a_flapping_link_counts_its_own_gap():
    """The link is lost twice within ``stable_after``, up 0.6 s in between. Before, the second
    Reconnected counted from the first loss: its downtime held the 0.6 s the link was up."""
    accepts = 0

    async def handler(ws):
        nonlocal accepts
        accepts += 1
        if accepts <= 2:
            await asyncio.sleep(0.6)
            await ws.close(1011, "flap")
            return
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        conn = await tether.connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", **FLAPS)
        stream = conn.events()
        loop = asyncio.get_running_loop()
        try:
            for _ in range(2):
                await next_of(stream, ev.ConnectionLost)
                lost_at = loop.time()
                back = await next_of(stream, ev.Reconnected)
                assert back.downtime <= loop.time() - lost_at + 0.05, back
                assert back.downtime < 0.5, back  # a quick reconnect, never the 0.6 s the link was up
        finally:
            await conn.aclose()


async def test_a_first_connect_after_refusals_is_no_reconnect():
    """The server comes up 0.4 s after the first attempt: Connected, no loss, no Reconnected. Before, a
    Reconnected came with it (while stats() counted no reconnect)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def handler(ws):
        await ws.wait_closed()

    conn = tether.connect(f"ws://127.0.0.1:{port}/", **FLAPS)
    stream = conn.events()
    connecting = asyncio.ensure_future(conn.__aenter__())
    await asyncio.sleep(0.4)
    async with serve(handler, "127.0.0.1", port):
        await asyncio.wait_for(connecting, 20)
        stats = conn.stats()
        await conn.aclose()
    seen = [type(e).__name__ for e in [e async for e in stream]]
    assert stats["reconnects"] == 0 and stats["losses"] == 0, stats
    assert "Connected" in seen and "Reconnected" not in seen, seen


async def test_a_first_connect_after_warned_refusals_is_logged_as_connected(tether_logs):
    """Once stable, the INFO line of a first connection after refusals that logged WARNING says
    "connected". Before, it said "reconnected ... (down for ...)", of a connection never lost."""
    r = tether.Reconnector(tether.Backoff(0.01, 1, jitter="none"), stable_after=0.2, quiet_jitter=0, name="svc")
    for _ in range(3):
        r.failed(ConnectionRefusedError("refused"))
    assert r.connected()
    await asyncio.sleep(0.5)
    info = [x.getMessage() for x in records(tether_logs, "tether.reconnect") if x.levelno == logging.INFO]
    assert len(info) == 1 and info[0].startswith("connected to svc after 4 attempts"), info
