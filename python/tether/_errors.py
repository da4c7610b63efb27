"""The tether exception hierarchy. Every give-up is one of these, with a message naming what failed and why."""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple


class TetherError(Exception):
    """Base class of every error tether raises on purpose."""


class GaveUp(TetherError):
    """A retry loop stopped: fatal error, attempt budget or deadline exhausted.

    ``attempts`` is the number of attempts made in the final outage, ``last_error`` the exception (or
    message) of the last one, ``reason`` one of "fatal error", "attempt budget exhausted", "deadline exceeded",
    "connect_timeout exceeded".

    Raised by a ``tether.connect`` connection, it also says what the connection never delivered, the same
    lists from every call that raises it (``send``, ``flush``, ``recv``, ``async for``): ``messages``, the
    payloads of every message it accepted that the server never confirmed, in send order (the server may
    have read some of them: re-send them on a new connection if at-least-once suits them), and
    ``failures``, a ``FailedMessage`` for every message that failed (close 1009, the poison rule) that no
    ``flush()`` reported yet. A message is in one list at most; every message sent and in neither was
    confirmed or raised ``SendFailed`` already.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 0,
        last_error: Any = None,
        elapsed: float = 0.0,
        reason: str = "",
        name: str = "",
        messages: Iterable[str | bytes] = (),
        failures: Iterable[FailedMessage] = (),
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.last_error = last_error
        self.elapsed = elapsed
        self.reason = reason
        self.name = name
        self.messages = list(messages)
        self.failures = list(failures)


class PoolExhausted(TetherError):
    """``ProcPool.acquire`` could not produce a process; ``failures`` lists each spawn failure's cause."""

    def __init__(self, message: str, *, failures: Sequence[str] = (), attempts: int = 0) -> None:
        super().__init__(message)
        self.failures = list(failures)
        self.attempts = attempts


class NotReady(TetherError):
    """A dispatched job did not reach readiness; ``stage`` names the stage it is stuck before."""

    def __init__(
        self,
        message: str,
        *,
        job_id: str = "",
        stage: str = "",
        elapsed: float = 0.0,
        reached: dict[str, float] | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.stage = stage
        self.elapsed = elapsed
        self.reached = dict(reached or {})
        self.attempts = attempts


class ConnectionClosed(TetherError):
    """The connection is closed (by ``aclose``, by the server with a code of ``final_close_codes``, or
    after giving up); ``code``/``reason`` when known. As the ``last_error`` of a ``GaveUp``, it describes
    the last failure: ``code`` is the server's close code, ``http_status`` the HTTP status with which
    the server refused the WebSocket handshake (e.g. 404), None when neither applies.

    Raised by a connection that ended, ``messages`` and ``failures`` say what it never delivered, as for
    ``GaveUp``: after a final close code, and after ``aclose()`` when its ``close_timeout`` ran out before
    the server confirmed everything (or it closed during an outage). Empty on a ``GaveUp``'s
    ``last_error``."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str = "",
        http_status: int | None = None,
        messages: Iterable[str | bytes] = (),
        failures: Iterable[FailedMessage] = (),
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.http_status = http_status
        self.messages = list(messages)
        self.failures = list(failures)


class ConnectFailed(ConnectionClosed):
    """The connection never opened: every attempt of its first connect failed before it was established
    (a refused or timed-out TCP connect, a DNS or TLS failure, an HTTP answer other than 101, an
    ``on_connect`` that raised). It is the ``last_error`` of the ``GaveUp`` that ends such a first
    connect, and says what the last attempt met; a connection that had opened reports its end as a plain
    ``ConnectionClosed``. A subclass of ``ConnectionClosed``, so ``except ConnectionClosed`` and
    ``.http_status`` work for both."""


class SendBufferFull(TetherError):
    """``Connection.send`` was called while ``send_buffer`` messages were already waiting for delivery."""


class FailedMessage(NamedTuple):
    """One message that was removed from the send queue and will not be re-sent (an item of
    ``SendFailed.failures``)."""

    seq: int
    """Its number: the ``seq``-th message the connection accepted (every ``send()`` that did not raise), from 1."""
    message: str | bytes
    """The payload as sent: ``str`` for a text message, ``bytes`` for a binary one."""
    reason: str
    """Why it failed."""
    code: int | None = None
    """1009 when the server closed with "message too big" after it."""
    losses: int | None = None
    """The connection losses it was blamed for (the poison rule: losses that confirmed nothing and looked
    like the server failing on it)."""


class SendFailed(TetherError):
    """Messages were removed from the send queue and will not be re-sent: the server closed with 1009
    (message too big) after one, or one was the oldest unconfirmed message at 3 connection losses that
    confirmed nothing and looked like the server failing on it (no close frame, a timeout, or a close 1002,
    1003, 1007, 1008 or 1011; re-sent alone after the first), so the server likely dies reading it.

    ``messages``: every failed message's payload (``str`` or ``bytes``, as sent), in send order, to re-send
    what should go again; ``failures``: one ``FailedMessage`` per message, same order (``seq``, ``message``,
    ``reason``, ``code``, ``losses``). ``size``, ``code`` and ``losses`` are those of the first. A ``send()``
    that fails before it resolved names its own message; ``flush()`` names every message sent before it
    that failed after its ``send()`` resolved."""

    def __init__(
        self,
        message: str,
        *,
        size: int = 0,
        code: int | None = None,
        losses: int | None = None,
        failures: Iterable[FailedMessage] = (),
    ) -> None:
        super().__init__(message)
        self.failures = list(failures)
        self.messages = [f.message for f in self.failures]
        self.size = size
        self.code = code
        self.losses = losses


class TimeoutError(TetherError, builtins.TimeoutError):
    """A bounded wait expired. Also an ``asyncio.TimeoutError``/builtin ``TimeoutError``."""

    def __init__(self, message: str, *, timeout: float | None = None, what: str = "") -> None:
        super().__init__(message)
        self.timeout = timeout
        self.what = what


__all__ = [
    "ConnectFailed",
    "ConnectionClosed",
    "FailedMessage",
    "GaveUp",
    "NotReady",
    "PoolExhausted",
    "SendBufferFull",
    "SendFailed",
    "TetherError",
    "TimeoutError",
]
