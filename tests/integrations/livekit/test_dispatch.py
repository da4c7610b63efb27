"""dispatch_ready on a real livekit.rtc.Room (driven by emitting the events the Room emits) against a fake
AgentDispatch Twirp service called through the real livekit-api client."""

from __future__ import annotations

import asyncio
import logging

import pytest

rtc = pytest.importorskip("livekit.rtc", reason="livekit (rtc) is not installed")
lk_api = pytest.importorskip("livekit.api", reason="livekit-api is not installed")
participant_pb2 = pytest.importorskip("livekit.rtc._proto.participant_pb2")

import tether  # noqa: E402
from support.fake_dispatch import FakeDispatchService  # noqa: E402
from tether.integrations import livekit  # noqa: E402

AGENT = "support-agent"


def agent_participant(identity: str, *, name: str = AGENT, state: str | None = "initializing"):
    op = participant_pb2.OwnedParticipant()
    op.info.identity = identity
    op.info.kind = participant_pb2.PARTICIPANT_KIND_AGENT
    op.info.attributes["lk.agent.name"] = name
    if state is not None:
        op.info.attributes["lk.agent.state"] = state
    return rtc.RemoteParticipant(op)


def join(room, p) -> None:
    room._remote_participants[p.identity] = p
    room.emit("participant_connected", p)


def set_state(room, p, state: str) -> None:
    p._info.attributes["lk.agent.state"] = state
    room.emit("participant_attributes_changed", ["lk.agent.state"], p)


def leave(room, identity: str) -> None:
    """What the room sees when the server removes a participant."""
    p = room._remote_participants.pop(identity, None)
    if p is not None:
        room.emit("participant_disconnected", p)


def later(delay: float, fn, *args) -> None:
    asyncio.get_running_loop().call_later(delay, fn, *args)


class Agent:
    """What a worker does after a dispatch: its participant joins, then its session starts."""

    def __init__(self, room, *, join_after=0.05, ready_after=0.3, joins=True, readies=True) -> None:
        self.room = room
        self.join_after, self.ready_after = join_after, ready_after
        self.joins, self.readies = joins, readies
        self.participants = []

    def on_create(self, dispatch) -> None:
        if not self.joins:
            return
        p = agent_participant(f"agent-{dispatch.id}")
        self.participants.append(p)
        later(self.join_after, join, self.room, p)
        if self.readies:
            later(self.join_after + self.ready_after, set_state, self.room, p, "listening")


async def run(room, svc, **kw):
    client = lk_api.LiveKitAPI(svc.url, "devkey", "secret-" * 6)
    try:
        return await livekit.dispatch_ready(room, AGENT, api=client, **kw)
    finally:
        await client.aclose()


async def test_waits_for_the_agent_state_not_only_the_participant():
    room = rtc.Room()
    agent = Agent(room, ready_after=0.5)
    async with FakeDispatchService(on_create=agent.on_create) as svc:
        out = await run(room, svc, metadata='{"flow": 7}')
    assert out.attempts == 1 and out.dispatch.id == "AD_1"
    assert out.participant.identity == "agent-AD_1"
    assert list(out.stages) == ["dispatched", "joined", "ready"]
    # ready is the state change, after the join (the grace-period guess of a backend is not needed)
    assert out.stages["ready"] - out.stages["joined"] >= 0.4, out.stages
    assert [(r.agent_name, r.metadata) for r in svc.created] == [(AGENT, '{"flow": 7}')]
    assert svc.auth[0].startswith("Bearer ")


async def test_joined_but_never_ready_names_the_ready_stage():
    room = rtc.Room()
    agent = Agent(room, readies=False)
    async with FakeDispatchService(on_create=agent.on_create) as svc:
        with pytest.raises(tether.NotReady) as info:
            await run(room, svc, timeouts={"dispatched": 5, "joined": 5, "ready": 0.5}, redispatch=False)
    assert info.value.stage == "ready", info.value
    assert "ready" in str(info.value)


async def test_failing_dispatch_call_is_retried():
    room = rtc.Room()
    agent = Agent(room)
    async with FakeDispatchService(fail_first=2, on_create=agent.on_create) as svc:
        out = await run(room, svc, policy=tether.Backoff(0.05, 2, jitter="none", max_attempts=3))
    assert svc.calls == 3 and len(svc.created) == 1
    assert out.participant.identity == "agent-AD_1"


async def test_no_agent_joins_redispatches_after_deleting_the_stale_dispatch():
    room = rtc.Room()
    agent = Agent(room)
    agent.joins = False  # the first dispatch is lost (no worker took it)

    def on_create(dispatch):
        agent.on_create(dispatch)
        agent.joins = True

    async with FakeDispatchService(on_create=on_create) as svc:
        out = await run(
            room,
            svc,
            timeouts={"dispatched": 5, "joined": 0.5, "ready": 5},
            policy=tether.Backoff(0.05, 2, jitter="none", max_attempts=3),
        )
    assert out.attempts == 2 and out.dispatch.id == "AD_2"
    assert svc.deleted == ["AD_1"]
    assert out.participant.identity == "agent-AD_2"


async def test_agents_already_in_the_room_or_of_another_name_do_not_count():
    room = rtc.Room()
    join(room, agent_participant("agent-old", state="listening"))  # an agent of an earlier dispatch
    agent = Agent(room, join_after=0.3)

    def on_create(dispatch):
        join(room, agent_participant("other-agent", name="billing-agent", state="listening"))
        agent.on_create(dispatch)

    async with FakeDispatchService(on_create=on_create) as svc:
        out = await run(room, svc)
    assert out.participant.identity == "agent-AD_1"


async def test_no_agent_at_all_names_the_joined_stage():
    room = rtc.Room()
    async with FakeDispatchService() as svc:
        with pytest.raises(tether.NotReady) as info:
            await run(
                room,
                svc,
                timeouts={"dispatched": 5, "joined": 0.3, "ready": 5},
                policy=tether.Backoff(0.05, 2, jitter="none", max_attempts=2),
            )
    assert info.value.stage == "joined", info.value
    # the first dispatch and max_attempts=2 re-dispatches, each after deleting the one before
    assert len(svc.created) == 3 and svc.deleted == ["AD_1", "AD_2"]


async def test_default_policy_is_the_documented_one():
    """The docstrings say how many dispatches and how far apart; a run with no agent does that many."""
    from tether.integrations._livekit_dispatch import default_policy

    delays = list(default_policy().delays())
    spacing = ", ".join(f"{d:g}" for d in delays[:-1]) + f" and {delays[-1]:g} s"
    for doc in (livekit.dispatch_ready.__doc__, default_policy.__doc__):
        text = " ".join((doc or "").split())
        assert f"up to {1 + len(delays)} dispatch calls" in text and spacing in text, (spacing, text)
    room = rtc.Room()
    async with FakeDispatchService() as svc:
        with pytest.raises(tether.NotReady):
            await run(room, svc, timeouts={"dispatched": 5, "joined": 0.2, "ready": 5})
    assert len(svc.created) == 1 + len(delays)
    # each re-dispatch comes after the stage's 0.2 s and the policy's delay
    gaps = [b - a for a, b in zip(svc.created_at, svc.created_at[1:], strict=False)]
    assert all(gap >= 0.2 + delay - 0.02 for gap, delay in zip(gaps, delays, strict=True)), (gaps, delays)


async def test_a_redispatch_removes_the_stale_agent_first():
    """The first agent joined but never became ready: before dispatching again its participant is removed
    (through the same livekit-api client's RoomService), so that two agents do not answer."""
    room = rtc.Room()
    join(room, agent_participant("agent-old", state="listening"))  # not this dispatch's: stays
    agent = Agent(room, readies=False)

    def on_create(dispatch):
        agent.on_create(dispatch)
        agent.readies = True  # the second agent becomes ready

    async with FakeDispatchService(on_create=on_create, on_remove=lambda _room, who: leave(room, who)) as svc:
        out = await run(
            room,
            svc,
            timeouts={"dispatched": 5, "joined": 5, "ready": 0.5},
            policy=tether.Backoff(0.05, 2, jitter="none", max_attempts=3),
        )
    assert out.attempts == 2 and out.participant.identity == "agent-AD_2"
    assert svc.removed == [("", "agent-AD_1")], svc.removed
    # removed (and the stale dispatch deleted) before the new dispatch
    assert svc.methods.index("RemoveParticipant") < svc.methods.index("CreateDispatch", 1), svc.methods
    assert svc.deleted == ["AD_1"]
    assert set(room.remote_participants) == {"agent-old", "agent-AD_2"}


async def test_without_a_room_service_the_stale_agent_is_named_in_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="livekit.agents")
    room = rtc.Room()
    agent = Agent(room, readies=False)

    def on_create(dispatch):
        agent.on_create(dispatch)
        agent.readies = True

    async with FakeDispatchService(on_create=on_create) as svc:
        client = lk_api.LiveKitAPI(svc.url, "devkey", "secret-" * 6)
        try:
            out = await livekit.dispatch_ready(
                room,
                AGENT,
                api=client.agent_dispatch,  # the dispatch service alone: no RoomService to remove with
                timeouts={"dispatched": 5, "joined": 5, "ready": 0.5},
                policy=tether.Backoff(0.05, 2, jitter="none", max_attempts=3),
            )
        finally:
            await client.aclose()
    assert out.participant.identity == "agent-AD_2" and svc.removed == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("agent-AD_1" in w and "LiveKitAPI" in w for w in warnings), warnings


async def test_a_failed_create_after_a_timeout_does_not_delete_the_stale_dispatch_twice():
    room = rtc.Room()
    agent = Agent(room)
    agent.joins = False  # the first dispatch is lost; the re-dispatch's call fails; the next one works

    def on_create(dispatch):
        agent.on_create(dispatch)
        agent.joins = True

    async with FakeDispatchService(fail_on={2}, on_create=on_create) as svc:
        out = await run(
            room,
            svc,
            timeouts={"dispatched": 5, "joined": 0.5, "ready": 5},
            policy=tether.Backoff(0.05, 2, jitter="none", max_attempts=3),
        )
    assert out.participant.identity == "agent-AD_2" and svc.creates == 3
    assert svc.deleted == ["AD_1"], svc.deleted


async def slow_workers(room, joins: dict[str, tuple[float, float]], settle: float, **service) -> tuple:
    """``dispatch_ready`` with a 0.6 s ``joined`` deadline, against workers whose agent for dispatch ``id``
    joins ``joins[id][0]`` s after it is made and is ready ``joins[id][1]`` s later (never, for an ``id``
    not listed); ``settle`` s more afterwards. Returns what it returned and the fake service."""

    def on_create(dispatch):
        if dispatch.id in joins:
            p = agent_participant(f"agent-{dispatch.id}")
            join_after, ready_after = joins[dispatch.id]
            later(join_after, join, room, p)
            later(join_after + ready_after, set_state, room, p, "listening")

    removed = {"on_remove": lambda _room, who: leave(room, who)}
    async with FakeDispatchService(on_create=on_create, **removed, **service) as svc:
        out = await run(
            room,
            svc,
            timeouts={"dispatched": 5, "joined": 0.6, "ready": 5},
            policy=tether.Backoff(0.05, 2, jitter="none", max_attempts=3),
        )
        await asyncio.sleep(settle)
    return out, svc


async def test_the_late_agent_of_a_deleted_dispatch_is_not_taken_for_the_next_one():
    """The first worker is slow: its agent joins after the ``joined`` deadline, once that dispatch was
    deleted and another made. Before, it was taken for the new dispatch's agent, and the new one joined
    beside it: two agents answered. Now the dispatch's own job names its agent (``ListDispatch``), and the
    late one is removed."""
    room = rtc.Room()
    out, svc = await slow_workers(room, {"AD_1": (0.9, 0.1), "AD_2": (0.5, 0.1)}, settle=0.5)
    agents = sorted(room.remote_participants)
    assert (out.dispatch.id, out.participant.identity) == ("AD_2", "agent-AD_2"), (agents, svc.methods)
    assert agents == ["agent-AD_2"] and svc.removed == [("", "agent-AD_1")] and svc.deleted == ["AD_1"]


async def test_the_late_agent_of_a_deleted_dispatch_joining_after_the_next_ones_is_removed():
    """The next dispatch's agent joined first and is not ready yet when the deleted dispatch's agent
    comes. Before, an agent taken ended the checks: the late one stayed and answered too."""
    room = rtc.Room()
    out, svc = await slow_workers(room, {"AD_1": (0.9, 0.1), "AD_2": (0.1, 0.6)}, settle=0.5)
    assert (out.dispatch.id, out.participant.identity) == ("AD_2", "agent-AD_2"), svc.methods
    assert sorted(room.remote_participants) == ["agent-AD_2"] and svc.removed == [("", "agent-AD_1")]


async def test_an_agent_checked_against_a_dispatch_deleted_meanwhile_is_not_taken():
    """The check of AD_2's agent outlasts AD_2's joined deadline: AD_2 is deleted and AD_3 made before it
    answers "AD_2's". Before, that agent was taken for AD_3 (and AD_3's joined beside it)."""
    room = rtc.Room()
    # AD_1's worker never comes; the first ListDispatch answers after 1 s
    out, svc = await slow_workers(room, {"AD_2": (0.05, 0.1), "AD_3": (0.05, 0.1)}, settle=0.3, list_delays=[1.0])
    assert (out.dispatch.id, out.participant.identity) == ("AD_3", "agent-AD_3"), svc.methods
    assert sorted(room.remote_participants) == ["agent-AD_3"], (svc.removed, svc.methods)
