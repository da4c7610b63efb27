"""getstream 7.x call scenarios against the fake coordinator and SFU (tests/support/fake_stream7.py), the SFU behind a
`tether.testing.ChaosProxy`. getstream 7 is installed aside, so the tests run this as a script:

    PYTHONPATH=../../../.venv/getstream7-7.0.0 ../../../.venv/bin/python gs7_scenarios.py SCENARIO [--tether] [--fast]

prints one JSON line. Scenarios:

* `blackhole`: the SFU socket is black-holed for `--hole` seconds (default 25), then healed;
* `reset`: the SFU connection is reset (TCP RST) once: 7.0 reconnects by itself;
* `stuck`: a reset, then a black hole: 7.0's own reconnect has no deadline and stays RECONNECTING;
* `ended`: the SFU ends the call;
* `muted`: the remote participant unpublishes her audio and goes quiet (no alarm is due);
* `giveup`: a black hole that does not heal;
* `install`: install/uninstall and the refusals, without a call.

`--tether` runs `tether.integrations.getstream.install()` with its defaults; `--fast` (for the tests)
attaches the watch with short deadlines instead (`watch_call`), `--fast-install` gives them to
`install()`. The call is joined by getstream's own
`ConnectionManager` (`getstream.video.rtc.join`); with `--publish` it publishes a local audio track
(`add_tracks`), whose peer connection fails about 30 s later on the fake (see tests/support/fake_stream7.py).
7.0's manager passes the coordinator's `base_url` to `getstream_rtc.Client` but not its WebSocket URL
(`ws_url`), which defaults to Stream's production host; `point_sdk_at` hands the fake coordinator's to the
real `getstream_rtc.Client` the same way, as a keyword argument.

Times are seconds: `detected` from the fault to the first tether alarm (as shipped: to the first
calling-state change away from JOINED), `rejoined` from the heal to the next SFU join.
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

sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/, for support

import tether
from support.fake_stream7 import FakeStream
from tether.integrations import getstream as tether_getstream
from tether.testing import ChaosProxy

API_SECRET = "fake-api-secret-of-at-least-thirty-two-bytes"
# the watch's deadlines with --fast: the tests' black holes last seconds, not tens of seconds
FAST = {
    "reconnecting_timeout": 2.0,
    "media_timeout": 2.0,
    "join_timeout": 3.0,
    "leave_timeout": 1.0,
    "policy": tether.Backoff(0.2, 2.0, max_delay=1.0, jitter="equal", deadline=8.0),
}


def point_sdk_at(fake: FakeStream) -> None:
    import getstream_rtc

    ws_url = f"ws://127.0.0.1:{fake.coordinator_port}/api/v2/connect"
    real = getattr(getstream_rtc.Client, "func", getstream_rtc.Client)
    getstream_rtc.Client = functools.partial(real, ws_url=ws_url)


def new_call(fake: FakeStream, call_id: str = "c1") -> Any:
    from getstream import AsyncStream

    client = AsyncStream(api_key="fake-key", api_secret=API_SECRET, base_url=fake.base_url)
    return client.video.call("default", call_id)


def state_name(state: Any) -> str:
    return str(state).rsplit(".", 1)[-1]


class Call:
    """A joined call and what the application saw of it, in seconds since the start."""

    def __init__(self, fake: FakeStream, manager: Any) -> None:
        self.fake = fake
        self.manager = manager
        self.t0 = time.monotonic()
        self.states: list[tuple[float, str]] = []
        self.levels: list[float] = []
        self.ended: list[float] = []
        manager.on("connection.state_changed", lambda d: self.states.append((self.now(), state_name(d["new"]))))
        manager.on("audio_level_changed", lambda _e: self.levels.append(self.now()))
        manager.on("call_ended", lambda _e: self.ended.append(self.now()))
        self.waiting: asyncio.Future[Any] | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def join(self, *, fast: bool, publish: bool) -> None:
        from getstream.video.rtc.audio_track import AudioStreamTrack

        if fast and tether_getstream.CallWatch.of(self.manager) is None:
            tether_getstream.watch_call(self.manager, **FAST)  # type: ignore[arg-type]
        await asyncio.wait_for(self.manager.connect(), 30)
        self.waiting = asyncio.ensure_future(self.manager.wait())
        if publish:
            track = AudioStreamTrack(sample_rate=48000, channels=1)
            await asyncio.wait_for(self.manager.add_tracks(audio=track), 15)

    def report(self, fault_at: float, heal_at: float | None, joins_before: int, records: Records) -> dict[str, Any]:
        watch = tether_getstream.CallWatch.of(self.manager)
        alarms = [] if watch is None else [[a.kind, a.name] for a in watch.alarms]
        alarm_at = [round(t - self.t0 - fault_at, 2) for t in records.alarm_logged]
        after = [(round(t - fault_at, 2), s) for t, s in self.states if t > fault_at]
        away = next((t for t, s in after if s != "JOINED"), None)
        new_joins = [t - self.t0 for t, _, _ in self.fake.joins[joins_before:]]
        end = heal_at if heal_at is not None else fault_at
        return {
            "watched": watch is not None,
            "detected": alarm_at[0] if alarm_at else away,
            "alarm_warnings": len(alarm_at),
            "alarms": alarms,
            "states_after_fault": after,
            "sfu_joins": [strategy for _, strategy, _ in self.fake.joins],
            "rejoined": None if heal_at is None or not new_joins else round(new_joins[0] - heal_at, 2),
            "joined_during_fault": any(t < end for t in new_joins),
            "levels_during_fault": sum(1 for t in self.levels if fault_at + 0.5 < t < end),
            "levels_after": sum(1 for t in self.levels if t > end + 1.0),
            "publishes_after_fault": sum(1 for t, _, _ in self.fake.publishes if t - self.t0 > fault_at),
            "state": state_name(self.manager.connection_state),
            "wait_returned": self.waiting is not None and self.waiting.done(),
            "call_ended": len(self.ended),
            "rejoins": None if watch is None else watch.rejoins,
        }

    async def leave(self, result: dict[str, Any]) -> None:
        started = time.monotonic()
        await asyncio.wait_for(self.manager.leave(), 15)
        result["leave_took"] = round(time.monotonic() - started, 2)
        if self.waiting is not None:
            done, _ = await asyncio.wait({self.waiting}, timeout=5)
            if done and self.waiting.exception() is not None:
                result["wait_raised"] = type(self.waiting.exception()).__name__
            result["wait_returned_after_leave"] = bool(done)


class Records(logging.Handler):
    """Every record of tether's loggers and the manager's, at every level: none may carry a secret."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.alarm_logged: list[float] = []
        for name in ("tether", "getstream.video.rtc.connection_manager"):
            logging.getLogger(name).addHandler(self)
            logging.getLogger(name).setLevel(logging.DEBUG)
        tether.sync_log_level()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.getMessage()} {record.__dict__}")
        if (
            record.levelno == logging.WARNING
            and record.name == "getstream.video.rtc.connection_manager"
            and record.getMessage().startswith("getstream call ")
        ):
            self.alarm_logged.append(time.monotonic())  # the alarm's one line

    def secrets(self) -> list[str]:
        # the API secret, the SFU token of the fake's credentials, and JWTs (the user token)
        return [m for m in self.messages if API_SECRET in m or "fake-sfu-token" in m or "eyJ" in m]


async def scenario(
    name: str, *, fast: bool, publish: bool, hole: float, settle: float, lead: float = 2.0
) -> dict[str, Any]:
    from getstream.video import rtc

    records = Records()

    async with FakeStream() as fake:
        proxy = ChaosProxy(fake.sfu_upstream)
        await proxy.start()
        try:
            fake.sfu_address = (proxy.host, proxy.port)
            point_sdk_at(fake)
            call = Call(fake, await rtc.join(new_call(fake), "agent"))
            await call.join(fast=fast, publish=publish)
            await asyncio.sleep(lead)
            fault_at, heal_at, joins_before = call.now(), None, len(fake.joins)
            if name == "blackhole":
                proxy.blackhole()
                await asyncio.sleep(hole)
                heal_at = call.now()
                proxy.heal()
            elif name == "reset":
                proxy.reset()
            elif name == "stuck":
                proxy.reset()
                proxy.blackhole()
                await asyncio.sleep(hole)
                heal_at = call.now()
                proxy.heal()
            elif name == "ended":
                await fake.end_call()
            elif name == "muted":
                await fake.mute_alice()
            elif name == "giveup":
                proxy.blackhole()
            await asyncio.sleep(settle)
            result = {"scenario": name, "hole": hole, **call.report(fault_at, heal_at, joins_before, records)}
            await call.leave(result)
            result["log_records"] = len(records.messages)
            result["secrets_in_logs"] = records.secrets()
            return result
        finally:
            await proxy.aclose()


def install_checks() -> dict[str, Any]:
    """install()/uninstall() and the refusals on getstream 7, in this process."""
    from getstream.video.rtc import connection_manager, participants

    from tether.integrations import _patch

    cls = connection_manager.ConnectionManager
    originals = {n: vars(cls)[n] for n in ("connect", "leave", "wait", "add_tracks")}
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("tether.integrations").addHandler(handler)
    logging.getLogger("tether.integrations").setLevel(logging.WARNING)
    out: dict[str, Any] = {}

    first, second = tether_getstream.install(), tether_getstream.install()
    out["patched"] = [first.patched, second.patched]
    out["wrapped"] = all(vars(cls)[n] is not f and vars(cls)[n].__wrapped__ is f for n, f in originals.items())
    tether_getstream.uninstall()
    out["restored"] = all(vars(cls)[n] is f for n, f in originals.items())

    real_version = _patch.installed_version
    _patch.installed_version = lambda dist: "7.1.0"  # type: ignore[assignment]
    try:
        report = tether_getstream.install()
        out["untested"] = {"patched": report.patched, "refused": report.refused}
        tether_getstream.uninstall()
        report = tether_getstream.install(allow_untested=True)
        out["untested_allowed"] = {"patched": report.patched, "refused": report.refused}
        tether_getstream.uninstall()
    finally:
        _patch.installed_version = real_version  # type: ignore[assignment]

    replace = participants.ParticipantsState._replace_participants
    del participants.ParticipantsState._replace_participants
    try:
        report = tether_getstream.install()
        out["missing_name"] = {"patched": report.patched, "refused": report.refused}
        out["missing_name_untouched"] = all(vars(cls)[n] is f for n, f in originals.items())
    finally:
        participants.ParticipantsState._replace_participants = replace
        tether_getstream.uninstall()
    try:
        tether_getstream.watch_call(object())
    except TypeError as e:
        out["watch_call_bad_input"] = str(e)
    finally:
        tether_getstream.uninstall()
    out["warnings"] = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["blackhole", "reset", "stuck", "ended", "muted", "giveup", "install"])
    parser.add_argument("--tether", action="store_true", help="install() with its defaults")
    parser.add_argument("--fast", action="store_true", help="install(), and watch_call() with short deadlines")
    parser.add_argument("--fast-install", action="store_true", help="install() with short deadlines")
    parser.add_argument("--publish", action="store_true", help="publish a local audio track (runs under 30 s)")
    parser.add_argument("--raising-on-alarm", action="store_true", help="an on_alarm with a bug: it raises")
    parser.add_argument("--hole", type=float, default=25.0)
    parser.add_argument("--settle", type=float, default=12.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(relativeCreated)7.0f %(name)s %(levelname)s %(message)s")
    if args.scenario == "install":
        print(json.dumps(install_checks()))
        return
    if args.raising_on_alarm:

        def on_alarm(alarm: Any) -> None:
            raise RuntimeError("bug in the application's alarm handler")

        FAST["on_alarm"] = on_alarm
    if args.tether or args.fast or args.fast_install:
        report = tether_getstream.install(**(FAST if args.fast_install else {}))  # type: ignore[arg-type]
        assert report.patched == ("call_watch",), report
    started = time.monotonic()
    result = asyncio.run(
        scenario(args.scenario, fast=args.fast, publish=args.publish, hole=args.hole, settle=args.settle)
    )
    result["tether"] = bool(args.tether or args.fast or args.fast_install)
    result["took"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
