"""tether.ReadinessGate: staged readiness, per-stage deadlines, dispatch retry, NotReady naming the stage."""

import asyncio
import itertools
import time

import pytest

import tether
from support import eventually


async def test_happy_path_returns_stage_timings():
    gate = tether.ReadinessGate()
    calls = []

    async def dispatch(job_id, attempt):
        calls.append((job_id, attempt))
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, gate.mark, job_id, "joined")
        loop.call_later(0.05, gate.mark, job_id, "ready")

    t = await gate.dispatch("job-1", dispatch, timeouts=2)
    assert calls == [("job-1", 1)]
    assert list(t) == ["dispatched", "joined", "ready"]
    assert t["dispatched"] <= t["joined"] <= t["ready"] < 2
    assert gate.pending() == []


async def test_joined_but_never_ready_names_the_stuck_stage():
    """The agent participant joins, but the entrypoint never runs."""
    gate = tether.ReadinessGate()

    async def dispatch(job_id, attempt):
        asyncio.get_running_loop().call_later(0.05, gate.mark, job_id, "joined")

    t0 = time.monotonic()
    with pytest.raises(tether.NotReady) as info:
        await gate.dispatch("job-2", dispatch, timeouts={"ready": 0.3})
    e = info.value
    assert e.stage == "ready" and e.job_id == "job-2" and e.attempts == 1
    assert set(e.reached) == {"dispatched", "joined"}
    assert 'job "job-2" joined after' in str(e) and "but never ready within 0.3 s" in str(e)
    assert time.monotonic() - t0 < 3.0


async def test_never_joined():
    gate = tether.ReadinessGate()

    async def dispatch(job_id, attempt):
        pass

    with pytest.raises(tether.NotReady) as info:
        await gate.dispatch("job-3", dispatch, timeouts={"joined": 0.2})
    assert info.value.stage == "joined" and "dispatched after" in str(info.value)


async def test_transient_dispatch_failures_are_retried_with_backoff():
    gate = tether.ReadinessGate()
    attempts = []

    async def dispatch(job_id, attempt):
        attempts.append(time.monotonic())
        if attempt < 3:
            raise ConnectionError("dispatch API: 503")
        gate.mark(job_id, "ready")

    t = await gate.dispatch("job-4", dispatch, policy=tether.Backoff(0.1, 2, jitter="none", max_attempts=3))
    assert "ready" in t and len(attempts) == 3
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19


async def test_dispatch_always_failing_raises_not_ready_with_cause():
    gate = tether.ReadinessGate()

    async def dispatch(job_id, attempt):
        raise ConnectionError("dispatch API: 503")

    with pytest.raises(tether.NotReady) as info:
        await gate.dispatch("job-5", dispatch, policy=tether.Backoff(0.01, jitter="none", max_attempts=2))
    e = info.value
    assert e.stage == "dispatched" and e.attempts == 3
    assert isinstance(e.__cause__, ConnectionError)
    assert "dispatch failed: ConnectionError: dispatch API: 503" in str(e)


async def test_redispatch_after_a_stuck_stage():
    gate = tether.ReadinessGate()

    async def dispatch(job_id, attempt):
        if attempt == 2:  # the second worker actually starts its entrypoint
            asyncio.get_running_loop().call_later(0.01, gate.mark, job_id, "ready")

    t = await gate.dispatch(
        "job-6", dispatch, timeouts=0.2, redispatch=True, policy=tether.Backoff(0.05, jitter="none", max_attempts=2)
    )
    assert "ready" in t


async def test_marks_duplicate_late_unknown_and_out_of_order():
    gate = tether.ReadinessGate()
    assert gate.mark("nobody", "ready") is False
    assert gate.unknown_marks == 1

    async def dispatch(job_id, attempt):
        assert gate.status(job_id) == {"dispatched": False, "joined": False, "ready": False}
        assert gate.mark(job_id, "ready") is True  # early and out of order: implies joined
        assert gate.mark(job_id, "joined") is False  # duplicate
        with pytest.raises(ValueError, match="unknown stage"):
            gate.mark(job_id, "bogus")

    await gate.dispatch("job-7", dispatch)
    assert gate.mark("job-7", "ready") is False  # late
    assert gate.unknown_marks == 2


async def test_thousand_concurrent_jobs():
    gate = tether.ReadinessGate()
    loop = asyncio.get_running_loop()

    async def dispatch(job_id, attempt):
        loop.call_later(0.01, gate.mark, job_id, "joined")
        loop.call_later(0.02, gate.mark, job_id, "ready")

    t0 = time.monotonic()
    results = await asyncio.gather(*(gate.dispatch(f"job-{i}", dispatch, timeouts=20) for i in range(1000)))
    assert len(results) == 1000 and all("ready" in r for r in results)
    assert gate.pending() == []
    assert time.monotonic() - t0 < 20


async def test_cancellation_forgets_the_job_and_cancels_dispatch():
    gate = tether.ReadinessGate()
    dispatch_cancelled = asyncio.Event()

    async def dispatch(job_id, attempt):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            dispatch_cancelled.set()
            raise

    task = asyncio.ensure_future(gate.dispatch("job-8", dispatch, timeouts=100))
    await eventually(lambda: gate.pending() == ["job-8"], what="job-8 pending")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(dispatch_cancelled.wait(), 5)
    await eventually(lambda: gate.pending() == [], what="job-8 forgotten")


async def test_dispatch_call_that_hangs_is_bounded_by_the_first_stage_deadline():
    gate = tether.ReadinessGate()

    async def dispatch(job_id, attempt):
        await asyncio.sleep(3600)

    t0 = time.monotonic()
    with pytest.raises(tether.NotReady) as info:
        await gate.dispatch(
            "job-9", dispatch, timeouts={"dispatched": 0.1}, policy=tether.Backoff(0.01, jitter="none", max_attempts=1)
        )
    assert info.value.stage == "dispatched", str(info.value)
    assert "never dispatched within 0.1 s: dispatch call did not return" in str(info.value)
    assert time.monotonic() - t0 < 3


async def test_retries_of_a_failing_dispatch_end_at_the_first_stage_timeout_whatever_the_policy():
    """A policy without max_attempts (``Backoff(0.01)``, written to change the delay) retries a dispatch
    call that always fails (a wrong agent name) until the first stage's timeout runs out, then raises
    NotReady. Before, it was retried for ever: gate.dispatch never returned."""
    gate = tether.ReadinessGate()
    calls = 0

    async def dispatch(job_id, attempt):
        nonlocal calls
        calls += 1
        raise RuntimeError("agent 'typo' is not registered")

    policy = tether.Backoff(0.01, 2.0, max_delay=0.02, jitter="none")
    t0 = time.monotonic()
    with pytest.raises(tether.NotReady) as info:
        await asyncio.wait_for(gate.dispatch("job-10", dispatch, timeouts=0.5, policy=policy), 5.0)
    assert 0.45 < time.monotonic() - t0 < 2.0 and calls > 2
    assert info.value.stage == "dispatched" and isinstance(info.value.__cause__, RuntimeError)
    assert "never dispatched within 0.5 s: dispatch failed: RuntimeError" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(job_id=""), ValueError),
        (dict(job_id=5), TypeError),
        (dict(dispatch=5), TypeError),
        (dict(stages=()), ValueError),
        (dict(stages="ready"), TypeError),
        (dict(stages=("a", "a")), ValueError),
        (dict(timeouts={"nope": 1}), ValueError),
        (dict(timeouts={"ready": -1}), ValueError),
        (dict(timeouts=0), ValueError),
        (dict(policy="fast"), TypeError),
    ],
)
async def test_bad_inputs(kwargs, exc):
    gate = tether.ReadinessGate()

    async def dispatch(job_id, attempt):
        pass

    args = dict(job_id="j", dispatch=dispatch)
    args.update(kwargs)
    with pytest.raises(exc):
        await gate.dispatch(args.pop("job_id"), args.pop("dispatch"), **args)


async def test_sync_dispatch_is_a_type_error_at_once():
    gate = tether.ReadinessGate()
    called = []

    def dispatch(job_id, attempt):
        called.append(attempt)

    t0 = time.monotonic()
    for d in (dispatch, lambda job_id, attempt: None):
        with pytest.raises(TypeError, match="async"):
            await gate.dispatch("j", d)  # default policy: would retry 4 times over 1.4 s
    assert time.monotonic() - t0 < 1.0 and called == [] and gate.pending() == []


async def test_marks_made_during_a_failed_dispatch_attempt_do_not_carry_over():
    gate = tether.ReadinessGate()

    async def dispatch(job_id, attempt):
        if attempt == 1:
            gate.mark(job_id, "ready")  # the agent said ready, then the dispatch call failed
            raise ConnectionError("dispatch RPC failed")

    with pytest.raises(tether.NotReady) as info:
        await gate.dispatch("j", dispatch, timeouts={"joined": 0.3, "ready": 0.3}, policy=tether.Backoff(0.01))
    assert info.value.stage == "joined" and info.value.attempts == 2


async def test_not_ready_is_reported_once_by_the_exception(tether_logs):
    gate = tether.ReadinessGate()

    async def dispatch(job_id, attempt):
        asyncio.get_running_loop().call_later(0.01, gate.mark, job_id, "joined")

    with pytest.raises(tether.NotReady) as info:
        await gate.dispatch("job-once", dispatch, timeouts={"ready": 0.1})
    same = [r for r in tether_logs.records if str(info.value) in r.getMessage()]
    assert [r.levelname for r in same] == ["DEBUG"], [(r.levelname, r.getMessage()) for r in same]


async def test_a_newer_dispatch_of_the_same_job_measures_from_its_own_dispatch_call():
    """The older dispatch's call returning marked "dispatched" by the job's id, so on the newer dispatch
    that replaced it: the newer job's "joined" deadline ran from that foreign instant and it raised
    NotReady although its agent joined within 3 s of its own call."""
    gate = tether.ReadinessGate()
    loop = asyncio.get_running_loop()
    calls = []

    async def dispatch(job_id, attempt):
        calls.append(attempt)
        if len(calls) == 1:
            await asyncio.sleep(0.5)  # the older call returns while the newer one's runs
            return
        await asyncio.sleep(3.0)
        loop.call_later(1.0, gate.mark, job_id, "joined")
        loop.call_later(1.2, gate.mark, job_id, "ready")

    timeouts = {"dispatched": 20, "joined": 3, "ready": 3}
    older = asyncio.ensure_future(gate.dispatch("job-1", dispatch, timeouts=timeouts))
    await asyncio.sleep(0.1)
    newer = await asyncio.wait_for(gate.dispatch("job-1", dispatch, timeouts=timeouts), 30)
    assert newer["dispatched"] >= 2.5, newer
    with pytest.raises(tether.NotReady):
        await asyncio.wait_for(older, 30)  # replaced: its marks went to the newer job


async def test_a_cancelled_error_raised_in_dispatch_propagates_at_once():
    """It was retried with backoff (4 calls over 1.4 s), then raised bare anyway: a retry that succeeded
    would have swallowed it."""
    calls = []

    async def dispatch(job_id, attempt):
        calls.append(attempt)
        raise asyncio.CancelledError()  # it awaited a shared future someone else cancelled

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(tether.ReadinessGate().dispatch("job-1", dispatch, timeouts=5), 30)
    assert calls == [1]
