"""pipecat websocket services on tether: one call before building the pipeline.

    from tether.integrations import pipecat
    pipecat.install()

Part ``websocket_service`` replaces the receive loop of ``pipecat.services.websocket_service.
WebsocketService`` (every websocket STT/TTS/LLM service) with one on a step-wise ``tether.Reconnector``:

* the first reconnect after a drop is quick (jittered, DEBUG), then backed off with ``policy``
  instead of pipecat's fixed 4 s minimum wait logged at WARNING every time;
* a connection counts as recovered only once it stayed up ``stable_after`` seconds, so a server that
  accepts and drops still runs out of attempts (what ``QuickFailureTracker`` was for), but a flapping
  network no longer kills the service after 3 short connections: it gets the policy's whole budget;
* giving up reports the error as permanent (``force_treat_as_permanent=True``) like pipecat does;
* a reconnect holds pipecat's ``_reconnect_in_progress``, so a ``send_with_retry`` meanwhile does not
  open a second socket, and a reconnect a sender began is awaited instead of doubled;
* a service that overrides ``_reconnect_websocket`` is reconnected through it (pipecat's base method then
  logs its WARNING "reconnecting", the quiet first retry included);
* a service that confirms its connection by a message (1.14's ``_receive_until_confirmed``: Deepgram
  Flux, Cartesia turns, Sarvam) is connected only once confirmed: a provider that accepts and never
  confirms runs out of attempts.
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from .._native import Backoff, GaveUp
from .._reconnect import Reconnector
from ._patch import Checks, InstallReport, Integration, Part, Patches, PatchFn

#: the releases the part was tested with (the latest of each minor, 1.8.1 to 1.14.0, run in ``make test``):
#: the receive loop it replaces is the same code from 1.8.0 on (1.0-1.7 have another one)
WEBSOCKET_SERVICE_REQUIREMENT = "pipecat-ai>=1.8,<1.15"

_integration = Integration("pipecat", "pipecat-ai")
_METHODS = (
    "_receive_task_handler",
    "_connect_websocket",
    "_disconnect_websocket",
    "_verify_connection",
    "_receive_messages",
    "_is_service_usable",
    "_try_reconnect",
    "_reconnect_websocket",
)
_ATTRS = ("_disconnecting", "_reconnect_on_error", "_last_connect_time", "_reconnect_in_progress")

# the receive loop is replaced, not wrapped (pipecat has no seam between its retries): the code read
# (pipecat-ai 1.14.0, the same in 1.8.0-1.13.0), so that a change inside it refuses the part
_RECEIVE_LOOP_FINGERPRINTS = ("3abc4eb7d9719a27",)


def _default_policy() -> Backoff:
    return Backoff(initial=0.5, factor=2.0, max_delay=10.0, jitter="equal", max_attempts=8, deadline=120.0)


def install(
    *,
    policy: Backoff | None = None,
    stable_after: float = 5.0,
    quiet_jitter: float = 0.1,
    allow_untested: bool = False,
) -> InstallReport:
    """Patch pipecat's ``WebsocketService`` receive loop (idempotent; undo with ``uninstall()``).

    ``policy``: reconnect policy per service (default: 0.5 s doubling to 10 s, equal jitter, 8 retries,
    2 minutes per outage). ``stable_after``: seconds a connection must stay up to end an outage
    (pipecat's ``QuickFailureTracker`` used 5 s). ``quiet_jitter``: the first retry of an outage waits
    ``uniform(0, quiet_jitter)`` seconds (short: a voice pipeline is deaf meanwhile). Records go to the ``tether.reconnect`` logger
    (pipecat itself logs with loguru). Returns an ``InstallReport``; a second call keeps the
    first one's settings (a WARNING names those it would have changed).
    """
    prepare = functools.partial(_prepare, policy or _default_policy(), stable_after, quiet_jitter)
    return _integration.install(
        [
            Part(
                "websocket_service",
                WEBSOCKET_SERVICE_REQUIREMENT,
                prepare,
                uses=("policy", "stable_after", "quiet_jitter"),
            )
        ],
        allow_untested=allow_untested,
        settings={"policy": policy, "stable_after": stable_after, "quiet_jitter": quiet_jitter},
    )


def instrumentation_dependencies() -> tuple[str, ...]:
    """The pipecat-ai releases the part was tested with, as requirement specifiers."""
    return (WEBSOCKET_SERVICE_REQUIREMENT,)


def uninstall() -> None:
    """Undo ``install()``."""
    _integration.uninstall()


def _prepare(policy: Backoff, stable_after: float, quiet_jitter: float, c: Checks) -> PatchFn | None:
    ws_module = c.module("pipecat.services.websocket_service")
    frames = c.module("pipecat.frames.frames")
    if ws_module is None or frames is None:
        return None
    service = c.attr(ws_module, "WebsocketService")
    c.attrs(ws_module, ("ConnectionClosedOK",))
    c.attrs(frames, ("ErrorFrame",))
    if service is not None:
        c.attrs(service, _METHODS)
        c.instance_attrs(service, _ATTRS)
    if not c:
        return None
    c.fingerprint(service._receive_task_handler, _RECEIVE_LOOP_FINGERPRINTS)

    def patch(p: Patches) -> None:
        loop = _ReceiveLoop(
            policy,
            stable_after,
            quiet_jitter,
            ws_module.ConnectionClosedOK,
            frames.ErrorFrame,
            service._reconnect_websocket,
        )
        p.set(service, "_receive_task_handler", loop.handler())
        p.wrap(service, "_try_reconnect", loop.sender_reconnect)
        if hasattr(service, "_receive_until_confirmed"):  # 1.14 on
            p.wrap(service, "_receive_until_confirmed", loop.confirmed)

    return patch


class _ReceiveLoop:
    """The replacement receive loop, and what it learns from the services it runs."""

    def __init__(
        self,
        policy: Backoff,
        stable_after: float,
        quiet_jitter: float,
        closed_ok: type[BaseException],
        error_frame: Any,
        base_reconnect: Callable[..., Awaitable[bool]],
    ) -> None:
        self.policy = policy
        self.base_reconnect = base_reconnect
        self.stable_after = stable_after
        self.quiet_jitter = quiet_jitter
        self.closed_ok = closed_ok
        self.error_frame = error_frame
        self.reconnectors: weakref.WeakKeyDictionary[Any, Reconnector] = weakref.WeakKeyDictionary()
        # services that confirm each connection by a message: connected only once it came
        self.confirming: weakref.WeakSet[Any] = weakref.WeakSet()
        # set when the reconnect pipecat's own code began for a service (send_with_retry) has ended
        self.sender_done: weakref.WeakKeyDictionary[Any, asyncio.Event] = weakref.WeakKeyDictionary()

    def reconnector_for(self, service: Any) -> Reconnector:
        r = self.reconnectors.get(service)
        if r is None:
            r = self.reconnectors[service] = Reconnector(
                self.policy, stable_after=self.stable_after, quiet_jitter=self.quiet_jitter, name=str(service)
            )
        return r

    async def sender_reconnect(self, wrapped: Callable[..., Awaitable[bool]], args: Any, kwargs: Any) -> bool:
        """Wraps ``_try_reconnect``, which only pipecat's senders call once the loop is replaced: the loop
        waits for its end instead of opening a socket of its own meanwhile."""
        service = args[0]
        if service._reconnect_in_progress:
            return await wrapped(*args, **kwargs)  # refused at once: one is running
        done = self.sender_done[service] = asyncio.Event()
        try:
            return await wrapped(*args, **kwargs)
        finally:
            done.set()

    async def confirmed(self, wrapped: Callable[..., Awaitable[bool]], args: Any, kwargs: Any) -> bool:
        """Wraps ``_receive_until_confirmed``: a connection the provider never confirmed carried no session
        and must not count as stable (pipecat moves ``_last_connect_time`` for its own tracker)."""
        service = args[0]
        self.confirming.add(service)
        ok = await wrapped(*args, **kwargs)
        if ok:
            self.reconnector_for(service).connected()
        return ok

    async def recover(
        self, service: Any, r: Reconnector, message: str, report_error: Any, error: BaseException, lost: Any
    ) -> bool:
        """True once reconnected; False when the loop must end (closing, not retrying, gave up)."""
        if service._disconnecting:
            return False
        if not service._reconnect_on_error:
            await report_error(self.error_frame(message, exception=error))
            return False
        while True:
            try:
                delay = r.failed(error)
            except GaveUp as gave_up:
                await report_error(
                    self.error_frame(f"{service} gave up reconnecting: {gave_up}", exception=error),
                    force_treat_as_permanent=True,
                )
                return False
            await asyncio.sleep(delay)
            if service._disconnecting or not service._is_service_usable:
                return False
            try:
                await self.reopen(service, lost, r.attempt)
                return True
            except Exception as e:
                error = e

    async def reopen(self, service: Any, lost: Any, attempt: int) -> None:
        """Reconnect, holding pipecat's flag so that a sender's ``send_with_retry`` does not open a second
        socket meanwhile. A reconnect a sender began (still running, or done since ``lost`` was lost) is
        kept if it worked."""
        if service._reconnect_in_progress:
            done = self.sender_done.get(service)
            if done is not None:
                await done.wait()
        if service._websocket is not lost and await service._verify_connection():
            return
        service._reconnect_in_progress = True
        try:
            hook = service._reconnect_websocket
            if getattr(hook, "__func__", hook) is not self.base_reconnect:
                # the service's own hook (1.14's TTS services close their audio contexts there, some STT
                # services reset per-connection state); it logs pipecat's WARNING itself
                if not await hook(attempt):
                    raise ConnectionError(f"{service} websocket reconnection failed")
                return
            await service._disconnect_websocket()
            await service._connect_websocket()
            if not await service._verify_connection():
                raise ConnectionError(f"{service} websocket reconnection failed verification")
        finally:
            service._reconnect_in_progress = False

    def handler(self) -> Callable[[Any, Any], Awaitable[None]]:
        loop = self

        async def _receive_task_handler(self: Any, report_error: Any) -> None:
            r = loop.reconnector_for(self)
            while True:
                self._last_connect_time = time.monotonic()
                if self not in loop.confirming:
                    r.connected()
                reading = self._websocket
                try:
                    await self._receive_messages()
                    error: BaseException = ConnectionError(f"{self} connection closed by server")
                except loop.closed_ok:
                    r.closed()
                    return  # a normal close (1000) is not retried, as in pipecat
                except Exception as e:
                    error = e
                if not await loop.recover(self, r, f"{self} connection lost: {error}", report_error, error, reading):
                    return

        _receive_task_handler.__qualname__ = "WebsocketService._receive_task_handler"
        return _receive_task_handler


__all__ = ["WEBSOCKET_SERVICE_REQUIREMENT", "InstallReport", "install", "instrumentation_dependencies", "uninstall"]
