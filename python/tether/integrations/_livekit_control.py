"""livekit-agents' worker control plane under a ``tether.Reconnector``; see ``livekit.install``.

1.x (``AgentServer._connection_task`` is a Python loop): the loop runs as shipped, and tether takes the
three decisions it gets wrong, each at a seam of the shipped code rather than in a copy of it:

* the retry sleep: the loop sleeps ``min(retry_count * 2, 10)`` with ``retry_count`` reset as soon as the
  socket opens, so a control plane that accepts and then drops the socket is retried at 0 s forever and
  ``max_retry`` is never reached. The loop's ``asyncio.sleep`` becomes the Reconnector's: the budget
  resets only once a registration lasted ``stable_after``, ``max_retry`` ends the loop with the shipped
  ``RuntimeError``, and the first retry of an outage logs DEBUG, backed-off ones WARNING.
* the loop's own "retrying in 0s" WARNING is dropped (a filter on ``livekit.agents`` that matches only
  that call site, only for a supervised server): the Reconnector's record replaces it.
* registration is bounded by ``register_timeout``: a control plane that accepts the socket and never
  answers would otherwise hold the loop for aiohttp's 5 minutes; the attempt is cancelled and counted.
  Registration itself is seen through the public ``worker_registered`` event.

The seams depend on the inside of the loop (it sleeps with ``asyncio.sleep`` in its ``except``, logs one
WARNING there), so its code fingerprint must be the one read (1.5.17 to 1.8.9: unchanged).

2.x (the loop is the native ``_core.Worker``, which never resets its retry counter, so a worker whose
socket is recycled dies after ``max_retry`` recycles): the shipped ``_connection_task`` runs whole,
through every wrapper another library put on it, and is started again when the native worker gave up
after a registration that lasted ``stable_after``. A worker that never registered ends as shipped: its
own ``max_retry`` was spent. The native worker's retries inside one run are its own (0, 2, 4 ... s, no
jitter); only its first retry's WARNING is lowered, through the record's fields. Its ERROR when a run
gives up stays: the record says nothing of the restart that follows. livekit's ``log_exceptions``
decorator's ERROR with a traceback is dropped for a run that is started again (a filter that matches
only that decorator's code, only inside a supervised run that registered).
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

from .._native import Backoff, GaveUp
from .._native import TimeoutError as TetherTimeoutError
from .._reconnect import Reconnector

LOGGER_NAME = "livekit.agents"

# the defaults of install() and of Settings, written once
STABLE_AFTER = 10.0
REGISTER_TIMEOUT = 10.0


class Settings:
    __slots__ = ("policy", "register_timeout", "stable_after")

    def __init__(
        self,
        policy: Backoff | Callable[[int], Backoff] | None = None,
        stable_after: float = STABLE_AFTER,
        register_timeout: float = REGISTER_TIMEOUT,
    ) -> None:
        if policy is not None and not isinstance(policy, Backoff) and not callable(policy):
            raise TypeError("policy must be a tether.Backoff or a callable(max_retry) -> Backoff")
        self.policy = policy
        self.stable_after = stable_after
        self.register_timeout = register_timeout

    def backoff(self, max_retry: int) -> Backoff:
        if self.policy is None:
            # livekit waits 0, 2, 4 ... 10 s; the same scale, jittered so a fleet does not reconnect in step
            return Backoff(initial=1.0, factor=2.0, max_delay=10.0, jitter="equal", max_attempts=max_retry)
        if isinstance(self.policy, Backoff):
            return self.policy
        policy: Backoff = self.policy(max_retry)
        return policy

    def reconnector(self, server: Any) -> Reconnector:
        return Reconnector(
            self.backoff(server._max_retry),
            stable_after=self.stable_after,
            quiet_attempts=1,
            name="livekit",
            logger=logging.getLogger(LOGGER_NAME),
        )


def gave_up(server: Any, e: GaveUp) -> RuntimeError:
    """The shipped loop's terminal error (the health check reads ``_connection_failed``)."""
    server._connection_failed = True
    return RuntimeError(f"failed to connect to livekit after {e.attempts} attempts")


# ----------------------------------------------------------------------------------------------------
# 1.x: seams of the Python loop
# ----------------------------------------------------------------------------------------------------

# the supervision of the server whose loop runs in this task (tasks it creates inherit it)
_ACTIVE: contextvars.ContextVar[_Supervision | None] = contextvars.ContextVar("tether_livekit", default=None)


class _Supervision:
    """One run of a 1.x server's connection loop: its Reconnector and its registration deadline."""

    def __init__(self, server: Any, settings: Settings, real_sleep: Callable[..., Any]) -> None:
        self.server = server
        self.settings = settings
        self.r = settings.reconnector(server)
        self._sleep = real_sleep
        self._loop = asyncio.get_running_loop()
        self.attempt_started: float | None = self._loop.time()
        self.changed = asyncio.Event()

    def registered(self, *_: Any) -> None:
        self.r.connected()
        self.attempt_started = None
        self.changed.set()

    async def retry(self, exc: BaseException | None) -> None:
        """The loop's retry sleep, decided by the Reconnector (which logs it)."""
        self.attempt_started = None
        try:
            delay = self.r.failed(exc)
        except GaveUp as e:
            raise gave_up(self.server, e) from e
        await self._sleep(delay)
        self.attempt_started = self._loop.time()
        self.changed.set()

    async def run(self, start: Callable[[], Any]) -> Any:
        """Run the loop (``start()``), restarting it when an attempt outlives ``register_timeout``."""
        while True:
            task = asyncio.ensure_future(start())
            try:
                if await self._watch(task):
                    return task.result()
            finally:
                if not task.done():
                    task.cancel()
                    await asyncio.wait({task})
            await self.retry(
                TetherTimeoutError(f"livekit worker registration took longer than {self.settings.register_timeout}s")
            )

    async def _watch(self, task: asyncio.Future[Any]) -> bool:
        """True when the loop ended; False when its current attempt did not register in time."""
        while True:
            self.changed.clear()
            started = self.attempt_started
            timeout = None
            if started is not None:
                timeout = max(0.0, started + self.settings.register_timeout - self._loop.time())
            changed = asyncio.ensure_future(self.changed.wait())
            try:
                await asyncio.wait({task, changed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
            if task.done():
                return True
            if not self.changed.is_set() and started is not None and self.attempt_started == started:
                return False


class _AsyncioForLoop(types.ModuleType):
    """``asyncio`` as the worker module sees it: the same module, except that the ``sleep`` called from
    the connection loop of a supervised server is the Reconnector's."""

    def __init__(self, real: types.ModuleType, loop_code: types.CodeType) -> None:
        super().__init__(real.__name__, real.__doc__)
        self._real = real
        self._loop_code = loop_code

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def sleep(self, delay: float, result: Any = None) -> Any:
        supervision = _ACTIVE.get()
        if supervision is None or sys._getframe(1).f_code is not self._loop_code:
            return self._real.sleep(delay, result)
        # called inside the loop's ``except Exception as e``: that is the exception being handled
        return supervision.retry(sys.exc_info()[1])


class _DropShippedRetryWarning(logging.Filter):
    """Drops the loop's own "retrying in Ns" WARNING for supervised servers: the Reconnector logs the
    retry instead (DEBUG for the first of an outage)."""

    def __init__(self, loop_code: types.CodeType) -> None:
        super().__init__()
        self._file = loop_code.co_filename
        self._func = loop_code.co_name

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno == logging.WARNING
            and record.funcName == self._func
            and record.pathname == self._file
            and _ACTIVE.get() is not None
        )


def patch_v1(p: Any, server_cls: Any, lk_worker: types.ModuleType, settings: Settings) -> None:
    loop_code = inspect.unwrap(server_cls._connection_task).__code__
    real_asyncio = lk_worker.asyncio
    log_filter = _DropShippedRetryWarning(loop_code)
    lk_logger: logging.Logger = lk_worker.logger

    async def connection_task(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        server = args[0]
        supervision = _Supervision(server, settings, real_asyncio.sleep)
        token = _ACTIVE.set(supervision)
        server.on("worker_registered", supervision.registered)
        try:
            return await supervision.run(lambda: wrapped(*args, **kwargs))
        finally:
            server.off("worker_registered", supervision.registered)
            _ACTIVE.reset(token)

    p.set(lk_worker, "asyncio", _AsyncioForLoop(real_asyncio, loop_code))
    p.call(lambda: lk_logger.addFilter(log_filter), lambda: lk_logger.removeFilter(log_filter))
    p.wrap(server_cls, "_connection_task", connection_task)


# ----------------------------------------------------------------------------------------------------
# 2.x: the native worker, started again after a stable run
# ----------------------------------------------------------------------------------------------------


# where the native worker's records come from (a ``pathname`` of the records it logs through Python)
NATIVE_WORKER_SOURCE = "lk-agents-worker/src/worker.rs"


class _QuietFirstNativeRetry(logging.Filter):
    """The native worker logs its first, immediate retry ("retrying in 0s") at WARNING like the 1.x loop;
    its records carry ``retry_count``/``max_retry`` fields, so the first one is logged at DEBUG instead
    (dropped when ``livekit.agents`` is not enabled for DEBUG). Backed-off retries stay WARNING."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.WARNING
            and str(getattr(record, "retry_count", "")) == "1"
            and hasattr(record, "max_retry")
            and record.pathname.replace("\\", "/").endswith(NATIVE_WORKER_SOURCE)
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self._logger.isEnabledFor(logging.DEBUG)
        return True


class _NativeRun:
    """One run of the native worker under ``patch_v2``'s wrapper."""

    __slots__ = ("registered",)

    def __init__(self) -> None:
        self.registered = False


# the run of the native worker in this task (the decorator's record is logged in it)
_NATIVE_RUN: contextvars.ContextVar[_NativeRun | None] = contextvars.ContextVar("tether_livekit_2x", default=None)


def decorator_code(task: Callable[..., Any]) -> types.CodeType | None:
    """The code of livekit's own ``utils.log_exceptions`` layer among the wrappers of ``task``, if it is
    there: compared with a function decorated here, so that no other wrapper is taken for it."""
    try:
        log_exceptions = importlib.import_module("livekit.agents.utils.log").log_exceptions

        async def probe() -> None: ...

        code = log_exceptions(logger=logging.getLogger(LOGGER_NAME))(probe).__code__
    except Exception:
        return None
    layer: Any = task
    while layer is not None:
        if getattr(layer, "__code__", None) is code:
            return code
        layer = getattr(layer, "__wrapped__", None)
    return None


class _DropRestartedRunError(logging.Filter):
    """livekit's ``log_exceptions`` decorator logs every error of the connection task at ERROR with its
    traceback. For a run that registered, tether starts the worker again (or gives up with its own
    record), so that record is dropped; a run that never registered ends as shipped, record and all."""

    def __init__(self, code: types.CodeType) -> None:
        super().__init__()
        self._file = code.co_filename
        self._func = code.co_name

    def filter(self, record: logging.LogRecord) -> bool:
        run = _NATIVE_RUN.get()
        return not (
            run is not None
            and run.registered
            and record.levelno >= logging.ERROR
            and record.funcName == self._func
            and record.pathname == self._file
        )


def patch_v2(p: Any, server_cls: Any, settings: Settings) -> None:
    async def connection_task(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        server = args[0]
        r = settings.reconnector(server)
        run = _NativeRun()

        def registered(*_: Any) -> None:
            run.registered = True
            r.connected()

        server.on("worker_registered", registered)
        token = _NATIVE_RUN.set(run)
        try:
            while True:
                run.registered = False
                try:
                    # through every wrapper under tether's (another library's instrumentation runs)
                    return await wrapped(*args, **kwargs)
                except Exception as e:
                    if server._closed:
                        return None
                    if not run.registered:
                        raise  # never registered: the native worker spent its max_retry, as shipped
                    try:
                        delay = r.failed(e)
                    except GaveUp as g:
                        raise gave_up(server, g) from g
                # the health check answers 503 while this flag is set; the worker is starting again
                server._connection_failed = False
                await asyncio.sleep(delay)
                if server._closed:
                    return None
        finally:
            _NATIVE_RUN.reset(token)
            server.off("worker_registered", registered)

    lk_logger = logging.getLogger(LOGGER_NAME)
    quiet = _QuietFirstNativeRetry(lk_logger)
    p.call(lambda: lk_logger.addFilter(quiet), lambda: lk_logger.removeFilter(quiet))
    code = decorator_code(server_cls._connection_task)
    if code is not None:
        restarted = _DropRestartedRunError(code)
        p.call(lambda: lk_logger.addFilter(restarted), lambda: lk_logger.removeFilter(restarted))
    p.wrap(server_cls, "_connection_task", connection_task)
