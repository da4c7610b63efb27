"""``tether.testing.ChaosProxy``: a Rust TCP proxy that injects network faults."""

from __future__ import annotations

from .. import _native
from ._base import _NativeServer


class ChaosProxy(_NativeServer[_native.ChaosProxy]):
    """Forward 127.0.0.1:PORT -> ``upstream`` ("host:port" or (host, port)), and on command:

    * ``blackhole(direction="both")``: stop forwarding, no FIN, no RST (a Wi-Fi switch). Held bytes are
      delivered after ``heal()``; new connections are accepted but not connected upstream until then.
    * ``reset()``: RST every connection. ``close()``: FIN every connection.
    * ``latency(ms, direction="both")``, ``bandwidth(bytes_per_sec, direction="both")``.
    * ``heal()``: clear every toxic.

    ``direction`` is "up" (client -> upstream), "down" (upstream -> client) or "both".
    """

    def __init__(self, upstream: str | tuple[str, int], *, listen: str | tuple[str, int] | None = None) -> None:
        self._n = _native.ChaosProxy(upstream, listen=listen)

    @property
    def address(self) -> str:
        return self._n.address

    @property
    def upstream(self) -> str:
        return self._n.upstream

    def url(self, scheme: str = "ws", path: str = "/") -> str:
        """A URL pointing at the proxy, e.g. ``ws://127.0.0.1:PORT/``."""
        return f"{scheme}://{self.address}{path}"

    def blackhole(self, direction: str = "both") -> None:
        self._n.blackhole(direction)

    def latency(self, ms: float, direction: str = "both") -> None:
        self._n.latency(ms, direction)

    def bandwidth(self, bytes_per_sec: int | None, direction: str = "both") -> None:
        self._n.bandwidth(bytes_per_sec, direction)

    def heal(self) -> None:
        self._n.heal()

    def reset(self) -> int:
        return self._n.reset()

    def close(self) -> int:
        return self._n.close()
