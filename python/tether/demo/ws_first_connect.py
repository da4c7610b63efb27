"""A first connect that cannot succeed is told so instead of retrying forever: a URL that is not a
WebSocket endpoint (the server answers 404) raises at once, and a server that is down raises once
`connect_timeout` (30 s by default, 1 s here) has passed. Once a connection has succeeded, the same
faults are outages that the policy retries."""

from __future__ import annotations

import socket
import time

import tether
from tether.testing import SignalServer

TITLE = "first connect to a wrong URL (404) or a down server: GaveUp at once / by connect_timeout"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run(tl):
    async with SignalServer() as srv:
        srv.refuse(404)
        tl.fault("the URL is not a WebSocket endpoint: the server answers HTTP 404")
        conn = tether.connect(f"{srv.url}no-such-room", open_timeout=2)
        w = tl.watch(conn, lane="wrong URL")
        try:
            await conn
        except tether.GaveUp as e:
            tl.detected(f"GaveUp after {e.attempts} attempt: {e}")
            assert e.attempts == 1 and e.last_error.http_status == 404
        else:
            raise AssertionError("expected GaveUp")
        await w

    url = f"ws://127.0.0.1:{closed_port()}/"
    tl.fault("the server is down: every TCP connect is refused")
    t0 = time.monotonic()
    conn = tether.connect(url, connect_timeout=1)
    w = tl.watch(conn, lane="server down")
    try:
        await conn
    except tether.GaveUp as e:
        took = time.monotonic() - t0
        tl.detected(f"GaveUp after {took * 1000:.0f} ms, {e.attempts} attempts ({e.reason}): {e.last_error}")
        assert e.reason == "connect_timeout exceeded" and took < 1.5, (e, took)
    else:
        raise AssertionError("expected GaveUp")
    await w
