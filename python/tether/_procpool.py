"""Process-pool acquisition that never hangs, even when every spawn fails: ``ProcPool`` and its events."""

from __future__ import annotations

from dataclasses import dataclass

from ._native import ProcPool, WorkerProc


@dataclass(frozen=True, slots=True)
class Spawned:
    """A process became ready (``proc`` describes it) after ``took`` seconds."""

    proc: str
    took: float


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    """A spawn failed with ``cause``, the ``consecutive``-th in a row; the next waits ``retry_in`` seconds."""

    cause: str
    consecutive: int
    retry_in: float


@dataclass(frozen=True, slots=True)
class Evicted:
    """A process was removed from the pool; ``reason`` says why (e.g. it died while idle)."""

    proc: str
    reason: str


@dataclass(frozen=True, slots=True)
class Exhausted:
    """An acquire raised ``PoolExhausted`` after ``attempts`` attempts; ``failures`` are their causes."""

    attempts: int
    failures: list[str]


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """The pool became unhealthy (spawn failures in a row) or healthy again (a spawn succeeded)."""

    healthy: bool


@dataclass(frozen=True, slots=True)
class PoolClosed:
    """The pool closed; its event stream ends."""


__all__ = ["Evicted", "Exhausted", "HealthChanged", "PoolClosed", "ProcPool", "SpawnFailed", "Spawned", "WorkerProc"]
