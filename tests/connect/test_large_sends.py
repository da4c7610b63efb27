"""Flow control for messages over the 64 KiB write mark: a sender that awaits each send never meets
``SendBufferFull`` (send's docstring). Before, such a message waited only for its write, never for room in
``send_buffer``: a sender awaiting each 70 KB send filled the buffer and got ``SendBufferFull`` at the 9th
(``send_buffer=8``), against a server that read everything."""

import asyncio
import contextlib

from websockets.asyncio.server import serve

import tether


async def test_a_sender_awaiting_each_big_send_never_meets_send_buffer_full():
    received = []

    async def handler(ws):
        async for m in ws:
            received.append(len(m))

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        conn = await tether.connect(f"ws://127.0.0.1:{port}/", send_buffer=8, compression=None)
        try:
            for _ in range(40):
                # awaited one by one, as the docstring says is enough to never overflow send_buffer (a bare
                # await: the send resolves at once once written, so the loop never runs to read a pong)
                await conn.send(b"x" * 70_000)
            await asyncio.wait_for(conn.flush(), 30)
        finally:
            await conn.aclose()
    assert len(received) == 40


async def test_a_sender_awaiting_each_big_send_to_a_slow_reader_waits_instead_of_overflowing():
    """The same through ``asyncio.wait_for`` (the loop runs between sends) against a server whose
    application does not read for a while: a 1,000-byte message waits in ``send`` (flow control), a
    70,000-byte one is accepted as soon as it is written, until ``SendBufferFull``."""
    release = asyncio.Event()

    async def handler(ws):
        await release.wait()  # websockets stops reading at max_queue meanwhile
        async for _ in ws:
            pass

    async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None, max_queue=4) as srv:
        port = srv.sockets[0].getsockname()[1]
        conn = await tether.connect(f"ws://127.0.0.1:{port}/", send_buffer=8, compression=None, ping_timeout=30)
        try:
            sent = 0
            with contextlib.suppress(asyncio.TimeoutError):
                for _ in range(40):
                    await asyncio.wait_for(conn.send(b"x" * 70_000), 3)
                    sent += 1
            # either it waited (TimeoutError above) or all went: SendBufferFull must never be raised
        finally:
            release.set()
            await conn.aclose()
