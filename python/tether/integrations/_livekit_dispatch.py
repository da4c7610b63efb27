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
from collections.abc import Awaitable, Callable, Mapping
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
    """Marks the gate's ``joined`` and ``ready`` stages from the room's events.

    ``belongs(identity)``: whether the agent called so is the current dispatch's (None: cannot tell);
    asked only while an earlier dispatch was deleted before its agent joined, whose agent may still come
    (a slow worker) and must not be taken for the current one's. ``reject(participant)`` removes such
    an agent."""

    def __init__(
        self,
        room: Any,
        agent_name: str,
        gate: ReadinessGate,
        job_id: str,
        belongs: Callable[[str], Awaitable[bool | None]],
        reject: Callable[[Any], Awaitable[None]],
    ) -> None:
        self._rtc = importlib.import_module("livekit.rtc")
        self.room = room
        self.agent_name = agent_name
        self.gate = gate
        self.job_id = job_id
        self.participant: Any = None
        self.active = False
        self._ignore: set[str] = set()  # agents in the room before this attempt's dispatch
        self._stale: set[str] = set()  # agents of earlier attempts, which left or were removed
        self._belongs = belongs
        self._reject = reject
        self._dispatched = False  # an attempt's dispatch was made
        self._unclaimed = False  # an earlier dispatch was deleted before its agent joined
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._attempt = 0  # which dispatch a check asked about
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
        for task in self._checks.values():
            task.cancel()

    async def finish_checks(self) -> None:
        """Let the checks of agents that joined meanwhile end (each is a bounded lookup and removal), so
        a late agent seen before the return is removed by then."""
        pending = [t for t in self._checks.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=2 * _CLEANUP_TIMEOUT)

    def new_attempt(self) -> None:
        """Before a dispatch: agents already present (or a previous attempt's) are not this one's."""
        if self.participant is not None:
            self._stale.add(self.participant.identity)
        elif self._dispatched:
            self._unclaimed = True
        self.participant = None
        self.active = True
        self._dispatched = False
        self._attempt += 1
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

    def dispatched(self) -> None:
        self._dispatched = True

    def _on_participant(self, p: Any) -> None:
        if not self.active or not isinstance(p, self._rtc.RemoteParticipant) or not self._is_agent(p):
            return
        if p.identity in self._ignore:
            return
        taken = self.participant is not None and p.identity == self.participant.identity
        if self._unclaimed and not taken:
            # whether it is this dispatch's agent or a late one of a deleted dispatch (which may come
            # before this one's or after it)
            if p.identity not in self._checks:
                self._checks[p.identity] = asyncio.ensure_future(self._check(p))
            return
        self._take(p)

    async def _check(self, p: Any) -> None:
        attempt = self._attempt
        mine = await self._belongs(p.identity)
        # joined before the current dispatch was made: an earlier one's, whatever the answer said
        if mine is False or attempt != self._attempt:
            self._ignore.add(p.identity)
            self._stale.add(p.identity)
            await self._reject(p)
        elif self.participant is None and self.room.remote_participants.get(p.identity) is p:
            self._take(p)

    def _take(self, p: Any) -> None:
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
    so that it cannot start answering beside the next one; an agent that joins only after its dispatch
    was deleted, while this waits, is removed too, when the next dispatch's job (``ListDispatch``) names
    another agent as its own (a server that names none leaves the first agent to join taken; one that
    joins after this returned is not seen). Deleting the dispatch and
    removing the agent
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

    async def remove(agent: Any, why: str = "joined but was not ready in time") -> None:
        if rooms is None:
            log.warning(
                "the agent %s %s and stays in the room: pass a LiveKitAPI as api= so that it is removed",
                agent.identity,
                why,
            )
            return
        request = lk_api.RoomParticipantIdentity(room=room.name, identity=agent.identity)
        try:
            await bounded(rooms.remove_participant(request), _CLEANUP_TIMEOUT, what="remove_participant")
        except Exception as e:
            log.warning("could not remove the agent %s (it %s): %s", agent.identity, why, e)

    async def belongs(identity: str) -> bool | None:
        """Whether the latest dispatch's jobs name this agent (a job's participant is ``agent-<job id>``
        unless its worker chose another identity, which the job's state then holds)."""
        if not latest:
            return None
        try:
            current = await bounded(
                service.get_dispatch(latest[0].id, room.name), _CLEANUP_TIMEOUT, what="get_dispatch"
            )
        except Exception as e:
            log.debug("cannot tell whose agent %s is: %s", identity, e)
            return None
        jobs = list(current.state.jobs) if current is not None else []
        if not jobs:
            return None
        return any(identity in (j.state.participant_identity, f"agent-{j.id}") for j in jobs)

    async def reject(agent: Any) -> None:
        await remove(agent, "joined for a dispatch deleted after it timed out")

    watch = _Watch(room, agent_name, gate, key, belongs, reject)

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
        watch.dispatched()
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
        await watch.finish_checks()
    finally:
        watch.close()
        if own_api:
            await client.aclose()
    return Dispatched(dispatch=dispatches[-1], participant=watch.participant, stages=stages, attempts=len(dispatches))
