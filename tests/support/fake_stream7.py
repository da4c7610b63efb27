"""A fake Stream video backend that getstream 7's Rust client (getstream-rtc) accepts: the coordinator
(JSON over HTTP and WebSocket) and one SFU (protobuf over WebSocket plus Twirp RPCs over HTTP), both
`aiohttp` servers on loopback.

The client's join, as the `getstream` crate 0.2 runs it:

1. coordinator WebSocket `/api/v2/connect`: the client sends its JSON auth message, the server answers
   `connection.ok` with a `connection_id` (the join below must carry it);
2. `POST /api/v2/video/call/{type}/{id}/join`: JSON credentials naming the SFU (`server.ws_endpoint` for
   signaling, `server.url` for the Twirp root); `sfu_address` is what they point at, so a test can put a
   `tether.testing.ChaosProxy` in between;
3. SFU WebSocket `/ws`: `SfuRequest(join_request)` -> `SfuEvent(join_response)` with the call state, then
   `health_check_request` -> `health_check_response` every 5 s, `leave_call_request` on leave;
4. Twirp `POST /twirp/stream.video.sfu.signal.SignalServer/{Method}`: `SetPublisher` (publishing a track)
   gets an SDP answer (aiortc's, without candidates), every other RPC its empty response; `publishes`
   records (monotonic time, session id, track types) per `SetPublisher`. With no candidates, ICE never
   completes: about 30 s after a track is published, 7.0's publisher peer connection fails and 7.0
   rejoins by itself, so runs that publish stay shorter than that.

The call has one remote participant, ``alice``, publishing audio. While ``speaking`` the SFU sends her
`audio_level_changed` every `level_interval` seconds, as the real SFU does while someone talks. There is
no media: the client's peer connections stay `new`, which 7.0 counts as healthy.

`joins` records (monotonic time, reconnect strategy, session id) per SFU join; strategy 0 is a first
join, 2 FAST, 3 REJOIN (`WebsocketReconnectStrategy`). The location hint the client asks first is on the
internet; offline it fails and the client sends `location: "auto"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import WSMsgType, web
from getstream.video.rtc.pb.stream.video.sfu.event import events_pb2
from getstream.video.rtc.pb.stream.video.sfu.models import models_pb2
from getstream.video.rtc.pb.stream.video.sfu.signal_rpc import signal_pb2

ALICE = ("alice", "alice-session")


async def _answer(offer_sdp: str) -> str:
    """An SDP answer to the client's publisher offer, made by aiortc, without ICE candidates: the fake
    takes no media, so no packet is sent anywhere."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        # not set as the local description: that would start ICE
        sdp = (await pc.createAnswer()).sdp
    finally:
        await pc.close()
    return "".join(line + "\r\n" for line in sdp.splitlines() if not line.startswith("a=candidate"))


class FakeStream:
    def __init__(self, *, level_interval: float = 0.25) -> None:
        self.level_interval = level_interval
        self.speaking = True
        self.sfu_address: tuple[str, int] | None = None  # what the join credentials point at
        self.joins: list[tuple[float, int, str]] = []
        self.coordinator_joins = 0
        self.health_checks = 0
        self.leaves = 0
        self.rpcs: list[str] = []
        self.publishes: list[tuple[float, str, list[int]]] = []  # (monotonic time, session id, track types)
        self.coordinator_auth: list[dict[str, Any]] = []
        self._sfu_sockets: set[web.WebSocketResponse] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runners: list[web.AppRunner] = []
        self.coordinator_port = 0
        self.sfu_port = 0

    # -- lifecycle --------------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeStream:
        coordinator = web.Application()
        coordinator.router.add_get("/api/v2/connect", self._coordinator_ws)
        coordinator.router.add_post("/api/v2/video/call/{type}/{id}/join", self._join_call)
        sfu = web.Application()
        sfu.router.add_get("/ws", self._sfu_ws)
        sfu.router.add_post("/twirp/stream.video.sfu.signal.SignalServer/{method}", self._twirp)
        self.coordinator_port = await self._serve(coordinator)
        self.sfu_port = await self._serve(sfu)
        if self.sfu_address is None:
            self.sfu_address = ("127.0.0.1", self.sfu_port)
        return self

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runners.append(runner)
        return runner.addresses[0][1]

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        for ws in list(self._sfu_sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1)
        for runner in self._runners:
            await asyncio.wait_for(runner.cleanup(), 5)

    @property
    def base_url(self) -> str:
        """The coordinator's base URL (`Stream(base_url=...)`)."""
        return f"http://127.0.0.1:{self.coordinator_port}"

    @property
    def sfu_upstream(self) -> tuple[str, int]:
        """The SFU's own address, for a proxy's upstream."""
        return ("127.0.0.1", self.sfu_port)

    def rejoins(self) -> int:
        return len(self.joins) - 1

    # -- coordinator --------------------------------------------------------------------------------------
    async def _coordinator_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        try:
            first = await asyncio.wait_for(ws.receive(), 10)
            if first.type is not WSMsgType.TEXT:
                return ws
            self.coordinator_auth.append(json.loads(first.data))
            await ws.send_json({"type": "connection.ok", "connection_id": f"conn-{len(self.coordinator_auth)}"})
            async for msg in ws:
                if msg.type is WSMsgType.TEXT and json.loads(msg.data).get("type") == "health.check":
                    await ws.send_json({"type": "health.check", "connection_id": "conn"})
        except (asyncio.TimeoutError, ConnectionError):
            pass
        return ws

    async def _join_call(self, request: web.Request) -> web.Response:
        self.coordinator_joins += 1
        call_type, call_id = request.match_info["type"], request.match_info["id"]
        host, port = self.sfu_address or self.sfu_upstream
        return web.json_response(
            {
                "duration": "1ms",
                "created": False,
                "call": {"cid": f"{call_type}:{call_id}", "id": call_id, "type": call_type},
                "members": [],
                "own_capabilities": ["send-audio", "send-video"],
                "credentials": {
                    "server": {
                        "edge_name": "fake-edge",
                        "url": f"http://{host}:{port}/twirp",
                        "ws_endpoint": f"ws://{host}:{port}/ws",
                    },
                    "token": "fake-sfu-token",
                    "ice_servers": [],
                },
                "stats_options": {"reporting_interval_ms": 0, "enable_rtc_stats": False},
            }
        )

    # -- SFU ------------------------------------------------------------------------------------------------
    async def _twirp(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        self.rpcs.append(method)
        body = await request.read()
        reply = b""
        if method == "SetPublisher":
            offer = signal_pb2.SetPublisherRequest()
            offer.ParseFromString(body)
            self.publishes.append((time.monotonic(), offer.session_id, [t.track_type for t in offer.tracks]))
            answer = signal_pb2.SetPublisherResponse(session_id=offer.session_id, sdp=await _answer(offer.sdp))
            reply = answer.SerializeToString()
        return web.Response(body=reply, content_type="application/protobuf")

    async def _sfu_ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        try:
            await ws.prepare(request)
        except ConnectionError:
            # a join that a black hole held until the heal, and whose client gave up before it
            return web.Response(status=499)
        self._sfu_sockets.add(ws)
        levels: asyncio.Task[None] | None = None
        try:
            first = await asyncio.wait_for(ws.receive(), 10)
            if first.type is not WSMsgType.BINARY:
                return ws
            req = events_pb2.SfuRequest()
            req.ParseFromString(first.data)
            if not req.HasField("join_request"):
                await ws.close(code=1002, message=b"expected join_request")
                return ws
            join = req.join_request
            self.joins.append((time.monotonic(), int(join.reconnect_details.strategy), join.session_id))
            reply = events_pb2.SfuEvent()
            response = reply.join_response
            response.reconnected = join.reconnect_details.strategy == models_pb2.WEBSOCKET_RECONNECT_STRATEGY_FAST
            response.fast_reconnect_deadline_seconds = 10
            state = response.call_state
            me = state.participants.add()
            me.user_id, me.session_id = "agent", join.session_id
            alice = state.participants.add()
            alice.user_id, alice.session_id = ALICE
            alice.track_lookup_prefix = "alice-prefix"
            alice.published_tracks.append(models_pb2.TRACK_TYPE_AUDIO)
            state.participant_count.total = 2
            option = response.publish_options.add()
            option.track_type, option.id, option.bitrate = models_pb2.TRACK_TYPE_AUDIO, 1, 32000
            option.codec.name, option.codec.payload_type, option.codec.clock_rate = "opus", 111, 48000
            option.codec.fmtp = "minptime=10;useinbandfec=1"
            await ws.send_bytes(reply.SerializeToString())
            levels = asyncio.ensure_future(self._send_levels(ws))
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                req = events_pb2.SfuRequest()
                req.ParseFromString(msg.data)
                if req.HasField("health_check_request"):
                    self.health_checks += 1
                    pong = events_pb2.SfuEvent()
                    pong.health_check_response.participant_count.total = 2
                    await ws.send_bytes(pong.SerializeToString())
                elif req.HasField("leave_call_request"):
                    self.leaves += 1
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            if levels is not None:
                levels.cancel()
            self._sfu_sockets.discard(ws)
        return ws

    async def _send_levels(self, ws: web.WebSocketResponse) -> None:
        event = events_pb2.SfuEvent()
        level = event.audio_level_changed.audio_levels.add()
        level.user_id, level.session_id = ALICE
        level.level, level.is_speaking = 0.5, True
        payload = event.SerializeToString()
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                await asyncio.sleep(self.level_interval)
                if self.speaking:
                    await ws.send_bytes(payload)

    async def mute_alice(self) -> None:
        """Alice mutes: her audio track is unpublished and she stops speaking."""
        self.speaking = False
        event = events_pb2.SfuEvent()
        event.track_unpublished.user_id, event.track_unpublished.session_id = ALICE
        event.track_unpublished.type = models_pb2.TRACK_TYPE_AUDIO
        event.track_unpublished.cause = models_pb2.TRACK_UNPUBLISH_REASON_USER_MUTED
        await self._broadcast(event)

    async def end_call(self) -> None:
        """The SFU ends the call (`call_ended`)."""
        event = events_pb2.SfuEvent()
        event.call_ended.reason = models_pb2.CALL_ENDED_REASON_ENDED
        await self._broadcast(event)

    async def _broadcast(self, event: events_pb2.SfuEvent) -> None:
        for ws in list(self._sfu_sockets):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_bytes(event.SerializeToString())
