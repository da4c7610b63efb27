"""What a person reads: counts agree with their noun ("after 1 attempt"), an unnamed Reconnector's messages
name no target (not "failed to connect to reconnector"), and no Rust debug text (`Some("http")`) reaches
an exception or a repr."""

import asyncio
import logging
import sys

import pytest

import tether
from support import drop
from tether.testing import SignalServer

RUST_DEBUG = ("Some(", "Ok(", "Err(", "Duration {", "\\u{")


def rust_free(text: str) -> bool:
    return not any(d in text for d in RUST_DEBUG)


async def test_one_attempt_is_singular_in_the_exception_and_the_log(tether_logs):
    r = tether.Reconnector(tether.Backoff(0.01, max_attempts=0), name="ctl")

    async def refused():
        raise OSError("refused")

    with pytest.raises(tether.GaveUp) as info:
        await r.run(refused)
    assert "after 1 attempt over" in str(info.value), info.value
    errors = [r.getMessage() for r in tether_logs.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "after 1 attempt over" in errors[0], errors
    assert not any("1 attempts" in t for t in [str(info.value), *errors])


async def test_several_attempts_stay_plural(tether_logs):
    r = tether.Reconnector(tether.Backoff(0.01, max_attempts=2, jitter="none"), quiet_jitter=0, name="ctl")

    async def refused():
        raise OSError("refused")

    with pytest.raises(tether.GaveUp) as info:
        await r.run(refused)
    assert "after 3 attempts over" in str(info.value), info.value


async def test_an_unnamed_reconnector_names_no_target(tether_logs):
    r = tether.Reconnector(tether.Backoff(0.01, max_attempts=1, jitter="none"), quiet_jitter=0)
    assert r.name is None and "name=None" in repr(r)

    async def refused():
        raise OSError("refused")

    with pytest.raises(tether.GaveUp) as info:
        await r.run(refused)
    texts = [rec.getMessage() for rec in tether_logs.records if rec.name == "tether.reconnect"]
    texts.append(str(info.value))
    assert any(t.startswith("failed to connect: OSError: refused") for t in texts), texts
    assert str(info.value).startswith("gave up after 2 attempts over"), info.value
    assert not any("reconnector" in t for t in texts), texts
    with pytest.raises(ValueError, match="name must not be empty"):
        tether.Reconnector(name="")


async def test_a_named_reconnector_names_its_target(tether_logs):
    r = tether.Reconnector(tether.Backoff(0.01, max_attempts=0), name="control plane")
    with pytest.raises(tether.GaveUp) as info:
        r.failed(OSError("refused"))
    assert str(info.value).startswith("gave up on control plane after 1 attempt"), info.value
    assert r.name == "control plane" and 'name="control plane"' in repr(r)


async def test_pool_and_gate_counts_agree_with_their_noun():
    pool = tether.ProcPool(
        command=[sys.executable, "-m", "tether.worker", "--fail"],
        acquire_attempts=1,
        respawn=tether.Backoff(0.01, jitter="none"),
    )
    try:
        with pytest.raises(tether.PoolExhausted) as info:
            await pool.acquire(timeout=30)
        assert "after 1 acquire attempt:" in str(info.value), info.value
    finally:
        await pool.aclose()

    gate = tether.ReadinessGate()

    async def broken(job_id, attempt):
        raise RuntimeError("agent service down")

    with pytest.raises(tether.NotReady) as nr:
        await gate.dispatch("j1", broken, policy=tether.Backoff(0.01, max_attempts=0))
    assert "(after 1 attempt)" in str(nr.value), nr.value


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: tether.connect("http://example.invalid/"), 'URL scheme must be ws or wss, got "http"'),
        (lambda: tether.connect("example.invalid"), "got no scheme in example.invalid"),
        (lambda: tether.connect("ws://h/", ladder=[("resume", 0)]), 'ladder rung "resume"'),
        (lambda: tether.testing.ChaosProxy("nohost"), 'upstream must be "host:port"'),
    ],
)
def test_errors_carry_no_rust_debug_text(make, expected):
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert expected in str(info.value), info.value
    assert rust_free(str(info.value)), info.value


async def test_reprs_carry_no_rust_debug_text():
    wd = tether.Watchdog("w")
    live = wd.liveness("audio", 5)
    live.pause()
    shown = [repr(live), repr(tether.Backoff()), repr(tether.Reconnector()), repr(tether.Reconnector(name="x"))]
    live.beat()
    shown.append(repr(live))
    async with SignalServer() as srv:
        shown.append(repr(srv))
        conn = tether.connect(srv.url)
        shown.append(repr(conn))
    wd.close()
    assert "idle=None" in shown[0], shown[0]
    assert all(rust_free(s) for s in shown), shown


async def test_a_refused_first_connect_is_not_reported_as_closed():
    # a port nobody listens on: every TCP connect is refused
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(tether.GaveUp) as info:
        await tether.connect(f"ws://127.0.0.1:{port}/", connect_timeout=0.5, quiet_jitter=0)
    last = info.value.last_error
    assert type(last) is tether.ConnectFailed, repr(last)
    assert isinstance(last, tether.ConnectionClosed)  # `except ConnectionClosed` still catches it
    assert "refused" in str(last).lower() and last.http_status is None
    assert info.value.__cause__ is last


async def test_a_connection_that_opened_ends_as_closed_not_as_never_opened():
    async with SignalServer() as srv:
        conn = await tether.connect(
            srv.url, policy=tether.Backoff(0.01, max_attempts=1, jitter="none"), quiet_jitter=0, ping_interval=0.2
        )
        try:
            srv.listening(False)  # the server goes away: every reconnect is refused
            await drop(srv)
            with pytest.raises(tether.GaveUp) as info:
                await asyncio.wait_for(conn.recv(), 10)
            assert type(info.value.last_error) is tether.ConnectionClosed, repr(info.value.last_error)
        finally:
            await conn.aclose()


async def test_http_refusal_of_a_first_connect_is_connect_failed_with_its_status():
    async with SignalServer() as srv:
        srv.refuse(404)
        with pytest.raises(tether.GaveUp) as info:
            await tether.connect(f"{srv.url}nope")
    last = info.value.last_error
    assert isinstance(last, tether.ConnectFailed) and last.http_status == 404
