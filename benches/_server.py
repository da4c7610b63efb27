"""The benchmark server: one separate process, written with picows, that none of the clients under test wrote.

Every client library talks to this same process on loopback; what it does depends on the request path:

  /echo           sends every data message straight back
  /sink           counts data messages; a text message "count" is answered with the count so far (it arrives
                  after every message sent before it, so the reply is the number the server really received)
  /flood          the first data message "N SIZE" makes it write N binary messages of SIZE bytes as fast as
                  the socket accepts them (pre-encoded frames, honouring write back-pressure), then idle
  /idle           nothing (memory per idle connection)
  /herd           registered for the herd test; handshake times after a drop are recorded
  /control        text commands for the harness: "herd" -> connected herd count; "drop N" -> abort every
                  herd connection at once (TCP close, no close frame) and expect N back; "report" -> JSON
                  {"handshakes": [s after the drop...], "all_back": s or null, "connected": n}

Run by the harness: `python benches/_server.py` prints "PORT <n>" on stdout once listening, and exits when
its stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.parse

from _serving import Herd, frame_bytes
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_create_server

DATA = (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION)


HERD = Herd()


class Base(WSListener):
    def on_ws_frame(self, t: WSTransport, frame) -> None:
        mt = frame.msg_type
        if mt in DATA:
            if frame.fin:
                self.on_message(t, frame)
        elif mt == WSMsgType.CLOSE:
            t.send_close(WSCloseCode.OK)
            t.disconnect()

    def on_message(self, t: WSTransport, frame) -> None:
        pass


class Echo(Base):
    def on_message(self, t, frame):
        t.send(frame.msg_type, frame.get_payload_as_memoryview())


class Sink(Base):
    count = 0

    def on_message(self, t, frame):
        if frame.msg_type == WSMsgType.TEXT and frame.get_payload_as_bytes() == b"count":
            t.send(WSMsgType.TEXT, str(self.count).encode())
        else:
            self.count += 1


class Flood(Base):
    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.task: asyncio.Task | None = None

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def on_message(self, t, frame):
        if self.task is None:
            n, size = map(int, frame.get_payload_as_bytes().split())
            self.task = asyncio.ensure_future(self.flood(t, n, size))

    async def flood(self, t: WSTransport, n: int, size: int) -> None:
        one = frame_bytes(size)
        per = max(1, 65536 // len(one))
        chunk = one * per
        out = t.underlying_transport
        left, writes = n, 0
        while left > 0 and not t.is_disconnected:
            k = min(per, left)
            out.write(chunk if k == per else one * k)
            left -= k
            writes += 1
            await self.writable.wait()
            if writes % 16 == 0:
                await asyncio.sleep(0)  # let pings and closes through on a socket that never fills

    def on_ws_disconnected(self, t):
        if self.task is not None:
            self.task.cancel()


class HerdMember(Base):
    def on_ws_connected(self, t):
        HERD.joined(t, lambda: t.disconnect(graceful=False))

    def on_ws_disconnected(self, t):
        HERD.left(t)


class Control(Base):
    def on_message(self, t, frame):
        t.send(WSMsgType.TEXT, HERD.command(frame.get_payload_as_bytes().decode()).encode())


ROUTES = {"/echo": Echo, "/sink": Sink, "/flood": Flood, "/idle": Base, "/herd": HerdMember, "/control": Control}


def route(request):
    cls = ROUTES.get(urllib.parse.urlsplit(request.path.decode()).path)
    return cls() if cls else None


async def main() -> None:
    loop = asyncio.get_running_loop()
    # a deep accept backlog, as on any production server: the herd must not be shaped by SYN drops
    server = await ws_create_server(route, "127.0.0.1", 0, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # the harness closes our stdin to stop us
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
