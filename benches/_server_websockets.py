"""The same benchmark server as _server.py, written with the websockets library instead of picows, to check
that no ratio depends on the server's library (`SERVER=websockets`). Same paths, same stdin/stdout protocol.

Its own per-message cost is higher than picows', so on 2 cores it caps the send and echo figures of the fastest
clients sooner; compression is off (the picows server negotiates none either), unless it is started with the
argument `deflate`: then it agrees to permessage-deflate as websockets does by default (the harness runs such a
second server for the compressed signaling workload).
"""

from __future__ import annotations

import asyncio
import sys
import urllib.parse

from _serving import Herd, frame_bytes
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

HERD = Herd()
HIGH_WATER = 256 * 1024


async def echo(ws: ServerConnection) -> None:
    async for m in ws:
        await ws.send(m)


async def sink(ws: ServerConnection) -> None:
    count = 0
    async for m in ws:
        if m == "count":
            await ws.send(str(count))
        else:
            count += 1


async def flood(ws: ServerConnection) -> None:
    n, size = map(int, (await ws.recv()).split())
    one = frame_bytes(size)
    per = max(1, 65536 // len(one))
    chunk = one * per
    out = ws.transport
    left = n
    while left > 0 and not out.is_closing():
        k = min(per, left)
        out.write(chunk if k == per else one * k)
        left -= k
        while out.get_write_buffer_size() > HIGH_WATER and not out.is_closing():
            await asyncio.sleep(0.0005)
        await asyncio.sleep(0)  # let pings and closes through
    await ws.wait_closed()


async def idle(ws: ServerConnection) -> None:
    await ws.wait_closed()


async def herd(ws: ServerConnection) -> None:
    HERD.joined(ws, ws.transport.abort)
    try:
        await ws.wait_closed()
    finally:
        HERD.left(ws)


async def control(ws: ServerConnection) -> None:
    async for m in ws:
        await ws.send(HERD.command(m))


ROUTES = {"/echo": echo, "/sink": sink, "/flood": flood, "/idle": idle, "/herd": herd, "/control": control}


async def handler(ws: ServerConnection) -> None:
    route = ROUTES.get(urllib.parse.urlsplit(ws.request.path).path)
    if route is None:
        await ws.close(1008, "unknown path")
        return
    try:
        await route(ws)
    except ConnectionClosed:
        pass


async def main() -> None:
    loop = asyncio.get_running_loop()
    compression = "deflate" if sys.argv[1:] == ["deflate"] else None
    async with serve(handler, "127.0.0.1", 0, compression=compression, backlog=4096) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # the harness closes our stdin to stop us


if __name__ == "__main__":
    asyncio.run(main())
