"""A fake LiveKit AgentDispatch service, and the RoomService's RemoveParticipant: the Twirp endpoints
`livekit-api` calls (POST /twirp/livekit.AgentDispatchService/<Method>, /twirp/livekit.RoomService/
RemoveParticipant, protobuf bodies), on loopback, with scripted failures.

`fail_first=N` answers the first N CreateDispatch calls with a Twirp "unavailable" error (HTTP 503),
`fail_on={k, ...}` the k-th ones (counting from 1);
`on_create(dispatch)` runs after each successful CreateDispatch (a test makes the agent join from it);
`on_remove(room, identity)` after each RemoveParticipant (a test makes the participant leave from it).
`list_delays=[s, ...]`: the first ListDispatch calls answer after these seconds. `methods` lists the methods
called, in order. ListDispatch answers with the dispatches not deleted, each
with its one job, whose participant is `agent-<dispatch id>` (the identity the tests' agents join with).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

from aiohttp import web
from livekit.protocol import agent, agent_dispatch, room


class FakeDispatchService:
    def __init__(
        self,
        *,
        fail_first: int = 0,
        fail_on: set[int] | None = None,
        on_create: Callable[[object], None] | None = None,
        on_remove: Callable[[str, str], None] | None = None,
        list_delays: list[float] | None = None,
    ) -> None:
        self.list_delays = list(list_delays or [])
        self.fail_first = fail_first
        self.fail_on = fail_on or set()
        self.creates = 0
        self.on_create = on_create
        self.on_remove = on_remove
        self.removed: list[tuple[str, str]] = []  # (room, identity) of each RemoveParticipant
        self.methods: list[str] = []
        self.created: list[agent_dispatch.CreateAgentDispatchRequest] = []
        self.created_at: list[float] = []  # time.monotonic() of each successful CreateDispatch
        self.deleted: list[str] = []
        self.live: dict[str, agent_dispatch.AgentDispatch] = {}  # created and not deleted, by id
        self.calls = 0
        self.auth: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FakeDispatchService:
        app = web.Application()
        app.router.add_post("/twirp/livekit.AgentDispatchService/{method}", self._handle)
        app.router.add_post("/twirp/livekit.RoomService/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.auth.append(request.headers.get("Authorization", ""))
        method = request.match_info["method"]
        self.methods.append(method)
        body = await request.read()
        if method == "CreateDispatch":
            self.creates += 1
            if self.fail_first > 0 or self.creates in self.fail_on:
                self.fail_first = max(0, self.fail_first - 1)
                error = {"code": "unavailable", "msg": "dispatch service restarting"}
                return web.Response(status=503, text=json.dumps(error), content_type="application/json")
            req = agent_dispatch.CreateAgentDispatchRequest()
            req.ParseFromString(body)
            self.created.append(req)
            self.created_at.append(time.monotonic())
            out = agent_dispatch.AgentDispatch(
                id=f"AD_{len(self.created)}", agent_name=req.agent_name, room=req.room, metadata=req.metadata
            )
            job = agent.Job(id=f"AJ_{len(self.created)}", dispatch_id=out.id)
            job.state.participant_identity = f"agent-{out.id}"
            out.state.jobs.append(job)
            self.live[out.id] = out
            if self.on_create is not None:
                self.on_create(out)
        elif method == "DeleteDispatch":
            req_del = agent_dispatch.DeleteAgentDispatchRequest()
            req_del.ParseFromString(body)
            self.deleted.append(req_del.dispatch_id)
            self.live.pop(req_del.dispatch_id, None)
            out = agent_dispatch.AgentDispatch(id=req_del.dispatch_id, room=req_del.room)
        elif method == "ListDispatch":
            if self.list_delays:
                await asyncio.sleep(self.list_delays.pop(0))
            req_list = agent_dispatch.ListAgentDispatchRequest()
            req_list.ParseFromString(body)
            found = [d for d in self.live.values() if req_list.dispatch_id in ("", d.id)]
            out = agent_dispatch.ListAgentDispatchResponse(agent_dispatches=found)
        elif method == "RemoveParticipant":
            req_rm = room.RoomParticipantIdentity()
            req_rm.ParseFromString(body)
            self.removed.append((req_rm.room, req_rm.identity))
            if self.on_remove is not None:
                self.on_remove(req_rm.room, req_rm.identity)
            out = room.RemoveParticipantResponse()
        else:
            return web.Response(status=404, text=json.dumps({"code": "not_found", "msg": method}))
        return web.Response(body=out.SerializeToString(), content_type="application/protobuf")
