"""``aclose()`` while the application has not read and the inbound buffer is full (its reader paused): the
close resumes reading, so the pong that confirms the last send and the server's close frame are read.
Before, nothing resumed it: ``aclose()`` ran out its whole ``close_timeout`` and named as never confirmed a
send the server had read."""

import asyncio
import time

from websockets.asyncio.server import serve

import tether

CLOSE_TIMEOUT = 4.0
BURST = 66_000  # more than the inbound buffer's 65,536 messages


async def test_aclose_confirms_sends_and_completes_while_the_inbound_buffer_is_full():
    burst_sent = asyncio.Event()
    server_got = []

    async def handler(ws):
        for _ in range(BURST):
            await ws.send("x")
        burst_sent.set()
        async for m in ws:
            server_got.append(m)

    async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        conn = await tether.connect(f"ws://127.0.0.1:{port}/", close_timeout=CLOSE_TIMEOUT, compression=None)
        await asyncio.wait_for(burst_sent.wait(), 60)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while conn.stats()["recv_queue"] < 65_536 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert conn.stats()["recv_queue"] >= 65_536, "the inbound buffer did not fill"

        await conn.send("last")
        t0 = time.monotonic()
        await conn.aclose()
        took = time.monotonic() - t0

        undelivered = []
        try:
            await conn.flush()
        except tether.ConnectionClosed as e:
            undelivered = list(e.messages)
        assert server_got == ["last"]  # the server did read it (and answers pings and the close)
        assert undelivered == [], f"a send the server read is reported never confirmed: {undelivered}"
        assert took < CLOSE_TIMEOUT / 2, f"aclose waited {took:.2f}s for a close the server answered at once"
