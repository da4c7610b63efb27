"""Process-pool acquisition that never hangs, even when every spawn fails: ``ProcPool`` and its events."""

from __future__ import annotations

from dataclasses import dataclass

from ._native import ProcPool, WorkerProc


@dataclass(frozen=True, slots=True)
class Spawned:
    proc: str
    took: float


@dataclass(frozen=True, slots=True)
class SpawnFailed:
    cause: str
    consecutive: int
    retry_in: float


@dataclass(frozen=True, slots=True)
class Evicted:
    proc: str
    reason: str


@dataclass(frozen=True, slots=True)
class Exhausted:
    attempts: int
    failures: list[str]


@dataclass(frozen=True, slots=True)
class HealthChanged:
    healthy: bool


@dataclass(frozen=True, slots=True)
class PoolClosed:
    pass


__all__ = ["Evicted", "Exhausted", "HealthChanged", "PoolClosed", "ProcPool", "SpawnFailed", "Spawned", "WorkerProc"]
