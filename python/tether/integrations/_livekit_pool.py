"""livekit-agents' job process pool on ``tether.ProcPool``; see ``livekit.install``.

The subclass keeps livekit's public pool surface (constructor, events, ``processes``, ``launch_job``,
``set_target_idle_processes``, ``start``/``aclose``) and uses none of the base class's private state:
processes are spawned, respawned with backoff, evicted and handed out by a ``tether.ProcPool``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
import weakref
from typing import Any

from .._native import Backoff, PoolExhausted, ProcPool, TimeoutError
from .._watchdog import bounded

LOGGER_NAME = "livekit.agents"
_LAUNCH_ATTEMPTS = 3
# livekit's initialize() has its own timeout; tether's bound also covers starting the process
_START_MARGIN = 10.0


# what livekit's own pool passes its executors beyond its constructor's arguments (same in 1.5 to 2.0)
EXECUTOR_DEFAULTS = {"ping_interval": 2.5, "high_ping_threshold": 0.5, "ping_timeout": 60}


def executor_kwargs(cls: Any, pool_opts: dict[str, Any]) -> dict[str, Any]:
    """The arguments of ``cls``'s constructor, from the pool's own (the executors of a release take what
    its pool takes: ``simulation_end_fnc`` exists from 1.6 on) and livekit's fixed ping settings."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for name, param in params.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in pool_opts:
            kwargs[name] = pool_opts[name]
        elif name in EXECUTOR_DEFAULTS:
            kwargs[name] = EXECUTOR_DEFAULTS[name]
    return kwargs


def unknown_executor_params(cls: Any, pool_params: set[str]) -> list[str]:
    """Required constructor parameters of ``cls`` that neither the pool nor livekit's defaults supply."""
    params = inspect.signature(cls.__init__).parameters
    return [
        f"{cls.__qualname__}({name}=)"
        for name, param in params.items()
        if name != "self"
        and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        and param.default is param.empty
        and name not in pool_params
        and name not in EXECUTOR_DEFAULTS
    ]


def default_respawn() -> Backoff:
    return Backoff(initial=0.5, factor=2.0, max_delay=10.0, jitter="equal")


def make_pool_class(base: Any, *, respawn: Backoff | None, acquire_timeout: float | None) -> type:
    job_proc_executor = importlib.import_module("livekit.agents.ipc.job_proc_executor")
    job_thread_executor = importlib.import_module("livekit.agents.ipc.job_thread_executor")
    lk_proc_pool = importlib.import_module("livekit.agents.ipc.proc_pool")
    JobExecutorType = importlib.import_module("livekit.agents.job").JobExecutorType

    max_spawns = lk_proc_pool.MAX_CONCURRENT_INITIALIZATIONS
    log = logging.getLogger(LOGGER_NAME)

    class TetherProcPool(base):  # type: ignore[misc]
        """livekit's ProcPool with its processes managed by ``tether.ProcPool``."""

        def __init__(self, **opts: Any) -> None:
            super().__init__(**opts)
            self._t_opts = opts
            self._t_num_idle = max(0, int(opts["num_idle_processes"]))
            self._t_executors: list[Any] = []
            self._t_dead: weakref.WeakSet[Any] = weakref.WeakSet()
            self._t_ready: weakref.WeakSet[Any] = weakref.WeakSet()
            self._t_tasks: set[asyncio.Task[Any]] = set()
            self._t_started = False
            init_timeout = float(opts["initialize_timeout"])
            self._t_acquire_timeout = (
                acquire_timeout if acquire_timeout is not None else 3 * (init_timeout + _START_MARGIN)
            )
            self._t_pool = ProcPool(
                spawn=self._t_spawn,
                num_idle=self._t_num_idle,
                max_concurrent_spawns=max_spawns,
                initialize_timeout=init_timeout + _START_MARGIN,
                acquire_attempts=3,
                respawn=respawn or default_respawn(),
                liveness=self._t_alive,
                logger="livekit.agents",  # the pool's records stay under the framework's logger
                name="livekit",
            )

        # -- public surface used by AgentServer ------------------------------------------------------
        @property
        def processes(self) -> list[Any]:
            return self._t_executors

        def get_by_job_id(self, job_id: str) -> Any | None:
            return next(
                (p for p in self._t_executors if p.running_job and p.running_job.job.id == job_id),
                None,
            )

        async def start(self) -> None:
            if self._t_started:
                return
            self._t_started = True
            self._t_pool.start()
            if self._t_num_idle > 0:
                # like livekit, registration waits for the warm processes, but never past the bound,
                # and a setup that always fails ends the wait at once with its real error
                try:
                    await self._t_pool.warm(timeout=float(self._t_opts["initialize_timeout"]) + 2)
                except (PoolExhausted, TimeoutError) as e:
                    log.warning("job processes are not warm, continuing: %s", e, extra={"error": str(e)})

        async def aclose(self) -> None:
            if not self._t_started:
                return
            self._t_started = False
            await self._t_pool.aclose()
            await asyncio.gather(*(self._t_close(p) for p in list(self._t_executors)), return_exceptions=True)
            if self._t_tasks:
                await asyncio.gather(*self._t_tasks, return_exceptions=True)

        async def launch_job(self, info: Any) -> None:
            for attempt in range(1, _LAUNCH_ATTEMPTS + 1):
                proc = await self._t_pool.acquire(timeout=self._t_acquire_timeout)
                # the process now belongs to the job; the pool refills its idle target
                self._t_pool.detach(proc)
                if hasattr(info, "launched_at"):
                    info.launched_at = time.time()
                try:
                    await proc.launch_job(info)
                except Exception:
                    self._t_track(self._t_close(proc))
                    if attempt == _LAUNCH_ATTEMPTS:
                        log.error(
                            "failed to launch job on process after %d attempts", attempt, extra={"job_id": info.job.id}
                        )
                        raise
                    log.warning(
                        "failed to launch job on process, retrying with a new process",
                        extra={"job_id": info.job.id, "attempt": attempt},
                    )
                    continue
                self.emit("process_job_launched", proc)
                return

        def set_target_idle_processes(self, num_idle_processes: int) -> None:
            super().set_target_idle_processes(num_idle_processes)
            # livekit's load task lowers the target under load to stop spawning, not to kill warm
            # processes (tether's pool shrinks by disposing idle ones): never go below those idle now
            wanted = max(0, min(int(num_idle_processes), self._t_num_idle))
            self._t_pool.set_target_idle(max(wanted, int(self._t_pool.stats().get("idle", 0))))

        # -- spawning -----------------------------------------------------------------------------------
        def _t_new_executor(self) -> Any:
            kind = self._t_opts["job_executor_type"]
            if kind == JobExecutorType.THREAD:
                cls = job_thread_executor.ThreadJobExecutor
            elif kind == JobExecutorType.PROCESS:
                cls = job_proc_executor.ProcJobExecutor
            else:
                raise ValueError(f"unsupported job executor: {kind}")
            return cls(**executor_kwargs(cls, self._t_opts))

        async def _t_spawn(self) -> Any:
            proc = self._t_new_executor()
            self._t_executors.append(proc)
            self.emit("process_created", proc)
            try:
                await proc.start()
                self.emit("process_started", proc)
                await proc.initialize()
            except BaseException:
                # also on cancellation (tether's initialize bound): close in the background, re-raise
                self._t_executors.remove(proc)
                self._t_track(self._t_close_failed(proc))
                raise
            self._t_ready.add(proc)
            self.emit("process_ready", proc)
            self._t_track(self._t_monitor(proc))
            return proc

        async def _t_close(self, proc: Any) -> None:
            """``proc.aclose()``, bounded. A process that never initialized is killed: it cannot ack a
            graceful shutdown, and livekit 1.5's ``aclose()`` then waits for that ack forever."""
            bound = float(self._t_opts["close_timeout"]) + _START_MARGIN
            kill = getattr(proc, "kill", None)
            if proc not in self._t_ready and kill is not None and getattr(proc, "started", False):
                await bounded(kill(), bound, what="job process kill")
                return
            try:
                await bounded(proc.aclose(), bound, what="job process close")
            except TimeoutError:
                kill = getattr(proc, "kill", None)
                if kill is not None:
                    await bounded(kill(), _START_MARGIN, what="job process kill")

        async def _t_close_failed(self, proc: Any) -> None:
            try:
                await self._t_close(proc)
            finally:
                self.emit("process_closed", proc)

        async def _t_monitor(self, proc: Any) -> None:
            try:
                await proc.join()
            finally:
                self._t_dead.add(proc)
                if proc in self._t_executors:
                    self._t_executors.remove(proc)
                self.emit("process_closed", proc)

        def _t_alive(self, proc: Any) -> bool:
            return proc not in self._t_dead

        def _t_track(self, aw: Any) -> None:
            task = asyncio.ensure_future(aw)
            self._t_tasks.add(task)
            task.add_done_callback(self._t_tasks.discard)

    TetherProcPool.__qualname__ = TetherProcPool.__name__ = "ProcPool"
    TetherProcPool.__module__ = __name__
    return TetherProcPool
