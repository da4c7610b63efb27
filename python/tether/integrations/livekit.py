"""livekit-agents on tether: one call before ``AgentServer.run()``.

    from tether.integrations import livekit
    livekit.install()

Parts (each checked and refused on its own, see ``InstallReport``):

* ``control_plane``: ``AgentServer``'s worker connection loop runs on a step-wise ``tether.Reconnector``
  (seed 000). The retry counter resets only after registration plus ``stable_after`` seconds, so a
  control plane that accepts and drops the socket backs off instead of reconnecting at 0 s forever;
  ``max_retry`` is honoured; the first immediate retry logs at DEBUG, backed-off ones at WARNING, all
  under the ``livekit.agents`` logger; connect + registration is bounded by ``register_timeout``.
* ``proc_pool``: ``livekit.agents.ipc.proc_pool.ProcPool`` is replaced by a subclass whose processes come
  from a ``tether.ProcPool`` (seed 004): failed spawns are retried with the ``respawn`` backoff (no hot
  respawn loop), acquiring a process for a job is bounded and raises ``tether.PoolExhausted`` naming the
  real setup error, and start-up waits for the warm processes only as long as ``initialize_timeout``.

``watch_room(room)`` is independent of ``install()``: it watches a ``livekit.rtc.Room`` for seed 001.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from .._errors import GaveUp
from .._native import Backoff, Liveness, Reconnector, Watchdog
from .._watchdog import Alarm, bounded
from ._patch import (
    InstallReport,
    Integration,
    Patches,
    missing_attrs,
    missing_instance_attrs,
    missing_params,
)

T = TypeVar("T")

#: livekit-agents versions this integration was tested with: >= first, < second.
TESTED_VERSIONS = ("1.8", "1.9")

LOGGER_NAME = "livekit.agents"

_integration = Integration("livekit", "livekit-agents", TESTED_VERSIONS)

# What the control-plane loop reads from an AgentServer (set in __init__/run, checked in the bytecode).
_SERVER_ATTRS = (
    "_closed",
    "_connecting",
    "_connection_failed",
    "_http_session",
    "_http_proxy",
    "_api_key",
    "_api_secret",
    "_ws_url",
    "_worker_token",
    "_max_retry",
    "_server_type",
    "_permissions",
    "_agent_name",
    "_deployment",
)
_SERVER_METHODS = ("_connection_task", "_run_ws", "_handle_register", "_report_active_jobs")
_POOL_PARAMS = (
    "initialize_process_fnc",
    "job_entrypoint_fnc",
    "session_end_fnc",
    "simulation_end_fnc",
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
_THREAD_EXECUTOR_PARAMS = (
    "initialize_process_fnc",
    "job_entrypoint_fnc",
    "session_end_fnc",
    "simulation_end_fnc",
    "initialize_timeout",
    "close_timeout",
    "session_end_timeout",
    "inference_executor",
    "ping_interval",
    "high_ping_threshold",
    "http_proxy",
    "loop",
)
_PROC_EXECUTOR_PARAMS = (
    *_THREAD_EXECUTOR_PARAMS,
    "mp_ctx",
    "ping_timeout",
    "memory_warn_mb",
    "memory_limit_mb",
)
_EXECUTOR_METHODS = ("start", "initialize", "launch_job", "aclose", "join")


def _default_policy(max_retry: int) -> Backoff:
    # livekit waits 0, 2, 4 ... 10 s; the same scale, jittered so a fleet does not reconnect in step
    return Backoff(initial=1.0, factor=2.0, max_delay=10.0, jitter="equal", max_attempts=max_retry)


def install(
    *,
    control_plane: bool = True,
    proc_pool: bool = True,
    policy: Backoff | Callable[[int], Backoff] | None = None,
    stable_after: float = 10.0,
    register_timeout: float = 10.0,
    respawn: Backoff | None = None,
    acquire_timeout: float | None = None,
    allow_untested: bool = False,
) -> InstallReport:
    """Patch livekit-agents (idempotent; undo with ``uninstall()``). Call before ``AgentServer.run()``.

    ``policy``: the control-plane retry policy, or ``f(max_retry) -> Backoff`` (default: 1 s doubling to
    10 s, equal jitter, ``max_attempts=max_retry`` of the server). ``stable_after``: seconds a registered
    connection must last before the retry counter resets. ``register_timeout`` bounds connect +
    registration. ``respawn``: backoff between failed process spawns (default 0.5 s doubling to 10 s).
    ``acquire_timeout``: bound on waiting for a process for a job (default: 3 x initialize_timeout).
    Returns an ``InstallReport`` naming the parts patched and refused (refusals also log a WARNING).
    """
    wanted = [part for part, on in (("control_plane", control_plane), ("proc_pool", proc_pool)) if on]
    if _integration.version_refused(wanted, allow_untested):
        return _integration.report()

    lk_worker = importlib.import_module("livekit.agents.worker")
    job_proc_executor = importlib.import_module("livekit.agents.ipc.job_proc_executor")
    job_thread_executor = importlib.import_module("livekit.agents.ipc.job_thread_executor")
    lk_proc_pool = importlib.import_module("livekit.agents.ipc.proc_pool")

    if control_plane:
        server_cls = getattr(lk_worker, "AgentServer", None)
        if server_cls is None:
            missing = ["livekit.agents.worker.AgentServer"]
        else:
            missing = (
                missing_attrs(server_cls, _SERVER_METHODS)
                + missing_instance_attrs(server_cls, _SERVER_ATTRS)
                + missing_attrs(lk_worker, ("HEARTBEAT_INTERVAL", "__version__", "agent", "models", "api"))
            )
        settings = _ControlPlaneSettings(policy, stable_after, register_timeout)
        _integration.apply(
            "control_plane",
            missing,
            lambda p: p.set(server_cls, "_connection_task", _make_connection_task(settings, lk_worker)),
        )

    if proc_pool:
        pool_cls = getattr(lk_proc_pool, "ProcPool", None)
        missing = ["livekit.agents.ipc.proc_pool.ProcPool"] if pool_cls is None else []
        if pool_cls is not None:
            missing += missing_params(pool_cls.__init__, _POOL_PARAMS) + missing_attrs(pool_cls, _POOL_METHODS)
            missing += missing_attrs(lk_proc_pool, ("MAX_CONCURRENT_INITIALIZATIONS",))
            for module, cls_name, params in (
                (job_thread_executor, "ThreadJobExecutor", _THREAD_EXECUTOR_PARAMS),
                (job_proc_executor, "ProcJobExecutor", _PROC_EXECUTOR_PARAMS),
            ):
                cls = getattr(module, cls_name, None)
                if cls is None:
                    missing.append(f"{module.__name__}.{cls_name}")
                else:
                    missing += missing_params(cls.__init__, params) + missing_attrs(cls, _EXECUTOR_METHODS)

        def patch_pool(p: Patches) -> None:
            from ._livekit_pool import make_pool_class

            p.set(lk_proc_pool, "ProcPool", make_pool_class(pool_cls, respawn=respawn, acquire_timeout=acquire_timeout))

        _integration.apply("proc_pool", missing, patch_pool)

    return _integration.report()


def uninstall() -> None:
    """Undo ``install()``: the framework's own code is back for servers started afterwards."""
    _integration.uninstall()


# ----------------------------------------------------------------------------------------------------
# control plane (seed 000)
# ----------------------------------------------------------------------------------------------------


class _ControlPlaneSettings:
    __slots__ = ("policy", "register_timeout", "stable_after")

    def __init__(
        self, policy: Backoff | Callable[[int], Backoff] | None, stable_after: float, register_timeout: float
    ) -> None:
        if policy is not None and not isinstance(policy, Backoff) and not callable(policy):
            raise TypeError("policy must be a tether.Backoff or a callable(max_retry) -> Backoff")
        self.policy = policy
        self.stable_after = stable_after
        self.register_timeout = register_timeout

    def backoff(self, max_retry: int) -> Backoff:
        if self.policy is None:
            return _default_policy(max_retry)
        if isinstance(self.policy, Backoff):
            return self.policy
        policy: Backoff = self.policy(max_retry)
        return policy


def _make_connection_task(settings: _ControlPlaneSettings, lk_worker: Any) -> Callable[[Any], Awaitable[None]]:
    from urllib.parse import urljoin, urlparse

    agent, models, api = lk_worker.agent, lk_worker.models, lk_worker.api
    lk_logger = logging.getLogger(LOGGER_NAME)

    def agent_url(server: Any) -> str:
        parse = urlparse(server._ws_url)
        scheme = parse.scheme.replace("http", "ws", 1) if parse.scheme.startswith("http") else parse.scheme
        return urljoin(f"{scheme}://{parse.netloc}{parse.path}".rstrip("/") + "/", "agent")

    def register_request(server: Any) -> Any:
        perms = server._permissions
        req = agent.WorkerMessage()
        req.register.type = server._server_type.value
        req.register.allowed_permissions.CopyFrom(
            models.ParticipantPermission(
                can_publish=perms.can_publish,
                can_subscribe=perms.can_subscribe,
                can_publish_data=perms.can_publish_data,
                can_update_metadata=perms.can_update_metadata,
                can_publish_sources=perms.can_publish_sources,
                hidden=perms.hidden,
                agent=True,
            )
        )
        req.register.agent_name = server._agent_name
        req.register.deployment = server._deployment
        req.register.version = lk_worker.__version__
        return req.SerializeToString()

    async def open_and_register(server: Any, sockets: list[Any]) -> Any:
        token = api.AccessToken(server._api_key, server._api_secret).with_grants(api.VideoGrants(agent=True)).to_jwt()
        params = {"worker_token": server._worker_token} if server._worker_token else {}
        ws = await server._http_session.ws_connect(
            agent_url(server),
            headers={"Authorization": f"Bearer {token}"},
            params=params,
            autoping=True,
            proxy=server._http_proxy or None,
            heartbeat=lk_worker.HEARTBEAT_INTERVAL,
        )
        sockets.append(ws)  # closed by the caller even when this attempt is cancelled by its bound
        await ws.send_bytes(register_request(server))
        msg = agent.ServerMessage()
        msg.ParseFromString(await ws.receive_bytes())
        if not msg.HasField("register"):
            raise RuntimeError("expected register response as first message")
        return ws, msg.register

    async def _connection_task(self: Any) -> None:
        r = Reconnector(
            settings.backoff(self._max_retry),
            stable_after=settings.stable_after,
            quiet_attempts=1,
            name="livekit",
            logger=lk_logger,
        )
        while not self._closed:
            sockets: list[Any] = []
            try:
                self._connecting = True
                ws, registered = await bounded(
                    open_and_register(self, sockets), settings.register_timeout, what="livekit worker registration"
                )
                self._handle_register(registered)
                r.connected()
                self._connecting = False
                await self._report_active_jobs()
                await self._run_ws(ws)
                r.closed()
            except Exception as e:
                if self._closed:
                    break
                try:
                    delay = r.failed(e)
                except GaveUp as gave_up:
                    self._connection_failed = True
                    raise RuntimeError(f"failed to connect to livekit after {gave_up.attempts} attempts") from gave_up
                await asyncio.sleep(delay)
            finally:
                for ws in sockets:
                    await ws.close()

    _connection_task.__qualname__ = "AgentServer._connection_task"
    _connection_task.__doc__ = "Control-plane connection loop on tether.Reconnector (tether.integrations.livekit)."
    return _connection_task


# ----------------------------------------------------------------------------------------------------
# watch_room (seed 001)
# ----------------------------------------------------------------------------------------------------


class RoomWatch:
    """What ``watch_room`` returns. ``audio(stream)`` wraps a remote audio stream so every frame feeds the
    liveness deadline; ``audio_frame()`` is the manual form. ``alarms``: the alarms raised so far.
    ``aclose()`` (or ``close()``) detaches from the room."""

    def __init__(
        self,
        room: Any,
        *,
        reconnecting_timeout: float,
        audio_timeout: float | None,
        on_alarm: Callable[[Alarm], object] | None,
        disconnect: bool,
        disconnect_timeout: float,
    ) -> None:
        rtc = importlib.import_module("livekit.rtc")

        self._rtc = rtc
        self.room = room
        self.alarms: list[Alarm] = []
        self._on_alarm = on_alarm
        self._disconnect = disconnect
        self._disconnect_timeout = disconnect_timeout
        self._tasks: set[asyncio.Task[Any]] = set()
        self._disconnecting: asyncio.Task[Any] | None = None
        self._log = logging.getLogger(LOGGER_NAME)
        # with on_alarm the watchdog leaves the report to this handler: _alarm logs the one WARNING
        self._wd = Watchdog(
            f"livekit room {getattr(room, 'name', '') or '?'}", on_alarm=self._alarm, logger=LOGGER_NAME
        )
        self._wd.dwell("reconnecting", reconnecting_timeout)
        # armed only while a remote audio track is subscribed and the room is connected
        self._audio_timeout = audio_timeout
        self._audio: Liveness | None = None
        self._audio_tracks: set[str] = set()
        self._handlers: list[tuple[str, Callable[..., None]]] = [
            ("connection_state_changed", self._on_state),
            ("reconnecting", lambda *_: self._on_state(rtc.ConnectionState.CONN_RECONNECTING)),
            ("reconnected", lambda *_: self._on_state(rtc.ConnectionState.CONN_CONNECTED)),
            ("disconnected", lambda *_: self._on_state(rtc.ConnectionState.CONN_DISCONNECTED)),
            ("track_subscribed", self._on_track_subscribed),
            ("track_unsubscribed", self._on_track_unsubscribed),
        ]
        for event, handler in self._handlers:
            room.on(event, handler)
        self._on_state(room.connection_state)

    # -- room events ----------------------------------------------------------------------------------
    def _state_name(self, state: int) -> str:
        cs = self._rtc.ConnectionState
        names: dict[int, str] = {
            cs.CONN_CONNECTED: "connected",
            cs.CONN_RECONNECTING: "reconnecting",
            cs.CONN_DISCONNECTED: "disconnected",
        }
        return names.get(state, str(state))

    def _on_state(self, state: int) -> None:
        name = self._state_name(state)
        if self._wd.state is None or self._wd.state[0] != name:
            self._wd.set_state(name)
        self._arm_audio()

    def _on_track_subscribed(self, track: Any, publication: Any, participant: Any) -> None:
        if getattr(track, "kind", None) == self._rtc.TrackKind.KIND_AUDIO:
            self._audio_tracks.add(str(getattr(publication, "sid", None) or getattr(track, "sid", "")))
            self._arm_audio()

    def _on_track_unsubscribed(self, track: Any, publication: Any, participant: Any) -> None:
        self._audio_tracks.discard(str(getattr(publication, "sid", None) or getattr(track, "sid", "")))
        self._arm_audio()

    def _arm_audio(self) -> None:
        if self._audio_timeout is None or self._wd.closed:
            return
        wanted = bool(self._audio_tracks) and self._wd.state is not None and self._wd.state[0] == "connected"
        # a fresh key (not pause/beat) so the deadline counts from now and the watchdog re-arms at once
        if wanted and self._audio is None:
            self._audio = self._wd.liveness("remote audio", self._audio_timeout)
        elif not wanted and self._audio is not None:
            self._wd.remove(self._audio)
            self._audio = None

    # -- audio liveness -------------------------------------------------------------------------------
    def audio_frame(self) -> None:
        """Record that a remote audio frame arrived."""
        if self._audio is not None:
            self._audio.beat()

    async def audio(self, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """``async for ev in watch.audio(rtc.AudioStream(track))``: the stream, feeding the liveness."""
        async for item in stream:
            self.audio_frame()
            yield item

    # -- alarms ---------------------------------------------------------------------------------------
    def _alarm(self, alarm: Alarm) -> None:
        self.alarms.append(alarm)
        self._log.warning("%s", alarm.message)
        if self._disconnect and self._disconnecting is None:
            self._log.info(
                "room %s: disconnecting it so the job can be dispatched again", getattr(self.room, "name", "?")
            )
        if self._on_alarm is not None:
            result = self._on_alarm(alarm)
            if inspect.isawaitable(result):
                self._spawn(result)
        if self._disconnect and self._disconnecting is None:
            self._disconnecting = self._spawn(self._bounded_disconnect())

    def _spawn(self, aw: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _bounded_disconnect(self) -> None:
        started = time.monotonic()
        try:
            await bounded(self.room.disconnect(), self._disconnect_timeout, what="room.disconnect()")
        except Exception as e:
            self._log.warning("room %s: disconnect did not complete: %s", getattr(self.room, "name", "?"), e)
        else:
            self._log.info(
                "room %s disconnected after %.2fs", getattr(self.room, "name", "?"), time.monotonic() - started
            )

    async def wait_disconnected(self) -> None:
        """Wait for the disconnect an alarm started (returns at once if none did)."""
        if self._disconnecting is not None:
            await asyncio.shield(self._disconnecting)

    def close(self) -> None:
        for event, handler in self._handlers:
            self.room.off(event, handler)
        self._handlers.clear()
        self._wd.close()

    async def aclose(self) -> None:
        self.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._disconnect_timeout)


def watch_room(
    room: Any,
    *,
    reconnecting_timeout: float = 20.0,
    audio_timeout: float | None = 10.0,
    on_alarm: Callable[[Alarm], object] | None = None,
    disconnect: bool = True,
    disconnect_timeout: float = 5.0,
) -> RoomWatch:
    """Watch a ``livekit.rtc.Room`` for the stuck-reconnecting and ghost-room states (seed 001).

    * dwell alarm when the room stays ``reconnecting`` longer than ``reconnecting_timeout`` seconds;
    * liveness alarm when, while connected with a remote audio track subscribed, no remote audio frame
      arrived for ``audio_timeout`` seconds (feed it with ``watch.audio(stream)`` or ``audio_frame()``;
      ``None`` disables it);
    * on an alarm: one WARNING on ``livekit.agents`` (the watchdog's, naming the room, the state or
      track and how long), ``on_alarm(alarm)`` (sync or async), then, with
      ``disconnect=True``, ``room.disconnect()`` bounded by ``disconnect_timeout`` (it can hang in the
      wedged state) so the job ends and the framework can dispatch it again.
    Call from the event loop the room runs on.
    """
    return RoomWatch(
        room,
        reconnecting_timeout=reconnecting_timeout,
        audio_timeout=audio_timeout,
        on_alarm=on_alarm,
        disconnect=disconnect,
        disconnect_timeout=disconnect_timeout,
    )


__all__ = ["TESTED_VERSIONS", "InstallReport", "RoomWatch", "install", "uninstall", "watch_room"]
