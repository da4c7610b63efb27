"""getstream 7.x call scenarios against the fake coordinator and SFU (fake_stream7.py), the SFU behind a
`tether.testing.ChaosProxy`. Run as a script with getstream 7 on the path (the tests do, in a
subprocess): `PYTHONPATH=../../.venv/getstream7-7.0.0 ../../.venv/bin/python gs7_scenarios.py
blackhole [--tether] [--hole 25]` prints one JSON line.

The call is joined by getstream's own `ConnectionManager` (`getstream.video.rtc.join(call, user)`).
7.0's manager passes the coordinator's `base_url` to `getstream_rtc.Client` but not its WebSocket URL
(`ws_url`), which defaults to Stream's production host; `point_sdk_at` hands the fake coordinator's to
the real `getstream_rtc.Client` the same way, as a keyword argument.

Times in the result are seconds: `detected` from the start of the black hole to the first tether alarm
(as shipped: to the first calling-state change away from JOINED), `rejoined` from the heal to the next
SFU join; `levels_after_heal` counts the SFU events that reached the application afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from fake_stream7 import FakeStream

from tether.integrations.getstream import CallWatch
from tether.testing import ChaosProxy

API_SECRET = "fake-api-secret-of-at-least-thirty-two-bytes"


def point_sdk_at(fake: FakeStream) -> None:
    import getstream_rtc

    ws_url = f"ws://127.0.0.1:{fake.coordinator_port}/api/v2/connect"
    real = getattr(getstream_rtc.Client, "func", getstream_rtc.Client)
    getstream_rtc.Client = functools.partial(real, ws_url=ws_url)


def new_call(fake: FakeStream, call_id: str = "c1") -> Any:
    from getstream import AsyncStream

    client = AsyncStream(api_key="fake-key", api_secret=API_SECRET, base_url=fake.base_url)
    return client.video.call("default", call_id)


async def blackhole(*, hole: float, settle: float, lead: float = 2.0) -> dict[str, Any]:
    """Join, black-hole the SFU socket for `hole` seconds, heal, watch for `settle` more seconds."""
    from getstream.video import rtc

    async with FakeStream() as fake:
        proxy = ChaosProxy(fake.sfu_upstream)
        await proxy.start()
        try:
            fake.sfu_address = (proxy.host, proxy.port)
            point_sdk_at(fake)
            cm = await rtc.join(new_call(fake), "agent")
            t0 = time.monotonic()
            states: list[tuple[float, str]] = []
            levels: list[float] = []
            ended: list[float] = []
            cm.on(
                "connection.state_changed",
                lambda d: states.append((time.monotonic() - t0, str(d["new"]).split(".")[-1])),
            )
            cm.on("audio_level_changed", lambda _e: levels.append(time.monotonic() - t0))
            cm.on("call_ended", lambda _e: ended.append(time.monotonic() - t0))
            waiting = asyncio.ensure_future(cm.wait())
            await asyncio.wait_for(cm.connect(), 30)
            await asyncio.sleep(lead)
            t_fault = time.monotonic() - t0
            joins_before = len(fake.joins)
            proxy.blackhole()
            await asyncio.sleep(hole)
            t_heal = time.monotonic() - t0
            proxy.heal()
            await asyncio.sleep(settle)
            watch = CallWatch.of(cm)
            alarms = [] if watch is None else [(a.kind, a.name, round(a_t - t0, 2)) for a, a_t in watch.alarm_times]
            after = [s for s in states if s[0] > t_fault]
            away = next((t for t, s in after if s != "JOINED"), None)
            first_alarm = alarms[0][2] if alarms else None
            detected = first_alarm if first_alarm is not None else away
            new_joins = fake.joins[joins_before:]
            rejoin_at = (new_joins[0][0] - t0) if new_joins else None
            result = {
                "tether": watch is not None,
                "hole": hole,
                "fault_at": round(t_fault, 2),
                "heal_at": round(t_heal, 2),
                "detected": None if detected is None else round(detected - t_fault, 2),
                "alarms": alarms,
                "states_after_fault": [(round(t - t_fault, 2), s) for t, s in after],
                "sfu_joins": len(fake.joins),
                "rejoined": None if rejoin_at is None else round(rejoin_at - t_heal, 2),
                "rejoined_before_heal": rejoin_at is not None and rejoin_at < t_heal,
                "levels_during_hole": sum(1 for t in levels if t_fault + 0.5 < t < t_heal),
                "levels_after_heal": sum(1 for t in levels if t > t_heal + 1.0),
                "state": str(cm.connection_state).split(".")[-1],
                "wait_returned": waiting.done(),
                "call_ended": ended,
            }
            started = time.monotonic()
            await asyncio.wait_for(cm.leave(), 15)
            result["leave_took"] = round(time.monotonic() - started, 2)
            await asyncio.wait_for(waiting, 5)
            return result
        finally:
            await proxy.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["blackhole"])
    parser.add_argument("--tether", action="store_true")
    parser.add_argument("--hole", type=float, default=25.0)
    parser.add_argument("--settle", type=float, default=12.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)7.0f %(name)s %(levelname)s %(message)s")
    if args.tether:
        from tether.integrations import getstream

        report = getstream.install()
        assert "call_watch" in report.patched, report
    started = time.monotonic()
    result = asyncio.run(blackhole(hole=args.hole, settle=args.settle))
    result["took"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
