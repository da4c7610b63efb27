"""Seed 000 rewritten on tether.Reconnector: livekit-agents' Worker._run control-plane loop.

The original loop reset `retry_count` the moment a connection succeeded, so every drop of the
long-lived control-plane WebSocket logged "failed to connect to livekit, retrying in 0s" at WARNING,
and an accept-then-drop server hot-looped at 0 s. With Reconnector:

* the first immediate reconnect after a blip logs at DEBUG (no alert for self-healing churn);
* backed-off retries log WARNING, giving up logs ERROR and raises tether.GaveUp;
* the counter resets only after the connection stayed up `stable_after` seconds.

Run it (uses the `websockets` client against tether's embedded SignalServer):
    .venv/bin/python examples/livekit_worker_loop.py
"""

from __future__ import annotations

import asyncio
import logging

import tether
from tether.testing import SignalServer

try:
    import websockets
except ImportError:  # pragma: no cover
    raise SystemExit("this example needs the `websockets` package (make venv installs it)") from None

log = logging.getLogger("worker")


class Worker:
    def __init__(self, url: str, max_retry: int = 16, stable_after: float = 10.0) -> None:
        self._url = url
        self._reconnector = tether.Reconnector(
            tether.Backoff(initial=0.5, factor=2.0, max_delay=10.0, jitter="equal", max_attempts=max_retry),
            stable_after=stable_after,
            name="livekit",
        )
        self.jobs_seen = 0

    async def _session(self) -> None:
        """One control-plane connection lifetime (was: ws_connect + _run_ws)."""
        async with websockets.connect(self._url, open_timeout=10, ping_interval=5, ping_timeout=5) as ws:
            self._reconnector.connected()  # handshake done: start the stability clock
            await ws.send('{"register": "worker"}')
            async for _msg in ws:
                self.jobs_seen += 1
        # the server closed the socket: that is a loss, let the reconnector decide
        raise ConnectionError("control-plane WebSocket closed by the server")

    async def run(self) -> None:
        try:
            await self._reconnector.run(self._session)
        except tether.GaveUp as e:
            log.error("worker stopping: %s", e)
            raise


async def main() -> None:
    logging.basicConfig(level=logging.DEBUG, format="%(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    tether.sync_log_level()
    async with SignalServer() as srv:
        # stable_after shortened so the demo phases are seconds apart, not minutes
        worker = Worker(srv.url, max_retry=4, stable_after=1.0)
        task = asyncio.ensure_future(worker.run())
        await srv.wait_for(1)

        print("\n-- a blip: the server drops us once; expect DEBUG only")
        srv.drop()
        await asyncio.sleep(1.5)  # let the new connection become stable (counter resets)

        print("\n-- an outage: the server refuses for a while; expect WARNINGs, then INFO on recovery")
        srv.refuse(503, times=2)
        srv.drop()
        await asyncio.sleep(4)

        print("\n-- a dead server: give-up at ERROR with tether.GaveUp")
        srv.listening(False)
        srv.drop()
        try:
            await asyncio.wait_for(task, 30)
        except tether.GaveUp:
            pass


if __name__ == "__main__":
    asyncio.run(main())
