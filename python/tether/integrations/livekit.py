"""livekit-agents on tether: one call before ``AgentServer.run()``.

    from tether.integrations import livekit
    livekit.install()

Parts (each checked and refused on its own, see ``InstallReport``; ``instrumentation_dependencies()``
lists the releases each was tested with):

* ``control_plane``: the worker's connection to the LiveKit server runs under a ``tether.Reconnector``.
  The retry counter resets only after registration plus ``stable_after`` seconds, so a control plane
  that accepts and drops the socket backs off instead of reconnecting at 0 s forever; ``max_retry`` is
  honoured; the first immediate retry logs at DEBUG, backed-off ones at WARNING, all under the
  ``livekit.agents`` logger; registration is bounded by ``register_timeout``. On 1.x the shipped loop
  runs with tether at its retry sleep (see ``_livekit_control``); on 2.x the native worker runs as
  shipped and is started again after a registration that lasted ``stable_after``.
* ``proc_pool``: ``livekit.agents.ipc.proc_pool.ProcPool`` is replaced by a subclass whose processes come
  from a ``tether.ProcPool``: failed spawns are retried with the ``respawn`` backoff (no hot respawn
  loop), acquiring a process for a job is bounded and raises ``tether.PoolExhausted`` naming the real
  setup error, and start-up waits for the warm processes only as long as ``initialize_timeout``.
* ``metrics``: a worker that serves Prometheus metrics (``prometheus_port``) serves tether's too, next to
  its ``lk_agents_*`` ones and labelled like them (``nodename``): ``tether_connection_losses_total``,
  ``tether_pool_spawn_failures_total``, ``tether_connection_count{state="reconnecting"}`` ... for the
  control plane (``name="livekit"``) and the process pool (``name="livekit"``); see ``_livekit_metrics``.

``watch_room(room)`` and ``dispatch_ready(...)`` are independent of ``install()``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from .._native import Backoff
from ._livekit_control import REGISTER_TIMEOUT, STABLE_AFTER, Settings, patch_v1, patch_v2
from ._livekit_dispatch import Dispatched, dispatch_ready
from ._livekit_room import RoomWatch, watch_room
from ._patch import Checks, InstallReport, Integration, Part, Patches, PatchFn

LOGGER_NAME = "livekit.agents"

#: the releases each part was tested with (one per minor runs in ``make test``)
CONTROL_PLANE_1X = "livekit-agents>=1.5,<1.9"
CONTROL_PLANE_2X = "livekit-agents>=2.0.0b1,<3"
PROC_POOL = "livekit-agents>=1.5,<3"
METRICS = "livekit-agents>=1.5,<3"

_integration = Integration("livekit", "livekit-agents")

# The 1.x connection loop's code as read, 1.5.17 to 1.8.9 (the seams in _livekit_control rely on it).
_CONNECTION_TASK_1X = ("269a9a5739abc3c2",)
# What the 1.x loop reads from an AgentServer (set in __init__/run, checked in the bytecode).
_SERVER_ATTRS_1X = ("_closed", "_connecting", "_connection_failed", "_http_session", "_max_retry")
_SERVER_ATTRS_2X = ("_closed", "_connection_failed", "_max_retry")
_SERVER_METHODS = ("_connection_task", "on", "off")
_POOL_PARAMS = (
    "initialize_process_fnc",
    "job_entrypoint_fnc",
    "session_end_fnc",
    "num_idle_processes",
    "initialize_timeout",
    "close_timeout",
    "session_end_timeout",
    "inference_executor",
    "job_executor_type",
    "mp_ctx",
    "memory_warn_mb",
    "memory_limit_mb",
    "http_proxy",
    "loop",
)
_POOL_METHODS = ("start", "aclose", "launch_job", "set_target_idle_processes", "processes", "get_by_job_id")
_EXECUTOR_METHODS = ("start", "initialize", "launch_job", "aclose", "join")


def install(
    *,
    control_plane: bool = True,
    proc_pool: bool = True,
    metrics: bool = True,
    policy: Backoff | Callable[[int], Backoff] | None = None,
    stable_after: float = STABLE_AFTER,
    register_timeout: float = REGISTER_TIMEOUT,
    respawn: Backoff | None = None,
    acquire_timeout: float | None = None,
    allow_untested: bool = False,
) -> InstallReport:
    """Patch livekit-agents (idempotent; undo with ``uninstall()``). Call before ``AgentServer.run()``.

    ``policy``: the control-plane retry policy, or ``f(max_retry) -> Backoff`` (default: 1 s doubling to
    10 s, equal jitter, ``max_attempts=max_retry`` of the server). ``stable_after``: seconds a registered
    connection must last before the retry counter resets. ``register_timeout`` bounds connect +
    registration (1.x; the native 2.x worker bounds its own). ``respawn``: backoff between failed
    process spawns (default 0.5 s doubling to 10 s). ``acquire_timeout``: bound on waiting for a process
    for a job (default: 3 x initialize_timeout). ``allow_untested``: try the parts on a release outside
    their ranges (a part that does not fit is still refused, with a WARNING).
    Returns an ``InstallReport`` naming the parts patched and refused (refusals also log a WARNING). A
    part already patched keeps the settings it was patched with; a WARNING names those this call would
    have changed (``uninstall()`` first to change them).
    """
    settings = Settings(policy, stable_after, register_timeout)
    parts = _parts(settings, respawn, acquire_timeout)
    wanted = {"control_plane": control_plane, "proc_pool": proc_pool, "metrics": metrics}
    given = {
        "policy": policy,
        "stable_after": stable_after,
        "register_timeout": register_timeout,
        "respawn": respawn,
        "acquire_timeout": acquire_timeout,
    }
    return _integration.install([p for p in parts if wanted[p.name]], allow_untested=allow_untested, settings=given)


def instrumentation_dependencies() -> tuple[str, ...]:
    """The livekit-agents releases each part (and variant) was tested with, as requirement specifiers."""
    return Integration.instrumentation_dependencies(_parts(Settings(), None, None))


def uninstall() -> None:
    """Undo ``install()``: the framework's own code is back for servers started afterwards."""
    _integration.uninstall()


_CONTROL = ("policy", "stable_after", "register_timeout")


def _parts(settings: Settings, respawn: Backoff | None, acquire_timeout: float | None) -> list[Part]:
    return [
        Part("control_plane", CONTROL_PLANE_1X, functools.partial(_prepare_control_plane_1x, settings), uses=_CONTROL),
        Part("control_plane", CONTROL_PLANE_2X, functools.partial(_prepare_control_plane_2x, settings), uses=_CONTROL),
        Part(
            "proc_pool",
            PROC_POOL,
            functools.partial(_prepare_proc_pool, respawn, acquire_timeout),
            uses=("respawn", "acquire_timeout"),
        ),
        Part("metrics", METRICS, _prepare_metrics),
    ]


def _prepare_control_plane_1x(settings: Settings, c: Checks) -> PatchFn | None:
    lk_worker = c.module("livekit.agents.worker")
    if lk_worker is None:
        return None
    server_cls = c.attr(lk_worker, "AgentServer")
    c.attrs(lk_worker, ("asyncio", "logger"))
    if server_cls is None:
        return None
    c.attrs(server_cls, _SERVER_METHODS)
    c.instance_attrs(server_cls, _SERVER_ATTRS_1X)
    if not c:
        return None
    c.fingerprint(server_cls._connection_task, _CONNECTION_TASK_1X)
    return lambda p: patch_v1(p, server_cls, lk_worker, settings)


def _prepare_control_plane_2x(settings: Settings, c: Checks) -> PatchFn | None:
    lk_worker = c.module("livekit.agents.worker")
    if lk_worker is None:
        return None
    # the native worker this variant supervises; its absence means a 1.x loop
    c.attrs(lk_worker, ("_core",))
    server_cls = c.attr(lk_worker, "AgentServer")
    if server_cls is None:
        return None
    c.attrs(server_cls, _SERVER_METHODS)
    c.instance_attrs(server_cls, (*_SERVER_ATTRS_2X, "_conn"))
    if not c:
        return None
    return lambda p: patch_v2(p, server_cls, settings)


def _prepare_proc_pool(respawn: Backoff | None, acquire_timeout: float | None, c: Checks) -> PatchFn | None:
    lk_proc_pool = c.module("livekit.agents.ipc.proc_pool")
    thread_mod = c.module("livekit.agents.ipc.job_thread_executor")
    proc_mod = c.module("livekit.agents.ipc.job_proc_executor")
    if lk_proc_pool is None or thread_mod is None or proc_mod is None:
        return None
    from ._livekit_pool import unknown_executor_params

    pool_cls = c.attr(lk_proc_pool, "ProcPool")
    c.attrs(lk_proc_pool, ("MAX_CONCURRENT_INITIALIZATIONS",))
    if pool_cls is not None:
        c.params(pool_cls.__init__, _POOL_PARAMS)
        c.attrs(pool_cls, _POOL_METHODS)
    for module, name in ((thread_mod, "ThreadJobExecutor"), (proc_mod, "ProcJobExecutor")):
        cls = c.attr(module, name)
        if cls is not None:
            c.attrs(cls, _EXECUTOR_METHODS)
            if pool_cls is not None:
                pool_params = set(_pool_params(pool_cls))
                c.missing.extend(unknown_executor_params(cls, pool_params))
    if not c:
        return None

    def patch(p: Patches) -> None:
        from ._livekit_pool import make_pool_class

        p.set(lk_proc_pool, "ProcPool", make_pool_class(pool_cls, respawn=respawn, acquire_timeout=acquire_timeout))

    return patch


def _prepare_metrics(c: Checks) -> PatchFn | None:
    lk_worker = c.module("livekit.agents.worker")
    lk_metrics = c.module("livekit.agents.telemetry.metrics")
    lk_utils = c.module("livekit.agents.utils")
    prometheus = c.module("prometheus_client")
    c.module("opentelemetry.sdk.metrics")
    if lk_worker is None or lk_metrics is None or lk_utils is None or prometheus is None:
        return None
    server_cls = c.attr(lk_worker, "AgentServer")
    nodename = c.attr(lk_utils, "nodename")
    registry = c.attr(prometheus, "REGISTRY")
    if server_cls is not None:
        c.attrs(server_cls, ("run",))
        c.instance_attrs(server_cls, ("_prometheus_port",))
    # tether's series carry the label livekit's own carry: still the one it uses?
    for family in ("PROC_INITIALIZE_TIME", "RUNNING_JOB_GAUGE"):
        collector = c.attr(lk_metrics, family)
        if collector is not None and tuple(getattr(collector, "_labelnames", ())) != ("nodename",):
            c.changed.append(
                f"livekit.agents.telemetry.metrics.{family} (labels {getattr(collector, '_labelnames', None)})"
            )
    if not c:
        return None

    def patch(p: Patches) -> None:
        from ._livekit_metrics import patch as patch_metrics

        patch_metrics(p, server_cls, nodename, registry)

    return patch


def _pool_params(pool_cls: Any) -> list[str]:
    import inspect

    return list(inspect.signature(pool_cls.__init__).parameters)


__all__ = [
    "CONTROL_PLANE_1X",
    "CONTROL_PLANE_2X",
    "METRICS",
    "PROC_POOL",
    "Dispatched",
    "InstallReport",
    "RoomWatch",
    "dispatch_ready",
    "install",
    "instrumentation_dependencies",
    "uninstall",
    "watch_room",
]
