"""tether.connect hooks against servers tether did not write (the `websockets` server): on_connect runs
before queued messages on every (re)connect, its failures are retried or fatal, it is bounded by
open_timeout; the in-band heartbeat detects a server that answers WebSocket pings but not the
application; close() works from sync code."""

import asyncio
import contextlib
import contextvars
import itertools
import json
import sys
import threading
import time

import pytest
import websockets
from websockets.asyncio.server import serve
from websockets.sync.server import serve as sync_serve

import tether
from support import FAST, MS, collect, eventually, policy
from tether import events as ev

# The hooks here take up to 1.2 s inside open_timeout, and the heartbeat tests count on WebSocket pings
# never timing out while the application's heartbeat does: both get room on a busy box.
FAST = dict(FAST, ping_timeout=1000 * MS, open_timeout=3000 * MS, close_timeout=1000 * MS)


class JoinServer:
    """A join protocol: "join ..." is answered with "joined" then "welcome"; "hb" with "hb-ack" while
    the connection answers heartbeats; every message is logged per connection."""

    def __init__(self, *, chatter=False):
        self.conns = []  # per connection: list of received messages
        self.sockets = []
        self.answer_heartbeats = []
        self.close_codes = []
        self.chatter = chatter

    async def handler(self, ws):
        n = len(self.conns)
        log = []
        self.conns.append(log)
        self.sockets.append(ws)
        self.answer_heartbeats.append(True)
        ticker = asyncio.ensure_future(self._chatter(ws)) if self.chatter else None
        try:
            async for m in ws:
                log.append(m)
                if isinstance(m, str) and m.startswith("join"):
                    await ws.send("joined")
                    await ws.send("welcome")
                elif isinstance(m, str) and m.startswith("hb") and self.answer_heartbeats[n]:
                    await ws.send("hb-ack " + m)
        except Exception:
            pass
        finally:
            if ticker:
                ticker.cancel()
            self.close_codes.append(ws.close_code)

    async def _chatter(self, ws):
        # traffic that is not a heartbeat reply
        while True:
            await asyncio.sleep(50 * MS)
            await ws.send("tick")

    def drop(self, n=-1):
        self.sockets[n].transport.abort()

    async def __aenter__(self):
        self._srv = await serve(self.handler, "127.0.0.1", 0)
        port = self._srv.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc):
        self._srv.close()
        await asyncio.wait_for(self._srv.wait_closed(), 5)


async def opened(conn):
    return await conn


async def test_hook_runs_before_queued_messages_on_connect_and_after_a_drop():
    seen = []
    states = []
    handles = []
    in_hook = asyncio.Event()
    go_on = asyncio.Event()

    async def on_connect(hs):
        seen.append((hs.attempt, hs.strategy, hs.reconnect))
        states.append(c.state)
        handles.append(hs)
        # a recv cancelled while waiting consumes nothing
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(hs.recv(), 0.05)
        in_hook.set()
        # a message queued meanwhile that slipped out before the hook would reach the server first
        await go_on.wait()
        await hs.send(f"join reconnect={hs.reconnect}")
        assert await hs.recv() == "joined"

    got = []
    async with JoinServer() as srv:
        c = tether.connect(srv.url, on_connect=on_connect, policy=policy(), **FAST)
        starting = asyncio.ensure_future(opened(c))
        await asyncio.wait_for(in_hook.wait(), 10)
        first = asyncio.ensure_future(c.send("queued-during-hook"))
        await asyncio.sleep(200 * MS)  # time for it to slip out ahead of the hook, which it must not
        go_on.set()
        await asyncio.wait_for(starting, 10)
        async with c:
            watcher = asyncio.ensure_future(collect(c.events(), got))
            await asyncio.wait_for(first, 10)
            # the hook took "joined"; the application gets the rest, in order
            assert await asyncio.wait_for(c.recv(), 10) == "welcome"
            await eventually(lambda: len(srv.conns[0]) >= 2, what="the queued message")
            assert srv.conns[0][:2] == ["join reconnect=False", "queued-during-hook"]

            srv.drop()
            await eventually(lambda: any(isinstance(e, ev.ConnectionLost) for e in got), what="ConnectionLost")
            during = asyncio.ensure_future(c.send("queued-during-outage"))
            await asyncio.wait_for(during, 10)
            assert await asyncio.wait_for(c.recv(), 10) == "welcome"
            # the server sends "welcome" with "joined", before the queued message reaches it
            await eventually(lambda: len(srv.conns[1]) >= 2, what="the message queued during the outage")
            assert srv.conns[1][:2] == ["join reconnect=True", "queued-during-outage"]
            assert all(m != "joined" for m in srv.conns[1])
            await eventually(lambda: any(isinstance(e, ev.Reconnected) for e in got), what="Reconnected")
            watcher.cancel()
    assert seen[0] == (1, "connect", False)
    assert seen[1][2] is True and seen[1][1] == "resume"
    # the attempt counts as connected only once the hook returned
    assert states == ["connecting", "reconnecting"]
    with pytest.raises(tether.ConnectionClosed, match="handshake is over"):
        await handles[0].send("late")
    with pytest.raises(tether.ConnectionClosed, match="handshake is over"):
        await handles[0].recv()


async def test_hook_that_raises_is_retried_then_gives_up():
    calls = []

    async def on_connect(hs):
        calls.append(hs.attempt)
        raise RuntimeError("registration refused")

    async with JoinServer() as srv:
        c = tether.connect(srv.url, on_connect=on_connect, policy=policy(max_attempts=2), **FAST)
        with pytest.raises(tether.GaveUp) as ei:
            await asyncio.wait_for(opened(c), 20)
        await c.aclose()
    assert calls == [1, 2, 3]
    assert len(srv.conns) == 3
    assert ei.value.reason == "attempt budget exhausted"
    assert "on_connect raised RuntimeError: registration refused" in str(ei.value)
    assert c.state == "failed"


async def test_fatal_hook_error_gives_up_at_once():
    calls = []

    class Rejected(Exception):
        pass

    async def on_connect(hs):
        calls.append(hs.attempt)
        await hs.send("join")
        await hs.recv()
        raise Rejected("JoinResponse: error")

    async with JoinServer() as srv:
        c = tether.connect(srv.url, on_connect=on_connect, fatal=(Rejected,), policy=policy(max_attempts=5), **FAST)
        with pytest.raises(tether.GaveUp) as ei:
            await asyncio.wait_for(opened(c), 20)
        await c.aclose()
    assert calls == [1]
    assert ei.value.reason == "fatal error"
    assert "Rejected: JoinResponse: error" in str(ei.value)


async def test_a_plain_function_hook_that_raises_is_retried_like_an_async_one():
    calls = []

    async def join(hs):
        await hs.send("join")

    def on_connect(hs):  # returns the coroutine that does the work, or raises before making one
        calls.append(hs.attempt)
        if len(calls) == 1:
            raise RuntimeError("not yet")
        return join(hs)

    async with JoinServer() as srv:
        async with tether.connect(srv.url, on_connect=on_connect, policy=policy(), **FAST):
            await eventually(lambda: srv.conns[-1:] == [["join"]], 10)
    assert calls == [1, 2]
    assert len(srv.conns) == 2


@pytest.mark.parametrize("sync", [True, False], ids=["sync url_for", "async url_for"])
async def test_hooks_run_in_a_copy_of_the_contextvars_of_the_task_that_connected(sync):
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen = []

    async with JoinServer() as srv:

        def target(strategy, attempt):
            seen.append(("url_for", request_id.get("unset")))
            request_id.set("set by url_for")  # stays in the hook's copy
            return srv.url

        async def async_target(strategy, attempt):
            return target(strategy, attempt)

        async def on_connect(hs):
            seen.append(("on_connect", request_id.get("unset")))
            request_id.set("set by on_connect")

        request_id.set("r-1")
        url_for = target if sync else async_target
        async with tether.connect(srv.url, url_for=url_for, on_connect=on_connect, policy=policy(), **FAST):
            assert request_id.get() == "r-1"
    assert seen == [("url_for", "r-1"), ("on_connect", "r-1")]


async def test_sync_on_connect_is_a_usage_error_not_retried():
    async with JoinServer() as srv:
        c = tether.connect(srv.url, on_connect=lambda hs: None, policy=policy(max_attempts=5), **FAST)
        with pytest.raises(tether.GaveUp, match="on_connect must be an async function"):
            await asyncio.wait_for(opened(c), 20)
        await c.aclose()
    assert len(srv.conns) == 1


async def test_hanging_hook_is_cut_at_open_timeout_and_cancelled():
    cancelled = []

    async def on_connect(hs):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(hs.attempt)
            raise

    async with JoinServer() as srv:
        kw = dict(FAST, open_timeout=0.5)
        c = tether.connect(srv.url, on_connect=on_connect, policy=policy(max_attempts=1), **kw)
        t0 = time.monotonic()
        with pytest.raises(tether.GaveUp, match="on_connect did not finish within open_timeout"):
            await asyncio.wait_for(opened(c), 20)
        elapsed = time.monotonic() - t0
        await c.aclose()
        await eventually(lambda: len(cancelled) == 2, what="hook tasks cancelled")
    assert cancelled == [1, 2]
    assert elapsed < 10


async def test_hook_task_cancelled_from_python_gives_up_at_once():
    calls = []

    async def on_connect(hs):
        calls.append(hs.attempt)
        asyncio.current_task().cancel()  # e.g. the loop's tasks are being torn down
        await asyncio.sleep(1000 * MS)

    async with JoinServer() as srv:
        c = tether.connect(srv.url, on_connect=on_connect, policy=policy(max_attempts=5), **FAST)
        with pytest.raises(tether.GaveUp, match="on_connect raised CancelledError") as ei:
            await asyncio.wait_for(opened(c), 20)
        await c.aclose()
    assert calls == [1]
    assert ei.value.reason == "fatal error"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.10 does not count a task's cancel() calls: it gives up")
async def test_a_cancelled_error_the_hook_raises_itself_is_a_failed_attempt():
    """A hook that awaited a future something else cancelled (a request of the framework's previous
    session) raises CancelledError although nobody cancelled its task: that attempt failed and the next
    one runs, as after url_for raising it. Before, the connection gave up ("fatal error")."""
    calls = []

    async def on_connect(hs):
        calls.append(hs.attempt)
        if len(calls) == 1:
            foreign = asyncio.get_running_loop().create_future()
            foreign.cancel()
            await foreign
        await hs.send("join")
        await hs.recv()

    async with JoinServer() as srv:
        c = tether.connect(srv.url, on_connect=on_connect, policy=policy(max_attempts=5), **FAST)
        try:
            await asyncio.wait_for(opened(c), 20)
        finally:
            await c.aclose()
    assert calls == [1, 2]


async def test_stability_clock_starts_after_the_hook():
    # The server drops each connection 0.1 s after the join. The hook takes 1.2 s > stable_after: if the
    # clock started at the raw handshake every drop would look stable and the counter would never grow.
    async def on_connect(hs):
        await asyncio.sleep(1200 * MS)
        await hs.send("join")
        await hs.recv()

    got = []
    async with JoinServer() as srv:

        async def dropper():
            seen = 0
            while True:
                await asyncio.sleep(10 * MS)
                for i, log in enumerate(srv.conns):
                    if i >= seen and log:
                        seen = i + 1
                        await asyncio.sleep(100 * MS)
                        srv.drop(i)

        d = asyncio.ensure_future(dropper())
        c = tether.connect(srv.url, on_connect=on_connect, stable_after=1.0, policy=policy(max_attempts=2), **FAST)
        watcher = asyncio.ensure_future(collect(c.events(), got))
        await asyncio.wait_for(opened(c), 20)
        await eventually(lambda: any(isinstance(e, ev.GaveUp) for e in got), timeout=20, what="GaveUp")
        d.cancel()
        await c.aclose()
        watcher.cancel()
    attempts = [e.attempt for e in got if isinstance(e, ev.Reconnecting)]
    assert attempts == [2, 3], attempts


async def test_heartbeat_detects_a_server_that_answers_pings_but_not_the_application():
    ids = itertools.count()
    hb = tether.Heartbeat(
        lambda: "hb " + json.dumps({"id": next(ids)}),
        0.2,
        is_reply=lambda m: isinstance(m, str) and m.startswith("hb-ack"),
        timeout=1.5,
    )
    got = []
    async with JoinServer(chatter=True) as srv:
        # the application never reads: liveness must not depend on it
        async with tether.connect(srv.url, heartbeat=hb, policy=policy(), **FAST) as c:
            watcher = asyncio.ensure_future(collect(c.events(), got))
            await eventually(lambda: len(srv.conns[0]) >= 5, what="five heartbeats answered")
            assert not any(isinstance(e, ev.ConnectionLost) for e in got)
            srv.answer_heartbeats[0] = False  # TCP and WebSocket pings stay healthy
            await eventually(lambda: any(isinstance(e, ev.ConnectionLost) for e in got), what="ConnectionLost")
            lost = [e for e in got if isinstance(e, ev.ConnectionLost)]
            assert "heartbeat timeout" in lost[0].reason
            await eventually(lambda: any(isinstance(e, ev.Reconnected) for e in got), what="Reconnected")
            await eventually(
                lambda: len(srv.conns) >= 2 and len(srv.conns[1]) >= 5, what="heartbeats on the new connection"
            )
            assert sum(isinstance(e, ev.ConnectionLost) for e in got) == 1
            # replies are delivered to the application too
            while not (await asyncio.wait_for(c.recv(), 10)).startswith("hb-ack hb"):
                pass
            watcher.cancel()


async def test_heartbeat_factory_that_raises_gives_up_naming_it():
    def factory():
        raise ValueError("no session id yet")

    async with JoinServer() as srv:
        c = await tether.connect(srv.url, heartbeat=tether.Heartbeat(factory, 0.1), policy=policy(), **FAST)
        with pytest.raises(tether.GaveUp, match="heartbeat message factory raised ValueError: no session id yet"):
            await asyncio.wait_for(c.recv(), 10)
        assert c.state == "failed"
        await c.aclose()


def test_heartbeat_validates_its_arguments():
    with pytest.raises(TypeError):
        tether.Heartbeat(42, 1.0)
    with pytest.raises(ValueError):
        tether.Heartbeat("hb", 0)
    with pytest.raises(TypeError):
        tether.Heartbeat("hb", 1.0, is_reply="pong")

    async def async_reply(m):
        return True

    async def async_message():
        return "hb"

    with pytest.raises(TypeError, match="is_reply must be a plain function, not an async one"):
        tether.Heartbeat("hb", 1.0, is_reply=async_reply)
    with pytest.raises(TypeError, match="message factory must be a plain function, not an async one"):
        tether.Heartbeat(async_message, 1.0)
    shown = repr(tether.Heartbeat('{"type": "health", "token": "SECRET"}', 1.0))
    assert "SECRET" not in shown and "<text, 37 bytes>" in shown, shown
    hb = tether.Heartbeat(b"hb", 2.0)
    assert hb.timeout == 2.0 and hb.is_reply is None and hb.message == b"hb"
    with pytest.raises(TypeError):
        tether.connect("ws://127.0.0.1:9/", heartbeat="hb")
    with pytest.raises(TypeError):
        tether.connect("ws://127.0.0.1:9/", on_connect="join")
    with pytest.raises(TypeError):
        tether.connect("ws://127.0.0.1:9/", fatal=("nope",))


async def test_close_from_sync_code_returns_and_closes_within_close_timeout():
    async with JoinServer() as srv:
        c = await tether.connect(srv.url, policy=policy(), **FAST)
        results = []
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        loop.call_soon(lambda: results.extend([c.close(), c.close()]))
        await eventually(lambda: c.state == "closed", timeout=FAST["close_timeout"] + 5, what="closed")
        elapsed = time.monotonic() - t0
        assert results == [None, None]
        await eventually(lambda: srv.close_codes, what="server saw the close")
        assert srv.close_codes == [1000]
        await c.aclose()  # after close(): returns, no second close
        with pytest.raises(tether.ConnectionClosed):
            await c.send("late")
    assert elapsed < FAST["close_timeout"] + 5


def test_close_after_the_loop_stopped_does_not_raise():
    async def main():
        async with JoinServer() as srv:
            return await tether.connect(srv.url, policy=policy(), **FAST)

    c = asyncio.run(main())
    assert c.close() is None
    c.close()
    deadline = time.monotonic() + FAST["close_timeout"] + 5
    while c.state != "closed" and time.monotonic() < deadline:
        time.sleep(10 * MS)  # no event loop any more to wait on
    assert c.state == "closed"


@contextlib.contextmanager
def echo_server_in_a_thread():
    """A `websockets` echo server on a thread of its own (it outlives the test's event loops): its URL,
    and an Event set when the connection it served ended."""
    ended = threading.Event()

    def handler(ws):
        try:
            for m in ws:
                ws.send(m)
        except websockets.ConnectionClosed:
            pass
        ended.set()

    with sync_serve(handler, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", ended
        server.shutdown()


async def connected(url: str):
    c = await tether.connect(url, **FAST)
    await c.send("a")
    assert await asyncio.wait_for(c.recv(), 5) == "a"
    return c


@pytest.mark.parametrize(
    "how",
    ["aclose in a later loop", "close on another thread", "aclose in a loop on another thread"],
)
def test_a_connection_whose_loop_is_closed_is_ended_at_once_by_a_close(how):
    """`asyncio.run` returned with the connection open (a fixture that outlived its test's loop); then it
    is closed: nothing will run on its loop again, so the close ends it there and then (before: an
    `aclose()` in a later loop raised asyncio's "got Future attached to a different loop", and a close
    from another thread left the socket open), the server sees its TCP connection end, and later calls
    raise ConnectionClosed."""
    with echo_server_in_a_thread() as (url, ended):
        c = asyncio.run(connected(url))
        if how == "aclose in a later loop":
            assert asyncio.run(asyncio.wait_for(c.aclose(), 10)) is None
        else:
            close = c.close if how == "close on another thread" else lambda: asyncio.run(c.aclose())
            t = threading.Thread(target=close)
            t.start()
            t.join(10)
        assert ended.wait(10), "the server never saw the connection end"
        assert c.state == "closed"
        with pytest.raises(tether.ConnectionClosed):
            c.send("late")


async def test_a_close_from_the_server_during_on_connect_is_answered():
    codes = []

    async def handler(ws):
        await ws.close(4000, "not now")
        codes.append(ws.close_code)

    async def on_connect(hs):
        await hs.recv()

    async with serve(handler, "127.0.0.1", 0, close_timeout=5) as srv:
        port = srv.sockets[0].getsockname()[1]
        c = tether.connect(f"ws://127.0.0.1:{port}/", on_connect=on_connect, policy=policy(max_attempts=1), **FAST)
        with pytest.raises(tether.GaveUp, match="4000"):
            await asyncio.wait_for(c._start(), 10)
    # the server's own record: it received our close frame echoing its code (1006 = no answer)
    assert codes and set(codes) == {4000}, codes


async def test_a_heartbeat_does_not_cut_the_close_handshake_short(caplog):
    from tether.testing import ChaosProxy

    codes = []

    async def echo(ws):
        try:
            async for m in ws:
                await ws.send(m)
        except Exception:
            pass
        codes.append(ws.close_code)

    async with serve(echo, "127.0.0.1", 0, close_timeout=5) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with ChaosProxy(f"127.0.0.1:{port}") as proxy:
            hb = tether.Heartbeat("hb", 0.05, timeout=5.0)
            opts = dict(FAST, ping_interval=5000 * MS, ping_timeout=5000 * MS, close_timeout=5000 * MS)
            c = await tether.connect(f"ws://{proxy.address}/", heartbeat=hb, policy=policy(), **opts)
            proxy.latency(300)
            await asyncio.sleep(1000 * MS)  # a heartbeat goes out, and is answered, every round trip (0.6 s)
            with caplog.at_level("WARNING", logger="tether"):
                # "last" is confirmed by the pong to the ping behind it, a round trip after the close started
                await asyncio.wait_for(c.send("last"), 10)
                await asyncio.wait_for(c.aclose(), 10)
            await eventually(lambda: codes, what="the server's end of the connection")
    assert codes == [1000], codes
    assert not [r for r in caplog.records if "never confirmed" in r.getMessage()]


async def test_a_message_the_hook_read_but_did_not_take_is_the_first_message():
    async def hello(ws):
        await ws.send("hello")
        await ws.wait_closed()

    async def on_connect(hs):
        # returns once the session read a message for the hook, and leaves it there
        await hs._c.wait_readable()

    async with serve(hello, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        c = tether.connect(
            f"ws://127.0.0.1:{port}/",
            on_connect=on_connect,
            first_message_timeout=0.5,
            policy=policy(max_attempts=1),
            **FAST,
        )
        async with c:
            assert await asyncio.wait_for(c.recv(), 10) == "hello"


async def test_an_is_reply_that_returns_an_awaitable_gives_up_naming_it():
    async def check(m):
        return False

    # a plain callable returning a coroutine: truthy, so without the check every message would be a reply
    hb = tether.Heartbeat("hb", 0.1, is_reply=lambda m: check(m), timeout=0.5)
    async with JoinServer() as srv:
        c = await tether.connect(srv.url, heartbeat=hb, policy=policy(), **FAST)

        async def drain():
            while True:  # the replies are delivered, then the connection ends
                await c.recv()

        with pytest.raises(tether.GaveUp, match="is_reply raised TypeError: is_reply must return its result"):
            await asyncio.wait_for(drain(), 10)
        await c.aclose()


async def test_a_sync_url_for_runs_on_the_event_loop_thread():
    import threading

    threads = []

    async with JoinServer() as srv:

        def url_for(strategy, attempt):
            threads.append(threading.get_ident())
            return srv.url

        async with tether.connect(srv.url, url_for=url_for, policy=policy(), **FAST):
            pass
    assert threads == [threading.get_ident()], threads


async def test_an_is_reply_that_blocks_the_loop_is_a_heartbeat_timeout():
    blocked = []

    def is_reply(m):
        if not blocked:
            blocked.append(m)
            time.sleep(2000 * MS)  # a stalled event loop: what the bound is for
        return isinstance(m, str) and m.startswith("hb-ack")

    hb = tether.Heartbeat("hb", 0.2, is_reply=is_reply, timeout=0.5)
    got = []
    async with JoinServer() as srv:
        async with tether.connect(srv.url, heartbeat=hb, policy=policy(), **FAST) as c:
            watcher = asyncio.ensure_future(collect(c.events(), got))
            await eventually(lambda: any(isinstance(e, ev.Reconnected) for e in got), what="Reconnected")
            lost = [e for e in got if isinstance(e, ev.ConnectionLost)]
            assert "heartbeat timeout: is_reply did not return within 0.500s" in lost[0].reason, lost[0].reason
            watcher.cancel()
