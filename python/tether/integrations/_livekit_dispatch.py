"""``dispatch_ready``: dispatch a livekit agent and wait until it can take the conversation.

A backend that dispatches an agent and proceeds once the agent's participant is in the room races the
agent's job process: the participant appears before the entrypoint has set up its session, and what
the backend sends meanwhile is lost, with no error. livekit-agents publishes the session's state as the
participant attribute ``lk.agent.state`` (``initializing`` until the ``AgentSession`` runs, then
``listening``, ``thinking``, ``speaking``), which is the readiness signal: this waits for it.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._native import Backoff, ReadinessGate
from .._watchdog import bounded

LOGGER_NAME = "livekit.agents"
STAGES = ("dispatched", "joined", "ready")
# each stage counts from the previous one: the dispatch call, the job reaching a worker and its process
# connecting, the entrypoint starting the session (model loading can take seconds)
DEFAULT_TIMEOUTS = {"dispatched": 10.0, "joined": 10.0, "ready": 20.0}
ATTRIBUTE_AGENT_NAME = "lk.agent.name"
ATTRIBUTE_AGENT_STATE = "lk.agent.state"
_INITIALIZING = "initializing"
# deleting the dispatch of an attempt that timed out and removing its agent, before dispatching again
_CLEANUP_TIMEOUT = 5.0
_JOB_IDS = itertools.count(1)


@dataclass
class Dispatched:
    """What ``dispatch_ready`` returns: the ``AgentDispatch`` that worked, the agent's participant, the
    seconds from the start of that dispatch to each stage, and how many dispatches it took."""

    dispatch: Any
    participant: Any
    stages: dict[str, float] = field(default_factory=dict)
    attempts: int = 1


def default_policy() -> Backoff:
    """Dispatch-call retries and re-dispatches, one budget for both: up to 4 dispatch calls, the 3 retries
    after 0.2, 0.4 and 0.8 s (``max_attempts`` counts retries; the ``ReadinessGate`` default)."""
    return Backoff(0.2, 2.0, jitter="none", max_attempts=3)


class _Watch:
    """Marks the gate's ``joined`` and ``ready`` stages from the room's events."""

    def __init__(self, room: Any, agent_name: str, gate: ReadinessGate, job_id: str) -> None:
        self._rtc = importlib.import_module("livekit.rtc")
        self.room = room
        self.agent_name = agent_name
        self.gate = gate
        self.job_id = job_id
        self.participant: Any = None
        self.active = False
        self._ignore: set[str] = set()  # agents in the room before this attempt's dispatch
        self._stale: set[str] = set()  # agents of earlier attempts, which left or were removed
        self._handlers = [
            ("participant_connected", self._on_participant),
            ("participant_attributes_changed", lambda _changed, p: self._on_participant(p)),
            ("participant_disconnected", self._on_left),
        ]
        for event, handler in self._handlers:
            room.on(event, handler)

    def close(self) -> None:
        for event, handler in self._handlers:
            self.room.off(event, handler)

    def new_attempt(self) -> None:
        """Before a dispatch: agents already present (or a previous attempt's) are not this one's."""
        if self.participant is not None:
            self._stale.add(self.participant.identity)
        self.participant = None
        self.active = True
        present = {p.identity for p in self.room.remote_participants.values() if self._is_agent(p)}
        self._ignore = present | self._stale

    def stale_agent(self) -> Any:
        """The agent of the attempt that timed out, if it joined and is still in the room."""
        p = self.participant
        if p is None or self.room.remote_participants.get(p.identity) is not p:
            return None
        return p

    def scan(self) -> None:
        for p in list(self.room.remote_participants.values()):
            self._on_participant(p)

    def _is_agent(self, p: Any) -> bool:
        if getattr(p, "kind", None) != self._rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return False
        # workers before lk.agent.name existed do not set it; any agent matches then
        name: str = p.attributes.get(ATTRIBUTE_AGENT_NAME, self.agent_name)
        return name == self.agent_name

    def _on_participant(self, p: Any) -> None:
        if not self.active or not isinstance(p, self._rtc.RemoteParticipant) or not self._is_agent(p):
            return
        if p.identity in self._ignore:
            return
        if self.participant is None:
            self.participant = p
            self.gate.mark(self.job_id, "joined")
        if p is self.participant or p.identity == self.participant.identity:
            state = p.attributes.get(ATTRIBUTE_AGENT_STATE)
            if state is not None and state != _INITIALIZING:
                self.gate.mark(self.job_id, "ready")

    def _on_left(self, p: Any) -> None:
        # the agent left before it was ready (its job failed): a re-dispatch may bring another
        if self.participant is not None and p.identity == self.participant.identity:
            self._ignore.add(p.identity)
            self._stale.add(p.identity)


async def dispatch_ready(
    room: Any,
    agent_name: str,
    *,
    api: Any = None,
    metadata: str = "",
    timeouts: float | Mapping[str, float] | None = None,
    policy: Backoff | None = None,
    redispatch: bool = True,
    gate: ReadinessGate | None = None,
    job_id: str | None = None,
) -> Dispatched:
    """Dispatch ``agent_name`` into ``room`` and return once its agent is ready to talk.

    ``room``: a connected ``livekit.rtc.Room`` (the backend's own participant) in which the agent is
    awaited. ``api``: a ``livekit.api.LiveKitAPI`` or its ``agent_dispatch`` service (default: a
    ``LiveKitAPI()`` from the ``LIVEKIT_*`` environment, closed afterwards). Through a
    ``tether.ReadinessGate`` it waits for three stages, each within its timeout from the previous one
    (``timeouts``: seconds for all, or per stage; default dispatched 10 s, joined 10 s, ready 20 s):

    * ``dispatched``: ``CreateDispatch`` of the AgentDispatch service returned;
    * ``joined``: an agent participant (``lk.agent.name`` = ``agent_name`` where the worker sets it)
      that was not in the room before joined;
    * ``ready``: its ``lk.agent.state`` attribute left ``initializing`` (the ``AgentSession`` runs).

    A failed dispatch call is retried, and with ``redispatch=True`` a stage that timed out deletes that
    dispatch and dispatches again, within ``policy`` (``max_attempts`` counts the retries; default: up to 4
    dispatch calls, the retries after 0.2, 0.4 and 0.8 s). An agent that joined but did not become ready
    in time is removed from the room before the next dispatch (``RoomService.RemoveParticipant`` of the
    same ``LiveKitAPI``; with only an ``agent_dispatch`` service as ``api``, a WARNING names it instead),
    so that it cannot start answering beside the next one. Deleting the dispatch and removing the agent
    are each bounded to 5 s and their failure is a WARNING, not the end of the dispatch.
    Raises ``tether.NotReady`` naming the stage that did not come and the elapsed times; the last
    dispatch, and its agent if one joined, are left as they are then.
    """
    lk_api = importlib.import_module("livekit.api")
    own_api = api is None
    client = lk_api.LiveKitAPI() if own_api else api
    service = getattr(client, "agent_dispatch", client)
    rooms = getattr(client, "room", None)  # the RoomService of a LiveKitAPI
    gate = gate or ReadinessGate(logger=LOGGER_NAME)
    key = job_id or f"{agent_name} in {getattr(room, 'name', '') or 'room'} #{next(_JOB_IDS)}"
    watch = _Watch(room, agent_name, gate, key)
    log = logging.getLogger(LOGGER_NAME)
    dispatches: list[Any] = []
    # the latest dispatch: another attempt comes only after it timed out at a stage, and then neither it
    # nor its agent may answer later (kept until that is done, in case the cleanup itself is cut short)
    latest: list[Any] = []

    async def delete(stale: Any) -> None:
        try:
            await bounded(service.delete_dispatch(stale.id, room.name), _CLEANUP_TIMEOUT, what="delete_dispatch")
        except Exception as e:
            log.warning("could not delete the dispatch %s before dispatching again: %s", stale.id, e)

    async def remove(agent: Any) -> None:
        if rooms is None:
            log.warning(
                "the agent %s joined but was not ready in time and stays in the room: pass a LiveKitAPI as api= "
                "so that it is removed before dispatching again",
                agent.identity,
            )
            return
        request = lk_api.RoomParticipantIdentity(room=room.name, identity=agent.identity)
        try:
            await bounded(rooms.remove_participant(request), _CLEANUP_TIMEOUT, what="remove_participant")
        except Exception as e:
            log.warning("could not remove the agent %s before dispatching again: %s", agent.identity, e)

    async def dispatch(_job_id: str, attempt: int) -> Any:
        if latest and attempt > 1:
            cleanup = [delete(latest[0])]
            agent = watch.stale_agent()
            if agent is not None:
                cleanup.append(remove(agent))
            await asyncio.gather(*cleanup)
            latest.clear()
        watch.new_attempt()
        request = lk_api.CreateAgentDispatchRequest(agent_name=agent_name, room=room.name, metadata=metadata)
        created = await service.create_dispatch(request)
        dispatches.append(created)
        latest[:] = [created]
        watch.scan()  # the gate keeps marks that come before this return (it implies "dispatched")
        return created

    try:
        stages = await gate.dispatch(
            key,
            dispatch,
            stages=STAGES,
            timeouts=DEFAULT_TIMEOUTS if timeouts is None else timeouts,
            policy=policy or default_policy(),
            redispatch=redispatch,
        )
    finally:
        watch.close()
        if own_api:
            await client.aclose()
    return Dispatched(dispatch=dispatches[-1], participant=watch.participant, stages=stages, attempts=len(dispatches))
