"""Watchdog (dwell, liveness, progress), bounded awaits, and the wiring into tether.connect."""

import asyncio
import logging
import time

import pytest

import tether
from support import MS, drop
from tether import events as ev
from tether.testing import SignalServer


async def next_alarm(it, timeout=10.0):
    return await asyncio.wait_for(it.__anext__(), timeout)


async def test_dwell_alarm_for_stuck_state(caplog):
    caplog.set_level(logging.WARNING, logger="tether")
    wd = tether.Watchdog("room")
    alarms = wd.alarms()
    wd.dwell("reconnecting", 0.2)
    wd.set_state("reconnecting")
    t0 = time.monotonic()
    a = await next_alarm(alarms)
    assert a.kind == "dwell" and a.name == "reconnecting"
    assert 0.2 <= time.monotonic() - t0 < 3.0
    assert a.limit == pytest.approx(0.2) and a.elapsed >= 0.2
    assert "stuck in 'reconnecting'" in a.message or 'stuck in "reconnecting"' in a.message
    assert any(r.name == "tether.watchdog" and r.levelno == logging.WARNING for r in caplog.records)
    wd.close()


async def test_no_dwell_alarm_when_state_changes_in_time():
    wd = tether.Watchdog()
    alarms = wd.alarms()
    wd.dwell("reconnecting", 0.3)
    for _ in range(5):
        wd.set_state("reconnecting")
        await asyncio.sleep(100 * MS)
        wd.set_state("connected")
        await asyncio.sleep(100 * MS)
    await asyncio.sleep(400 * MS)  # longer than the dwell limit: an alarm armed by mistake would fire
    wd.close()
    assert [a async for a in alarms] == []


async def test_ghost_room_liveness_alarms_and_rearms():
    wd = tether.Watchdog("room")
    alarms = wd.alarms()
    audio = wd.liveness("audio:alice", 0.2)
    for _ in range(6):
        await asyncio.sleep(50 * MS)
        audio.beat()
    assert audio.alarmed is False
    t0 = time.monotonic()
    a = await next_alarm(alarms)  # frames stop while "connected"
    assert (a.kind, a.name) == ("liveness", "audio:alice")
    assert 0.15 <= time.monotonic() - t0 < 3.0
    assert audio.alarmed
    audio.beat()
    assert not audio.alarmed
    a = await next_alarm(alarms)
    assert a.name == "audio:alice"
    wd.close()


async def test_never_beating_liveness_alarms_and_pause_silences():
    wd = tether.Watchdog()
    alarms = wd.alarms()
    wd.liveness("video", 0.1)
    muted = wd.liveness("mic", 0.1)
    muted.pause()
    a = await next_alarm(alarms)
    assert a.name == "video"
    await asyncio.sleep(300 * MS)  # three limits: the paused one must stay silent
    wd.close()
    assert [a.name async for a in alarms] == []


async def test_on_alarm_callback_runs_on_the_loop():
    got = []
    done = asyncio.Event()
    loop_thread = []

    def cb(alarm):
        import threading

        loop_thread.append(threading.current_thread() is threading.main_thread())
        got.append(alarm)
        done.set()

    wd = tether.Watchdog(on_alarm=cb)
    p = wd.progress("resume", 0.1)
    await asyncio.wait_for(done.wait(), 5)
    assert got[0].kind == "progress" and got[0].name == "resume" and loop_thread == [True]
    assert p.idle >= 0.1
    wd.close()


async def test_iteration_ends_on_close():
    wd = tether.Watchdog()
    it = wd.alarms()
    task = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0)  # its first step: waiting for an alarm
    assert not task.done()
    wd.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 5)
    assert [a async for a in wd] == []


async def test_bounded_returns_within_its_bound_and_cancels():
    cancelled = asyncio.Event()

    async def never():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    t0 = time.monotonic()
    with pytest.raises(tether.TimeoutError) as info:
        await tether.bounded(never(), 0.2, what="room.disconnect()")
    assert time.monotonic() - t0 < 1.0
    assert "room.disconnect() did not finish within 0.2s" in str(info.value)
    assert isinstance(info.value, TimeoutError)  # also the builtin / asyncio.TimeoutError
    await asyncio.wait_for(cancelled.wait(), 2)


async def test_bounded_does_not_wait_for_a_task_that_swallows_cancellation():
    release = asyncio.Event()

    async def stubborn():
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # the wedge: aclose() that never returns

    t0 = time.monotonic()
    with pytest.raises(tether.TimeoutError):
        await tether.bounded(stubborn(), 0.2)
    assert time.monotonic() - t0 < 1.0
    release.set()


async def test_bounded_passes_results_and_errors():
    async def ok():
        return 42

    async def bad():
        raise KeyError("x")

    assert await tether.bounded(ok(), 1) == 42
    with pytest.raises(KeyError):
        await tether.bounded(bad(), 1)
    fut = asyncio.get_running_loop().create_future()
    fut.set_result("f")
    assert await tether.bounded(fut, 1) == "f"


async def test_cancelling_bounded_cancels_inner():
    inner_started = asyncio.Event()
    inner_cancelled = asyncio.Event()

    async def slow():
        inner_started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise

    t = asyncio.ensure_future(tether.bounded(slow(), 100))
    await asyncio.wait_for(inner_started.wait(), 5)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    await asyncio.wait_for(inner_cancelled.wait(), 2)


@pytest.mark.parametrize(
    "timeout,exc", [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)]
)
async def test_bad_inputs(timeout, exc):
    async def ok():
        return 1

    coro = ok()
    with pytest.raises(exc):
        await tether.bounded(coro, timeout)
    coro.close()
    wd = tether.Watchdog()
    with pytest.raises(exc):
        wd.dwell("s", timeout)
    with pytest.raises(exc):
        wd.liveness("k", timeout)
    with pytest.raises(ValueError):
        wd.set_state("")
    wd.close()


def test_on_alarm_needs_a_loop():
    with pytest.raises(TypeError):
        tether.Watchdog(on_alarm=print)
    with pytest.raises(TypeError):
        tether.Watchdog(on_alarm=5)


async def test_reconnector_abandons_a_stalled_attempt_and_escalates():
    """Resume attempt 0 goes silent; the attempt deadline abandons it, the next attempt runs."""
    calls = []

    r = tether.Reconnector(tether.Backoff(0.01, jitter="none"), attempt_timeout=0.2, name="rtc")

    async def connect():
        calls.append(time.monotonic())
        if len(calls) == 1:
            await asyncio.sleep(3600)  # the wedge: no progress, no error
        r.connected()
        return "up"

    t0 = time.monotonic()
    assert await r.run(connect) == "up"
    assert len(calls) == 2 and 0.2 <= calls[1] - t0 < 3.0


async def test_connection_feeds_its_watchdog_and_forwards_alarms():
    async with SignalServer() as srv:
        wd = tether.Watchdog("signal")
        wd.dwell("reconnecting", 0.3)
        c = await tether.connect(
            srv.url,
            watchdog=wd,
            ping_interval=0.2,
            ping_timeout=0.2,
            policy=tether.Backoff(0.05, max_delay=0.1, jitter="none"),
        )
        assert wd.state[0] == "connected"
        evs = c.events()
        srv.listening(False)
        await drop(srv)
        alarm = None
        while alarm is None:
            e = await asyncio.wait_for(evs.__anext__(), 10)
            if isinstance(e, tether.Alarm):
                alarm = e
        assert alarm.kind == "dwell" and alarm.name == "reconnecting"
        srv.listening(True)
        while not isinstance(await asyncio.wait_for(evs.__anext__(), 10), ev.Reconnected):
            pass
        assert wd.state[0] == "connected"
        await c.aclose()
        assert wd.state[0] == "closed"
        wd.close()


async def test_pause_then_beat_rearms():
    wd = tether.Watchdog()
    alarms = wd.alarms()
    mic = wd.liveness("mic", 0.1)
    mic.pause()
    await asyncio.sleep(300 * MS)  # the monitor has nothing to watch and sleeps
    mic.beat()  # unmuted: silence from now on must alarm again
    a = await next_alarm(alarms, timeout=5)
    assert a.name == "mic"
    wd.close()


async def test_an_alarm_without_a_handler_is_reported_by_one_warning(tether_logs):
    wd = tether.Watchdog("room")
    alarms = wd.alarms()  # a stream delivers alarms but does not take over their report
    wd.liveness("audio", 0.1)
    a = await next_alarm(alarms)
    wd.close()
    lines = [r for r in tether_logs.records if a.message in r.getMessage() and r.levelno >= logging.WARNING]
    assert [(r.name, r.levelname) for r in lines] == [("tether.watchdog", "WARNING")]


async def test_an_alarm_handled_by_on_alarm_is_not_logged_again(tether_logs):
    got = []
    done = asyncio.Event()

    def report(alarm):  # the application's report, e.g. its own log line
        got.append(alarm)
        done.set()

    wd = tether.Watchdog("room", on_alarm=report)
    wd.dwell("reconnecting", 0.1)
    wd.set_state("reconnecting")
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(50 * MS)  # room for a second report, which must not come
    wd.close()
    assert len(got) == 1
    loud = [r for r in tether_logs.records if r.name == "tether.watchdog" and r.levelno >= logging.WARNING]
    assert loud == [], [r.getMessage() for r in loud]
    quiet = [r for r in tether_logs.records if r.name == "tether.watchdog" and got[0].message in r.getMessage()]
    assert [r.levelname for r in quiet] == ["DEBUG"]  # still there for whoever debugs
