"""The server stops answering (a frozen edge node: socket open, no pongs). tether's ping
check declares the loss within ping_interval + ping_timeout, then climbs the strategy ladder: the
"resume" attempt is refused, "restart" (with a freshly minted token from url_for) succeeds."""

from __future__ import annotations

import tether
from tether.testing import SignalServer

from ._ws import until, watch

TITLE = "server stops answering pings: detected by the ping deadline, resume refused -> restart"


async def run(tl):
    async with SignalServer() as srv:
        minted = []

        def url_for(strategy, attempt):
            token = f"tok-{strategy}-{attempt}"
            minted.append(token)
            return f"{srv.url}rtc?access_token={token}&{strategy}=1"

        conn = await tether.connect(
            srv.url,
            url_for=url_for,
            ping_interval=0.25,
            ping_timeout=0.25,
            policy=tether.Backoff(0.05, jitter="none"),
            quiet_jitter=0,  # the resume attempt starts at once (see ws_server_close)
            name="signal",
        )
        w = watch(conn, tl)
        try:
            await srv.wait_for(1)
            tl.fault("server freezes: stops reading, no pongs, socket stays open")
            srv.freeze()
            srv.refuse(503, times=1)  # the resume attempt will be refused
            await until(lambda: conn.state == "reconnecting")
            srv.unfreeze()
            await until(lambda: conn.stats()["connects"] == 2 and conn.state == "connected")
            await until(lambda: tl.recovered_at is not None)  # the watcher has seen Reconnected
            s = tl.summary()
            tl.note(
                f"detected {s['detect_ms']:.0f} ms after the freeze (ping_interval + ping_timeout = 500 ms at most, "
                f"plus timer and thread hand-off slack); urls minted: {minted}"
            )
            assert s["detect_ms"] <= 500 + 100
            assert tl.seen("Connecting", "'resume'") == 1 and tl.seen("Connecting", "'restart'") == 1, tl.marks
        finally:
            await conn.aclose()
        await w
