"""A fake Stream SFU signaling endpoint: a `websockets` server speaking getstream's protobuf signaling
far enough for join, rejoin and health checks.

Every connection must start with an SfuRequest(join_request); the server answers a JoinResponse
(or an SfuEvent(error) when `reject` is set) and then answers each HealthCheckRequest with a
health_check_response. `joins` records (monotonic time, fast_reconnect flag) per join.
"""

from __future__ import annotations

import asyncio
import logging
import time

import websockets
from getstream.video.rtc.pb.stream.video.sfu.event import events_pb2


class FakeSfu:
    def __init__(self, *, reject: str | None = None, answer_health: bool = True) -> None:
        self.reject = reject
        self.answer_health = answer_health
        self.joins: list[tuple[float, bool]] = []
        self.health_checks = 0
        self.sockets: set = set()
        self._server = None

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"ws://{host}:{port}/ws"

    async def __aenter__(self) -> FakeSfu:
        self._server = await websockets.serve(
            self._handle, "127.0.0.1", 0, logger=logging.getLogger("tests.fake_sfu"), ping_interval=None
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ws in list(self.sockets):
            ws.transport.abort()
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    def rejoins(self) -> int:
        return sum(1 for _, fast in self.joins if fast)

    async def send_event(self, event: events_pb2.SfuEvent) -> None:
        for ws in list(self.sockets):
            await ws.send(event.SerializeToString())

    async def _handle(self, ws) -> None:
        self.sockets.add(ws)
        try:
            req = events_pb2.SfuRequest()
            # getstream's websocket-client sends protobuf in text frames: read them undecoded
            req.ParseFromString(await asyncio.wait_for(ws.recv(decode=False), 10))
            if not req.HasField("join_request"):
                await ws.close(1002, "expected join_request")
                return
            self.joins.append((time.monotonic(), req.join_request.fast_reconnect))
            reply = events_pb2.SfuEvent()
            if self.reject:
                reply.error.error.message = self.reject
                await ws.send(reply.SerializeToString())
                return
            reply.join_response.reconnected = req.join_request.fast_reconnect
            reply.join_response.fast_reconnect_deadline_seconds = 10
            await ws.send(reply.SerializeToString())
            while True:
                raw = await ws.recv(decode=False)
                msg = events_pb2.SfuRequest()
                msg.ParseFromString(raw)
                if msg.HasField("health_check_request"):
                    self.health_checks += 1
                    if self.answer_health:
                        pong = events_pb2.SfuEvent()
                        pong.health_check_response.SetInParent()
                        await ws.send(pong.SerializeToString())
        except (websockets.ConnectionClosed, asyncio.TimeoutError, OSError):
            pass
        finally:
            self.sockets.discard(ws)
