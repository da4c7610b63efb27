"""``Reconnector.run(connect)``: the retry loop on the caller's event loop, made of the same steps as the
step-wise form (the native state machine decides; this coroutine only awaits).

Each attempt runs ``connect()`` as its own task so that both ways of ending it are bounded: cancelling
``run()`` cancels the attempt and waits until it has finished its cleanup, and an attempt that makes no
progress within ``attempt_timeout`` is cancelled at that moment, before any backoff sleep. A
``connect()`` that ignores cancellation is waited for at most ``CANCEL_GRACE`` seconds, then abandoned
with a WARNING.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from ._native import TimeoutError as _TimeoutError

CANCEL_GRACE = 5.0
"""Seconds a cancelled ``connect()`` gets to finish its cleanup before ``run()`` goes on without it."""


def _retrieve(task: asyncio.Task[Any]) -> None:
    # an abandoned attempt's outcome is nobody's business any more: keep asyncio from reporting it
    if not task.cancelled():
        task.exception()


async def _cancel(r: Any, task: asyncio.Task[Any], number: int) -> None:
    """Cancel the attempt and wait (bounded) until it has handled the cancellation."""
    task.cancel()
    done, _ = await asyncio.wait((task,), timeout=CANCEL_GRACE)
    if not done:
        r._abandoned(number, CANCEL_GRACE)


async def _attempt(r: Any, task: asyncio.Task[Any], number: int, timeout: float | None) -> bool:
    """Wait for the attempt to end; True when it was abandoned for making no progress within ``timeout``."""
    try:
        if timeout is not None:
            await asyncio.wait((task,), timeout=timeout)
            if not task.done() and r._stalled(number):
                await _cancel(r, task, number)
                return True
        await asyncio.wait((task,))
        return False
    except asyncio.CancelledError:
        await _cancel(r, task, number)
        raise


async def run(r: Any, connect: Any) -> Any:
    r._begin_run()
    try:
        while True:
            number, timeout = r._start()
            try:
                aw = connect()
            except Exception as e:
                await asyncio.sleep(r._failed(e))
                continue
            if not inspect.isawaitable(aw):
                raise TypeError(f"connect must return an awaitable; it returned {type(aw).__name__}")
            task = asyncio.ensure_future(aw)
            task.add_done_callback(_retrieve)
            if await _attempt(r, task, number, timeout):
                exc: BaseException = _TimeoutError(
                    f"attempt {number} made no progress within {timeout:.1f}s (connect() did not call "
                    "connected()); abandoned",
                    timeout=timeout,
                    what="attempt",
                )
            elif task.cancelled():
                # connect() was cancelled from elsewhere or raised CancelledError itself: not a failure
                raise asyncio.CancelledError
            else:
                failure = task.exception()
                if failure is None:
                    return task.result()
                if not isinstance(failure, Exception):
                    raise failure
                exc = failure
            await asyncio.sleep(r._failed(exc))
    finally:
        r._end_run()
