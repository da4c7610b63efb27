"""``watch_room``: alarms for a ``livekit.rtc.Room`` that stays reconnecting, or that reads connected while
its remote audio went silent (a ghost room), then a bounded ``room.disconnect()`` so the job ends and the
framework can dispatch it again. Independent of ``livekit.install()``; needs only ``livekit`` (rtc)."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from .._native import Liveness, Watchdog
from .._watchdog import Alarm, bounded

T = TypeVar("T")

LOGGER_NAME = "livekit.agents"


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
    """Watch a ``livekit.rtc.Room`` for the stuck-reconnecting and ghost-room states.

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
