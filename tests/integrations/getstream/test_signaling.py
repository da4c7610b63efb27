"""tether.integrations.getstream against the real getstream package, on loopback with a fake SFU
(`websockets` server) behind tether's ChaosProxy."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("getstream.video.rtc.signaling", reason="getstream[webrtc] is not installed")

from getstream.video.rtc import connection_utils, signaling
from getstream.video.rtc.pb.stream.video.sfu.event import events_pb2
from getstream.video.rtc.tracer import Tracer
from gs_scenarios import HEALTH, run

import tether
from support import MS, each_release, eventually
from support.fake_sfu import FakeSfu
from tether.integrations import getstream

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
ORIGINAL = signaling.WebSocketClient


@pytest.fixture
def installed():
    report = getstream.install(**HEALTH)
    assert report.patched == ("signaling",), report
    yield report
    getstream.uninstall()
    assert signaling.WebSocketClient is ORIGINAL and connection_utils.WebSocketClient is ORIGINAL


async def test_as_shipped_tcp_abort_leaves_the_client_down():
    r = await run("reset")
    assert r["client"] == "getstream.video.rtc.signaling.WebSocketClient"
    assert r["joins"] == 1 and not r["running"]  # no rejoin: dead until the manager (6.x) or the user acts


async def test_tcp_abort_rejoins_with_fast_reconnect(installed):
    r = await run("reset")
    assert r["client"].startswith("tether.integrations.getstream")
    assert r["fast_reconnect"] == [False, True], r
    assert r["rejoin_after"] is not None and r["running"]
    assert r["connection_lost"] == [] and r["thread_errors"] == []


async def test_black_hole_is_detected_in_band_and_rejoins(installed):
    r = await run("blackhole", blackhole_for=1.5)
    assert r["fast_reconnect"] == [False, True], r
    assert r["running"] and r["connection_lost"] == []
    assert r["thread_errors"] == []  # the shipped ping thread dies with "cannot join current thread"


async def test_connection_lost_only_when_tether_gives_up(installed):
    getstream.uninstall()
    getstream.install(policy=tether.Backoff(0.05, 2, max_delay=0.2, jitter="none", max_attempts=3), **HEALTH)
    lost = []
    async with FakeSfu() as sfu:
        ws, _ = await connection_utils.connect_websocket(
            token="t", ws_url=sfu.url, session_id="s", options=connection_utils.ConnectionOptions()
        )

        async def on_lost(reason):
            lost.append(reason)

        ws.on_event("connection_lost", on_lost)
        sfu.reject = "SFU is shutting down"  # every rejoin is refused from now on
        for sock in list(sfu.sockets):
            sock.transport.abort()
        await eventually(lambda: lost, what="connection_lost")
        assert len(lost) == 1 and "gave up" in lost[0], lost
        assert not ws.running
        await asyncio.sleep(300 * MS)  # room for a second report, which must not come
        assert len(lost) == 1
        ws.close()


async def test_sfu_error_on_join_raises_signaling_error(installed):
    async with FakeSfu(reject="call is full") as sfu:
        with pytest.raises(signaling.SignalingError, match="call is full") as info:
            await connection_utils.connect_websocket(
                token="t", ws_url=sfu.url, session_id="s", options=connection_utils.ConnectionOptions()
            )
        assert info.value.error.message == "call is full"
        assert len(sfu.joins) == 1  # fatal: not retried


async def events_after_a_raising_listener() -> dict:
    """Three participant_joined events; the application's sync listener raises on the first."""
    seen: list[str] = []
    lost: list[str] = []
    async with FakeSfu() as sfu:
        ws, _ = await connection_utils.connect_websocket(
            token="t", ws_url=sfu.url, session_id="s", options=connection_utils.ConnectionOptions()
        )

        def on_joined(event) -> None:
            seen.append(event.participant.user_id)
            if event.participant.user_id == "bob":
                raise RuntimeError("bug in the application's handler")

        async def on_lost(reason: str) -> None:
            lost.append(reason)

        ws.on_event("participant_joined", on_joined)
        ws.on_event("connection_lost", on_lost)
        for user in ("bob", "carol", "dave"):
            event = events_pb2.SfuEvent()
            event.participant_joined.participant.user_id = user
            await sfu.send_event(event)
        await eventually(lambda: len(seen) == 3 or lost, timeout=5)
        result = {"seen": seen, "running": bool(ws.running), "lost": lost}
        ws.close()
    return result


async def test_a_raising_listener_loses_its_event_only(caplog):
    """The shipped client emits each SFU event in a task of its own. Before, tether's reader emitted
    inline and a listener's exception ended it: every later event was dropped and connection_lost
    emitted, while the socket stayed open and answered health checks."""
    expected = {"seen": ["bob", "carol", "dave"], "running": True, "lost": []}
    assert await events_after_a_raising_listener() == expected  # as shipped
    getstream.install(**HEALTH)
    try:
        assert await events_after_a_raising_listener() == expected
    finally:
        getstream.uninstall()
    [record] = [r for r in caplog.records if "listener of the SFU event participant_joined raised" in r.getMessage()]
    assert record.levelno == logging.ERROR and "bug in the application's handler" in record.exc_text


def traced_connect(sfu: FakeSfu, tracer: Tracer):
    return connection_utils.connect_websocket(
        token="t",
        ws_url=sfu.url,
        session_id="s",
        options=connection_utils.ConnectionOptions(),
        tracer=tracer,
        sfu_id_fn=lambda: "sfu-1",
    )


async def traced_kinds() -> list[str]:
    tracer = Tracer()
    async with FakeSfu() as sfu:
        ws, _ = await traced_connect(sfu, tracer)
        event = events_pb2.SfuEvent()
        event.go_away.reason = 1
        await sfu.send_event(event)
        await asyncio.sleep(500 * MS)  # take() empties the tracer: looked at once
        ws.close()
    return [record[0] for record in tracer.take().snapshot]


async def test_sfu_traces_as_the_shipped_client():
    """getstream's SfuStatsReporter sends the client's traces to Stream: each open and its join request,
    and the SFU events getstream lists. Before, tether's client took the tracer and traced nothing."""
    shipped = await traced_kinds()
    assert {"signal.ws.open", "joinRequest", "go_away"} <= set(shipped), shipped
    getstream.install(**HEALTH)
    try:
        assert sorted(await traced_kinds()) == sorted(shipped)
    finally:
        getstream.uninstall()


async def traced_kinds_of_a_refused_join() -> list[str]:
    tracer = Tracer()
    async with FakeSfu(reject="call is full") as sfu:
        with pytest.raises(signaling.SignalingError, match="call is full"):
            await traced_connect(sfu, tracer)
    return [record[0] for record in tracer.take().snapshot]


async def test_a_refused_join_is_traced_as_the_shipped_client_does():
    """The SFU's error event during the join is traced too, as the shipped client traces every listed
    event, its first message included. Before, only events after the join were. (The shipped client is
    not run here: a refused join leaves its socket thread running, with no handle to close it.)"""
    assert "error" in signaling.SFU_EVENTS_TO_TRACE
    getstream.install(**HEALTH)
    try:
        assert await traced_kinds_of_a_refused_join() == ["signal.ws.open", "joinRequest", "error"]
    finally:
        getstream.uninstall()


async def test_connect_is_bounded(chaos_proxy):
    getstream.install(connect_timeout=1.0, **HEALTH)
    try:
        async with FakeSfu() as sfu:
            proxy = await chaos_proxy(sfu.address)
            proxy.blackhole()  # accepted, never answered
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(signaling.SignalingError):
                await asyncio.wait_for(
                    connection_utils.connect_websocket(
                        token="t",
                        ws_url=proxy.url(path="/ws"),
                        session_id="s",
                        options=connection_utils.ConnectionOptions(),
                    ),
                    30,
                )
            assert loop.time() - started < 15
    finally:
        getstream.uninstall()


async def test_close_is_synchronous_and_stops_everything(installed):
    async with FakeSfu() as sfu:
        ws, _ = await connection_utils.connect_websocket(
            token="t", ws_url=sfu.url, session_id="s", options=connection_utils.ConnectionOptions()
        )
        conn = ws.connection
        assert ws.close() is None and ws.closed and not ws.running
        await eventually(lambda: conn.state == "closed", what="closed")
        with pytest.raises(signaling.SignalingError):
            await ws.connect()


def test_missing_private_name_refuses_with_warning(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="tether.integrations")
    monkeypatch.delattr(connection_utils, "WebSocketClient")
    report = getstream.install()
    try:
        assert report.patched == ()
        assert "connection_utils.WebSocketClient" in report.refused["signaling"]
        assert signaling.WebSocketClient is ORIGINAL  # nothing half-patched
        msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("not patching signaling" in m and "connection_utils.WebSocketClient" in m for m in msgs), msgs
    finally:
        getstream.uninstall()


def test_untested_version_is_refused(monkeypatch, caplog):
    from tether.integrations import _patch

    caplog.set_level(logging.WARNING, logger="tether.integrations")
    monkeypatch.setattr(_patch, "installed_version", lambda dist: "99.0.0")
    report = getstream.install()
    try:
        # 99 is in the call part's release line (7 and up), outside its tested range
        assert report.patched == () and "outside the tested range" in report.refused["call_watch"]
        assert "signaling" not in report.refused  # signaling's line ends at 7
        assert signaling.WebSocketClient is ORIGINAL
    finally:
        getstream.uninstall()


def test_allow_untested_refuses_a_release_without_the_modules(monkeypatch, caplog):
    """A release whose modules are not what a part needs: trying it anyway is a refusal, never an exception."""
    from tether.integrations import _patch
    from tether.integrations._patch import RefusalKind

    caplog.set_level(logging.WARNING, logger="tether.integrations")
    monkeypatch.setattr(_patch, "installed_version", lambda dist: "7.2.0")
    monkeypatch.setitem(sys.modules, "getstream_rtc", None)
    report = getstream.install()
    assert report.refused["call_watch"].kind is RefusalKind.UNTESTED_VERSION
    report = getstream.install(allow_untested=True)
    try:
        assert report.patched == () and report.refused["call_watch"].kind is RefusalKind.MISSING_NAMES
        assert "getstream_rtc" in report.refused["call_watch"]
        assert "outside the tested range >=7.0,<7.1" in report.refused["call_watch"]
        assert signaling.WebSocketClient is ORIGINAL
        assert sum("not patching call_watch" in r.getMessage() for r in caplog.records) == 2
        assert not any("signaling" in r.getMessage() for r in caplog.records)
    finally:
        getstream.uninstall()


def test_declared_range():
    assert getstream.instrumentation_dependencies() == ("getstream>=3.3,<7", "getstream>=7.0,<7.1")


def test_install_is_idempotent_and_undoable():
    first = getstream.install()
    second = getstream.install()
    try:
        assert first.patched == second.patched == ("signaling",)
        assert connection_utils.WebSocketClient is signaling.WebSocketClient is not ORIGINAL
        assert issubclass(signaling.WebSocketClient, ORIGINAL)
    finally:
        getstream.uninstall()
    assert signaling.WebSocketClient is ORIGINAL


# the older getstream releases installed aside by the Makefile (GETSTREAM_OLD: the latest of each minor of
# the signaling part's range), each run in a subprocess; all of them at once, a few at a time
OLD = sorted((ROOT / ".venv").glob("getstream-*"))
FAULTS = ("reset", "blackhole")


@pytest.fixture(scope="module")
def older_runs() -> dict[tuple[str, str], tuple[subprocess.CompletedProcess[str], str]]:
    """Each older release through each fault: the scenario's run, and the version the subprocess imported."""

    def one(path: Path, fault: str) -> tuple[subprocess.CompletedProcess[str], str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run(
            [sys.executable, str(HERE / "gs_scenarios.py"), fault, "--tether"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        version = subprocess.run(
            [sys.executable, "-c", "from importlib.metadata import version; print(version('getstream'))"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        return out, version

    return each_release(OLD, FAULTS, one, at_once=6)


@pytest.mark.skipif(not OLD, reason="no older getstream in .venv/getstream-* (make test installs them there)")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("release", [p.name.removeprefix("getstream-") for p in OLD])
def test_older_getstream(older_runs, release, fault):
    out, version = older_runs[(f"getstream-{release}", fault)]
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["client"].startswith("tether.integrations.getstream"), r
    assert r["fast_reconnect"] == [False, True] and r["running"] and r["thread_errors"] == [], r
    assert version == release
