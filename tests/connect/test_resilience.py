"""tether.connect against the embedded SignalServer: loss detection, reconnection, delivery, bounds."""

import asyncio
import logging
import time

import pytest

import tether
from support import (
    FAST,
    MS,
    collect,
    drop,
    eventually,
    first_of,
    frozen_server_is_detected_and_recovered,
    policy,
    records,
    returns_at_once,
)
from tether import events as ev


async def test_echo_text_and_binary(signal_server):
    async with tether.connect(signal_server.url, **FAST) as c:
        assert c.state == "connected"
        await c.send("hello")
        await c.send(b"\x00\x01")
        await c.send(bytearray(b"ba"))
        assert await c.recv() == "hello"
        assert await c.recv() == b"\x00\x01"
        assert await c.recv() == b"ba"
        s = c.stats()
        assert s["messages_out"] == 3 and s["messages_in"] == 3 and s["connects"] == 1
    assert c.state == "closed"


async def test_server_drop_is_reported_once_and_reconnects(signal_server):
    got = []
    async with tether.connect(signal_server.url, policy=policy(), **FAST) as c:
        watcher = asyncio.ensure_future(collect(c.events(), got))
        await drop(signal_server)
        rec = await eventually(lambda: first_of(got, ev.Reconnected), 5, what="Reconnected")
        assert rec.downtime < 2.0
        await c.send("after")
        assert await c.recv() == "after"
        assert c.stats()["connects"] == 2 and c.stats()["losses"] == 1
    await asyncio.wait_for(watcher, 5)
    lost = [e for e in got if isinstance(e, ev.ConnectionLost)]
    assert len(lost) == 1, got
    # first retry is the first ladder rung
    reconnecting = [e for e in got if isinstance(e, ev.Reconnecting)]
    assert reconnecting[0].strategy == "resume" and reconnecting[0].delay <= tether.Reconnector().quiet_jitter


async def test_frozen_server_detected_by_ping_timeout(signal_server):
    await frozen_server_is_detected_and_recovered(signal_server)


async def test_close_codes_retry_and_fatal(signal_server):
    async with tether.connect(signal_server.url, policy=policy(), **FAST) as c:
        # the server registers a connection before its 101 goes out: this reaches the one just opened
        assert signal_server.close(1001, "going away") == 1
        await c.send("x")  # delivered after the reconnect (or echoed before the loss was seen)
        assert await c.recv() == "x"
        await eventually(lambda: c.stats()["last_loss"] is not None, what="the loss")
        assert "1001" in c.stats()["last_loss"]
        # the echo may come from the first connection: wait until the second one is up
        await eventually(lambda: c.stats()["connects"] >= 2 and c.state == "connected", what="the second connection")
        assert await signal_server.wait_for(1)
        assert signal_server.close(1008, "policy violation") == 1
        with pytest.raises(tether.GaveUp) as info:
            async for _ in c:
                pass
    g = info.value
    assert g.reason == "fatal error"
    assert isinstance(g.last_error, tether.ConnectionClosed) and g.last_error.code == 1008
    assert c.state == "failed"


async def test_http_401_is_fatal_and_503_is_retried(signal_server):
    signal_server.refuse(401)
    t0 = time.monotonic()
    with pytest.raises(tether.GaveUp) as info:
        await tether.connect(signal_server.url, policy=policy(max_attempts=10), **FAST)
    assert time.monotonic() - t0 < 2.0
    assert info.value.attempts == 1 and "401" in str(info.value)
    signal_server.refuse(503, times=2)
    c = await tether.connect(signal_server.url, policy=policy(max_attempts=10), **FAST)
    try:
        assert signal_server.stats()["refused"] >= 3  # the 401 plus two 503s
        assert c.state == "connected"
    finally:
        await c.aclose()


async def test_url_for_mints_per_strategy(signal_server):
    calls = []

    async def url_for(strategy, attempt):
        calls.append((strategy, attempt))
        await asyncio.sleep(0)
        return f"{signal_server.url}?access_token=tok{len(calls)}&strategy={strategy}"

    async with tether.connect(
        signal_server.url, url_for=url_for, ladder=("resume", ("restart", 2)), policy=policy(), **FAST
    ) as c:
        signal_server.listening(False)
        await drop(signal_server)
        await eventually(lambda: len(calls) >= 4, what="four url_for calls")
        signal_server.listening(True)
        await c.send("ok")
        assert await c.recv() == "ok"
    strategies = [s for s, _ in calls]
    assert strategies[:4] == ["connect", "resume", "restart", "restart"], calls
    assert [a for _, a in calls[:4]] == [1, 2, 3, 4]
    reqs = signal_server.requests()
    assert reqs[0] == "/?access_token=tok1&strategy=connect"
    assert reqs[-1].startswith(f"/?access_token=tok{len(calls)}")


async def test_sync_url_for_with_headers_and_errors_are_retried(signal_server):
    n = 0

    def url_for(strategy, attempt):
        nonlocal n
        n += 1
        if n == 1:
            raise RuntimeError("token service unavailable")
        return (signal_server.url, {"Authorization": "Bearer s3cr3t"})

    c = await tether.connect(signal_server.url, url_for=url_for, policy=policy(), **FAST)
    await c.aclose()
    assert n == 2


async def test_sends_during_outage_delivered_in_order(signal_server):
    async with tether.connect(signal_server.url, policy=policy(max_delay=0.05), **FAST) as c:
        signal_server.listening(False)
        await drop(signal_server)
        await eventually(lambda: c.state != "connected", what="the drop")
        for i in range(20):
            await c.send(f"m{i}")  # queued under the write high-water mark: resolves at once
        flushed = asyncio.ensure_future(c.flush())
        await asyncio.sleep(300 * MS)  # the server stays down: nothing may resolve meanwhile
        assert not flushed.done(), "nothing can be confirmed while the server is down"
        assert c.stats()["send_queue"] == 20
        signal_server.listening(True)
        await asyncio.wait_for(flushed, 10)
        got = [await c.recv() for _ in range(20)]
    assert got == [f"m{i}" for i in range(20)]


async def test_send_resolves_when_queued_and_waits_above_the_high_water_mark(signal_server):
    async with tether.connect(signal_server.url, policy=policy(max_delay=0.05), **FAST) as c:
        signal_server.listening(False)
        await drop(signal_server)
        await eventually(lambda: c.state != "connected", what="the drop")
        first = c.send(b"a" * 40_000)
        assert returns_at_once(first), "under the 64 KiB write high-water mark await send() returns at once"
        second = asyncio.ensure_future(c.send(b"b" * 40_000))
        await asyncio.sleep(300 * MS)  # the server stays down: nothing may resolve meanwhile
        assert not second.done(), "above the high-water mark send() waits until its message is written"
        signal_server.listening(True)
        await asyncio.wait_for(second, 10)
        await asyncio.wait_for(c.flush(), 10)
        got = [await asyncio.wait_for(c.recv(), 10) for _ in range(2)]
    assert got == [b"a" * 40_000, b"b" * 40_000]


async def test_send_waits_while_half_the_send_buffer_is_unconfirmed(signal_server):
    async with tether.connect(signal_server.url, policy=policy(max_delay=0.05), send_buffer=8, **FAST) as c:
        signal_server.listening(False)
        await drop(signal_server)
        await eventually(lambda: c.state != "connected", what="the drop")
        for i in range(4):
            assert returns_at_once(c.send(f"m{i}"))
        waiting = asyncio.ensure_future(c.send("m4"))  # a sender awaiting each send never meets SendBufferFull
        await asyncio.sleep(300 * MS)  # the server stays down: nothing may resolve meanwhile
        assert not waiting.done(), "with half of send_buffer unconfirmed send() waits for confirmations"
        signal_server.listening(True)
        await asyncio.wait_for(waiting, 10)
        got = [await asyncio.wait_for(c.recv(), 10) for _ in range(5)]
    assert got == [f"m{i}" for i in range(5)]


async def test_pending_sends_raise_when_giving_up(signal_server):
    c = await tether.connect(signal_server.url, policy=policy(max_attempts=3), **FAST)
    signal_server.listening(False)
    await drop(signal_server)
    # the drop is asynchronous: a message sent before it could be confirmed
    await eventually(lambda: c.state != "connected", what="the drop")
    sent = c.send("never")  # queued: resolves at once; flush() reports the give-up
    with pytest.raises(tether.GaveUp) as info:
        await asyncio.wait_for(c.flush(), 10)
    assert info.value.attempts == 4
    await asyncio.gather(sent, return_exceptions=True)
    with pytest.raises(tether.GaveUp):
        await c.send("after")
    await c.aclose()


async def test_sends_after_close_raise_connection_closed(signal_server):
    c = await tether.connect(signal_server.url, **FAST)
    await c.aclose()
    with pytest.raises(tether.ConnectionClosed):
        await c.send("late")
    with pytest.raises(tether.ConnectionClosed):
        await c.recv()
    assert [m async for m in c] == []


async def test_aclose_is_bounded_when_black_holed(signal_server):
    c = await tether.connect(signal_server.url, ping_interval=30, ping_timeout=30, close_timeout=0.5)
    signal_server.freeze()
    t0 = time.monotonic()
    await c.aclose()
    assert time.monotonic() - t0 < 3.0
    assert c.state == "closed"


async def test_aclose_while_reconnecting_returns_promptly(signal_server):
    c = await tether.connect(signal_server.url, policy=tether.Backoff(30, jitter="none"), quiet_attempts=0, **FAST)
    signal_server.listening(False)
    await drop(signal_server)
    await eventually(lambda: c.state == "reconnecting", what="reconnecting")
    t0 = time.monotonic()
    await c.aclose()
    assert time.monotonic() - t0 < 1.0


async def test_slow_handshake_is_bounded_by_open_timeout(signal_server):
    signal_server.slow_handshake(5)
    t0 = time.monotonic()
    with pytest.raises(tether.GaveUp) as info:
        await tether.connect(signal_server.url, policy=policy(max_attempts=1), open_timeout=0.3)
    assert time.monotonic() - t0 < 3.0
    assert "timed out" in str(info.value)


async def test_accept_then_drop_escalates_without_hot_loop(signal_server):
    signal_server.accept_then_drop()
    t0 = time.monotonic()
    # each handshake succeeds, so the connection opens; the flapping then exhausts the budget
    c = await tether.connect(
        signal_server.url, policy=tether.Backoff(0.05, 2, max_delay=0.2, jitter="none", max_attempts=4), **FAST
    )
    with pytest.raises(tether.GaveUp) as info:
        async for _ in c:
            pass
    assert time.monotonic() - t0 >= 0.05 + 0.1 + 0.2 - 0.05
    assert signal_server.stats()["handshakes"] == 5
    assert info.value.attempts == 5 and info.value.reason == "attempt budget exhausted"
    await c.aclose()


async def test_single_blip_logs_below_warning(signal_server, tether_logs):
    async with tether.connect(signal_server.url, policy=policy(), **FAST) as c:
        await drop(signal_server)
        await c.send("x")
        assert await c.recv() == "x"
        # confirmed before the close: a close cut short by close_timeout would warn about it
        await c.flush()
    recs = records(tether_logs)
    assert recs, "expected DEBUG records"
    assert max(r.levelno for r in recs) < logging.WARNING, [(r.levelname, r.getMessage()) for r in recs]


async def test_secrets_never_reach_logs_events_or_errors(signal_server, tether_logs):
    secret = "eyJhbGciOiJIUzI1NiJ9.SECRETPAYLOAD.sig"
    url = f"{signal_server.url}?access_token={secret}"
    got = []
    signal_server.refuse(503, times=1)
    c = tether.connect(url, headers={"Authorization": f"Bearer {secret}"}, policy=policy(max_attempts=2), **FAST)
    assert secret not in repr(c) and secret not in c.url
    await c
    watcher = asyncio.ensure_future(collect(c.events(), got))
    signal_server.refuse(403)
    await drop(signal_server)
    with pytest.raises(tether.GaveUp) as info:
        async for _ in c:
            pass
    await asyncio.wait_for(watcher, 5)
    texts = [r.getMessage() for r in records(tether_logs)]
    texts += [str(v) for r in records(tether_logs) for v in r.__dict__.values()]
    texts += [repr(e) for e in got] + [str(info.value), repr(info.value.last_error), repr(c), str(c.stats())]
    leaked = [t for t in texts if secret in t]
    assert not leaked, leaked
    assert any("access_token=REDACTED" in t for t in texts)
    await c.aclose()


async def test_wss_to_a_plain_server_fails_clearly(signal_server):
    url = signal_server.url.replace("ws://", "wss://")
    with pytest.raises(tether.GaveUp) as info:
        await tether.connect(url, policy=policy(max_attempts=1), open_timeout=2)
    assert "TLS" in str(info.value) or "handshake" in str(info.value)


async def test_cancel_pending_recv_and_connect(signal_server):
    c = await tether.connect(signal_server.url, **FAST)
    t = asyncio.ensure_future(c.recv())
    await asyncio.sleep(50 * MS)  # the receive is pending on the Rust side when it is cancelled
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    await c.send("still works")
    assert await c.recv() == "still works"
    await c.aclose()

    signal_server.listening(False)
    pending = tether.connect(signal_server.url, policy=tether.Backoff(0.05), **FAST)
    t = asyncio.ensure_future(pending._start())
    await asyncio.sleep(200 * MS)  # attempts are refused and retried while the connect is cancelled
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    await asyncio.wait_for(pending.aclose(), 2)


async def test_first_message_timeout(signal_server):
    # no greeting: the attempt does not count as connected and fails after the bound
    t0 = time.monotonic()
    with pytest.raises(tether.GaveUp) as info:
        await tether.connect(signal_server.url, first_message_timeout=0.2, policy=policy(max_attempts=1), **FAST)
    assert "first message" in str(info.value)
    assert time.monotonic() - t0 < 3.0
    # with a greeting it is the first message delivered
    signal_server.greet("join-response")
    async with tether.connect(signal_server.url, first_message_timeout=2, **FAST) as c:
        assert await c.recv() == "join-response"


async def test_outage_deadline(signal_server):
    c = await tether.connect(
        signal_server.url, policy=tether.Backoff(0.05, max_delay=0.1, jitter="none", deadline=0.6), **FAST
    )
    signal_server.listening(False)
    await drop(signal_server)
    t0 = time.monotonic()
    with pytest.raises(tether.GaveUp) as info:
        await c.recv()
    assert info.value.reason == "deadline exceeded"
    assert time.monotonic() - t0 < 0.6 + 2.0
    await c.aclose()


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(url="http://x/"), ValueError),
        (dict(url="not a url"), ValueError),
        (dict(url=42), TypeError),
        (dict(url="ws://h/", ping_interval=-1), ValueError),
        (dict(url="ws://h/", ping_timeout=0), ValueError),
        (dict(url="ws://h/", open_timeout="1"), TypeError),
        (dict(url="ws://h/", ladder="resume"), TypeError),
        (dict(url="ws://h/", ladder=()), ValueError),
        (dict(url="ws://h/", headers={"Bad Header": "x"}), ValueError),
        (dict(url="ws://h/", headers={"X": "a\nb"}), ValueError),
        (dict(url="ws://h/", send_buffer=0), ValueError),
        (dict(url="ws://h/", url_for=5), TypeError),
        (dict(url="ws://h/", policy="fast"), TypeError),
    ],
)
def test_bad_input(kwargs, exc):
    with pytest.raises(exc):
        tether.connect(**kwargs)


async def test_send_bad_type(signal_server):
    async with tether.connect(signal_server.url, **FAST) as c:
        with pytest.raises(TypeError):
            await c.send(123)
        with pytest.raises(TypeError):
            await c.send({"a": 1})


async def test_cancelled_recv_never_loses_a_message(signal_server):
    """asyncio.wait_for(conn.recv(), tiny) cancels receives while messages stream in: none may vanish."""
    n = 400
    async with tether.connect(signal_server.url, **FAST) as c:
        await signal_server.wait_for(1)
        got = []

        async def pusher():
            for i in range(n):
                signal_server.push(f"m{i}")
                if i % 7 == 0:
                    await asyncio.sleep(0.5 * MS)

        p = asyncio.ensure_future(pusher())
        deadline = time.monotonic() + 20
        while len(got) < n and time.monotonic() < deadline:
            try:
                got.append(await asyncio.wait_for(c.recv(), 0.0002))
            except asyncio.TimeoutError:
                pass
        await p
    assert got == [f"m{i}" for i in range(n)]


async def test_cancelled_event_iteration_never_loses_an_event(signal_server):
    c = await tether.connect(signal_server.url, policy=policy(), **FAST)
    stream = c.events()
    seen = []
    for _ in range(20):
        # the server registers a connection only after its handshake: right after Reconnected it may
        # not count ours yet
        await eventually(lambda: signal_server.drop() == 1, 5, what="the server registering the connection")
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:
            try:
                e = await asyncio.wait_for(stream.__anext__(), 0.0002)
            except asyncio.TimeoutError:
                continue
            seen.append(e)
            if isinstance(e, ev.Reconnected):
                break
    await c.aclose()
    assert sum(isinstance(e, ev.ConnectionLost) for e in seen) == 20
    assert sum(isinstance(e, ev.Reconnected) for e in seen) == 20
