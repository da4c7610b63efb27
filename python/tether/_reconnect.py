"""``tether.Reconnector``: the native retry policy, plus ``run(connect)``, the retry loop on the caller's
event loop, made of the same steps as the step-wise form (the native state machine decides; this
coroutine only awaits, so the calls go one way, from here into the native class).

Each attempt runs ``connect()`` as its own task so that both ways of ending it are bounded: cancelling
``run()`` cancels the attempt and waits until it has finished its cleanup, and an attempt that makes no
progress within ``attempt_timeout`` is cancelled at that moment, before any backoff sleep. A
``connect()`` that ignores cancellation is waited for at most ``CANCEL_GRACE`` seconds, then abandoned
with a WARNING.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from . import _native
from ._native import TimeoutError as _TimeoutError

_T = TypeVar("_T")

CANCEL_GRACE = 5.0
"""Seconds a cancelled ``connect()`` gets to finish its cleanup before ``run()`` goes on without it."""


def _retrieve(task: asyncio.Task[Any]) -> None:
    # an abandoned attempt's outcome is nobody's business any more: keep asyncio from reporting it
    if not task.cancelled():
        task.exception()


async def _cancel(r: Reconnector, task: asyncio.Task[Any], number: int) -> None:
    """Cancel the attempt and wait (bounded) until it has handled the cancellation."""
    task.cancel()
    done, _ = await asyncio.wait((task,), timeout=CANCEL_GRACE)
    if not done:
        r._abandoned(number, CANCEL_GRACE)


async def _attempt(r: Reconnector, task: asyncio.Task[Any], number: int, timeout: float | None) -> bool:
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


async def _run(r: Reconnector, connect: Callable[[], Awaitable[_T]]) -> _T:
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


class Reconnector(_native.Reconnector):
    __doc__ = _native.Reconnector.__doc__
    __slots__ = ()

    def run(self, connect: Callable[[], Awaitable[_T]]) -> Coroutine[Any, Any, _T]:
        """``await r.run(connect)``: call ``connect()`` until it returns (its value is returned); each call is one
        attempt, raising means it failed or the connection was lost. Call ``r.connected()`` inside once the
        handshake succeeded. ``attempt_timeout``: an attempt that has not called ``connected()`` within it is
        cancelled at that moment and counts as a failure (``tether.TimeoutError``). Cancelling ``run`` cancels
        ``connect`` and returns once it has finished its cleanup (at most ``tether._reconnect.CANCEL_GRACE`` = 5
        s later, then it is abandoned with a WARNING). RuntimeError if already running; TypeError if connect is
        not callable."""
        # refused at the call, before a coroutine exists, as a wrong argument to any call is
        if not callable(connect):
            raise TypeError("connect must be an async callable (a coroutine function)")
        return _run(self, connect)
