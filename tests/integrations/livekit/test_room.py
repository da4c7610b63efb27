"""watch_room on a real livekit.rtc.Room, driven by emitting the events the Room emits."""

from __future__ import annotations

import asyncio
import logging

import pytest

rtc = pytest.importorskip("livekit.rtc", reason="livekit (rtc) is not installed")
track_pb2 = pytest.importorskip("livekit.rtc._proto.track_pb2")
participant_pb2 = pytest.importorskip("livekit.rtc._proto.participant_pb2")
stats_pb2 = pytest.importorskip("livekit.rtc._proto.stats_pb2")

from support import MS, eventually  # noqa: E402
from tether.integrations import livekit  # noqa: E402

CS = rtc.ConnectionState


def remote_audio(sid: str = "TR_audio"):
    ot = track_pb2.OwnedTrack()
    ot.info.sid, ot.info.kind, ot.info.name = sid, track_pb2.KIND_AUDIO, "mic"
    op = track_pb2.OwnedTrackPublication()
    op.info.sid, op.info.kind = sid, track_pb2.KIND_AUDIO
    return rtc.RemoteAudioTrack(ot), rtc.RemoteTrackPublication(op)


async def test_stuck_reconnecting_raises_dwell_alarm_and_disconnects_bounded(caplog):
    caplog.set_level(logging.INFO, logger="livekit.agents")
    room = rtc.Room()
    hang = asyncio.Event()
    calls = []

    async def wedged_disconnect(**_):  # room.disconnect() never returns in the wedged state
        calls.append(1)
        await hang.wait()

    room.disconnect = wedged_disconnect
    watch = livekit.watch_room(room, reconnecting_timeout=0.3, audio_timeout=None, disconnect_timeout=0.5)
    try:
        room.emit("connection_state_changed", CS.CONN_CONNECTED)
        room.emit("connection_state_changed", CS.CONN_RECONNECTING)
        await eventually(lambda: watch.alarms)
        assert watch.alarms[0].kind == "dwell" and watch.alarms[0].name == "reconnecting"
        await asyncio.wait_for(watch.wait_disconnected(), 10)  # bounded although disconnect hangs
        assert calls == [1]
        warnings = [r for r in caplog.records if r.name == "livekit.agents" and r.levelno == logging.WARNING]
        # one line per alarm (on any logger), under the framework's
        alarm_lines = [r for r in caplog.records if "stuck in" in r.getMessage() and r.levelno >= logging.WARNING]
        assert [r.name for r in alarm_lines] == ["livekit.agents"], [(r.name, r.getMessage()) for r in alarm_lines]
        assert '"reconnecting"' in alarm_lines[0].getMessage()
        assert any("disconnect did not complete" in r.getMessage() for r in warnings)
    finally:
        await watch.aclose()


async def test_reconnect_within_the_bound_raises_nothing():
    room = rtc.Room()
    watch = livekit.watch_room(room, reconnecting_timeout=1.0, audio_timeout=None)
    try:
        for _ in range(3):
            room.emit("reconnecting")
            await asyncio.sleep(100 * MS)
            room.emit("reconnected")
        await asyncio.sleep(1500 * MS)  # past the 1 s bound: an alarm armed by mistake would fire
        assert watch.alarms == []
    finally:
        await watch.aclose()


async def test_ghost_room_remote_audio_liveness():
    room = rtc.Room()
    disconnected = []

    async def disconnect(**_):
        disconnected.append(1)

    room.disconnect = disconnect
    watch = livekit.watch_room(room, reconnecting_timeout=30, audio_timeout=0.5)
    track, pub = remote_audio()
    frames_flow = asyncio.Event()
    frames_flow.set()

    async def frames():
        while True:
            await frames_flow.wait()
            yield object()
            await asyncio.sleep(50 * MS)

    async def consume():
        async for _ in watch.audio(frames()):
            pass

    consumer = asyncio.ensure_future(consume())
    try:
        room.emit("connection_state_changed", CS.CONN_CONNECTED)
        await asyncio.sleep(1000 * MS)  # no remote audio track yet: liveness not armed
        assert watch.alarms == []
        room.emit("track_subscribed", track, pub, None)
        await asyncio.sleep(1000 * MS)  # frames flowing
        assert watch.alarms == []
        # Variant B: the state still reads connected, but no frames arrive
        frames_flow.clear()
        await eventually(lambda: watch.alarms)
        assert watch.alarms[0].kind == "liveness" and watch.alarms[0].name == "remote audio"
        await asyncio.wait_for(watch.wait_disconnected(), 10)
        assert disconnected == [1]
    finally:
        consumer.cancel()
        await watch.aclose()


class ReceiveStats:
    """``room.get_rtc_stats()`` of a connected room receiving audio: one inbound audio RTP stream whose
    packet count grows at 50 packets a second (20 ms Opus frames) while ``flowing`` is set."""

    def __init__(self) -> None:
        self.flowing = True
        self.packets = 0
        self.polls = 0

    async def get_rtc_stats(self) -> rtc.RtcStats:
        self.polls += 1
        if self.flowing:
            self.packets += 5
        inbound = stats_pb2.RtcStats()
        inbound.inbound_rtp.stream.kind = "audio"
        inbound.inbound_rtp.received.packets_received = self.packets
        video = stats_pb2.RtcStats()  # video that keeps arriving is no evidence of audio
        video.inbound_rtp.stream.kind = "video"
        video.inbound_rtp.received.packets_received = self.packets * 10 + self.polls
        return rtc.RtcStats(publisher_stats=[], subscriber_stats=[inbound, video])


def connected_room_with_remote_audio(stats: ReceiveStats) -> tuple[rtc.Room, list[int]]:
    """A Room in the state its own event handling leaves after connecting and subscribing to a remote
    participant's microphone, with its receive statistics and disconnect() stood in for."""
    room = rtc.Room()
    room._connection_state = CS.CONN_CONNECTED
    op = participant_pb2.OwnedParticipant()
    op.info.sid, op.info.identity, op.info.kind = "PA_user", "user", participant_pb2.PARTICIPANT_KIND_STANDARD
    user = rtc.RemoteParticipant(op)
    track, pub = remote_audio("TR_mic")
    pub._subscribed, pub._track = True, track
    user._track_publications[pub.sid] = pub
    room._remote_participants[user.identity] = user
    disconnected: list[int] = []

    async def disconnect(**_: object) -> None:
        disconnected.append(1)

    room.get_rtc_stats = stats.get_rtc_stats  # type: ignore[method-assign]
    room.disconnect = disconnect  # type: ignore[method-assign]
    return room, disconnected


async def test_ghost_room_seen_in_the_receive_statistics_without_frames():
    """Used as the README shows (nothing feeds frames: an AgentSession reads the track itself), on a room
    whose track was subscribed before the watch began. Before, the watch knew only tracks subscribed
    later, and only frames fed to it as evidence: here it never armed; with a later track it disconnected
    a call whose audio flowed after ``audio_timeout``."""
    stats = ReceiveStats()
    room, disconnected = connected_room_with_remote_audio(stats)
    watch = livekit.watch_room(room, audio_timeout=500 * MS)
    try:
        await asyncio.sleep(1500 * MS)  # three times the limit, packets arriving
        assert (watch.alarms, disconnected) == ([], [])
        assert stats.polls >= 4
        stats.flowing = False  # Variant B: connected, no audio packet arrives
        await eventually(lambda: watch.alarms)
        assert [(a.kind, a.name) for a in watch.alarms] == [("liveness", "remote audio")]
        await asyncio.wait_for(watch.wait_disconnected(), 10)
        assert disconnected == [1]
    finally:
        await watch.aclose()


async def test_a_muted_track_is_not_a_ghost_room():
    """A muted microphone sends no packets: no alarm until it is unmuted and still nothing arrives."""
    stats = ReceiveStats()
    stats.flowing = False
    room, _ = connected_room_with_remote_audio(stats)
    user = room.remote_participants["user"]
    pub = user.track_publications["TR_mic"]
    pub._info.muted = True
    watch = livekit.watch_room(room, audio_timeout=300 * MS, disconnect=False)
    try:
        room.emit("track_muted", user, pub)
        await asyncio.sleep(1200 * MS)
        assert watch.alarms == []
        pub._info.muted = False
        room.emit("track_unmuted", user, pub)
        await eventually(lambda: watch.alarms)
        assert [(a.kind, a.name) for a in watch.alarms] == [("liveness", "remote audio")]
    finally:
        await watch.aclose()


async def test_no_liveness_alarm_while_reconnecting_or_unsubscribed():
    room = rtc.Room()
    watch = livekit.watch_room(room, reconnecting_timeout=30, audio_timeout=0.3, disconnect=False)
    track, pub = remote_audio()
    try:
        room.emit("connection_state_changed", CS.CONN_CONNECTED)
        room.emit("track_subscribed", track, pub, None)
        room.emit("track_unsubscribed", track, pub, None)
        await asyncio.sleep(800 * MS)  # past the 0.3 s limit: an unsubscribed track is not watched
        room.emit("track_subscribed", track, pub, None)
        room.emit("connection_state_changed", CS.CONN_RECONNECTING)  # silence is expected here
        await asyncio.sleep(800 * MS)
        assert watch.alarms == []
    finally:
        await watch.aclose()


async def test_on_alarm_callback_and_detach():
    room = rtc.Room()
    seen = []

    async def on_alarm(alarm):
        seen.append(alarm.kind)

    watch = livekit.watch_room(room, reconnecting_timeout=0.2, audio_timeout=None, on_alarm=on_alarm, disconnect=False)
    room.emit("connection_state_changed", CS.CONN_RECONNECTING)
    await eventually(lambda: seen)
    assert seen == ["dwell"]
    await watch.aclose()
    room.emit("connection_state_changed", CS.CONN_CONNECTED)  # detached: no handler left, no error
    assert all(len(room._events.get(e, {})) == 0 for e in ("connection_state_changed", "track_subscribed"))


async def test_an_on_alarm_that_raises_still_disconnects_the_room(caplog):
    """The application's callback is a side channel. Before, its exception escaped the alarm handler
    before the disconnect began: the wedged room stayed."""
    stats = ReceiveStats()
    stats.flowing = False
    room, disconnected = connected_room_with_remote_audio(stats)

    def on_alarm(alarm) -> None:
        raise RuntimeError("bug in the application's alarm handler")

    watch = livekit.watch_room(room, audio_timeout=300 * MS, on_alarm=on_alarm)
    try:
        await eventually(lambda: disconnected)
        assert [(a.kind, a.name) for a in watch.alarms] == [("liveness", "remote audio")]
        assert any("on_alarm raised" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        await watch.aclose()
