"""``tether.testing.ChaosProxy``: a Rust TCP proxy that injects network faults."""

from __future__ import annotations

from .. import _native
from ._base import _NativeServer


class ChaosProxy(_NativeServer[_native.ChaosProxy]):
    """Forward 127.0.0.1:PORT -> ``upstream`` ("host:port" or (host, port)), and on command:

    * ``blackhole(direction="both")``: stop forwarding, no FIN, no RST (a Wi-Fi switch). Held bytes are
      delivered after ``heal()``; new connections are accepted but not connected upstream until then
      (those whose client gave up meanwhile, closing or resetting its socket, never are).
    * ``reset()``: RST every connection. ``close()``: FIN every connection.
    * ``latency(ms, direction="both")``, ``bandwidth(bytes_per_sec, direction="both")``.
    * ``heal()``: clear every toxic.

    ``direction`` is "up" (client -> upstream), "down" (upstream -> client) or "both".
    """

    def __init__(self, upstream: str | tuple[str, int], *, listen: str | tuple[str, int] | None = None) -> None:
        self._n = _native.ChaosProxy(upstream, listen=listen)

    @property
    def address(self) -> str:
        """``host:port`` the proxy listens on."""
        return self._n.address

    @property
    def upstream(self) -> str:
        """``host:port`` it forwards to."""
        return self._n.upstream

    def url(self, scheme: str = "ws", path: str = "/") -> str:
        """A URL pointing at the proxy, e.g. ``ws://127.0.0.1:PORT/``."""
        return f"{scheme}://{self.address}{path}"

    def blackhole(self, direction: str = "both") -> None:
        """Stop forwarding in ``direction`` without FIN or RST; held bytes go through after ``heal()``."""
        self._n.blackhole(direction)

    def latency(self, ms: float, direction: str = "both") -> None:
        """Delay what flows in ``direction`` by ``ms`` milliseconds.

        Throughput stays as it was up to 16 MiB per ``ms`` in each direction (what the proxy holds in flight).
        """
        self._n.latency(ms, direction)

    def bandwidth(self, bytes_per_sec: int | None, direction: str = "both") -> None:
        """Throttle ``direction`` to ``bytes_per_sec`` (None: no limit)."""
        self._n.bandwidth(bytes_per_sec, direction)

    def heal(self) -> None:
        """Clear every toxic: black holes, latency and bandwidth limits."""
        self._n.heal()

    def reset(self) -> int:
        """Reset (RST) every proxied connection; returns how many."""
        return self._n.reset()

    def close(self) -> int:
        """Close (FIN) every proxied connection; returns how many."""
        return self._n.close()
