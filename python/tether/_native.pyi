"""Type stubs for tether._native (the Rust extension). Public names are re-exported from ``tether``."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Literal, TypeVar

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

# ----------------------------------------------------------------------------------------------------
# SignalServer (issue 3)
# ----------------------------------------------------------------------------------------------------

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
