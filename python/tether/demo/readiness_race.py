"""The backend dispatched an agent and saw it join the room, but the agent's entrypoint never
ran; the flow was sent into the void. With staged readiness the backend waits for the agent's explicit
"ready" (sent over the room after its entrypoint started) and gets NotReady naming the stuck stage."""

from __future__ import annotations

import asyncio
import json

import tether
from tether.testing import SignalServer

TITLE = "joined is not ready: NotReady names the stuck stage; a healthy agent passes"


async def agent(url: str, job_id: str, entrypoint_runs: bool) -> None:
    async with tether.connect(url, name=f"agent:{job_id}") as room:
        await room.send(json.dumps({"job": job_id, "stage": "joined"}))
        if not entrypoint_runs:
            await asyncio.sleep(3600)  # the placeholder participant sits in the room
        await asyncio.sleep(0.05)  # load STT/TTS, start the entrypoint
        await room.send(json.dumps({"job": job_id, "stage": "ready"}))
        await asyncio.sleep(3600)


async def run(tl):
    async with SignalServer() as srv:
        srv.echo(False)
        srv.relay(True)
        gate = tether.ReadinessGate()
        agents = []
        async with tether.connect(srv.url, name="backend") as backend:

            async def listen():
                async for msg in backend:
                    m = json.loads(msg)
                    gate.mark(m["job"], m["stage"])
                    tl.mark("mark", f"{m['job']}: {m['stage']}")

            listener = asyncio.ensure_future(listen())

            def dispatcher(entrypoint_runs):
                async def dispatch(job_id, attempt):
                    agents.append(asyncio.ensure_future(agent(srv.url, job_id, entrypoint_runs)))

                return dispatch

            tl.fault("agent joins the room but its entrypoint never runs")
            try:
                await gate.dispatch("flow-1", dispatcher(False), timeouts={"joined": 2, "ready": 0.5})
            except tether.NotReady as e:
                tl.detected(f"NotReady: {e}")
                assert e.stage == "ready"
            else:
                raise AssertionError("expected NotReady")

            timings = await gate.dispatch("flow-2", dispatcher(True), timeouts={"joined": 2, "ready": 2})
            tl.recovered("healthy agent ready: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
            listener.cancel()
        for a in agents:
            a.cancel()
        await asyncio.gather(*agents, return_exceptions=True)
