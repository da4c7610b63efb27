"""Type stubs for tether._native (the Rust extension). Public names are re-exported from ``tether``."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Literal, Mapping, Sequence, TypeVar

from .events import Event

T = TypeVar("T")
__version__: str

# ----------------------------------------------------------------------------------------------------
# Backoff (issue 2)
# ----------------------------------------------------------------------------------------------------

class Backoff:
    """Retry delay policy. ``max_attempts`` counts retries: ``delays()`` yields one delay per retry.

    initial/max_delay/deadline are seconds (finite, 0..86400; deadline > 0); factor >= 1;
    jitter: "full" uniform(0, d) | "equal" d/2 + uniform(0, d/2) | "decorrelated" uniform(initial, 3*prev)
    | "none". ``deadline`` caps the sum of delays and, in loops, the wall-clock length of an outage.
    ``seed`` makes the jitter reproducible. ValueError/TypeError on nonsense.
    """

    def __init__(
        self,
        initial: float = 0.3,
        factor: float = 2.0,
        max_delay: float = 7.0,
        jitter: Literal["full", "equal", "decorrelated", "none"] = "full",
        max_attempts: int | None = None,
        deadline: float | None = None,
        seed: int | None = None,
    ) -> None: ...
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

class DelayIter(Iterator[float]):
    def __next__(self) -> float: ...

# ----------------------------------------------------------------------------------------------------
# Reconnector (issue 2)
# ----------------------------------------------------------------------------------------------------

class EventStream(AsyncIterator[Event]):
    async def __anext__(self) -> Event: ...

class Reconnector:
    """Generic reconnect loop over an async callable.

    ``connect()`` is one connection lifetime: it returns when the caller is done (``run`` returns its
    value) or raises when the attempt failed or the connection was lost (``run`` retries). Call
    ``r.connected()`` from inside ``connect`` once the handshake succeeded; the retry counter resets only
    after a connection stayed up ``stable_after`` seconds (if never marked, the attempt's duration counts).
    The first ``quiet_attempts`` retries of an outage are immediate and logged at DEBUG; backed-off
    retries log WARNING; giving up logs ERROR and raises ``tether.GaveUp`` (``.attempts``, ``.last_error``,
    ``.reason``, ``.elapsed``), chained from the last error. Exceptions in ``fatal`` are not retried.
    Cancelling ``run`` cancels the running ``connect`` coroutine.
    """

    def __init__(
        self,
        policy: Backoff | None = None,
        *,
        stable_after: float = 10.0,
        quiet_attempts: int = 1,
        fatal: type[BaseException] | tuple[type[BaseException], ...] = (),
        name: str = "connection",
    ) -> None: ...
    async def run(self, connect: Callable[[], Awaitable[T]]) -> T: ...
    def connected(self) -> bool: ...
    def events(self) -> EventStream: ...
    @property
    def name(self) -> str: ...
    @property
    def policy(self) -> Backoff: ...
    @property
    def stable_after(self) -> float: ...
    @property
    def quiet_attempts(self) -> int: ...
    @property
    def running(self) -> bool: ...

def redact(text: str) -> str: ...
def _set_log_level(py_level: int) -> None: ...
def _log_level_rank() -> int: ...
def _emit_test_log(level: str, message: str, retry_count: int) -> None: ...

# ----------------------------------------------------------------------------------------------------
# Connection / tether.connect (issue 3)
# ----------------------------------------------------------------------------------------------------

class Connection:
    """Native side of ``tether.connect`` (use the ``tether.Connection`` wrapper returned by ``connect``)."""

    def __init__(
        self,
        url: str,
        *,
        policy: Backoff | None = None,
        ping_interval: float | None = None,
        ping_timeout: float | None = None,
        open_timeout: float | None = None,
        close_timeout: float | None = None,
        ladder: Sequence[str | tuple[str, int]] | None = None,
        url_for: Callable[[str, int], Any] | None = None,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        stable_after: float | None = None,
        send_buffer: int | None = None,
        first_message_timeout: float | None = None,
        quiet_attempts: int | None = None,
        fatal_close_codes: Iterable[int] | None = None,
        fatal_http_statuses: Iterable[int] | None = None,
        name: str | None = None,
    ) -> None: ...
    async def start(self) -> None: ...
    def try_recv(self) -> str | bytes | None: ...
    async def recv(self) -> str | bytes: ...
    async def send(self, data: str | bytes | bytearray | memoryview) -> None: ...
    async def aclose(self) -> None: ...
    def events(self) -> EventStream: ...
    @property
    def state(self) -> Literal["idle", "connecting", "connected", "reconnecting", "closing", "closed", "failed"]: ...
    @property
    def url(self) -> str: ...
    @property
    def name(self) -> str: ...
    def stats(self) -> dict[str, Any]: ...


# ----------------------------------------------------------------------------------------------------
# SignalServer (issue 3)
# ----------------------------------------------------------------------------------------------------

class SignalServer:
    """Native side of ``tether.testing.SignalServer``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    @property
    def url(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    def drop(self) -> int: ...
    def close(self, code: int = 1000, reason: str = "") -> int: ...
    def freeze(self) -> None: ...
    def unfreeze(self) -> None: ...
    def refuse(self, status: int = 503, times: int | None = None) -> None: ...
    def behave(self) -> None: ...
    def slow_handshake(self, seconds: float) -> None: ...
    def accept_then_drop(self, enabled: bool = True) -> None: ...
    def echo(self, enabled: bool = True) -> None: ...
    def listening(self, on: bool) -> None: ...
    def push(self, data: str | bytes) -> int: ...
    def flood(self, count: int, size: int) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def requests(self) -> list[str]: ...
    def received(self) -> list[str | bytes]: ...
    async def wait_for(self, n: int = 1, timeout: float | None = None, key: str = "active") -> bool: ...

def _at_exit() -> None: ...


# ----------------------------------------------------------------------------------------------------
# ChaosProxy (issue 4)
# ----------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------
# Watchdog, Liveness, bounded (issue 5)
# ----------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------
# ProcPool (issue 6)
# ----------------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------------
# ReadinessGate (issue 7)
# ----------------------------------------------------------------------------------------------------
