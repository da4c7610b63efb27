"""Nothing is lost silently at the end either: when a connection ends for good (it gives up, the server
closes with a final code, or the application closes it) the error it raises names every message it never
delivered: `.messages` (never confirmed, in send order) and `.failures` (failed, reported by no flush), the
same lists from every call that raises it. Against servers tether did not write: the crashing `websockets`
Sans-I/O server of tests/support/flapping_server.py, a raw asyncio server, and a `websockets` server."""

import asyncio
import gc
import logging

import pytest
from websockets.asyncio.server import serve
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

import tether
from support import RawServer, close_frame, eventually
from support.flapping_server import FlappingServer


def fast(**kw):
    """Retries a few ms apart, at most `max_attempts` of them per outage."""
    return dict(policy=tether.Backoff(0.005, 2.0, max_delay=0.05, jitter="none", **kw), quiet_jitter=0)


def seq(m: str) -> int:
    return int(m[1:])


async def raises(cls, call):
    with pytest.raises(cls) as ei:
        await asyncio.wait_for(call(), 30)
    return ei.value


@pytest.mark.parametrize("seed", [1, 5])
async def test_giving_up_names_every_message_the_server_never_confirmed(seed):
    # 4 connections of 10-250 frames each take 1,000 frames at most, then every connect is refused: the
    # client gives up with a backlog (stable_after=0: only the refusals count against max_attempts)
    n = 1500
    async with FlappingServer(seed=seed, connections=4) as srv:
        conn = tether.connect(srv.url, stable_after=0, **fast(max_attempts=2))
        async with conn:
            accepted: list[str] = []
            confirmed: set[str] = set()
            raised: list[tether.GaveUp] = []
            for i in range(n):
                m = f"m{i}"
                try:
                    sent = conn.send(m)
                except tether.GaveUp as e:
                    raised.append(e)
                    break
                accepted.append(m)
                try:
                    await asyncio.wait_for(sent, 30)
                    if i == 49:
                        await asyncio.wait_for(conn.flush(), 30)
                        confirmed.update(accepted)
                except tether.GaveUp as e:
                    raised.append(e)
                    break
            raised.append(await raises(tether.GaveUp, conn.flush))
            raised.append(await raises(tether.GaveUp, conn.recv))
            with pytest.raises(tether.GaveUp) as ei:
                async for _ in conn:
                    pass
            raised.append(ei.value)
    assert srv.record.connections == 4
    e = raised[0]
    assert "refused" in str(e.last_error), e.last_error
    # every call that raised the end carries the same lists
    for other in raised[1:]:
        assert (other.messages, other.failures) == (e.messages, e.failures)
    listed, failed = e.messages, [f.message for f in e.failures]
    received = set(srv.record.received)
    assert confirmed, "the flush before the give-up confirmed the first 50"
    assert listed, "a backlog was unconfirmed when the connection gave up"
    # none twice, none both listed and failed, none confirmed and listed; in send order
    assert len(set(listed)) == len(listed) and not set(listed) & set(failed)
    assert not set(listed) & confirmed
    assert listed == sorted(listed, key=seq)
    assert set(listed) | set(failed) <= set(accepted)
    # none missing: every message sent reached the server or is named
    missing = [m for m in accepted if m not in received and m not in listed and m not in failed]
    assert missing == [], f"{len(missing)} sent messages never reached the server and were named nowhere"
    assert set(listed) - received, "some named messages never reached the server (they used to be a count)"
    assert f"{len(listed)} sent message(s) never confirmed" in str(e), str(e)
    assert listed[0] not in str(e), "the text names numbers, never payloads"


async def test_a_message_failed_after_its_send_resolved_is_named_by_the_give_up():
    big = "B" * 5000
    async with FlappingServer(max_size=1000, crash_after=None, connections=1) as srv:
        conn = tether.connect(srv.url, **fast(max_attempts=1))
        async with conn:
            for m in ["ok", big, "after"]:
                await conn.send(m)  # each resolves at once: nobody waits on them any more
            e = await raises(tether.GaveUp, conn.flush)
            assert (await raises(tether.GaveUp, conn.recv)).failures == e.failures
    assert srv.record.too_big == 1
    [f] = e.failures
    assert (f.seq, f.message, f.code) == (2, big, 1009), f
    # "ok" was read before the 1009; "after" may have been read too, but was never confirmed
    assert big not in e.messages and "after" in e.messages and "ok" in srv.record.received
    assert "1 failed" in str(e) and "#2" in str(e) and big not in str(e), str(e)


class ReadsWithoutConfirming(RawServer):
    """A raw asyncio server: accepts one WebSocket, reads `n` text messages without ever answering a ping
    (so the client can confirm nothing), then closes with `code`."""

    def __init__(self, n: int, code: int = 1000):
        self.n, self.code = n, code
        self.received: list[str] = []

    async def handle(self, reader, writer):
        proto = ServerProtocol()
        try:
            while proto.state is not State.OPEN:
                data = await reader.read(65536)
                if not data:
                    return
                proto.receive_data(data)
                for ev in proto.events_received():
                    if isinstance(ev, Request):
                        proto.send_response(proto.accept(ev))
                for out in proto.data_to_send():
                    writer.write(out)
            while len(self.received) < self.n:
                data = await reader.read(65536)
                if not data:
                    return
                proto.receive_data(data)
                self.received += [f.data.decode() for f in proto.events_received() if f.opcode is Opcode.TEXT]
                proto.data_to_send()  # the pongs: never written
            writer.write(close_frame(self.code, b"bye"))
            writer.write_eof()
            await asyncio.wait_for(reader.read(), 5)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.transport.abort()


async def test_a_final_close_names_every_message_the_server_never_confirmed():
    async with ReadsWithoutConfirming(3) as srv:
        conn = await tether.connect(srv.url, final_close_codes=(1000,), **fast())
        for m in ["a", "b", "c"]:
            await conn.send(m)
        async for _ in conn:  # ends cleanly at the final close
            pass
        e = await raises(tether.ConnectionClosed, conn.flush)
        again = await raises(tether.ConnectionClosed, conn.recv)
        with pytest.raises(tether.ConnectionClosed) as late:
            conn.send("d")
        await conn.aclose()
    assert srv.received == ["a", "b", "c"]
    assert (e.code, e.messages, e.failures) == (1000, ["a", "b", "c"], [])
    assert again.messages == late.value.messages == e.messages
    assert "3 sent message(s) never confirmed by the server (#1..#3" in str(e), str(e)


async def test_sends_left_waiting_on_a_connection_let_go_without_close_end_naming_what_it_never_delivered():
    """`asyncio.create_task(conn.send(m))` waits while the send buffer is half full; the application then
    lets go of the connection without `aclose`. The tasks hold the sends, not the connection: each ends
    with ConnectionClosed (1006, no close frame) naming the messages the server never confirmed, where
    before they waited forever."""
    async with ReadsWithoutConfirming(100) as srv:
        conn = await tether.connect(srv.url, send_buffer=8, **fast())
        for i in range(4):
            await conn.send(f"m{i}")  # resolved: below half the buffer
        tasks = [asyncio.create_task(conn.send(f"m{i}")) for i in range(4, 8)]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in tasks)
        del conn
        gc.collect()
        _, pending = await asyncio.wait(tasks, timeout=10)
    assert not pending, "sends waiting on a connection let go were never told"
    for t in tasks:
        e = t.exception()
        assert isinstance(e, tether.ConnectionClosed), repr(e)
        assert e.code == 1006 and e.messages == [f"m{i}" for i in range(8)], (e.code, e.messages)
        assert "let go without close()" in str(e) and "8 sent message(s) never confirmed" in str(e), str(e)


async def test_aclose_never_raises_and_names_what_it_could_not_deliver_afterwards(caplog):
    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    server = await serve(echo, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    # a close on a live connection writes everything, confirms it, then closes: nothing left
    conn = await tether.connect(url, **fast())
    await conn.send("delivered")
    await asyncio.wait_for(conn.aclose(), 10)
    e = await raises(tether.ConnectionClosed, conn.flush)
    assert (e.code, e.messages, e.failures) == (1000, [], [])
    # a close during an outage: what was sent meanwhile was never delivered, and is named
    conn = await tether.connect(url, **fast())
    server.close()
    await server.wait_closed()
    await eventually(lambda: conn.state == "reconnecting", what="reconnecting")
    await conn.send("x")
    await conn.send(b"y")
    with caplog.at_level(logging.WARNING, logger="tether"):
        assert await asyncio.wait_for(conn.aclose(), 10) is None
    e = await raises(tether.ConnectionClosed, conn.flush)
    assert (e.code, e.messages, e.failures) == (1000, ["x", b"y"], [])
    assert "2 sent message(s) never confirmed" in str(e), str(e)
    with pytest.raises(tether.ConnectionClosed) as late:
        conn.send("z")
    assert late.value.messages == ["x", b"y"]
    assert [r for r in caplog.records if "2 sent message(s) were never confirmed" in r.getMessage()]


@pytest.mark.parametrize("reported_by", ["the next flush", "the end"])
async def test_a_cancelled_flush_leaves_what_it_would_have_reported_to_the_next_flush_or_the_end(reported_by):
    # A `websockets` server (max_size=1000) behind 300 ms of latency closes with 1009 for the big message after
    # the application gave up waiting on the flush covering it (wait_for with a short timeout cancels it);
    # hundreds of flushes cancelled at once go the same way. Nobody waits on that flush: the next one, or the
    # end of the connection, must name the message.
    from tether.testing import ChaosProxy

    big = "B" * 5000

    async def sink(ws):
        async for _ in ws:
            pass

    async with serve(sink, "127.0.0.1", 0, max_size=1000) as server:
        proxy = await ChaosProxy(("127.0.0.1", server.sockets[0].getsockname()[1])).start()
        try:
            proxy.latency(300)
            conn = tether.connect(proxy.url(), **fast())
            async with conn:
                await conn.send(big)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(conn.flush(), 0.05)
                for _ in range(300):
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(conn.flush(), 0)
                # the 1009 arrives; tether reconnects
                await eventually(lambda: conn.stats()["connects"] >= 2, 30, what="the reconnect after the 1009")
                await conn.send("after")
                if reported_by == "the next flush":
                    e = await raises(tether.SendFailed, conn.flush)
                    assert [f.code for f in e.failures] == [1009]
                    await asyncio.wait_for(conn.flush(), 30)  # reported once
            if reported_by == "the end":
                e = await raises(tether.ConnectionClosed, conn.flush)
                assert [f.code for f in e.failures] == [1009], e.failures
        finally:
            await proxy.aclose()
    assert [f.message for f in e.failures] == [big]


async def down_connection(**kw) -> tether.Connection:
    """A connection that was connected once and whose server is gone now (it retries)."""

    async def handler(ws):
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        conn = await tether.connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", quiet_jitter=0, **kw)
    await eventually(lambda: conn.state == "reconnecting", timeout=30)
    return conn


@pytest.mark.parametrize("end", ["aclose", "give_up"])
async def test_ending_with_thousands_of_sends_waiting_makes_what_it_never_delivered_once(end):
    """The server went away and the application kept sending with ``create_task(conn.send(x))``: every
    send past half of ``send_buffer`` waits for room. Every exception of the end carries the same lists.
    Before, each waiting send's exception got lists of its own, N x N objects made on the loop thread:
    ``aclose()`` with 12,000 sends waiting took 18 s (``close_timeout`` 1 s), a give-up blocked the
    loop for 8 s."""
    n = 12_000
    policy = tether.Backoff(0.2, 2, max_delay=0.2, jitter="none", max_attempts=3 if end == "give_up" else None)
    conn = await down_connection(send_buffer=n + 1, close_timeout=1.0, policy=policy)
    sends = [asyncio.create_task(conn.send(f"m{i}")) for i in range(n)]
    await asyncio.sleep(0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    if end == "aclose":
        await conn.aclose()
        # close_timeout and the abort's 0.2 s, with room for a loaded box (before: 18 s)
        assert loop.time() - started < 4.0
    results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 60)
    errors = [r for r in results if isinstance(r, BaseException)]
    expected = tether.ConnectionClosed if end == "aclose" else tether.GaveUp
    assert len(errors) >= n // 2 and all(isinstance(e, expected) for e in errors), {type(e) for e in errors}
    assert [seq(m) for m in errors[0].messages] == list(range(n))
    assert all(e.messages is errors[0].messages and e.failures is errors[0].failures for e in errors)
