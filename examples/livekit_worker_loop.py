"""Rewritten on tether.Reconnector: livekit-agents' Worker control-plane loop, step-wise.

The original loop reset `retry_count` the moment a connection succeeded, so every drop of the
long-lived control-plane WebSocket logged "failed to connect to livekit, retrying in 0s" at WARNING,
and an accept-then-drop server hot-looped at 0 s. The loop keeps its shape (connect, register, run the
socket; on any error, back off); only the policy lines change:

* `r.connected()` once registration is acknowledged: the counter resets only after the connection then
  stayed up `stable_after` seconds, so a server that accepts and drops escalates instead of hot-looping;
* `await r.backoff(e)` instead of the hand-written delay and `logger.warning`: the first retry after a
  blip waits a short random spread and logs at DEBUG, backed-off retries log WARNING, recovery after an
  outage logs INFO once stable, giving up logs ERROR and raises tether.GaveUp;
* `logger="worker"`: the records stay under the framework's logger, so its filters keep working.

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
        self._closed = False
        self._reconnector = tether.Reconnector(
            tether.Backoff(initial=0.5, factor=2.0, max_delay=10.0, jitter="equal", max_attempts=max_retry),
            stable_after=stable_after,
            name="livekit",
            logger=log,
        )
        self.jobs_seen = 0

    async def run(self) -> None:
        """The control-plane loop (was: Worker._connection_task)."""
        while not self._closed:
            try:
                async with websockets.connect(self._url, open_timeout=10, ping_interval=5, ping_timeout=5) as ws:
                    await ws.send('{"register": "worker"}')
                    self._reconnector.connected()  # registered: start the stability clock
                    async for _msg in ws:
                        self.jobs_seen += 1
                raise ConnectionError("worker connection closed unexpectedly")
            except Exception as e:
                if self._closed:
                    break
                try:
                    await self._reconnector.backoff(e)
                except tether.GaveUp as g:
                    log.error("worker stopping: %s", g)
                    raise

    def close(self) -> None:
        self._closed = True


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
        await asyncio.sleep(2)  # let the new connection become stable (counter resets)

        print("\n-- an outage: the server refuses for a while; expect WARNINGs, then INFO once stable")
        srv.refuse(503, times=2)
        srv.drop()
        await asyncio.sleep(5)

        print("\n-- a dead server: give-up at ERROR with tether.GaveUp")
        srv.listening(False)
        srv.drop()
        try:
            await asyncio.wait_for(task, 30)
        except tether.GaveUp:
            pass


if __name__ == "__main__":
    asyncio.run(main())
