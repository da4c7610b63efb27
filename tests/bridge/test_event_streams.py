"""`try_next()` on every native event stream returns an event as soon as one is queued, without an
`__anext__`/`wait()` having pulled it first."""

import asyncio

import tether
from tether import events as ev
from tether._procpool import SpawnFailed


async def poll(stream, timeout=10.0):
    """try_next() until it returns something (it must, once an event is queued)."""
    end = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < end:
        got = stream.try_next()
        if got is not None:
            return got
        await asyncio.sleep(0.02)
    return None


async def test_pool_events_try_next():
    async def spawn():
        raise OSError("cannot fork")

    pool = tether.ProcPool(spawn=spawn, num_idle=1, respawn=tether.Backoff(0.05, jitter="none"))
    events = pool.events()
    pool.start()
    assert isinstance(await poll(events), SpawnFailed)
    await pool.aclose()


async def test_watchdog_alarms_try_next():
    wd = tether.Watchdog("w")
    alarms = wd.alarms()
    wd.liveness("audio", 0.05)
    a = await poll(alarms)
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
    first = await poll(events)
    assert isinstance(first, ev.Connecting | ev.ConnectionLost | ev.Reconnecting), first


async def test_try_next_after_close_drains_then_stops():
    wd = tether.Watchdog("w")
    alarms = wd.alarms()
    wd.liveness("audio", 0.05)
    await asyncio.sleep(0.3)
    wd.close()
    assert (await poll(alarms)) is not None
    try:
        while alarms.try_next() is not None:
            pass
        raise AssertionError("try_next must raise StopAsyncIteration once the stream ended")
    except StopAsyncIteration:
        pass
