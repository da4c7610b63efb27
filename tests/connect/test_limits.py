"""max_message_size both ways, the inbound buffer bounded by bytes, and black-hole detection while the
reader is paused because the application does not read."""

import asyncio
import subprocess
import sys
import textwrap
import time

import pytest
import websockets

import tether
from support import FAST, MS, collect
from support.netns import NS_IF, NS_IP, sh
from tether import events as ev

CHUNK = 64 * 1024


def port_of(srv):
    return srv.sockets[0].getsockname()[1]


async def test_oversize_send_fails_at_call_time():
    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", 0) as srv:
        async with tether.connect(f"ws://127.0.0.1:{port_of(srv)}/", max_message_size=1000, **FAST) as conn:
            with pytest.raises(ValueError, match=r"larger than max_message_size \(1000 bytes\)"):
                conn.send(b"x" * 1001)
            await conn.send(b"x" * 1000)
            assert await asyncio.wait_for(conn.recv(), 5) == b"x" * 1000
    with pytest.raises(ValueError, match="max_message_size"):
        tether.connect("ws://127.0.0.1:9/", max_message_size=0)


async def test_oversize_inbound_message_is_a_loss_that_names_the_limit():
    async def big(ws):
        await ws.send("y" * 5000)
        await ws.wait_closed()

    async with websockets.serve(big, "127.0.0.1", 0) as srv:
        got = []
        conn = tether.connect(
            f"ws://127.0.0.1:{port_of(srv)}/",
            max_message_size=4096,
            policy=tether.Backoff(0.05, jitter="none", max_attempts=1),
            **FAST,
        )
        watcher = asyncio.ensure_future(collect(conn.events(), got))
        with pytest.raises(tether.GaveUp):
            async with conn:
                while True:
                    await asyncio.wait_for(conn.recv(), 10)
        await asyncio.wait_for(watcher, 5)
    lost = [e for e in got if isinstance(e, ev.ConnectionLost)]
    assert lost and "max_message_size (4096 bytes)" in lost[0].reason, got


async def flood(ws):
    try:
        while True:
            await ws.send(b"z" * CHUNK)
    except websockets.ConnectionClosed:
        pass


async def test_inbound_buffer_is_bounded_by_bytes():
    async with websockets.serve(flood, "127.0.0.1", 0) as srv:
        async with tether.connect(f"ws://127.0.0.1:{port_of(srv)}/", **FAST) as conn:
            # nobody reads: the reader pauses once 64 MiB are buffered, far below the 65,536-message count
            last, stable_since = -1, time.monotonic()
            while time.monotonic() - stable_since < 1000 * MS:  # unchanged for a second
                q = conn.stats()["recv_queue"]
                if q != last:
                    last, stable_since = q, time.monotonic()
                await asyncio.sleep(100 * MS)
            assert 0 < last <= (64 << 20) // CHUNK + 1, last
            # the connection stays up while paused (pong deadlines are suspended, not missed)
            assert conn.state == "connected"
            assert await asyncio.wait_for(conn.recv(), 5) == b"z" * CHUNK


FLOOD_SERVER = textwrap.dedent(
    f"""
    import asyncio, websockets
    async def flood(ws):
        try:
            while True:
                await ws.send(b"z" * {CHUNK})
        except websockets.ConnectionClosed:
            pass
    async def main():
        async with websockets.serve(flood, "{NS_IP}", 0) as srv:
            print(srv.sockets[0].getsockname()[1], flush=True)
            await asyncio.sleep(120)
    asyncio.run(main())
    """
)


async def test_black_hole_is_detected_while_the_reader_is_paused(netns):
    server = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", netns, sys.executable, "-c", FLOOD_SERVER, stdout=subprocess.PIPE
    )
    try:
        port = int((await asyncio.wait_for(server.stdout.readline(), 30)).decode().strip())
        conn = tether.connect(f"ws://{NS_IP}:{port}/", policy=tether.Backoff(0.1, max_delay=0.3, jitter="none"), **FAST)
        evs = conn.events()
        await conn
        # wait until the reader is paused: the buffer stops growing
        last, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 1000 * MS:  # unchanged for a second
            q = conn.stats()["recv_queue"]
            if q != last:
                last, stable_since = q, time.monotonic()
            await asyncio.sleep(100 * MS)
        assert last > 0
        sh("ip", "netns", "exec", netns, "ip", "link", "set", NS_IF, "down")  # packets vanish
        t0 = time.monotonic()
        while not isinstance(e := await asyncio.wait_for(evs.__anext__(), 30), ev.ConnectionLost):
            pass
        print(f"black hole detected while paused after {time.monotonic() - t0:.2f}s: {e.reason}")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", NS_IF, "up")
        await conn.aclose()
    finally:
        server.kill()
        await server.wait()


async def test_small_buffers_still_carry_big_messages():
    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{port_of(srv)}/"
        async with tether.connect(url, read_buffer_size=64, write_buffer_size=64, **FAST) as conn:
            for size in (10, 1000, 300_000):
                await conn.send(b"q" * size)
                assert await asyncio.wait_for(conn.recv(), 10) == b"q" * size
    for name in ("read_buffer_size", "write_buffer_size"):
        with pytest.raises(ValueError, match=name):
            tether.connect("ws://127.0.0.1:9/", **{name: 0})
