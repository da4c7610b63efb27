"""tether.Reconnector against real sockets: a flapping (accept-then-drop) server, a black-holed handshake,
refusals, fatal errors, cancellation; the step-wise form (failed/backoff/connected/closed)."""

import asyncio
import itertools
import logging
import time

import pytest
import websockets

import tether
from support import DEADLINE, MS, collect, eventually, records
from tether import events as ev


class FlappingServer:
    """Accepts TCP connections and closes each one after `hold` seconds (or when it closes); counts accepts."""

    def __init__(self, hold=0.0):
        self.hold = hold
        self.accepts = 0
        self.server = None
        self.open = set()

    async def __aenter__(self):
        async def handle(reader, writer):
            self.accepts += 1
            self.open.add(writer)
            try:
                writer.write(b"hello\n")
                await writer.drain()
                await asyncio.sleep(self.hold)
            finally:
                self.open.discard(writer)
                writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        # since Python 3.12.1 wait_closed waits for the connections too, held ones included
        for writer in self.open:
            writer.transport.abort()
        await asyncio.wait_for(self.server.wait_closed(), 10)


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
    r = tether.Reconnector(policy, stable_after=10, quiet_jitter=0, name="flapper")
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
    """A drop after a stable connection that heals on the immediate retry logs below WARNING."""
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


class DroppingServer:
    """A raw asyncio server that closes every connection as soon as it is accepted; counts accepts."""

    def __init__(self):
        self.accepts = 0

    async def __aenter__(self):
        def handle(reader, writer):
            self.accepts += 1
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


# A deadline shorter than the default 1 s quiet window. With seed=1 the first quiet draw is above 0.5 s:
# a quiet retry that ended the outage at once gave up on the first failure ("after 1 attempt over 0.0s").
SHORT_DEADLINE = dict(initial=0.05, factor=2, max_delay=0.1, jitter="none", deadline=0.5, seed=1)


def assert_gave_up_at_the_deadline(g, accepts):
    """More than one attempt, and the give-up no earlier than the last backoff delay (0.1 s) before the
    deadline: a retry that would begin at or after it is not made."""
    assert g.reason == "deadline exceeded", g
    assert g.attempts > 1 and accepts == g.attempts, (g, accepts)
    assert 0.5 - 0.1 - 0.01 <= g.elapsed <= 0.5, g.elapsed


async def test_a_short_deadline_spreads_the_quiet_retry_within_it():
    async with DroppingServer() as srv:

        async def connect():
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                if not await reader.readline():
                    raise ConnectionError("closed by the server before the greeting")
            finally:
                writer.close()

        r = tether.Reconnector(tether.Backoff(**SHORT_DEADLINE), name="short")
        assert r.quiet_jitter > 0.5
        t0 = time.monotonic()
        with pytest.raises(tether.GaveUp) as info:
            await asyncio.wait_for(r.run(connect), 20)
        assert time.monotonic() - t0 < 0.5 + 2.0
    assert_gave_up_at_the_deadline(info.value, srv.accepts)


async def test_tether_connect_a_short_deadline_spreads_the_quiet_retry_within_it():
    """The same through tether.connect (the native loop): every WebSocket handshake is cut by the server."""
    async with DroppingServer() as srv:
        t0 = time.monotonic()
        with pytest.raises(tether.GaveUp) as info:
            await asyncio.wait_for(
                tether.connect(f"ws://127.0.0.1:{srv.port}/", open_timeout=2, policy=tether.Backoff(**SHORT_DEADLINE)),
                20,
            )
        assert time.monotonic() - t0 < 0.5 + 2.0
    assert_gave_up_at_the_deadline(info.value, srv.accepts)


async def test_events_in_order():
    r = tether.Reconnector(tether.Backoff(0.01, jitter="none", max_attempts=1), stable_after=10, quiet_jitter=0)
    got = []
    consumer = asyncio.ensure_future(collect(r.events(), got))
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
    """When the cancelled run() returns, connect() has seen CancelledError and finished its
    cleanup (here an awaited one), and the Reconnector is no longer running."""
    cleaned_up = asyncio.Event()
    started = asyncio.Event()

    async def connect():
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(200 * MS)  # e.g. closing a socket gracefully
            cleaned_up.set()
            raise

    r = tether.Reconnector(tether.Backoff(0.01))
    task = asyncio.ensure_future(r.run(connect))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned_up.is_set()
    assert not r.running


async def test_cancellation_waits_for_cleanup_only_within_its_bound(monkeypatch, tether_logs):
    import tether._reconnect as loop_module

    monkeypatch.setattr(loop_module, "CANCEL_GRACE", 0.3)
    started = asyncio.Event()
    release = asyncio.Event()
    finished = asyncio.Event()

    async def connect():
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # ignores cancellation
        finished.set()

    r = tether.Reconnector(name="stubborn")
    task = asyncio.ensure_future(r.run(connect))
    await asyncio.wait_for(started.wait(), 5)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 3.0
    assert not r.running
    warn = [x for x in records(tether_logs, "tether.reconnect") if x.levelno == logging.WARNING]
    assert len(warn) == 1 and "did not finish within 0.3s of being cancelled" in warn[0].getMessage()
    release.set()
    await asyncio.wait_for(finished.wait(), 5)  # the stubborn attempt finishes


async def test_cancel_during_backoff_sleep():
    async def connect():
        raise OSError("down")

    r = tether.Reconnector(tether.Backoff(30, jitter="none"), quiet_attempts=0)
    evs = r.events()
    task = asyncio.ensure_future(r.run(connect))
    while not isinstance(await asyncio.wait_for(evs.__anext__(), 10), ev.Reconnecting):
        pass  # the 30 s backoff sleep begins
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
    with pytest.raises(TypeError, match="connect must be an async callable"):
        r.run(42)  # at the call, as for any bad argument: no coroutine is made to warn "never awaited"

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
    await eventually(lambda: r.running, what="the first run")
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


async def test_stalled_attempt_is_cancelled_at_attempt_timeout_not_after_the_backoff():
    """The attempt is cancelled attempt_timeout after it started; the backoff comes after."""
    starts, cancels = [], []

    async def connect():
        starts.append(time.monotonic())
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancels.append(time.monotonic())
            raise

    r = tether.Reconnector(
        tether.Backoff(2.0, jitter="none", max_attempts=1), quiet_attempts=0, attempt_timeout=0.3, name="stalls"
    )
    with pytest.raises(tether.GaveUp) as info:
        await asyncio.wait_for(r.run(connect), 15)
    assert isinstance(info.value.last_error, tether.TimeoutError)
    assert "made no progress within 0.3s" in str(info.value.last_error)
    assert len(starts) == len(cancels) == 2
    for began, cancelled in zip(starts, cancels, strict=True):
        # 0.3 s, not 0.3 s + the 2 s backoff
        assert 0.25 <= cancelled - began < 1.5, cancelled - began
    assert starts[1] - cancels[0] >= 1.9  # the backoff runs after the cancellation


class BlackHole:
    """Accepts TCP connections and never answers: the handshake of every attempt times out."""

    def __init__(self):
        self.accepts = 0
        self.writers = []

    async def __aenter__(self):
        async def handle(reader, writer):
            self.accepts += 1
            self.writers.append(writer)

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        for w in self.writers:
            w.close()
        self.server.close()
        await self.server.wait_closed()


async def test_black_holed_handshake_escalates_and_gives_up_by_the_deadline(tether_logs):
    """A handshake that times out after longer than stable_after is not a stable connection
    (as with tether.connect's defaults open_timeout=10, stable_after=10, scaled down here)."""
    r = tether.Reconnector(
        tether.Backoff(0.1, 2, max_delay=0.4, jitter="none", deadline=3.0),
        stable_after=0.5,
        quiet_jitter=0,  # a random quiet delay would leave time for fewer backed-off retries
        name="blackholed",
    )
    async with BlackHole() as hole:

        async def connect():
            reader, writer = await asyncio.open_connection("127.0.0.1", hole.port)
            try:
                await asyncio.wait_for(reader.readline(), 0.6)  # the handshake timeout
                r.connected()
                await reader.read()
            finally:
                writer.close()

        t0 = time.monotonic()
        with pytest.raises(tether.GaveUp) as info:
            await asyncio.wait_for(r.run(connect), 20)
        elapsed = time.monotonic() - t0
    assert info.value.reason == "deadline exceeded"
    assert elapsed < 3.0 + 2.0
    recs = [x for x in records(tether_logs, "tether.reconnect") if "retrying" in x.getMessage()]
    # one quiet retry, then escalation: backed-off retries at WARNING with growing delays
    assert [x.levelno for x in recs][:2] == [logging.DEBUG, logging.WARNING]
    assert [x.retry_count for x in recs] == list(range(1, len(recs) + 1))
    delays = [x.delay_s for x in recs[1:]]
    assert delays[:2] == [0.1, 0.2]
    assert hole.accepts == len(recs) + 1


async def test_tether_connect_black_holed_handshake_gives_up_by_the_deadline(tether_logs):
    """The same through tether.connect (the native loop): open_timeout == stable_after, as in its defaults."""
    async with BlackHole() as hole:
        t0 = time.monotonic()
        with pytest.raises(tether.GaveUp) as info:
            await asyncio.wait_for(
                tether.connect(
                    f"ws://127.0.0.1:{hole.port}/",
                    open_timeout=0.5,
                    stable_after=0.5,
                    quiet_jitter=0,
                    policy=tether.Backoff(0.1, 2, max_delay=0.4, jitter="none", deadline=3.0),
                ),
                20,
            )
        assert time.monotonic() - t0 < 3.0 + 3.0
    assert info.value.reason == "deadline exceeded"
    levels = [x.levelno for x in records(tether_logs, "tether.reconnect") if "retrying" in x.getMessage()]
    assert levels[0] == logging.DEBUG and logging.WARNING in levels


async def test_flapping_never_logs_recovery_until_the_link_is_stable(tether_logs):
    """Accept-then-drop handshakes report Reconnected each time but log recovery at INFO only
    once the link has stayed up stable_after, after an outage that logged WARNING."""
    flaps = 4
    stop = asyncio.Event()
    async with FlappingServer() as srv:
        r = tether.Reconnector(tether.Backoff(0.05, 2, max_delay=0.2, jitter="none"), stable_after=0.5, name="flappy")
        got = []
        watcher = asyncio.ensure_future(collect(r.events(), got))
        handshakes = []

        async def connect():
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                assert await reader.readline() == b"hello\n"
                r.connected()
                handshakes.append(time.time())  # same clock as LogRecord.created
                if len(handshakes) <= flaps:
                    await reader.read()
                    raise ConnectionError("dropped by the server")
                srv.hold = 3600  # later accepts stay up; this one is held by the test
                await stop.wait()
                return "done"
            finally:
                writer.close()

        run = asyncio.ensure_future(r.run(connect))

        def logged_at_info():
            return [x for x in records(tether_logs, "tether.reconnect") if x.levelno == logging.INFO]

        await eventually(lambda: logged_at_info() or run.done(), what="the recovery logged at INFO")
        info = logged_at_info()
        stop.set()
        assert await asyncio.wait_for(run, 5) == "done"
        await asyncio.wait_for(watcher, 5)
    recs = records(tether_logs, "tether.reconnect")
    assert len(info) == 1, [(x.levelname, x.getMessage()) for x in recs]
    assert info[0].created >= handshakes[-1] + 0.5 - 0.01
    assert "reconnected to flappy after 5 attempts" in info[0].getMessage()
    assert [x for x in recs if x.levelno == logging.INFO] == info
    assert sum(isinstance(e, ev.Reconnected) for e in got) == flaps
    # every flap's handshake was logged below INFO
    assert sum("reconnected to flappy (attempt" in x.getMessage() for x in recs if x.levelno == logging.DEBUG) == flaps


@pytest.mark.parametrize("end", ["returned", "cancelled"])
async def test_no_recovery_is_logged_for_a_link_whose_run_ended_before_it_was_stable(tether_logs, end):
    """After a WARNING outage, connect() connects and returns 50 ms later, or run() is cancelled. Before,
    ``stable_after`` later the INFO still said the link was stable again."""
    r = tether.Reconnector(tether.Backoff(0.01, 1, jitter="none"), stable_after=0.4, quiet_jitter=0, name="ctl")
    failures = 0

    async def connect():
        nonlocal failures
        if failures < 3:
            failures += 1
            raise ConnectionRefusedError("refused")
        r.connected()
        if end == "returned":
            await asyncio.sleep(0.05)
            return "done"
        await asyncio.sleep(3600)

    run = asyncio.ensure_future(r.run(connect))
    if end == "returned":
        assert await asyncio.wait_for(run, 10) == "done"
    else:
        await asyncio.sleep(0.1)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    recs = records(tether_logs, "tether.reconnect")
    assert any(x.levelno == logging.WARNING for x in recs)
    await asyncio.sleep(1.0)  # well past stable_after
    assert [x.getMessage() for x in records(tether_logs, "tether.reconnect") if x.levelno == logging.INFO] == []


async def test_tether_connect_flapping_logs_recovery_once_stable(tether_logs):
    """The same through tether.connect against the `websockets` server: it accepts the first handshakes
    and closes them at once, then keeps the connection; INFO comes once, after stable_after."""
    from websockets.asyncio.server import serve

    flaps = 3
    handshakes = []
    hold = asyncio.Event()

    async def handler(ws):
        handshakes.append(time.time())  # same clock as LogRecord.created
        if len(handshakes) > flaps:
            await hold.wait()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        c = await tether.connect(
            f"ws://127.0.0.1:{port}/",
            policy=tether.Backoff(0.05, 2, max_delay=0.2, jitter="none"),
            stable_after=0.5,
            ping_interval=5,
        )
        info = await eventually(
            lambda: [x for x in records(tether_logs, "tether.reconnect") if x.levelno == logging.INFO],
            what="the recovery logged at INFO",
        )
        hold.set()
        await c.aclose()
    recs = records(tether_logs, "tether.reconnect")
    assert len(info) == 1, [(x.levelname, x.getMessage()) for x in recs]
    assert info[0].created >= handshakes[-1] + 0.5 - 0.05
    assert [x for x in recs if x.levelno == logging.INFO] == info
    assert len(handshakes) == flaps + 1


async def test_a_healthy_server_logs_nothing_at_warning_or_info(tether_logs):
    async with FlappingServer(hold=3600) as srv:
        r = tether.Reconnector(stable_after=0.1)

        async def connect():
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            try:
                await reader.readline()
                r.connected()
                await asyncio.sleep(300 * MS)  # up longer than stable_after
                return "ok"
            finally:
                writer.close()

        assert await r.run(connect) == "ok"
    assert all(x.levelno < logging.INFO for x in records(tether_logs))


# ---- the step-wise form, for framework loops -----------------------------------------------------------------


def test_step_wise_failed_escalates_then_gives_up(tether_logs):
    r = tether.Reconnector(tether.Backoff(0.1, 2, jitter="none", max_attempts=3), name="stepper")
    assert r.attempt == 0
    first = r.failed(OSError("refused"))
    assert 0.0 <= first <= r.quiet_jitter == 1.0
    assert r.attempt == 1
    assert [r.failed(OSError("refused")) for _ in range(2)] == [0.1, 0.2]
    assert r.attempt == 3
    last = OSError("refused for good")
    with pytest.raises(tether.GaveUp) as info:
        r.failed(last)
    g = info.value
    assert g.attempts == 4 and g.last_error is last and g.__cause__ is last
    assert g.reason == "attempt budget exhausted" and "stepper" in str(g)
    recs = records(tether_logs, "tether.reconnect")
    assert [x.levelno for x in recs] == [logging.DEBUG, logging.WARNING, logging.WARNING, logging.ERROR]
    assert [x.retry_count for x in recs[:3]] == [1, 2, 3]
    assert all(x.tether_name == "stepper" and x.max_retry == 3 for x in recs)
    assert "failed to connect to stepper: OSError: refused" in recs[0].getMessage()
    # a give-up ends the episode; the next failure starts a new one
    assert r.attempt == 0
    assert r.failed() <= r.quiet_jitter


def test_step_wise_fatal_and_bad_input():
    class AuthError(Exception):
        pass

    r = tether.Reconnector(fatal=AuthError)
    with pytest.raises(tether.GaveUp) as info:
        r.failed(AuthError("401 token=SECRET"))
    assert info.value.reason == "fatal error" and "SECRET" not in str(info.value)
    with pytest.raises(TypeError):
        r.failed("not an exception")
    with pytest.raises(TypeError):
        tether.Reconnector(logger=42)
    with pytest.raises(ValueError):
        tether.Reconnector(quiet_jitter=-1)
    assert r.failed(None) <= r.quiet_jitter


async def test_step_wise_stability_and_closed():
    r = tether.Reconnector(tether.Backoff(0.05, jitter="none", max_attempts=2), stable_after=0.2, quiet_jitter=0)
    got = []
    watcher = asyncio.ensure_future(collect(r.events(), got))
    assert r.connected() is True
    assert r.connected() is False  # already marked
    assert r.failed(ConnectionResetError("blip")) == 0.0
    assert r.connected()
    await asyncio.sleep(300 * MS)  # longer than stable_after
    assert r.attempt == 0  # stable: the counter reset, so a new blip is quiet again
    r.closed()
    r.closed()  # nothing more to close
    assert r.failed(ConnectionError("closed by peer")) == 0.0
    assert r.failed(OSError("refused")) == 0.05
    with pytest.raises(tether.GaveUp):
        r.failed(OSError("refused"))
    await asyncio.wait_for(watcher, 5)
    kinds = [type(e).__name__ for e in got]
    assert kinds == [
        "Connected",
        "ConnectionLost",
        "Reconnecting",
        "Connected",
        "Reconnected",
        "ConnectionLost",  # closed(): reported once, the following failed() does not repeat it
        "Reconnecting",
        "Reconnecting",
        "GaveUp",
    ], kinds
    assert got[5] == ev.ConnectionLost("closed")


async def test_backoff_sleeps_and_is_cancellable():
    r = tether.Reconnector(tether.Backoff(0.2, jitter="none"), quiet_attempts=0)
    t0 = time.monotonic()
    await r.backoff(OSError("x"))
    assert time.monotonic() - t0 >= 0.19
    r2 = tether.Reconnector(tether.Backoff(30, jitter="none"), quiet_attempts=0)
    sleeper = asyncio.ensure_future(r2.backoff(OSError("x")))
    await asyncio.sleep(0)  # its first step: the 30 s sleep has begun
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper


async def test_step_wise_calls_conflict_with_run():
    r = tether.Reconnector()
    block = asyncio.Event()
    checked = asyncio.Event()

    async def connect():
        with pytest.raises(RuntimeError, match="run"):
            r.failed(OSError("x"))
        with pytest.raises(RuntimeError, match="run"):
            r.backoff()
        r.connected()
        assert r.attempt == 0
        checked.set()
        await block.wait()
        return 1

    t = asyncio.ensure_future(r.run(connect))
    await eventually(lambda: checked.is_set() or t.done(), what="the checks inside the run")
    block.set()
    assert await t == 1


async def test_step_wise_loop_against_a_flapping_server(tether_logs):
    """The livekit-style loop (connect, register, run; on error back off) on the step-wise form."""
    r = tether.Reconnector(tether.Backoff(0.05, 2, max_delay=0.2, jitter="none", max_attempts=4), name="cp")
    async with FlappingServer() as srv:
        with pytest.raises(tether.GaveUp) as info:
            while True:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
                    try:
                        assert await reader.readline() == b"hello\n"
                        r.connected()
                        await reader.read()
                        raise ConnectionError("control connection closed unexpectedly")
                    finally:
                        writer.close()
                except Exception as e:
                    await r.backoff(e)
    assert info.value.attempts == 5 and srv.accepts == 5
    levels = [x.levelno for x in records(tether_logs, "tether.reconnect") if "retrying" in x.getMessage()]
    assert levels == [logging.DEBUG, logging.WARNING, logging.WARNING, logging.WARNING]


async def test_the_readmes_step_wise_loop_backs_off_a_server_that_closes_cleanly_at_once(tether_logs):
    """Every connection closed cleanly (code 1000) right after it opened. The README's loop reconnected
    after `closed()` without a `backoff()`: nothing paced it (1,300 connections in 2 s), nothing logged
    a WARNING, nothing gave up. With the `backoff()` the README now has after `closed()`, it escalates."""
    accepts = 0

    async def handler(ws):
        nonlocal accepts
        accepts += 1
        await ws.close(1000)

    r = tether.Reconnector(tether.Backoff(0.05, 2, max_delay=0.2, jitter="none", max_attempts=4), stable_after=10)
    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"
        with pytest.raises(tether.GaveUp):
            while True:  # as in the README
                try:
                    ws = await websockets.connect(url, open_timeout=DEADLINE)
                    r.connected()
                    async for _ in ws:
                        pass
                    r.closed()
                except Exception as e:
                    await r.backoff(e)
                else:
                    await r.backoff()
    assert accepts == 5, accepts
    assert any(x.levelno == logging.WARNING for x in records(tether_logs, "tether.reconnect"))


def test_quiet_retries_spread_a_fleet():
    """1,000 default Reconnectors dropped together retry spread over quiet_jitter."""
    fleet = [tether.Reconnector(stable_after=0) for _ in range(1000)]
    for r in fleet:
        r.connected()
    delays = sorted(r.failed(ConnectionResetError("server restarted")) for r in fleet)
    assert delays[-1] <= fleet[0].quiet_jitter < 2.0
    densest = max(sum(1 for d in delays[i:] if d < delays[i] + 0.1) for i in range(len(delays)))
    assert densest <= 300, densest
