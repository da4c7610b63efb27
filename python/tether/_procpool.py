"""Process-pool acquisition that never hangs, even when every spawn fails: ``ProcPool`` and its events."""

from __future__ import annotations

from ._native import Evicted, Exhausted, HealthChanged, PoolClosed, ProcPool, Spawned, SpawnFailed, WorkerProc

__all__ = ["Evicted", "Exhausted", "HealthChanged", "PoolClosed", "ProcPool", "SpawnFailed", "Spawned", "WorkerProc"]
