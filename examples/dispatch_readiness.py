"""The backend waits for the agent's explicit "ready", not for "participant joined".

A backend and an agent talk through a room (tether's embedded SignalServer in relay mode, standing in
for LiveKit's data channel). The agent signals "joined" when it enters the room and "ready" only after
its entrypoint started and its models loaded. The backend's `gate.dispatch` retries the dispatch call
with backoff (200/400/800 ms) and raises tether.NotReady naming the stuck stage, instead of a 300 ms
grace period and hope.

Run: .venv/bin/python examples/dispatch_readiness.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import random

import tether
from tether.testing import SignalServer


async def agent_worker(room_url: str, job_id: str) -> None:
    async with tether.connect(room_url, name=f"agent:{job_id}") as room:
        await room.send(json.dumps({"job": job_id, "stage": "joined"}))
        await asyncio.sleep(random.uniform(0.1, 0.4))  # receive the job, load STT/TTS/VAD
        await room.send(json.dumps({"job": job_id, "stage": "ready"}))
        async for msg in room:  # run the flow
            if json.loads(msg).get("flow") == job_id:
                print(f"agent {job_id}: flow started")
                return


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)-7s %(name)s: %(message)s")
    tether.sync_log_level()
    async with SignalServer() as srv:
        srv.echo(False)
        srv.relay(True)
        gate = tether.ReadinessGate()
        workers: list[asyncio.Task] = []
        flaky = {"n": 0}

        async def dispatch(job_id: str, attempt: int) -> None:
            flaky["n"] += 1
            if flaky["n"] == 1:
                raise ConnectionError("dispatch API rate-limited (429)")  # retried with backoff
            workers.append(asyncio.ensure_future(agent_worker(srv.url, job_id)))

        async with tether.connect(srv.url, name="backend") as backend:

            async def listen():
                async for msg in backend:
                    m = json.loads(msg)
                    gate.mark(m["job"], m["stage"])

            listener = asyncio.ensure_future(listen())
            timings = await gate.dispatch("flow-42", dispatch, timeouts={"joined": 5, "ready": 10})
            print("agent ready:", {k: f"{v * 1000:.0f} ms" for k, v in timings.items()})
            await backend.send(json.dumps({"flow": "flow-42"}))  # only now start the flow
            await asyncio.wait_for(asyncio.gather(*workers), 5)
            listener.cancel()


if __name__ == "__main__":
    asyncio.run(main())
