"""A fake LiveKit control plane: a `websockets` server speaking the agent worker protocol far enough for
registration (RegisterWorkerRequest -> RegisterWorkerResponse), with scripted misbehaviour.

mode:
  "healthy"         register and keep the socket open
  "accept_drop"     accept the WebSocket, then close it at once (a load balancer that drops it)
  "recycle"         register, then close the socket after `recycle_after` seconds
  "silent"          accept the WebSocket, never answer the registration (a wedged control plane)
"""

from __future__ import annotations

import asyncio
import time

import websockets
from livekit.protocol import agent


class FakeControlPlane:
    def __init__(self, mode: str = "healthy", *, recycle_after: float = 2.0) -> None:
        self.mode = mode
        self.recycle_after = recycle_after
        self.connections: list[float] = []  # monotonic time of each accepted WebSocket
        self.registrations: list[float] = []
        self._server = None
        self._handlers: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}"

    async def __aenter__(self) -> FakeControlPlane:
        self._server = await websockets.serve(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, ws) -> None:
        self.connections.append(time.monotonic())
        if self.mode == "accept_drop":
            await ws.close()
            return
        if self.mode == "silent":
            try:
                async for _ in ws:
                    pass
            except websockets.ConnectionClosed:
                pass
            return
        try:
            first = await asyncio.wait_for(ws.recv(), 5)
            req = agent.WorkerMessage()
            req.ParseFromString(first)
            if not req.HasField("register"):
                await ws.close(1002, "expected register")
                return
            resp = agent.ServerMessage()
            resp.register.worker_id = f"AW_fake_{len(self.connections)}"
            resp.register.server_info.region = "loopback"
            await ws.send(resp.SerializeToString())
            self.registrations.append(time.monotonic())
            if self.mode == "recycle":
                await asyncio.sleep(self.recycle_after)
                await ws.close()
                return
            async for _ in ws:  # status updates and pings: ignored
                pass
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass

    def connections_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.connections if start <= t < end)
