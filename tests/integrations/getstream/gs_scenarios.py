"""getstream signaling fault scenarios (TCP abort, black hole), run in-process by the tests and, for other getstream
versions, as a script: `python gs_scenarios.py reset|blackhole [--tether]` prints one JSON line.

The client is made by getstream's own `connect_websocket` against the fake SFU behind a ChaosProxy.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/, for support

from support.fake_sfu import FakeSfu
from tether.testing import ChaosProxy

# detection bounds used with tether: health check every 0.3 s, lost after 0.6 s without a reply
HEALTH = {"health_interval": 0.3, "health_timeout": 0.6}


async def run(fault: str, *, blackhole_for: float = 1.5, settle: float = 8.0) -> dict:
    """Inject `fault` ("reset" = TCP RST, "blackhole" = silence for `blackhole_for` s) on a joined
    client; report joins, the time from the fault to the rejoin, connection_lost events, thread errors."""
    from getstream.video.rtc import connection_utils as cu

    thread_errors: list[str] = []
    old_hook = threading.excepthook
    threading.excepthook = lambda a: thread_errors.append(f"{a.exc_type.__name__}: {a.exc_value}")
    try:
        async with FakeSfu() as sfu:
            proxy = ChaosProxy(sfu.address)
            await proxy.start()
            try:
                ws, first = await cu.connect_websocket(
                    token="tok", ws_url=proxy.url(path="/ws"), session_id="sess", options=cu.ConnectionOptions()
                )
                ws.ping_interval = 0.3  # the shipped client's own health-check period (ignored with tether)
                lost: list[str] = []

                async def on_lost(reason: str) -> None:
                    lost.append(reason)

                ws.on_event("connection_lost", on_lost)
                await asyncio.sleep(0.3)
                t0 = time.monotonic()
                if fault == "reset":
                    proxy.reset()
                else:
                    proxy.blackhole()
                    await asyncio.sleep(blackhole_for)
                    proxy.heal()
                end = time.monotonic() + settle
                while time.monotonic() < end and len(sfu.joins) < 2:
                    await asyncio.sleep(0.01)
                rejoin_after = sfu.joins[1][0] - t0 if len(sfu.joins) > 1 else None
                await asyncio.sleep(0.3)
                result = {
                    "client": f"{type(ws).__module__}.{type(ws).__qualname__}",
                    "first": first.WhichOneof("event_payload"),
                    "joins": len(sfu.joins),
                    "fast_reconnect": [fast for _, fast in sfu.joins],
                    "rejoin_after": rejoin_after,
                    "running": bool(ws.running),
                    "connection_lost": lost,
                    "thread_errors": thread_errors,
                }
                started = time.monotonic()
                ws.close()
                result["close_took"] = time.monotonic() - started
                return result
            finally:
                await proxy.aclose()
    finally:
        threading.excepthook = old_hook


if __name__ == "__main__":
    if "--tether" in sys.argv:
        from tether.integrations import getstream

        getstream.install(**HEALTH)
    print(json.dumps(asyncio.run(run(sys.argv[1]))))
