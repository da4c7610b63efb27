"""`Watchdog(on_alarm=...)`: the handler is the alarms' report (their records are DEBUG then), so it gets
every alarm. Before, its feed was a bounded broadcast that ended at the first lag: a burst of over 1,024
alarms while the loop was busy (every participant of a dropped SFU going quiet at once) stopped it for
good, and nothing said so; and an `async def` handler's coroutine was never run."""

import asyncio
import time

import tether
from support import DEADLINE, MS, eventually

KEYS = 2000


async def burst(wd: tether.Watchdog) -> None:
    """KEYS liveness keys go quiet while the loop is busy, then are removed once they alarmed."""
    keys = [wd.liveness(f"audio:{i}", 300 * MS) for i in range(KEYS)]
    end = time.monotonic() + 2
    while time.monotonic() < end:
        pass  # CPU-bound work on the loop thread: the alarms pile up meanwhile
    await asyncio.sleep(1)
    for k in keys:
        wd.remove(k)


async def test_every_alarm_of_a_burst_reaches_on_alarm_and_later_ones_too():
    got: list[tether.Alarm] = []
    wd = tether.Watchdog("room", on_alarm=got.append)
    try:
        await burst(wd)
        await eventually(lambda: len(got) >= KEYS, what=f"{KEYS} liveness alarms")
        assert len(got) == KEYS, len(got)
        wd.dwell("reconnecting", 200 * MS)
        wd.set_state("reconnecting")
        await eventually(lambda: got[-1].kind == "dwell", what="the dwell alarm after the burst")
    finally:
        wd.close()


async def test_an_async_on_alarm_runs():
    got = asyncio.Event()

    async def on_alarm(alarm: tether.Alarm) -> None:
        await asyncio.sleep(0)
        got.set()

    wd = tether.Watchdog("room", on_alarm=on_alarm)
    try:
        wd.liveness("audio:alice", 200 * MS)
        await asyncio.wait_for(got.wait(), DEADLINE)
    finally:
        wd.close()
