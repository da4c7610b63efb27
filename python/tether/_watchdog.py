"""Stall detection (stuck reconnecting, ghost rooms, waits that never return): ``Watchdog`` (dwell, progress, liveness) and ``bounded`` awaits."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import Any, TypeVar

from ._native import Alarm, Liveness, Watchdog
from ._native import TimeoutError as TetherTimeoutError

T = TypeVar("T")


def _bound(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    t = float(timeout)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    return t


def _retrieve(task: asyncio.Future[Any]) -> None:
    # a cancelled inner task may still finish with an error later: retrieve it, no "never retrieved" noise
    if not task.cancelled():
        task.exception()


async def bounded(awaitable: Awaitable[T], timeout: float, *, what: str | None = None) -> T:
    """Await ``awaitable`` but never longer than ``timeout`` seconds.

    On expiry the inner task is cancelled and ``tether.TimeoutError`` is raised at once: this does not
    wait for the inner task to honour the cancellation (a ``disconnect()`` that swallows
    ``CancelledError`` cannot hold the caller hostage). Results and exceptions pass through; cancelling
    the caller cancels the inner task.
    """
    bound = _bound(timeout)
    task = asyncio.ensure_future(awaitable)
    label = what or getattr(awaitable, "__qualname__", None) or type(awaitable).__name__
    try:
        done, _ = await asyncio.wait({task}, timeout=bound)
    except BaseException:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise
    if done:
        return task.result()
    task.cancel()
    task.add_done_callback(_retrieve)
    raise TetherTimeoutError(f"{label} did not finish within {bound:g}s; it was cancelled", timeout=bound, what=label)


__all__ = ["Alarm", "Liveness", "Watchdog", "bounded"]
