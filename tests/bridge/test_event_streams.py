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


async def test_anext_is_a_coroutine_that_tasks_take():
    wd = tether.Watchdog("w")
    alarms = wd.alarms()
    step = alarms.__anext__()
    assert asyncio.iscoroutine(step)
    task = asyncio.create_task(step)
    wd.liveness("audio", 50 * MS)
    assert (await asyncio.wait_for(task, 10)).name == "audio"
    wd.close()


async def test_async_for_over_an_ended_stream_ends_at_once():
    # the end is known at the first step: it must end the loop, not surface as a TypeError from `async for`
    wd = tether.Watchdog("w")
    wd.close()
    assert [a async for a in wd.alarms()] == []

    async def spawn():
        raise OSError("cannot fork")

    pool = tether.ProcPool(spawn=spawn, num_idle=0)
    pool.start()
    await pool.aclose()
    assert [e async for e in pool.events()] == []

    conn = tether.connect("ws://127.0.0.1:9", connect_timeout=None)
    conn.close()
    assert [e async for e in conn.events()] == []


async def test_anext_cancelled_while_waiting_loses_no_event():
    wd = tether.Watchdog("w")
    alarms = wd.alarms()
    keys = [f"k{i}" for i in range(30)]
    for i, key in enumerate(keys):
        wd.liveness(key, (20 + 3 * i) * MS)
    got = []
    deadline = asyncio.get_running_loop().time() + 10
    while len(got) < len(keys) and asyncio.get_running_loop().time() < deadline:
        try:
            got.append(await asyncio.wait_for(alarms.__anext__(), 0.0002))
        except asyncio.TimeoutError:
            pass
    wd.close()
    assert sorted(a.name for a in got) == sorted(keys)


async def test_concurrent_anext_share_the_events_without_loss_or_repeat():
    wd = tether.Watchdog("w")
    alarms = wd.alarms()
    got = []

    async def consume():
        async for a in alarms:
            got.append(a.name)

    consumers = [asyncio.create_task(consume()) for _ in range(3)]
    keys = [f"k{i}" for i in range(20)]
    for i, key in enumerate(keys):
        wd.liveness(key, (20 + 5 * i) * MS)
    await eventually(lambda: len(got) >= len(keys), what="every alarm")
    wd.close()
    await asyncio.wait_for(asyncio.gather(*consumers), 10)
    assert sorted(got) == sorted(keys)
