"""``tether.Handshake``, handed to ``on_connect``: Python, like ``tether.Connection``, because its
``recv`` is the cancellation-safe loop over the native ``try_recv``/``wait_readable``. The native
connection calls the hook it was given with its ``HandshakeChannel``; ``with_handshake`` is how the
application's hook gets the ``Handshake`` instead (nothing native imports this module)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from . import _native


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


def with_handshake(
    hook: Callable[[Handshake], Awaitable[Any]] | None,
) -> Callable[[_native.HandshakeChannel], Awaitable[Any]] | None:
    """``on_connect`` as the native connection calls it: with the attempt's channel, which the
    application's hook gets as a ``Handshake``. Anything not callable goes through unchanged, for the
    native side to refuse with the message every option gets."""
    if hook is None or not callable(hook):
        return hook

    def on_channel(channel: _native.HandshakeChannel) -> Awaitable[Any]:
        return hook(Handshake(channel))

    return on_channel


__all__ = ["Handshake"]
