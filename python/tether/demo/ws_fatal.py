"""Fatal errors are not retried: an expired token (HTTP 401) gives up at once with a typed error
whose message names the cause; the token never appears in logs, events or the exception."""

from __future__ import annotations

import tether
from tether.testing import SignalServer

TITLE = "HTTP 401 on the handshake: GaveUp at once, token redacted everywhere"


async def run(tl):
    async with SignalServer() as srv:
        srv.refuse(401)
        tl.fault("server rejects the (expired) token with HTTP 401")
        conn = tether.connect(f"{srv.url}rtc?access_token=eyJ.SECRET.sig", name=None)
        w = tl.watch(conn, lane="signal")
        try:
            await conn
        except tether.GaveUp as e:
            tl.detected(f"GaveUp: {e}")
            assert "SECRET" not in str(e) and e.attempts == 1
        else:
            raise AssertionError("expected GaveUp")
        await w
