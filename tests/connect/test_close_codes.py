"""Failing a connection with the right close code (RFC 6455 §7.1.7, §7.4.1), against a raw asyncio server
tether did not write: its first connection sends one bad thing, then records the close frame tether sends
back (parsed with the `websockets` Sans-I/O protocol); later connections behave. ConnectionLost must say what
the server did, not what tether answered."""

import asyncio

import pytest
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

import tether
from support import FAST, MS, RawServer, close_frame, collect, eventually, first_of, policy
from tether import events as ev

# No ping in the exchange the server records, and room for tether's close frame to be answered
FAST = dict(FAST, ping_interval=5000 * MS, ping_timeout=5000 * MS, close_timeout=1000 * MS, quiet_jitter=0)


class Misbehaving(RawServer):
    """The first connection gets `bad` (raw bytes, or None for a bare TCP FIN) right after the handshake."""

    def __init__(self, bad: bytes | None):
        self.bad = bad
        self.replies: list[int | None] = []  # close code tether sent on the bad connection (None: no close frame)
        self.connections = 0

    async def handle(self, reader, writer):
        self.connections += 1
        first = self.connections == 1
        proto = ServerProtocol(max_size=None)
        try:
            while proto.state is not State.OPEN:
                data = await reader.read(65536)
                if not data:
                    return
                proto.receive_data(data)
                for e in proto.events_received():
                    if isinstance(e, Request):
                        proto.send_response(proto.accept(e))
                for out in proto.data_to_send():
                    writer.write(out)
            if not first:
                # a good connection: pongs and the close handshake until the client leaves
                while data := await reader.read(65536):
                    proto.receive_data(data)
                    for out in proto.data_to_send():
                        if out:
                            writer.write(out)
                        else:
                            writer.write_eof()
                return
            if self.bad is None:
                writer.write_eof()
            else:
                writer.write(self.bad)
            # what tether sends back, until it drops the connection
            while data := await asyncio.wait_for(reader.read(65536), 10):
                proto.receive_data(data)
                proto.data_to_send()
            self.replies.append(proto.close_rcvd.code if proto.close_rcvd else None)
        except (ConnectionError, asyncio.TimeoutError) as e:
            self.replies.append(f"no reply: {e!r}")
        finally:
            writer.transport.abort()


async def first_loss(url, **kw):
    got = []
    conn = tether.connect(url, policy=policy(), **FAST, **kw)
    watcher = asyncio.ensure_future(collect(conn.events(), got))
    async with conn:
        await eventually(lambda: first_of(got, ev.Reconnected), what="Reconnected")
    await asyncio.wait_for(watcher, 5)
    return next(e for e in got if isinstance(e, ev.ConnectionLost)).reason


@pytest.mark.parametrize(
    ("bad", "sent_back", "said"),
    [
        (b"\x83\x00", 1002, "protocol"),  # a reserved data opcode
        (b"\xa1\x01a", 1002, "protocol"),  # RSV2 set, no extension negotiated
        (b"\x81\x81\x01\x02\x03\x04" + bytes([ord("a") ^ 1]), 1002, "protocol"),  # a masked frame from a server
        (b"\x89\x7e\x00\x80" + b"p" * 128, 1002, "protocol"),  # a control frame over 125 bytes
        (b"\x81\x02\xff\xfe", 1007, "UTF-8"),  # invalid UTF-8 in a text frame
        (b"\x82\x7e\x07\xd0" + b"x" * 2000, 1009, "max_message_size"),  # above max_message_size (1000)
    ],
    ids=["opcode", "rsv2", "masked", "long-control", "utf8", "oversize"],
)
async def test_a_protocol_error_is_answered_with_its_close_code(bad, sent_back, said):
    async with Misbehaving(bad) as srv:
        reason = await first_loss(srv.url, max_message_size=1000)
    assert srv.replies == [sent_back], srv.replies
    assert said in reason and str(sent_back) in reason, reason


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 2000, 5000, 65535])
async def test_an_invalid_close_code_is_reported_by_its_number(code):
    async with Misbehaving(close_frame(code, b"bye")) as srv:
        reason = await first_loss(srv.url)
    assert srv.replies == [1002], srv.replies
    assert f"invalid close code {code} " in reason, reason
    assert "server closed the connection: 1002" not in reason, reason


# A server's own 1002 "Protocol violation" is the words tungstenite puts in place of an invalid code, and
# 1014 (bad gateway, registered after RFC 6455) is a code tungstenite does not know: both are what the server
# said, reported as such, and a fatal code applies to them.
@pytest.mark.parametrize(("code", "reason"), [(1002, b"Protocol violation"), (1002, b""), (1014, b"bad gateway")])
async def test_a_valid_close_code_tungstenite_would_mistake_is_reported_as_sent(code, reason):
    async with Misbehaving(close_frame(code, reason)) as srv:
        said = await first_loss(srv.url)
    assert said == f"server closed the connection: {code} {reason.decode()}".rstrip(), said
    async with Misbehaving(close_frame(code, reason)) as srv:
        conn = tether.connect(srv.url, fatal_close_codes=(code,), **FAST)
        with pytest.raises(tether.GaveUp) as ei:
            async with conn:
                await asyncio.wait_for(conn.recv(), 10)
    assert ei.value.last_error.code == code, ei.value.last_error


async def test_a_websockets_servers_1002_is_reported_as_its_1002():
    from websockets.asyncio.server import serve

    closes = iter([(1002, "Protocol violation"), (1002, "bad frame")])

    async def handler(ws):
        code, why = next(closes, (None, None))
        if code is None:
            await asyncio.sleep(10_000 * MS)  # the third connection stays up
        else:
            await ws.close(code, why)

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
        got: list[str] = []
        conn = tether.connect(url, policy=policy(), **FAST)
        events = conn.events()

        async def two_losses() -> None:
            async for e in events:
                if isinstance(e, ev.ConnectionLost):
                    got.append(e.reason)
                    if len(got) == 2:
                        return

        async with conn:
            await asyncio.wait_for(two_losses(), 10)  # (asyncio.timeout is 3.11+)
    assert got == [
        "server closed the connection: 1002 Protocol violation",
        "server closed the connection: 1002 bad frame",
    ]


async def test_a_valid_close_code_and_reason_are_reported_and_echoed():
    async with Misbehaving(close_frame(4001, b"go away")) as srv:
        reason = await first_loss(srv.url)
    assert srv.replies == [4001], srv.replies
    assert "4001 go away" in reason, reason


async def test_a_bare_fin_is_closed_without_a_close_frame():
    async with Misbehaving(None) as srv:
        reason = await first_loss(srv.url)
    assert srv.replies == [None], srv.replies
    assert "closed without a close frame" in reason and "reset" not in reason.lower(), reason


# The same misbehaviour met by the reads that come before the connection counts as connected: the
# `on_connect` hook's and those waiting for the first message. Every read path answers with the close code
# and reports what the server did in the same words.
BAD = [
    (b"\x83\x00", 1002, "protocol"),
    (b"\x81\x02\xff\xfe", 1007, "UTF-8"),
    (b"\x82\x7e\x07\xd0" + b"x" * 2000, 1009, "max_message_size"),
    (None, None, "closed without a close frame (TCP FIN)"),
]
BAD_IDS = ["protocol", "utf8", "oversize", "fin"]


async def join(hs: tether.Handshake) -> None:
    await hs.send("join")
    await hs.recv()


async def first_attempt_error(url: str, **kw) -> str:
    """What the first (and only) attempt of a first connect failed with."""
    with pytest.raises(tether.GaveUp) as ei:
        await asyncio.wait_for(
            tether.connect(url, policy=tether.Backoff(max_attempts=0), max_message_size=1000, **FAST, **kw), 10
        )
    return ei.value.last_error.reason


async def replies(srv: Misbehaving) -> list:
    return await eventually(lambda: srv.replies, what="the server seeing the connection end")


@pytest.mark.parametrize(("bad", "sent_back", "said"), BAD, ids=BAD_IDS)
async def test_the_on_connect_hooks_reads_answer_with_the_close_code(bad, sent_back, said):
    async with Misbehaving(bad) as srv:
        reason = await first_attempt_error(srv.url, on_connect=join)
        assert await replies(srv) == [sent_back]
    assert said in reason, reason
    assert sent_back is None or str(sent_back) in reason, reason


@pytest.mark.parametrize(("bad", "sent_back", "said"), BAD, ids=BAD_IDS)
async def test_the_wait_for_the_first_message_answers_with_the_close_code(bad, sent_back, said):
    async with Misbehaving(bad) as srv:
        reason = await first_attempt_error(srv.url, first_message_timeout=5)
        assert await replies(srv) == [sent_back]
    assert said in reason, reason
    assert sent_back is None or str(sent_back) in reason, reason
