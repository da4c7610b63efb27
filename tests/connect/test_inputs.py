"""tether.connect input and call-time behaviour against servers tether did not write (the `websockets`
server): port validation, use before start, send queued at call time, socket option failures logged."""

import asyncio
import inspect
import logging

import pytest
import websockets

import tether
from support import FAST, records


@pytest.fixture
async def echo_server():
    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", 0) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"


@pytest.mark.parametrize("port", ["99999", "65536", "0", "123456789"])
def test_port_outside_range_is_value_error(port):
    with pytest.raises(ValueError, match=r"not a number in 1\.\.65535"):
        tether.connect(f"ws://127.0.0.1:{port}/")


def test_an_empty_name_is_a_value_error():
    """As ``Reconnector(name="")``. Before, it was taken, and measured under an empty label, which
    Prometheus drops."""
    with pytest.raises(ValueError, match="name must not be empty"):
        tether.connect("ws://127.0.0.1:9/", name="")


async def test_port_from_url_for_outside_range_is_fatal(echo_server):
    conn = tether.connect(echo_server, url_for=lambda s, n: "ws://127.0.0.1:70000/", **FAST)
    with pytest.raises(tether.GaveUp, match=r"not a number in 1\.\.65535"):
        await asyncio.wait_for(conn._start(), 10)


async def test_recv_and_send_before_start_raise_at_once():
    conn = tether.connect("ws://127.0.0.1:9/")
    with pytest.raises(RuntimeError, match="never started"):
        await asyncio.wait_for(conn.recv(), 5)
    with pytest.raises(RuntimeError, match="never started"):
        conn.send("x")
    with pytest.raises(RuntimeError, match="never started"):
        await asyncio.wait_for(conn.__anext__(), 5)
    await conn.aclose()
    # a closed connection says it is closed
    with pytest.raises(tether.ConnectionClosed):
        await asyncio.wait_for(conn.recv(), 5)


async def test_send_queues_and_raises_buffer_full_at_call_time(echo_server):
    async with tether.connect(echo_server, send_buffer=3, **FAST) as conn:
        # never awaited: the calls alone queue the messages, in call order
        pending = [conn.send(f"m{i}") for i in range(3)]
        with pytest.raises(tether.SendBufferFull):
            conn.send("one too many")
        assert [await asyncio.wait_for(conn.recv(), 5) for _ in range(3)] == ["m0", "m1", "m2"]
        await asyncio.wait_for(asyncio.gather(*pending), 5)


async def test_keepalive_setup_error_is_logged_at_debug_with_reason(echo_server, tether_logs):
    # Linux caps the keepalive idle time at 32767 s, so this ping_interval makes setsockopt fail
    async with tether.connect(echo_server, ping_interval=40000, ping_timeout=1, open_timeout=2) as conn:
        await conn.send("x")
        assert await asyncio.wait_for(conn.recv(), 5) == "x"
    logged = [r for r in records(tether_logs) if "keepalive" in r.getMessage()]
    assert logged, [r.getMessage() for r in records(tether_logs)]
    assert logged[0].levelno == logging.DEBUG
    assert "Invalid argument" in logged[0].getMessage(), logged[0].getMessage()


def test_connect_defaults_come_from_the_rust_configuration():
    """One source for each default: tether.connect's signature is the native constructor's, whose
    defaults are the Rust configuration's; the options it shares with the Reconnector have its defaults
    unless a connection needs others."""
    params = inspect.signature(tether.connect).parameters
    assert inspect.signature(tether._native.Connection).parameters == params
    rec = tether.Reconnector()
    for name in ("quiet_jitter", "quiet_attempts", "stable_after", "policy"):
        assert params[name].default == getattr(rec, name), name
    assert params["ladder"].default == ("resume", "restart")
    assert inspect.signature(tether.connect).return_annotation is tether.Connection
