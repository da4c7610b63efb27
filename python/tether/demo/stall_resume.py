"""Stuck reconnecting: after a ping timeout the "resume" attempt stalls (handshake never completes).
Without a progress deadline the SDK sat silent ~65 s. Here the attempt is abandoned at open_timeout
and the ladder escalates to "restart"; a Watchdog dwell alarm fires if reconnecting lasts too long."""

from __future__ import annotations

import tether
from tether.testing import SignalServer

from ._ws import until, watch

TITLE = "stalled resume: attempt abandoned at its deadline, ladder escalates to restart"


async def run(tl):
    async with SignalServer() as srv:
        wd = tether.Watchdog("signal")
        wd.dwell("reconnecting", 0.4)  # production: 15-20 s
        conn = await tether.connect(
            srv.url,
            ping_interval=0.2,
            ping_timeout=0.2,
            open_timeout=0.5,
            policy=tether.Backoff(0.05, jitter="none"),
            quiet_jitter=0,  # the resume attempt starts at once (see ws_server_close)
            watchdog=wd,
            name="signal",
        )
        w = watch(conn, tl)
        try:
            await srv.wait_for(1)
            tl.fault("network blip: server goes silent, and the resume handshake will hang")
            srv.freeze()
            srv.slow_handshake(30)
            # the resume attempt's TCP connection is accepted, and its handshake held for 30 s
            assert await srv.wait_for(2, key="tcp_accepts")
            srv.behave()  # new handshakes complete again: "restart" will succeed
            await until(lambda: conn.stats()["connects"] == 2 and conn.state == "connected", timeout=10)
            await until(lambda: tl.recovered_at is not None)  # the watcher has seen Reconnected
            s = tl.summary()
            assert tl.seen("Connecting", "'resume'") == 1 and tl.seen("Connected", "attempt=3") == 1, tl.marks
            tl.note(
                f"recovered {s['recover_ms']:.0f} ms after the blip: detection ({s['detect_ms']:.0f} ms) + the "
                f"stalled resume abandoned at open_timeout (500 ms) + restart; the seed saw ~65 000 ms"
            )
            assert s["recover_ms"] < 3000
        finally:
            await conn.aclose()
        wd.close()
        await w
