"""``watch_room``: alarms for a ``livekit.rtc.Room`` that stays reconnecting, or that reads connected while
no remote audio arrives (a ghost room), then a bounded ``room.disconnect()`` so the job ends and the
framework can dispatch it again. Independent of ``livekit.install()``; needs only ``livekit`` (rtc).

The evidence that audio arrives is the room's own receive statistics (``room.get_rtc_stats()``: the
packets its inbound audio RTP streams received), not frames: an ``AgentSession`` reads the remote
track's frames itself, and a WebRTC audio receiver goes on producing (silent) frames when packets stop.
"""

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
    """What ``watch_room`` returns. ``alarms``: the alarms raised so far. ``aclose()`` (or ``close()``)
    detaches from the room. ``audio_frame()`` (or ``audio(stream)``, which wraps a stream) adds frames as
    evidence of audio, besides the room's statistics: feed it only from a source that stops when the
    media stops."""

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
        # armed only while the room is connected with a subscribed remote audio track that is not muted
        self._audio_timeout = audio_timeout
        self._audio: Liveness | None = None
        self._audio_tracks: dict[str, Any] = {}  # sid -> publication (its muted flag is kept current)
        self._packets: int | None = None  # inbound audio RTP packets at the last poll
        self._handlers: list[tuple[str, Callable[..., None]]] = [
            ("connection_state_changed", self._on_state),
            ("reconnecting", lambda *_: self._on_state(rtc.ConnectionState.CONN_RECONNECTING)),
            ("reconnected", lambda *_: self._on_state(rtc.ConnectionState.CONN_CONNECTED)),
            ("disconnected", lambda *_: self._on_state(rtc.ConnectionState.CONN_DISCONNECTED)),
            ("track_subscribed", self._on_track_subscribed),
            ("track_unsubscribed", self._on_track_unsubscribed),
            ("track_muted", lambda *_: self._arm_audio()),
            ("track_unmuted", lambda *_: self._arm_audio()),
        ]
        for event, handler in self._handlers:
            room.on(event, handler)
        # tracks subscribed before the watch began (the usual order: connect, start the session, watch)
        for participant in list(room.remote_participants.values()):
            for publication in list(participant.track_publications.values()):
                if publication.subscribed and publication.track is not None:
                    self._on_track_subscribed(publication.track, publication, participant)
        self._on_state(room.connection_state)
        if audio_timeout is not None and hasattr(room, "get_rtc_stats"):
            self._spawn(self._poll_audio_packets(min(max(audio_timeout / 4, 0.05), 2.0)))

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
            self._audio_tracks[str(getattr(publication, "sid", None) or getattr(track, "sid", ""))] = publication
            self._arm_audio()

    def _on_track_unsubscribed(self, track: Any, publication: Any, participant: Any) -> None:
        self._audio_tracks.pop(str(getattr(publication, "sid", None) or getattr(track, "sid", "")), None)
        self._arm_audio()

    def _arm_audio(self) -> None:
        if self._audio_timeout is None or self._wd.closed:
            return
        # a muted track sends no packets: silence is expected then
        audible = any(not getattr(p, "muted", False) for p in self._audio_tracks.values())
        wanted = audible and self._wd.state is not None and self._wd.state[0] == "connected"
        # a fresh key (not pause/beat) so the deadline counts from now and the watchdog re-arms at once
        if wanted and self._audio is None:
            self._audio = self._wd.liveness("remote audio", self._audio_timeout)
        elif not wanted and self._audio is not None:
            self._wd.remove(self._audio)
            self._audio = None

    async def _poll_audio_packets(self, period: float) -> None:
        """Beat the liveness whenever the room's inbound audio RTP packet count moved since the last
        poll. A stats request that fails or does not answer within the period is no evidence."""
        while not self._wd.closed:
            await asyncio.sleep(period)
            if self._audio is None:
                self._packets = None
                continue
            try:
                stats = await bounded(self.room.get_rtc_stats(), period, what="room.get_rtc_stats()")
                packets = sum(
                    s.inbound_rtp.received.packets_received
                    for s in stats.subscriber_stats
                    if s.WhichOneof("stats") == "inbound_rtp" and s.inbound_rtp.stream.kind == "audio"
                )
            except Exception:  # a room not connected, or statistics of another shape: no evidence
                continue
            # any change counts: a restarted transport's counters start again from zero
            if self._packets is not None and packets != self._packets and self._audio is not None:
                self._audio.beat()
            self._packets = packets

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
            try:
                result = self._on_alarm(alarm)
            except Exception:  # the application's bug must not keep the room from being disconnected
                self._log.exception("room %s: on_alarm raised", getattr(self.room, "name", "?"))
            else:
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
    * liveness alarm when, while connected with a remote audio track subscribed and not muted (also one
      subscribed before the watch began), the room received no audio packet for ``audio_timeout`` seconds
      (its inbound audio RTP streams' ``packets_received`` in ``room.get_rtc_stats()``, polled every
      quarter of ``audio_timeout``, at most every 2 s; ``None`` disables it);
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
