"""permessage-deflate against servers tether did not write: the `websockets` server with compression on
(its default) and off, bytes counted on the wire by a TCP proxy in between, a deflate bomb from it, a
reconnect in the middle of a compressed stream, and raw asyncio servers that answer the offer wrongly or
set RSV1 without agreeing to it."""

import asyncio
import hashlib
import json
import zlib

import pytest
import websockets

import tether
from support import FAST, MS, accept_key, eventually, policy
from tether import events as ev

# inflating and compressing megabytes on a busy 2-core box must not pass for a dead link
FAST = dict(FAST, ping_interval=500 * MS, ping_timeout=2000 * MS, open_timeout=3000 * MS)


async def first_loss(url, **kw):
    """The first ConnectionLost of a connection to `url` (subscribed before it starts)."""
    conn = tether.connect(url, policy=policy(max_attempts=1), **FAST, **kw)
    stream = conn.events()

    async def wait():
        async with conn:
            async for e in stream:
                if isinstance(e, ev.ConnectionLost):
                    return e
        raise AssertionError("the connection ended without a loss")

    return await asyncio.wait_for(wait(), 20)


def port_of(srv):
    return srv.sockets[0].getsockname()[1]


def signaling(i: int) -> str:
    """A JSON signaling message of about 2 KiB (an SDP offer), different each time."""
    lines = ["v=0", f"o=- {4611731400430051336 + i} 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1"]
    for mid, kind in enumerate(("audio", "video")):
        lines += [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8",
            f"a=ice-ufrag:{hashlib.sha1(f'u{i}{mid}'.encode()).hexdigest()[:8]}",
            f"a=ice-pwd:{hashlib.sha1(f'p{i}{mid}'.encode()).hexdigest()[:24]}",
            "a=fingerprint:sha-256 " + ":".join(f"{b:02X}" for b in hashlib.sha256(f"f{i}{mid}".encode()).digest()),
            f"a=mid:{mid}",
        ]
        lines += [
            f"a=rtpmap:{pt} {codec}" for pt, codec in ((111, "opus/48000/2"), (63, "red/48000/2"), (9, "G722/8000"))
        ]
        lines += [f"a=extmap:{e} urn:ietf:params:rtp-hdrext:ext-{e}" for e in range(1, 12)]
        lines += [f"a=rtcp-fb:111 {fb}" for fb in ("transport-cc", "nack", "nack pli", "goog-remb")]
    return json.dumps({"type": "offer", "id": i, "sdp": "\r\n".join(lines)})


class Proxy:
    """A TCP proxy in front of `upstream` that counts the bytes each way."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self.tasks: set[asyncio.Task] = set()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{port_of(self.server)}/"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def handle(self, reader, writer):
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)

        async def pump(r, w, up):
            try:
                while data := await r.read(65536):
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        for t in (pump(reader, uw, True), pump(ur, writer, False)):
            task = asyncio.ensure_future(t)
            self.tasks.add(task)


def echo_recording(seen):
    async def handler(ws):
        seen.append((ws.request.headers.get("Sec-WebSocket-Extensions"), [repr(e) for e in ws.protocol.extensions]))
        async for m in ws:
            await ws.send(m)

    return handler


async def round_trips(server_compression, **client):
    """Echo 30 signaling messages and a large binary one through a websockets server; what the server
    was offered and agreed to, and the bytes each way on the wire."""
    seen = []
    msgs = [signaling(i) for i in range(30)]
    big = bytes(range(256)) * 800  # 200 KiB, compressible
    async with websockets.serve(
        echo_recording(seen), "127.0.0.1", 0, compression=server_compression, max_size=None
    ) as srv:
        async with Proxy(port_of(srv)) as proxy:
            async with tether.connect(proxy.url, **FAST, **client) as conn:
                for m in msgs:
                    await conn.send(m)
                    assert await asyncio.wait_for(conn.recv(), 10) == m
                await conn.send(big)
                assert await asyncio.wait_for(conn.recv(), 10) == big
                await conn.send("")
                assert await asyncio.wait_for(conn.recv(), 10) == ""
            return seen, proxy.up, proxy.down, sum(len(m) for m in msgs) + len(big)


async def test_the_websockets_server_agrees_to_deflate_by_default_and_fewer_bytes_cross_the_wire():
    seen, up, down, payload = await round_trips("deflate")
    offered, agreed = seen[0]
    assert offered == "permessage-deflate; client_max_window_bits", offered
    assert len(agreed) == 1 and "PerMessageDeflate" in agreed[0], agreed
    # both ways compressed: JSON signaling several times smaller, the repeated binary far smaller
    assert up < payload / 4 and down < payload / 4, (up, down, payload)


async def test_compression_none_offers_nothing_and_sends_every_byte():
    seen, up, down, payload = await round_trips("deflate", compression=None)
    assert seen == [(None, [])], seen
    assert up > payload and down > payload, (up, down, payload)


async def test_a_server_without_compression_declines_the_offer_and_messages_go_uncompressed():
    seen, up, down, payload = await round_trips(None)
    offered, agreed = seen[0]
    assert offered == "permessage-deflate; client_max_window_bits" and agreed == [], seen
    assert up > payload and down > payload, (up, down, payload)


def test_compression_takes_deflate_or_none():
    assert tether.connect("ws://127.0.0.1:1/").__class__ is tether.Connection
    with pytest.raises(ValueError, match='unsupported compression "gzip"'):
        tether.connect("ws://127.0.0.1:1/", compression="gzip")
    with pytest.raises(TypeError, match="compression"):
        tether.connect("ws://127.0.0.1:1/", compression=True)  # type: ignore[arg-type]


async def test_a_deflate_bomb_from_the_server_is_a_1009_loss():
    closes = []

    async def bomb(ws):
        # 64 MiB of zeros: about 64 KiB on the wire
        await ws.send(bytes(64 << 20))
        await ws.wait_closed()
        closes.append(ws.close_code)

    async with websockets.serve(bomb, "127.0.0.1", 0, max_size=None) as srv:
        lost = await first_loss(f"ws://127.0.0.1:{port_of(srv)}/", max_message_size=1 << 20)
        await eventually(lambda: closes, what="the server's side of the close")
    assert "inflates past max_message_size (1048576 bytes)" in lost.reason and "1009" in lost.reason, lost.reason
    assert closes and closes[0] == 1009, closes


async def test_a_reconnect_starts_fresh_contexts_and_re_sent_messages_arrive_intact():
    received: list[tuple[int, str]] = []
    connections = 0

    async def handler(ws):
        nonlocal connections
        connections += 1
        me = connections
        async for m in ws:
            received.append((me, m))
            if me == 1 and len(received) == 5:
                # a crash in the middle of a compressed stream: the sends after it go to the next
                # connection, against a fresh context on both sides
                ws.transport.abort()
                return

    msgs = [signaling(i) for i in range(20)]
    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        async with tether.connect(f"ws://127.0.0.1:{port_of(srv)}/", policy=policy(), **FAST) as conn:
            for m in msgs:
                await conn.send(m)
            await asyncio.wait_for(conn.flush(), 20)
    assert connections >= 2, connections
    # every message arrived whole (a stale context would fail to inflate: a 1002, not these strings)
    assert {m for _, m in received} == set(msgs)
    assert any(me > 1 for me, _ in received)


def accept_head(request: bytes, extra: str) -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request)}\r\n{extra}\r\n"
    ).encode()


async def raw_server(extra: str, then: bytes = b""):
    """A raw server answering the upgrade with `extra` header lines, then writing `then`."""
    requests = []

    async def handle(reader, writer):
        request = await reader.readuntil(b"\r\n\r\n")
        requests.append(request)
        writer.write(accept_head(request, extra) + then)
        await writer.drain()
        try:
            await reader.read()
        except ConnectionError:
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), requests


@pytest.mark.parametrize(
    ("extensions", "why"),
    [
        ("permessage-deflate; server_max_window_bits=16", "server_max_window_bits=16 is not 8..15"),
        ("permessage-deflate; client_max_window_bits=10; client_max_window_bits=10", "client_max_window_bits twice"),
        ("permessage-deflate; mystery", "an unknown parameter mystery"),
        ("permessage-deflate, permessage-deflate", "accepted permessage-deflate twice"),
        ("x-webkit-deflate-frame", "an extension that was not offered (x-webkit-deflate-frame)"),
    ],
)
async def test_an_extension_answer_that_breaks_the_offer_fails_the_first_connect_with_why(extensions, why):
    srv, requests = await raw_server(f"Sec-WebSocket-Extensions: {extensions}\r\n")
    async with srv:
        conn = tether.connect(f"ws://127.0.0.1:{port_of(srv)}/", **FAST)
        with pytest.raises(tether.GaveUp) as info:
            await asyncio.wait_for(conn._start(), 15)
    e = info.value
    assert e.attempts == 1 and e.reason == "fatal error", e
    assert "Sec-WebSocket-Extensions" in str(e) and why in str(e) and extensions in str(e), str(e)
    assert b"permessage-deflate; client_max_window_bits" in requests[0]


async def test_an_extension_answer_to_compression_none_fails_the_first_connect():
    srv, requests = await raw_server("Sec-WebSocket-Extensions: permessage-deflate\r\n")
    async with srv:
        conn = tether.connect(f"ws://127.0.0.1:{port_of(srv)}/", compression=None, **FAST)
        with pytest.raises(tether.GaveUp) as info:
            await asyncio.wait_for(conn._start(), 15)
    assert "not offered (permessage-deflate)" in str(info.value), str(info.value)
    assert b"Sec-WebSocket-Extensions" not in requests[0]


async def test_rsv1_without_agreement_is_a_1002_and_a_compressed_message_with_it_is_read():
    c = zlib.compressobj(wbits=-15)
    payload = (c.compress(b"hello, compressed") + c.flush(zlib.Z_SYNC_FLUSH))[:-4]
    frame = bytes([0xC1, len(payload)]) + payload  # FIN, RSV1, text

    # agreed: the frame is a message
    srv, _ = await raw_server("Sec-WebSocket-Extensions: permessage-deflate\r\n", then=frame)
    async with srv:
        async with tether.connect(f"ws://127.0.0.1:{port_of(srv)}/", policy=policy(max_attempts=1), **FAST) as conn:
            assert await asyncio.wait_for(conn.recv(), 10) == "hello, compressed"

    # not agreed (the server declined the offer): the same frame breaks the protocol
    srv, _ = await raw_server("", then=frame)
    async with srv:
        lost = await first_loss(f"ws://127.0.0.1:{port_of(srv)}/")
    assert "permessage-deflate was not negotiated" in lost.reason and "1002" in lost.reason, lost.reason
