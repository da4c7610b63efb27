"""Events reported by reconnect loops and connections (``async for ev in x.events()``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Connecting:
    """Attempt number ``attempt`` (from 1, counting the outage's retries) starts, on the ladder rung
    ``strategy`` ("connect" for the first connection ever)."""

    attempt: int
    strategy: str


@dataclass(frozen=True, slots=True)
class Connected:
    """Attempt number ``attempt`` succeeded (for ``tether.connect``: the handshake and ``on_connect``)."""

    attempt: int


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """Reported exactly once per loss of an established connection. ``reason`` is redacted."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """Attempt number ``attempt`` will start after ``delay`` seconds (the backoff), on the rung ``strategy``."""

    attempt: int
    delay: float
    strategy: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """Connected again after a loss: ``downtime`` seconds since the loss, in ``attempts`` attempts."""

    downtime: float
    attempts: int


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The loop stopped retrying after ``attempts`` attempts; ``error`` is the last failure (redacted). The
    awaiting call raises the exception ``tether.GaveUp``."""

    error: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Closed:
    """Internal end-of-stream marker; iteration stops on it (it is never yielded)."""


async def _anext(stream: Any) -> Any:
    """``__anext__`` of native event streams: take events on the loop thread, wait without consuming."""
    while True:
        ev = stream.try_next()  # raises StopAsyncIteration at the end
        if ev is not None:
            return ev
        await stream.wait()


Event = Connecting | Connected | ConnectionLost | Reconnecting | Reconnected | GaveUp

__all__ = ["Connected", "Connecting", "ConnectionLost", "Event", "GaveUp", "Reconnected", "Reconnecting"]
