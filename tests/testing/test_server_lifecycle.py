"""The lifecycle SignalServer and ChaosProxy share: not running until started (idempotently), not
running again after aclose(), and every call in between says how to start one; what ends their connections
(aclose(), SignalServer.drop() and close()) ends them whatever they are doing."""

import asyncio
import base64
import contextlib
import os
import socket

import pytest
import websockets

import tether
from tether import events as ev
from tether.testing import ChaosProxy, SignalServer


def raw_handshake(port: int) -> socket.socket:
    """A WebSocket client that opens a connection and then never reads it (a paused reader)."""
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert b" 101 " in head, head
    return s


async def test_signal_server_and_chaos_proxy_share_one_lifecycle():
    server = SignalServer()
    with pytest.raises(RuntimeError, match=r"SignalServer is not running; use `async with SignalServer\(\)`"):
        server.stats()
    async with server:
        await server.start()  # idempotent: the same server keeps running
        port = server.port
        proxy = ChaosProxy(f"127.0.0.1:{port}")
        with pytest.raises(RuntimeError, match=r"ChaosProxy is not running; use `async with ChaosProxy\(...\)`"):
            proxy.stats()
        await proxy.start()
        first = proxy.port
        await proxy.start()
        assert proxy.port == first and server.port == port
        assert set(proxy.stats()) == {
            "accepted",
            "active",
            "bytes_up",
            "bytes_down",
            "resets",
            "closes",
            "upstream_failures",
        }
        assert "not running" not in repr(proxy)
        await proxy.aclose()
        assert "not running" in repr(proxy)
        with pytest.raises(RuntimeError, match="ChaosProxy is not running"):
            proxy.reset()
        assert set(server.stats()) == {
            "tcp_accepts",
            "handshakes",
            "refused",
            "active",
            "messages_in",
            "messages_out",
            "pings",
        }
    with pytest.raises(RuntimeError, match="SignalServer is not running"):
        server.drop()


async def test_drop_ends_a_connection_blocked_sending_to_a_client_that_does_not_read():
    """drop() ends a connection whose flood fills the socket of a client that stopped reading. Before, the
    connection only took commands between its sends: drop() returned 1 and the connection stayed open."""
    srv = await SignalServer().start()
    s = await asyncio.to_thread(raw_handshake, srv.port)
    try:
        assert await srv.wait_for(1, timeout=5)
        assert srv.flood(200, 1 << 20) == 1
        await asyncio.sleep(0.5)  # the socket buffers are full: the flood waits for room
        assert srv.drop() == 1
        assert await srv.wait_for(0, timeout=3), f"drop() did not drop the connection: {srv.stats()}"
    finally:
        await srv.aclose()
        s.close()


async def test_aclose_ends_a_connection_blocked_sending_to_a_client_that_does_not_read():
    """After aclose() a client the server was flooding gets what its socket buffers held, then EOF.
    Before, the connection outlived aclose() and the rest of the 200 MiB flood kept coming."""
    srv = await SignalServer().start()
    s = await asyncio.to_thread(raw_handshake, srv.port)
    assert await srv.wait_for(1, timeout=5)
    srv.flood(200, 1 << 20)
    await asyncio.sleep(0.5)
    await srv.aclose()

    def bytes_until_the_end() -> int:  # blocking on purpose: the server runs on its own threads
        s.settimeout(5)
        after = 0
        while after < 32 << 20:
            try:
                b = s.recv(1 << 20)
            except (TimeoutError, ConnectionResetError):
                break
            if not b:
                break
            after += len(b)
        return after

    try:
        after = await asyncio.to_thread(bytes_until_the_end)
    finally:
        s.close()
    assert after < 32 << 20, f"after aclose() the server kept the connection open: {after >> 20} MiB arrived"


@pytest.mark.parametrize(
    "server",
    [lambda port: SignalServer(port=port), lambda port: ChaosProxy("127.0.0.1:9", listen=("127.0.0.1", port))],
    ids=["SignalServer", "ChaosProxy"],
)
async def test_the_port_is_free_once_aclose_returned(server):
    """A server started on the port of one whose aclose() returned binds it. Before, aclose() only asked
    the runtime to drop the listener: most restarts on the same port failed with EADDRINUSE."""
    port = 0
    for _ in range(100):
        running = await server(port).start()
        port = running.port
        await running.aclose()


async def test_aclose_ends_a_connection_still_in_its_handshake():
    """A connection held in its handshake (slow_handshake) when aclose() runs is cut, not served. Before,
    aclose() ended only the connections past their handshake: this one completed it afterwards and the
    closed server echoed its messages."""
    srv = await SignalServer().start()
    srv.slow_handshake(1.0)
    client = asyncio.create_task(websockets.connect(srv.url, open_timeout=10).__aenter__())
    assert await srv.wait_for(1, timeout=5, key="tcp_accepts")
    await srv.aclose()
    try:
        ws = await asyncio.wait_for(client, 10)
    except (OSError, websockets.exceptions.WebSocketException):
        return
    try:
        await ws.send("still there?")
        got = await asyncio.wait_for(ws.recv(), 3)
        raise AssertionError(f"the server closed by aclose() still serves a connection: echoed {got!r}")
    except websockets.exceptions.ConnectionClosed:
        pass
    finally:
        await ws.close()


@pytest.mark.parametrize("code", [1004, 1005, 1006, 1015, 2000])
async def test_close_refuses_a_code_no_close_frame_carries(code):
    """close() refuses the codes RFC 6455 reserves with a ValueError naming the rule. Before, it sent
    them, and the client answered the protocol violation with 1002 instead of seeing the close asked for."""
    async with SignalServer() as srv:
        with pytest.raises(ValueError, match=rf"close code {code} is reserved: no close frame carries it.*RFC 6455"):
            srv.close(code)


async def test_close_refuses_a_reason_longer_than_a_close_frame_holds():
    """close() refuses a reason over 123 bytes in UTF-8 (counting bytes, not characters) and sends one that
    fits. Before, it sent the long one, which the client met as a protocol violation (1002), not as 4000."""
    async with SignalServer() as srv:
        with pytest.raises(ValueError, match=r"124 bytes in UTF-8, over the 123"):
            srv.close(4000, "é" * 62)
        conn = tether.connect(srv.url, policy=tether.Backoff(0.05, max_attempts=1), open_timeout=2, close_timeout=0.5)
        stream = conn.events()
        async with conn:
            assert await srv.wait_for(1, timeout=5)
            assert srv.close(4000, "x" * 123) == 1

            async def first_loss():
                async for e in stream:
                    if isinstance(e, ev.ConnectionLost):
                        return e

            lost = await asyncio.wait_for(first_loss(), 10)
        assert "4000" in lost.reason, lost.reason


async def test_a_push_then_a_close_deliver_the_push_first():
    """Commands keep their order: a test scripting "the server says goodbye, then closes" gets both.
    Before, a close queued while the push was being sent won a random pick half the time, and the
    push was lost."""
    async with SignalServer() as srv:
        for i in range(20):
            async with websockets.connect(srv.url) as ws:
                assert await srv.wait_for(1, timeout=5)
                assert srv.push(f"bye {i}") == 1 and srv.close(4000, "done") == 1
                got = []
                with contextlib.suppress(websockets.ConnectionClosed):
                    async for m in ws:
                        got.append(m)
                assert (got, ws.close_code) == ([f"bye {i}"], 4000)
            assert await srv.wait_for(0, timeout=5)
