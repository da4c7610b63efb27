"""A signaling client on tether.connect instead of a WebSocket that just stops on loss.

* loss on close, error after handshake or ping timeout is reported once (ConnectionLost) and repaired;
* the ladder tries "resume" first (url_for mints a resume URL), then "restart" with a fresh token;
* sends made during an outage are delivered in order after the reconnect, or raise;
* aclose() returns within close_timeout even if the server is black-holed.

Run: .venv/bin/python examples/signaling_client.py
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import tether
from tether.testing import SignalServer

_tokens = itertools.count(1)


async def mint_token() -> str:
    await asyncio.sleep(0)  # e.g. call your token service
    return f"jwt-{next(_tokens)}"


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")
    tether.sync_log_level()
    async with SignalServer() as srv:
        session_id = "sid-123"

        async def url_for(strategy: str, attempt: int) -> str:
            token = await mint_token()
            if strategy == "resume":
                return f"{srv.url}rtc?access_token={token}&reconnect=1&sid={session_id}"
            return f"{srv.url}rtc?access_token={token}"

        async with tether.connect(
            srv.url,
            url_for=url_for,
            ladder=("resume", "restart"),
            ping_interval=1.0,
            ping_timeout=1.0,
            close_timeout=1.0,
        ) as conn:

            async def show_events():
                async for ev in conn.events():
                    print("event:", ev)

            watcher = asyncio.ensure_future(show_events())
            await conn.send('{"join": {}}')
            print("got:", await conn.recv())

            srv.drop()  # unexpected loss
            await conn.send('{"offer": "..."}')  # delivered after the reconnect
            print("got:", await conn.recv())
            print("stats:", conn.stats())
            print("handshake paths seen by the server:", srv.requests())
        await watcher


if __name__ == "__main__":
    asyncio.run(main())
