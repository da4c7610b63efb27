"""Type stubs for tether._native (the Rust extension). Public names are re-exported from ``tether``."""

from __future__ import annotations

import builtins
import logging
import os
import ssl
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import FrameType, TracebackType
from typing import Any, Literal, NamedTuple, TypeVar, final, overload

from typing_extensions import Self, disjoint_base

from ._hooks import Handshake
from .events import Event

_T = TypeVar("_T")
# what url_for returns, and what ssl= takes (see tether.connect)
_Target = str | tuple[str, Mapping[str, str]]
_UrlFor = Callable[[str, int], _Target | Awaitable[_Target]]
_SSLChoice = str | os.PathLike[str] | ssl.SSLContext | Sequence[str | os.PathLike[str] | ssl.SSLContext]
_T_co = TypeVar("_T_co", covariant=True)
__version__: str

# ----------------------------------------------------------------------------------------------------
# Exceptions (re-exported by tether, whose name their __module__ shows)
# ----------------------------------------------------------------------------------------------------

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

    attempts: int
    last_error: Any
    elapsed: float
    reason: str
    name: str
    messages: list[str | bytes]
    failures: list[FailedMessage]
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
    ) -> None: ...

class PoolExhausted(TetherError):
    """``ProcPool.acquire`` could not produce a process; ``failures`` lists each spawn failure's cause."""

    failures: list[str]
    attempts: int
    def __init__(self, message: str, *, failures: Sequence[str] = (), attempts: int = 0) -> None: ...

class NotReady(TetherError):
    """A dispatched job did not reach readiness; ``stage`` names the stage it is stuck before."""

    job_id: str
    stage: str
    elapsed: float
    reached: dict[str, float]
    attempts: int
    def __init__(
        self,
        message: str,
        *,
        job_id: str = "",
        stage: str = "",
        elapsed: float = 0.0,
        reached: Mapping[str, float] | None = None,
        attempts: int = 0,
    ) -> None: ...

class ConnectionClosed(TetherError):
    """The connection is closed (by ``aclose``, by the server with a code of ``final_close_codes``, or
    after giving up); ``code``/``reason`` when known. As the ``last_error`` of a ``GaveUp``, it describes
    the last failure: ``code`` is the server's close code, ``http_status`` the HTTP status with which
    the server refused the WebSocket handshake (e.g. 404), None when neither applies.

    Raised by a connection that ended, ``messages`` and ``failures`` say what it never delivered, as for
    ``GaveUp``: after a final close code, and after ``aclose()`` when its ``close_timeout`` ran out before
    the server confirmed everything (or it closed during an outage). Empty on a ``GaveUp``'s
    ``last_error``."""

    code: int | None
    reason: str
    http_status: int | None
    messages: list[str | bytes]
    failures: list[FailedMessage]
    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str = "",
        http_status: int | None = None,
        messages: Iterable[str | bytes] = (),
        failures: Iterable[FailedMessage] = (),
    ) -> None: ...

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

    failures: list[FailedMessage]
    messages: list[str | bytes]
    size: int
    code: int | None
    losses: int | None
    def __init__(
        self,
        message: str,
        *,
        size: int = 0,
        code: int | None = None,
        losses: int | None = None,
        failures: Iterable[FailedMessage] = (),
    ) -> None: ...

class TimeoutError(TetherError, builtins.TimeoutError):
    """A bounded wait expired. Also an ``asyncio.TimeoutError``/builtin ``TimeoutError``."""

    timeout: float | None
    what: str
    def __init__(self, message: str, *, timeout: float | None = None, what: str = "") -> None: ...

# ----------------------------------------------------------------------------------------------------
# The awaitable of every native async method
# ----------------------------------------------------------------------------------------------------

@final
class NativeCoroutine(Coroutine[Any, Any, _T_co]):
    """What the native ``async def`` methods return: a coroutine (``asyncio.iscoroutine`` is true, registered with
    ``collections.abc.Coroutine``), so ``await``, ``asyncio.create_task``, ``gather``, ``wait_for``, ``TaskGroup``
    and ``asyncio.run_coroutine_threadsafe`` from another thread all take it.

    The call does only what its method documents as immediate (``send()`` queues its message); the rest runs from
    the first step, on the event loop whose task drives it, so one made on a thread without a loop works once a loop
    runs it. A result that is there at the first step is returned without an asyncio future. Cancelling the task
    (``throw``) or ``close()`` stops the Rust work. Awaiting it twice raises ``RuntimeError`` as a coroutine does;
    dropping it unawaited warns "was never awaited", except for ``send()``, whose message was queued by the call."""

    __name__: str
    __qualname__: str
    @property
    def cr_running(self) -> bool:
        """True while a step runs, as for a coroutine."""
    @property
    def cr_suspended(self) -> bool:
        """True once stepped and until it returns: waiting on its future, or about to return a result."""
    @property
    def cr_state(self) -> Literal["CORO_CREATED", "CORO_RUNNING", "CORO_SUSPENDED", "CORO_CLOSED"]:
        """What ``inspect.getcoroutinestate`` returns, which reads only this from Python 3.15 on."""
    @property
    def cr_await(self) -> Any:
        """The asyncio future it waits on, or None."""
    @property
    def cr_frame(self) -> FrameType | None:
        """A stand-in frame (no Python code runs in it) until it finished, then None, as for a coroutine."""
    @property
    def cr_code(self) -> None:
        """None: no Python code object runs it (asyncio then shows the coroutine's name in a task's repr)."""
    def send(self, value: None, /) -> Any: ...
    @overload
    def throw(
        self, typ: type[BaseException], val: BaseException | object = None, tb: TracebackType | None = None, /
    ) -> Any: ...
    @overload
    def throw(self, typ: BaseException, val: None = None, tb: TracebackType | None = None, /) -> Any: ...
    def close(self) -> None: ...
    def __await__(self) -> Generator[Any, None, _T_co]: ...
    def __next__(self) -> Any: ...

# ----------------------------------------------------------------------------------------------------
# Backoff
# ----------------------------------------------------------------------------------------------------

@final
class Backoff:
    """Retry delay policy. ``max_attempts`` counts retries: ``delays()`` yields one delay per retry.

    initial/max_delay/deadline are seconds (finite, 0..86400; deadline > 0); factor >= 1; jitter: "full" uniform(0,
    d) | "equal" d/2 + uniform(0, d/2) | "decorrelated" uniform(initial, 3*prev) | "none". ``deadline`` caps the sum
    of delays and, in loops, the wall-clock length of an outage (a retry whose delay would reach the deadline is not
    made: the loop gives up at that failure). ``seed`` makes the jitter reproducible. ValueError/TypeError on
    nonsense. Every argument left out, or None, takes the default shown by ``help()``; ``max_delay`` is never below
    an ``initial`` given larger."""

    def __new__(
        cls,
        initial: float | None = 0.3,
        factor: float | None = 2.0,
        max_delay: float | None = 7.0,
        jitter: Literal["full", "equal", "decorrelated", "none"] | None = "full",
        max_attempts: int | None = None,
        deadline: float | None = None,
        seed: int | None = None,
    ) -> Self: ...
    def delays(self) -> Iterator[float]: ...
    @property
    def initial(self) -> float: ...
    @property
    def factor(self) -> float: ...
    @property
    def max_delay(self) -> float: ...
    @property
    def jitter(self) -> str: ...
    @property
    def max_attempts(self) -> int | None: ...
    @property
    def deadline(self) -> float | None: ...
    @property
    def seed(self) -> int | None: ...

@final
class DelayIter(Iterator[float]):
    def __next__(self) -> float: ...

# ----------------------------------------------------------------------------------------------------
# Events (tether.events): frozen values, compared and hashed by their fields
# ----------------------------------------------------------------------------------------------------

@final
class Connecting:
    """Attempt number ``attempt`` (from 1, counting the outage's retries) starts, on the ladder rung
    ``strategy`` ("connect" for the first connection ever)."""

    __match_args__ = ("attempt", "strategy")
    def __new__(cls, attempt: int, strategy: str) -> Self: ...
    @property
    def attempt(self) -> int: ...
    @property
    def strategy(self) -> str: ...

@final
class Connected:
    """Attempt number ``attempt`` succeeded (for ``tether.connect``: the handshake and ``on_connect``)."""

    __match_args__ = ("attempt",)
    def __new__(cls, attempt: int) -> Self: ...
    @property
    def attempt(self) -> int: ...

@final
class ConnectionLost:
    """Reported exactly once per loss of an established connection. ``reason`` is redacted."""

    __match_args__ = ("reason",)
    def __new__(cls, reason: str) -> Self: ...
    @property
    def reason(self) -> str: ...

@final
class Reconnecting:
    """Attempt number ``attempt`` will start after ``delay`` seconds (the backoff), on the rung ``strategy``."""

    __match_args__ = ("attempt", "delay", "strategy")
    def __new__(cls, attempt: int, delay: float, strategy: str) -> Self: ...
    @property
    def attempt(self) -> int: ...
    @property
    def delay(self) -> float: ...
    @property
    def strategy(self) -> str: ...

@final
class Reconnected:
    """Connected again after a loss: ``downtime`` seconds since the loss, in ``attempts`` attempts."""

    __match_args__ = ("downtime", "attempts")
    def __new__(cls, downtime: float, attempts: int) -> Self: ...
    @property
    def downtime(self) -> float: ...
    @property
    def attempts(self) -> int: ...

@final
class GaveUpEvent:
    """The loop stopped retrying after ``attempts`` attempts; ``error`` is the last failure (redacted). The
    awaiting call raises the exception ``tether.GaveUp``."""

    __match_args__ = ("error", "attempts")
    def __new__(cls, error: str, attempts: int) -> Self: ...
    @property
    def error(self) -> str: ...
    @property
    def attempts(self) -> int: ...

@final
class Closed:
    """Internal end-of-stream marker; iteration stops on it (it is never yielded)."""

    __match_args__ = ()
    def __new__(cls) -> Self: ...

# ----------------------------------------------------------------------------------------------------
# Reconnector
# ----------------------------------------------------------------------------------------------------

@final
class EventStream(AsyncIterator[Event]):
    """The events emitted after the ``events()`` call that made it returned (it subscribes at that call, not at the
    first ``__anext__``), in order; none from before. Cancellation-safe: an iteration cancelled while waiting loses
    no event."""
    async def __anext__(self) -> Event: ...
    def try_next(self) -> Event | None: ...
    async def wait(self) -> None: ...

@disjoint_base
class Reconnector:  # subclassed by tether.Reconnector, which adds run()
    """Retry policy for a connection loop, as ``run(connect)`` or step by step. One state machine decides.

    Only time spent connected counts: the retry counter (``attempt``) and the backoff sequence reset once a
    connection stayed up ``stable_after`` seconds after ``connected()`` was called; an attempt that never called
    ``connected()`` never counts, however long it took. The first ``quiet_attempts`` retries of an outage wait
    ``uniform(0, quiet_jitter)`` seconds (a fleet dropped together comes back spread over that window, shrunk to the
    time left before the policy's ``deadline``; 0 retries immediately) and log at DEBUG; backed-off retries log
    WARNING with ``retry_count``/``max_retry``/``error``/``delay_s``/``strategy`` in ``extra``; recovery logs INFO
    once, when the link has been stable after an outage that logged a WARNING (a flapping link's handshakes stay at
    DEBUG). Giving up logs ERROR and raises ``tether.GaveUp`` (``.attempts``, ``.last_error``, ``.reason``,
    ``.elapsed``) chained from the last error. Exceptions in ``fatal`` are not retried. ``name`` is what the loop
    connects to, as its messages name it ("failed to connect to {name}"); unnamed (None), they name no target.
    ``logger``: a logger name or ``logging.Logger`` that receives this object's records instead of
    ``tether.reconnect`` (same ``extra`` fields; its level joins the Rust-side filter)."""

    def __new__(
        cls,
        policy: Backoff | None = ...,  # Backoff()
        *,
        stable_after: float | None = 10.0,
        quiet_attempts: int | None = 1,
        quiet_jitter: float | None = 1.0,
        fatal: type[BaseException] | tuple[type[BaseException], ...] | None = (),
        name: str | None = None,
        logger: str | logging.Logger | None = None,
        attempt_timeout: float | None = None,
    ) -> Self: ...
    # the steps ``run`` (the subclass tether.Reconnector, in tether._reconnect) is made of
    def _begin_run(self) -> None: ...
    def _start(self) -> tuple[int, float | None]: ...
    def _stalled(self, number: int) -> bool: ...
    def _failed(self, exc: BaseException) -> float: ...
    def _abandoned(self, number: int, grace: float) -> None: ...
    def _end_run(self) -> None: ...
    def failed(self, exc: BaseException | None = None) -> float:
        """Step-wise: an attempt, or a live connection, failed with ``exc``; returns the seconds to wait before the
        next attempt and logs the retry. Raises ``tether.GaveUp`` (``__cause__`` = exc) when ``exc`` is fatal or
        the policy's attempts/deadline are exhausted; the state then starts over. RuntimeError while ``run()``
        is running."""
    def backoff(self, exc: BaseException | None = None) -> Coroutine[Any, Any, None]:
        """``await r.backoff(exc)`` = ``await asyncio.sleep(r.failed(exc))``; cancellable."""
    def connected(self) -> bool:
        """This attempt succeeded: the stability clock starts. False if it was already marked."""
    def closed(self) -> None:
        """The connected period ended without an error; reports ``ConnectionLost("closed")``, logs nothing. A
        ``failed()`` after it counts as the loss of that connection."""
    @property
    def attempt(self) -> int:
        """Retries since the last stable connection (0 = none)."""
    def events(self) -> EventStream:
        """Events of the current run or step-wise episode (the step-wise form has no ``Connecting``), or, before
        the first one, of the next, from this call on (it subscribes now, not at the first ``__anext__``); ends
        when ``run`` returns or the episode gives up. Taken after one ended and before the next began, it is
        already ended."""
    @property
    def name(self) -> str | None: ...
    @property
    def policy(self) -> Backoff: ...
    @property
    def stable_after(self) -> float: ...
    @property
    def quiet_attempts(self) -> int: ...
    @property
    def quiet_jitter(self) -> float: ...
    @property
    def attempt_timeout(self) -> float | None: ...
    @property
    def running(self) -> bool: ...

def redact(text: str) -> str: ...
def add_redacted_names(*names: str) -> None: ...
def _set_log_level(py_level: int) -> None: ...

# ----------------------------------------------------------------------------------------------------
# Connection / tether.connect
# ----------------------------------------------------------------------------------------------------

@final
class Connection:
    """Native side of ``tether.connect`` (use the ``tether.Connection`` wrapper returned by ``connect``)."""

    def __new__(
        cls,
        url: str,
        *,
        policy: Backoff | None = ...,  # Backoff()
        ping_interval: float | None = 5.0,
        ping_timeout: float | None = 5.0,
        open_timeout: float | None = 10.0,
        close_timeout: float | None = 2.0,
        ladder: Sequence[str | tuple[str, int]] | None = ("resume", "restart"),
        url_for: _UrlFor | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        stable_after: float | None = 10.0,
        send_buffer: int | None = 1024,
        first_message_timeout: float | None = None,
        quiet_attempts: int | None = 1,
        fatal_close_codes: Iterable[int] | None = (1008,),
        fatal_http_statuses: Iterable[int] | None = (401, 403),
        name: str | None = None,
        watchdog: Watchdog | None = None,
        max_message_size: int | None = 16777216,
        ssl: _SSLChoice | None = None,
        read_buffer_size: int | None = 4096,
        write_buffer_size: int | None = 16384,
        on_connect: Callable[[Handshake], Awaitable[None]] | None = None,
        heartbeat: Heartbeat | None = None,
        fatal: type[BaseException] | tuple[type[BaseException], ...] | None = (),
        quiet_jitter: float | None = 1.0,
        logger: str | logging.Logger | None = None,
        final_close_codes: Iterable[int] | None = (),
        connect_timeout: float | None = 30.0,
        compression: str | None = "deflate",
    ) -> Self:
        """Every argument left out (or None) takes the default shown, except ``connect_timeout``: None lifts
        the bound of the first connect (``policy`` alone bounds it); and ``compression``: None turns
        permessage-deflate off."""
    async def start(self) -> None: ...
    def try_recv(self) -> str | bytes | None: ...
    async def wait_readable(self) -> None: ...
    async def send(self, data: str | bytes | bytearray | memoryview) -> None: ...
    async def flush(self) -> None:
        """Once the connection ended, raises its ``GaveUp``/``ConnectionClosed``, whose ``messages`` and
        ``failures`` name what it never delivered (the same lists from every call that raises it)."""
    async def aclose(self) -> None:
        """Never raises; what the close could not get confirmed is named by the error raised afterwards."""
    def close(self) -> None: ...
    def events(self) -> EventStream:
        """Subscribes now: the stream delivers every event emitted after this call returned (the newest 64 unread)."""
    @property
    def state(self) -> Literal["idle", "connecting", "connected", "reconnecting", "closing", "closed", "failed"]: ...
    @property
    def url(self) -> str: ...
    @property
    def name(self) -> str: ...
    def stats(self) -> dict[str, Any]: ...

@final
class HandshakeChannel:
    """Native side of ``tether.Handshake`` (the wrapper handed to ``on_connect``); valid during the hook."""

    @property
    def attempt(self) -> int: ...
    @property
    def strategy(self) -> str: ...
    @property
    def reconnect(self) -> bool: ...
    async def send(self, data: str | bytes | bytearray | memoryview) -> None: ...
    def try_recv(self) -> str | bytes | None: ...
    async def wait_readable(self) -> None: ...

@final
class Heartbeat:
    """In-band heartbeat for ``tether.connect(heartbeat=...)``.

    ``message`` (str, bytes-like, or a zero-argument callable returning one, called on the event loop) is sent every
    ``interval`` seconds while connected. When no reply arrives within ``timeout`` (default: ``interval``) after a
    heartbeat went out, the connection is lost ("heartbeat timeout") and reconnects. A reply is an inbound message
    for which ``is_reply(msg)`` is true; any inbound message when ``is_reply`` is None. ``is_reply`` runs on the
    event loop, only on messages received while a heartbeat is unanswered, in batches; replies are still delivered
    to the application. Both must be plain functions (an async one is a TypeError). A factory or predicate that
    raises, or returns an awaitable, ends the connection (``GaveUp``, not retried). While the application is not
    reading and the inbound buffer is full, a missing reply is not a loss (replies cannot be read)."""

    def __new__(
        cls,
        message: str | bytes | bytearray | memoryview | Callable[[], str | bytes],
        interval: float,
        is_reply: Callable[[str | bytes], object] | None = None,
        timeout: float | None = None,
    ) -> Self: ...
    @property
    def message(self) -> str | bytes | bytearray | memoryview | Callable[[], str | bytes]: ...
    @property
    def interval(self) -> float: ...
    @property
    def is_reply(self) -> Callable[[str | bytes], object] | None: ...
    @property
    def timeout(self) -> float: ...

# ----------------------------------------------------------------------------------------------------
# SignalServer
# ----------------------------------------------------------------------------------------------------

@final
class SignalServer:
    """Native side of ``tether.testing.SignalServer``."""

    def __new__(cls, host: str = "127.0.0.1", port: int = 0) -> Self: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    @property
    def url(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    def drop(self) -> int: ...
    def close(self, code: int, reason: str = "") -> int: ...
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def refuse(self, status: int = 503, times: int | None = None) -> None: ...
    def behave(self) -> None: ...
    def slow_handshake(self, seconds: float) -> None: ...
    def accept_then_drop(self, enabled: bool = True) -> None: ...
    def echo(self, enabled: bool = True) -> None: ...
    def greet(self, data: str | bytes | None = None) -> None: ...
    def relay(self, enabled: bool = True) -> None: ...
    def listening(self, on: bool) -> None: ...
    def push(self, data: str | bytes) -> int: ...
    def flood(self, count: int, size: int) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def requests(self) -> list[str]: ...
    def received(self) -> list[str | bytes]: ...
    async def wait_for(self, n: int = 1, timeout: float | None = None, key: str = "active") -> bool: ...

def _at_exit() -> None: ...

# the registry behind tether.metrics (see that module)
def _metrics_attach(on: bool) -> None: ...
def _metrics_instruments() -> list[tuple[str, str, str, str, list[str], list[float]]]: ...
def _metrics_read(name: str) -> list[tuple[dict[str, str], float]]: ...
def _metrics_drain() -> list[tuple[str, dict[str, str], float]]: ...

# ----------------------------------------------------------------------------------------------------
# ChaosProxy
# ----------------------------------------------------------------------------------------------------

@final
class ChaosProxy:
    """Native side of ``tether.testing.ChaosProxy``: a TCP proxy with toxics, per direction
    ("up" = client -> upstream, "down", "both")."""

    def __new__(cls, upstream: str | tuple[str, int], *, listen: str | tuple[str, int] | None = None) -> Self: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def address(self) -> str: ...
    @property
    def upstream(self) -> str: ...
    def blackhole(self, direction: str = "both") -> None: ...
    def latency(self, ms: float, direction: str = "both") -> None: ...
    def bandwidth(self, bytes_per_sec: int | None, direction: str = "both") -> None: ...
    def heal(self) -> None: ...
    def reset(self) -> int: ...
    def close(self) -> int: ...
    def stats(self) -> dict[str, int]: ...

# ----------------------------------------------------------------------------------------------------
# Watchdog, Liveness, bounded
# ----------------------------------------------------------------------------------------------------

@final
class Alarm:
    """``kind`` is "dwell", "progress" or "liveness"; ``name`` the state or key; seconds elapsed/limit."""

    __match_args__ = ("kind", "name", "elapsed", "limit", "message")
    def __new__(cls, kind: str, name: str, elapsed: float, limit: float, message: str) -> Self: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def limit(self) -> float: ...
    @property
    def message(self) -> str: ...

@final
class Liveness:
    """A liveness (or progress) deadline: ``beat()`` on every frame (one clock read and one atomic store); silence past
    its ``timeout`` raises an alarm."""

    def beat(self) -> None: ...
    def touch(self) -> None: ...
    def pause(self) -> None: ...
    @property
    def key(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    @property
    def idle(self) -> float | None: ...
    @property
    def alarmed(self) -> bool: ...

@final
class AlarmStream(AsyncIterator[Alarm]):
    async def __anext__(self) -> Alarm: ...
    def try_next(self) -> Alarm | None: ...
    async def wait(self) -> None: ...

@final
class Watchdog:
    """Dwell deadlines per state, progress deadlines, liveness keys. Alarms (``tether.Alarm``) via
    ``async for alarm in wd`` / ``wd.alarms()`` and the optional ``on_alarm`` callback (run on the loop that created the
    watchdog, every alarm however many come at once; an ``async def`` one runs as a task). One alarm per entry into a
    state / per silence; the next ``set_state``/``beat`` re-arms. Liveness keys are armed from creation.

    Each alarm is reported once: without ``on_alarm``, by a WARNING record on ``tether.watchdog`` (or ``logger``); with
    ``on_alarm``, by that callback, which replaces the WARNING as a custom exception handler replaces asyncio's default
    report (the record is then DEBUG). Streams (``alarms()``) deliver every alarm either way, while their reader keeps
    within 1,024 unread (beyond, a WARNING says how many it skipped)."""

    def __new__(
        cls,
        name: str = "watchdog",
        *,
        on_alarm: Callable[[Alarm], object] | None = None,
        logger: str | logging.Logger | None = None,
    ) -> Self: ...
    def dwell(self, state: str, timeout: float) -> None: ...
    def set_state(self, state: str) -> None: ...
    @property
    def state(self) -> tuple[str, float] | None: ...
    def liveness(self, key: str, timeout: float) -> Liveness: ...
    def progress(self, key: str, timeout: float) -> Liveness: ...
    def remove(self, liveness: Liveness) -> None: ...
    def alarms(self) -> AlarmStream: ...
    def __aiter__(self) -> AlarmStream: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

# ----------------------------------------------------------------------------------------------------
# ProcPool
# ----------------------------------------------------------------------------------------------------

@final
class Spawned:
    """A process became ready (``proc`` describes it) after ``took`` seconds."""

    __match_args__ = ("proc", "took")
    def __new__(cls, proc: str, took: float) -> Self: ...
    @property
    def proc(self) -> str: ...
    @property
    def took(self) -> float: ...

@final
class SpawnFailed:
    """A spawn failed with ``cause``, the ``consecutive``-th in a row; the next waits ``retry_in`` seconds."""

    __match_args__ = ("cause", "consecutive", "retry_in")
    def __new__(cls, cause: str, consecutive: int, retry_in: float) -> Self: ...
    @property
    def cause(self) -> str: ...
    @property
    def consecutive(self) -> int: ...
    @property
    def retry_in(self) -> float: ...

@final
class Evicted:
    """A process was removed from the pool; ``reason`` says why (e.g. it died while idle)."""

    __match_args__ = ("proc", "reason")
    def __new__(cls, proc: str, reason: str) -> Self: ...
    @property
    def proc(self) -> str: ...
    @property
    def reason(self) -> str: ...

@final
class Exhausted:
    """An acquire raised ``PoolExhausted`` after ``attempts`` attempts; ``failures`` are their causes."""

    __match_args__ = ("attempts", "failures")
    def __new__(cls, attempts: int, failures: Sequence[str]) -> Self: ...
    @property
    def attempts(self) -> int: ...
    @property
    def failures(self) -> list[str]: ...

@final
class HealthChanged:
    """The pool became unhealthy (spawn failures in a row) or healthy again (a spawn succeeded)."""

    __match_args__ = ("healthy",)
    def __new__(cls, healthy: bool) -> Self: ...
    @property
    def healthy(self) -> bool: ...

@final
class PoolClosed:
    """The pool closed; its event stream ends."""

    __match_args__ = ()
    def __new__(cls) -> Self: ...

_PoolEvent = Spawned | SpawnFailed | Evicted | Exhausted | HealthChanged

@final
class WorkerProc:
    """A native worker from a ``command=[...]`` pool (frames over stdin/stdout, see ``tether.worker``)."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    def is_alive(self) -> bool: ...
    @property
    def stderr_tail(self) -> str: ...
    async def request(self, data: bytes | str, *, timeout: float | None = None) -> bytes:
        """Send one frame and await the reply frame, within ``timeout`` seconds if given (``tether.TimeoutError``).
        A request that does not complete (timeout, cancellation) kills the worker: it is never handed out again,
        since its late reply would answer the next request."""

@final
class PoolEventStream(AsyncIterator[_PoolEvent]):
    async def __anext__(self) -> _PoolEvent: ...
    def try_next(self) -> _PoolEvent | None: ...
    async def wait(self) -> None: ...

@final
class ProcPool:
    """A prewarmed pool whose ``acquire`` never hangs. ``spawn``: an async callable (``async def``; a plain function is
    a TypeError) returning any object, alive per ``liveness(proc)`` if given (called from a tether thread, with the GIL:
    keep it quick and non-blocking), else its ``is_alive()``, else ``poll() is None``, else ``returncode is None``;
    disposed with ``aclose()``/``close()``, else ``kill()`` then ``await wait()``. A spawn that raises ``X from cause``
    reports both. A spawn is cancelled at ``initialize_timeout`` and when the pool closes while it runs: a child it
    started is its own to kill on ``CancelledError`` (the pool never saw it); a process it returns as the pool closes,
    the pool disposes of. Or ``command``: argv of a child that sends the ready frame (``tether.worker``); such children
    die with this process (``PR_SET_PDEATHSIG`` on Linux). At interpreter exit, pools nobody closed kill what they own
    (``kill()`` for spawn= objects).

    Each spawn made while acquirers wait is made for one of them (an acquirer also takes over a spawn for the idle
    target still starting when it arrives); its failure is a failed attempt of that acquirer only; after
    ``acquire_attempts`` failed attempts it raises ``PoolExhausted`` (``.failures``: its own spawns' causes,
    ``.attempts``). Once the pool is unhealthy (2 spawn failures in a row since the last success; spawns then run one at
    a time), the next spawn failure, whoever it was made for, raises ``PoolExhausted`` in every waiting acquire
    (``.failures``: those since it began). A process found dead before its first use, within ``initialize_timeout`` of
    its spawn's success, fails that spawn after all (the failures in a row and the backoff before it come back).
    ``timeout`` bounds the acquire (``TimeoutError``). ``release``/``detach`` of a process this pool did not lend (or
    twice) raise ValueError. A request that does not complete kills its worker. ``name``: the ``name`` attribute of the
    pool's metrics (``tether.metrics``)."""

    def __new__(
        cls,
        spawn: Callable[[], Awaitable[Any]] | None = None,
        command: Sequence[str] | None = None,
        *,
        num_idle: int | None = 1,
        max_concurrent_spawns: int | None = 1,
        initialize_timeout: float | None = 10.0,
        acquire_attempts: int | None = 3,
        respawn: Backoff | None = ...,  # Backoff(0.1, 2.0, max_delay=10.0, jitter="equal")
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        liveness: Callable[[Any], bool] | None = None,
        logger: str | logging.Logger | None = None,
        name: str = "procpool",
    ) -> Self: ...
    def start(self) -> None: ...
    async def acquire(self, timeout: float | None = None) -> Any: ...
    async def warm(self, n: int | None = None, timeout: float | None = None) -> None:
        """Until ``n`` (default num_idle; a lower idle target is raised to ``n``) processes are idle. Raises
        PoolExhausted once ``acquire_attempts`` spawns failed in a row, or TimeoutError."""
    def release(self, proc: Any, *, kill: bool = False) -> None: ...
    def detach(self, proc: Any) -> None:
        """``proc`` leaves the pool for good (not killed by the pool, no longer counted); the pool refills. A
        native worker still dies with this process."""
    def set_target_idle(self, n: int) -> None: ...
    async def aclose(self) -> None: ...
    @property
    def healthy(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def events(self) -> PoolEventStream: ...

# ----------------------------------------------------------------------------------------------------
# ReadinessGate
# ----------------------------------------------------------------------------------------------------

@final
class ReadinessGate:
    """Staged dispatch readiness. ``dispatch(job_id, attempt)`` is awaited; its return marks the first stage. Each
    further stage must be ``mark``ed within its timeout, measured from the previous stage (the first from the start
    of the first dispatch call, which it also bounds). A raising dispatch call is retried with ``policy`` (default
    Backoff(0.2, 2, jitter="none", max_attempts=3): 200/400/800 ms) within the first stage's timeout, which ends
    the retries of a policy without ``max_attempts`` too; a stage timeout raises ``tether.NotReady`` (or
    re-dispatches when ``redispatch=True``). Returns {stage: seconds since the dispatch call started}. Stages
    default to ("dispatched", "joined", "ready"), their timeouts to 10 s each. A plain (non-async) ``dispatch`` is a
    TypeError at once; marks made during a failed attempt are cleared before the retry. ``NotReady`` is the
    failure's one report (its log record is DEBUG); retries log WARNING. ``name``: the ``name`` attribute of the
    gate's metrics (``tether.metrics``)."""

    def __new__(cls, *, logger: str | logging.Logger | None = None, name: str = "readiness") -> Self: ...
    async def dispatch(
        self,
        job_id: str,
        dispatch: Callable[[str, int], Awaitable[object]],
        *,
        stages: Sequence[str] | None = None,  # ("dispatched", "joined", "ready")
        timeouts: float | Mapping[str, float] | None = None,
        policy: Backoff | None = None,
        redispatch: bool = False,
    ) -> dict[str, float]: ...
    def mark(self, job_id: str, stage: str) -> bool: ...
    def pending(self) -> list[str]: ...
    def status(self, job_id: str) -> dict[str, bool] | None: ...
    @property
    def unknown_marks(self) -> int: ...
