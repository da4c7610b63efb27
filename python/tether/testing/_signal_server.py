"""``tether.testing.SignalServer``: an embedded Rust WebSocket server with scripted misbehaviour."""

from __future__ import annotations

from .. import _native
from ._base import _NativeServer


class SignalServer(_NativeServer[_native.SignalServer]):
    """Echoes text/binary messages and answers pings, until told to misbehave.

    ``async with SignalServer() as srv: srv.url`` -> ``ws://127.0.0.1:PORT/``. Misbehaviour (each takes
    effect at once): ``drop()`` (no close frame), ``close(code, reason)``, ``freeze()``/``unfreeze()`` (stop
    reading: no pongs, no echoes, socket open), ``refuse(status, times=None)``, ``slow_handshake(s)``,
    ``accept_then_drop()``, ``listening(False)`` (reset new connections), ``behave()`` (undo all).
    Observe with ``stats()``, ``requests()`` (handshake paths with queries), ``received()``, ``wait_for()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._n = _native.SignalServer(host, port)

    @property
    def url(self) -> str:
        """``ws://host:port/`` of the running server."""
        return self._n.url

    def drop(self) -> int:
        """Drop every connection without a close frame; returns how many."""
        return self._n.drop()

    def close(self, code: int = 1000, reason: str = "") -> int:
        """Close every connection with a close frame (``code``, ``reason``); returns how many.

        ``ValueError`` for what no close frame may carry: a code RFC 6455 reserves (1004-1006, 1015,
        1016-2999, or outside 1000-4999) or a reason over 123 bytes in UTF-8.
        """
        return self._n.close(code, reason)

    def freeze(self) -> None:
        """Stop reading every connection: no pongs, no echoes, sockets stay open (a frozen edge node)."""
        self._n.freeze()

    def unfreeze(self) -> None:
        """Read again after ``freeze()``."""
        self._n.unfreeze()

    def refuse(self, status: int = 503, times: int | None = None) -> None:
        """Answer the next ``times`` handshakes (None: all) with HTTP ``status``."""
        self._n.refuse(status, times)

    def behave(self) -> None:
        """Undo every misbehaviour."""
        self._n.behave()

    def slow_handshake(self, seconds: float) -> None:
        """Hold each new handshake for ``seconds`` before answering it."""
        self._n.slow_handshake(seconds)

    def accept_then_drop(self, enabled: bool = True) -> None:
        """Complete each handshake, then drop the connection at once (a flapping server)."""
        self._n.accept_then_drop(enabled)

    def relay(self, enabled: bool = True) -> None:
        """Forward each client's messages to every other client (a room); combine with ``echo(False)``."""
        self._n.relay(enabled)

    def greet(self, data: str | bytes | None) -> None:
        """Send ``data`` to every new client right after its handshake (``None``: stop)."""
        self._n.greet(data)

    def echo(self, enabled: bool = True) -> None:
        """Echo each message back to its sender (on by default)."""
        self._n.echo(enabled)

    def listening(self, on: bool) -> None:
        """``False``: reset new connections (a server that is down); ``True``: accept them again."""
        self._n.listening(on)

    def push(self, data: str | bytes) -> int:
        """Send ``data`` to every client; returns how many got it."""
        return self._n.push(data)

    def flood(self, count: int, size: int) -> int:
        """Send ``count`` binary messages of ``size`` bytes to every client; returns how many clients."""
        return self._n.flood(count, size)

    def requests(self) -> list[str]:
        """The path and query of every handshake so far, in order."""
        return self._n.requests()

    def received(self) -> list[str | bytes]:
        """Every message received from clients so far, in order."""
        return self._n.received()

    async def wait_for(self, n: int = 1, timeout: float = 10.0, key: str = "active") -> bool:
        """Wait until ``stats()[key]`` reaches ``n`` (``active`` must equal it); False on timeout."""
        return await self._n.wait_for(n, timeout, key)
