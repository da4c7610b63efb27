"""`try_next()` on every native event stream returns an event as soon as one is queued, without an
`__anext__`/`wait()` having pulled it first."""

import asyncio

import tether
from support import MS, eventually
from tether import events as ev
from tether._procpool import SpawnFailed


async def test_pool_events_try_next():
    async def spawn():
        raise OSError("cannot fork")

    pool = tether.ProcPool(spawn=spawn, num_idle=1, respawn=tether.Backoff(0.05, jitter="none"))
    events = pool.events()
    pool.start()
    assert isinstance(await eventually(events.try_next, what="an event from try_next()"), SpawnFailed)
    await pool.aclose()


async def test_watchdog_alarms_try_next():
    wd = tether.Watchdog("w")
    alarms = wd.alarms()
    wd.liveness("audio", 0.05)
    a = await eventually(alarms.try_next, what="an alarm from try_next()")
    assert a is not None and a.name == "audio"
    wd.close()


async def test_reconnector_events_try_next():
    r = tether.Reconnector(tether.Backoff(0.01, jitter="none"), quiet_attempts=5, name="t")
    events = r.events()
    calls = 0

    async def connect():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError("first attempt fails")
        return "done"

    assert await r.run(connect) == "done"
    first = await eventually(events.try_next, what="an event from try_next()")
    assert isinstance(first, ev.Connecting | ev.ConnectionLost | ev.Reconnecting), first


async def test_try_next_after_close_drains_then_stops():
    wd = tether.Watchdog("w")
    alarms = wd.alarms()
    wd.liveness("audio", 0.05)
    await asyncio.sleep(300 * MS)  # alarms queue while nobody reads
    wd.close()
    assert (await eventually(alarms.try_next, what="an alarm from try_next()")) is not None
    try:
        while alarms.try_next() is not None:
            pass
        raise AssertionError("try_next must raise StopAsyncIteration once the stream ended")
    except StopAsyncIteration:
        pass
