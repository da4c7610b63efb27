"""``tether.connect`` hooks: the ``Handshake`` handed to ``on_connect``, and the helpers the native
session schedules on the connection's event loop (the hook itself, ``url_for``, heartbeat factory and
predicate)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from . import _native


class OnConnectMisuse(TypeError):
    """``on_connect`` did not return an awaitable: not retried."""


class Handshake:
    """Handed to ``on_connect(hs)`` after every WebSocket handshake, before queued messages are written.

    ``await hs.send(data)`` writes at once, ahead of every queued or unconfirmed application message;
    ``await hs.recv()`` takes the next inbound message (it is not delivered to the application). Messages
    the hook does not take are delivered to the application, in order. Both raise
    ``tether.ConnectionClosed`` once the handshake is over (the hook returned, failed or timed out).
    """

    __slots__ = ("_c",)

    def __init__(self, channel: _native.HandshakeChannel) -> None:
        self._c = channel

    @property
    def attempt(self) -> int:
        """As in the Connecting/Reconnecting events: 1 for the first connect, 2 for the first retry of
        an outage, and so on (back to 2 after a connection that stayed up for ``stable_after``)."""
        return self._c.attempt

    @property
    def strategy(self) -> str:
        """ "connect" for the first connect, then the ladder rung of this attempt ("resume", "restart", ...)."""
        return self._c.strategy

    @property
    def reconnect(self) -> bool:
        """False until this connection was connected once (then resume the session: rejoin, fast reconnect)."""
        return self._c.reconnect

    async def send(self, data: str | bytes | bytearray | memoryview) -> None:
        """Write ``data`` now (str: text frame, bytes-like: binary frame); returns once written."""
        await self._c.send(data)

    async def recv(self) -> str | bytes:
        """The next inbound message. Cancellation-safe: a recv cancelled while waiting consumes nothing."""
        c = self._c
        while True:
            m = c.try_recv()
            if m is not None:
                return m
            await c.wait_readable()

    def __repr__(self) -> str:
        return repr(self._c)


async def _run_on_connect(hook: Callable[[Handshake], Awaitable[Any]], channel: _native.HandshakeChannel) -> None:
    result = hook(Handshake(channel))
    if not inspect.isawaitable(result):
        raise OnConnectMisuse(f"on_connect must be an async function; it returned {type(result).__name__}")
    await result


async def _url_for(url_for: Callable[[str, int], Any], strategy: str, attempt: int) -> Any:
    result = url_for(strategy, attempt)
    return await result if inspect.isawaitable(result) else result


def _sync_result(result: Any, what: str) -> Any:
    # an awaitable is truthy and not a message: it would silently disable the heartbeat
    if inspect.isawaitable(result):
        if asyncio.iscoroutine(result):
            result.close()
        raise TypeError(f"{what} must return its result, not an awaitable ({type(result).__name__})")
    return result


def _reply_in(is_reply: Callable[[str | bytes], Any], batch: Sequence[str | bytes]) -> bool:
    return any(_sync_result(is_reply(m), "is_reply") for m in batch)


__all__ = ["Handshake"]
