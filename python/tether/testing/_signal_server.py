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
        return self._n.url

    def drop(self) -> int:
        return self._n.drop()

    def close(self, code: int = 1000, reason: str = "") -> int:
        return self._n.close(code, reason)

    def freeze(self) -> None:
        self._n.freeze()

    def unfreeze(self) -> None:
        self._n.unfreeze()

    def refuse(self, status: int = 503, times: int | None = None) -> None:
        self._n.refuse(status, times)

    def behave(self) -> None:
        self._n.behave()

    def slow_handshake(self, seconds: float) -> None:
        self._n.slow_handshake(seconds)

    def accept_then_drop(self, enabled: bool = True) -> None:
        self._n.accept_then_drop(enabled)

    def relay(self, enabled: bool = True) -> None:
        """Forward each client's messages to every other client (a room); combine with ``echo(False)``."""
        self._n.relay(enabled)

    def greet(self, data: str | bytes | None) -> None:
        """Send ``data`` to every new client right after its handshake (``None``: stop)."""
        self._n.greet(data)

    def echo(self, enabled: bool = True) -> None:
        self._n.echo(enabled)

    def listening(self, on: bool) -> None:
        self._n.listening(on)

    def push(self, data: str | bytes) -> int:
        return self._n.push(data)

    def flood(self, count: int, size: int) -> int:
        return self._n.flood(count, size)

    def requests(self) -> list[str]:
        return self._n.requests()

    def received(self) -> list[str | bytes]:
        return self._n.received()

    async def wait_for(self, n: int = 1, timeout: float = 10.0, key: str = "active") -> bool:
        """Wait until ``stats()[key]`` reaches ``n`` (``active`` must equal it); False on timeout."""
        return await self._n.wait_for(n, timeout, key)
