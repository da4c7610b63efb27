"""tether.Reconnector against real sockets: a flapping (accept-then-drop) server, refusals, fatal errors."""

import asyncio
import itertools
import logging
import time

import pytest

import tether
from conftest import records
from tether import events as ev


class FlappingServer:
    """Accepts TCP connections and closes each one after `hold` seconds; counts accepts."""

    def __init__(self, hold=0.0):
        self.hold = hold
        self.accepts = 0
        self.server = None

    async def __aenter__(self):
        async def handle(reader, writer):
            self.accepts += 1
            writer.write(b"hello\n")
            await writer.drain()
            await asyncio.sleep(self.hold)
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


def session(r, port, seen=None):
    """One connection lifetime: connect, mark connected, read until the server drops us."""

    async def connect():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            line = await reader.readline()
            assert line == b"hello\n"
            r.connected()
            if seen is not None:
                seen.append(time.monotonic())
            data = await reader.read()
            raise ConnectionError(f"server closed the connection ({len(data)} trailing bytes)")
        finally:
            writer.close()

    return connect


async def test_accept_then_drop_escalates_and_gives_up(tether_logs):
    policy = tether.Backoff(0.05, 2, max_delay=0.4, jitter="none", max_attempts=4)
    r = tether.Reconnector(policy, stable_after=10, name="flapper")
    async with FlappingServer() as srv:
        seen = []
        t0 = time.monotonic()
        with pytest.raises(tether.GaveUp) as info:
            await r.run(session(r, srv.port, seen))
        elapsed = time.monotonic() - t0
    g = info.value
    assert g.attempts == 5 and srv.accepts == 5
    assert isinstance(g.last_error, ConnectionError)
    assert isinstance(g.__cause__, ConnectionError)
    assert "flapper" in str(g) and "attempt budget exhausted" in str(g)
    # not a hot loop: 0 + 0.05 + 0.1 + 0.2 s of backoff at least
    assert elapsed >= 0.35
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert gaps[1] >= 0.05 and gaps[2] >= 0.1 and gaps[3] >= 0.2

    recs = [x for x in records(tether_logs, "tether.reconnect")]
    retry = [
        x for x in recs if hasattr(x, "retry_count") and x.levelno < logging.ERROR and "retrying" in x.getMessage()
    ]
    assert [x.levelno for x in retry] == [logging.DEBUG, logging.WARNING, logging.WARNING, logging.WARNING]
    assert [x.retry_count for x in retry] == [1, 2, 3, 4]
    assert all(x.max_retry == 4 for x in retry)
    assert "retrying immediately" in retry[0].getMessage()
    final = [x for x in recs if x.levelno == logging.ERROR]
    assert len(final) == 1 and "gave up on flapper after 5 attempts" in final[0].getMessage()
    assert "ConnectionError" in final[0].error


async def test_single_blip_never_warns(tether_logs):
    """Seed 000: a drop after a stable connection that heals on the immediate retry logs below WARNING."""
    r = tether.Reconnector(tether.Backoff(0.05, jitter="none"), stable_after=0.2, name="control-plane")
    async with FlappingServer(hold=0.3) as srv:
        calls = 0

        async def connect():
            nonlocal calls
            calls += 1
            if calls == 3:
                return "done"
            return await session(r, srv.port)()

        assert await r.run(connect) == "done"
    assert calls == 3
    levels = {x.levelno for x in records(tether_logs)}
    assert levels and max(levels) < logging.WARNING, [(x.levelname, x.getMessage()) for x in records(tether_logs)]


async def test_refused_connection_retries_then_succeeds():
    # grab a free port, close it: connections are refused until we start listening there
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    r = tether.Reconnector(tether.Backoff(0.05, 1.5, max_delay=0.1, jitter="none", max_attempts=50))
    attempts = 0
    server = None

    async def connect():
        nonlocal attempts, server
        attempts += 1
        if attempts == 3:
            server = await asyncio.start_server(lambda rd, wr: wr.write(b"x"), "127.0.0.1", port)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        r.connected()
        writer.close()
        return attempts

    try:
        assert await r.run(connect) == 3
    finally:
        if server:
            server.close()


async def test_fatal_is_not_retried():
    class AuthError(Exception):
        pass

    calls = 0

    async def connect():
        nonlocal calls
        calls += 1
        raise AuthError("401: token expired for wss://x/rtc?access_token=SECRET123")

    r = tether.Reconnector(tether.Backoff(0.01), fatal=(AuthError,), name="signal")
    with pytest.raises(tether.GaveUp) as info:
        await r.run(connect)
    assert calls == 1
    assert info.value.reason == "fatal error"
    assert isinstance(info.value.last_error, AuthError)
    assert "SECRET123" not in str(info.value) and "access_token=REDACTED" in str(info.value)


async def test_deadline_gives_up_in_time():
    async def connect():
        raise OSError("refused")

    r = tether.Reconnector(tether.Backoff(0.05, 2, max_delay=0.2, jitter="none", deadline=0.5))
    t0 = time.monotonic()
    with pytest.raises(tether.GaveUp) as info:
        await r.run(connect)
    assert time.monotonic() - t0 < 2.0
    assert info.value.reason == "deadline exceeded"


async def test_events_in_order():
    r = tether.Reconnector(tether.Backoff(0.01, jitter="none", max_attempts=1), stable_after=10)
    got = []

    async def consume():
        async for e in r.events():
            got.append(e)

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    n = 0

    async def connect():
        nonlocal n
        n += 1
        r.connected()
        raise ConnectionResetError("reset by peer")

    with pytest.raises(tether.GaveUp):
        await r.run(connect)
    await asyncio.wait_for(consumer, 5)
    kinds = [type(e).__name__ for e in got]
    assert kinds == [
        "Connecting",
        "Connected",
        "ConnectionLost",
        "Reconnecting",
        "Connecting",
        "Connected",
        "Reconnected",
        "ConnectionLost",
        "GaveUp",
    ], kinds
    assert got[2] == ev.ConnectionLost("ConnectionResetError: reset by peer")
    assert got[3].delay == 0.0 and got[3].attempt == 2
    # after the run, events() ends at once instead of hanging
    assert [e async for e in r.events()] == []


async def test_cancellation_cancels_the_inner_coroutine():
    inner_cancelled = asyncio.Event()
    started = asyncio.Event()

    async def connect():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise

    r = tether.Reconnector(tether.Backoff(0.01))
    task = asyncio.ensure_future(r.run(connect))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(inner_cancelled.wait(), 5)
    assert not r.running


async def test_cancel_during_backoff_sleep():
    async def connect():
        raise OSError("down")

    r = tether.Reconnector(tether.Backoff(30, jitter="none"), quiet_attempts=0)
    task = asyncio.ensure_future(r.run(connect))
    await asyncio.sleep(0.2)
    task.cancel()
    t0 = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 1.0


async def test_bad_inputs():
    with pytest.raises(TypeError):
        tether.Reconnector("not a policy")
    with pytest.raises(TypeError):
        tether.Reconnector(fatal=(42,))
    with pytest.raises(ValueError):
        tether.Reconnector(stable_after=-1)
    with pytest.raises(TypeError):
        tether.Reconnector(quiet_attempts=1.5)
    r = tether.Reconnector()
    with pytest.raises(TypeError):
        await r.run(42)

    def not_async():
        return 5

    with pytest.raises(TypeError, match="awaitable"):
        await r.run(not_async)


async def test_run_twice_concurrently_is_an_error():
    r = tether.Reconnector()
    block = asyncio.Event()

    async def connect():
        await block.wait()
        return 1

    t = asyncio.ensure_future(r.run(connect))
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError, match="already running"):
        await r.run(connect)
    block.set()
    assert await t == 1
    # and it can run again afterwards
    block.set()
    assert await r.run(connect) == 1


async def test_keyboard_interrupt_like_errors_propagate_unwrapped():
    async def connect():
        raise asyncio.CancelledError()

    with pytest.raises(asyncio.CancelledError):
        await tether.Reconnector().run(connect)
