"""livekit-agents reproductions (control-plane reconnects, prewarm failures) with the real
`AgentServer.run()` against the fake control plane. Used in-process by the tests, and as a script to
measure the before/after table (another release: PYTHONPATH=../../../.venv/livekit-agents-VERSION):

    python tests/integrations/livekit/lk_scenarios.py accept_drop|max_retry|recycle|silent|prewarm_fails|end_to_end|healthy|metrics [--tether]
    python tests/integrations/livekit/lk_scenarios.py suite   # what test_releases asserts, with tether
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2]))  # tests/, for support

from support.fake_livekit import FakeControlPlane

SPAWN_LOG_ENV = "TETHER_TEST_SPAWN_LOG"


def failing_setup(proc) -> None:
    """A prewarm (setup_fnc) that always fails, as with a missing model file or env var."""
    with open(os.environ[SPAWN_LOG_ENV], "a") as f:
        f.write(f"{time.time()}\n")
    raise RuntimeError("prewarm failed: model file /models/vad.onnx not found")


def counting_setup(proc) -> None:
    with open(os.environ[SPAWN_LOG_ENV], "a") as f:
        f.write(f"{time.time()}\n")


_spawn_log: str | None = None


def spawn_log() -> str:
    """One file per test process (not the one a parent process named in the environment: the suites of
    several releases run at once), named in the environment before the first job process starts:
    livekit's process context (forkserver) keeps the environment it started with."""
    global _spawn_log
    if _spawn_log is None:
        fd, path = tempfile.mkstemp(prefix="tether-spawns-")
        os.close(fd)
        os.environ[SPAWN_LOG_ENV] = _spawn_log = path
        atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    return _spawn_log


def read_spawns(path: str) -> list[float]:
    """The spawns logged since the last call (the file is emptied)."""
    with open(path, "r+") as f:
        spawns = [float(x) for x in f.read().split()]
        f.seek(0)
        f.truncate()
    return spawns


async def entrypoint(ctx) -> None:  # never reached in these scenarios
    await asyncio.sleep(0)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def at(self, level: int, prefix: str = "") -> list[logging.LogRecord]:
        return [r for r in self.records if r.levelno == level and r.name.startswith(prefix)]


def make_server(url: str, **kw):
    from livekit.agents import AgentServer, JobExecutorType

    opts = dict(
        ws_url=url,
        api_key="devkey",
        api_secret="secret-" * 6,
        num_idle_processes=0,
        port=0,
        job_executor_type=JobExecutorType.PROCESS,
    )
    opts.update(kw)
    server = AgentServer(**opts)
    server.rtc_session()(entrypoint)
    return server


async def run_server(server, seconds: float):
    """Run `server.run()` for up to `seconds`; returns (elapsed, outcome) where outcome is "running" or
    the exception run() ended with."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    task = asyncio.ensure_future(server.run())
    done, _ = await asyncio.wait({task}, timeout=seconds)
    elapsed = loop.time() - started
    outcome = task.exception() if done else "running"
    await asyncio.wait_for(server.aclose(), 60)
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    return elapsed, outcome


INSTRUMENTED_RUNS: list[float] = []


def instrument_connection_task() -> None:
    """Another library's wrapper of the connection task, applied before tether's (as an OpenTelemetry or
    Sentry integration would): tether must call through it, every run."""
    import functools

    from livekit.agents import worker

    original = worker.AgentServer._connection_task

    @functools.wraps(original)
    async def instrumented(*args, **kwargs):
        INSTRUMENTED_RUNS.append(time.monotonic())
        return await original(*args, **kwargs)

    worker.AgentServer._connection_task = instrumented


async def control_plane(mode: str, seconds: float, *, max_retry: int = 16, recycle_after: float = 2.0) -> dict:
    """The control plane accepts and drops (or recycles) the worker socket."""
    INSTRUMENTED_RUNS.clear()
    h = Records()
    lg = logging.getLogger("livekit.agents")
    lg.addHandler(h)
    old_level = lg.level
    lg.setLevel(logging.DEBUG)
    cpu = time.process_time()
    try:
        async with FakeControlPlane(mode, recycle_after=recycle_after) as cp:
            server = make_server(cp.url, max_retry=max_retry)
            elapsed, outcome = await run_server(server, seconds)
    finally:
        lg.removeHandler(h)
        lg.setLevel(old_level)
    retries = [r for r in h.records if "failed to connect to livekit" in r.getMessage() and r.levelno < logging.ERROR]
    retries += [r for r in h.records if "connection to livekit lost" in r.getMessage() and r.levelno < logging.ERROR]
    retries.sort(key=lambda r: r.created)
    return {
        "mode": mode,
        "seconds": round(elapsed, 2),
        "connections": len(cp.connections),
        "registrations": len(cp.registrations),
        "retry_levels": [r.levelname for r in retries],
        "retry_loggers": sorted({r.name for r in retries}),
        "warnings": len(h.at(logging.WARNING)),
        "errors": [r.getMessage() for r in h.at(logging.ERROR)],
        "outcome": outcome if isinstance(outcome, str) else f"{type(outcome).__name__}: {outcome}",
        "cause": type(outcome.__cause__).__name__ if isinstance(outcome, BaseException) and outcome.__cause__ else None,
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "instrumented_runs": len(INSTRUMENTED_RUNS),
    }


async def prewarm(*, setup=failing_setup, job_budget: float = 90.0, watch: float = 10.0, **server_kw) -> dict:
    """Every prewarm fails. Times registration and a job launch, counts spawns (and those in
    the `watch` seconds after the job gave up: a hot respawn loop shows there)."""
    log_path = spawn_log()
    read_spawns(log_path)
    h = Records()
    root = logging.getLogger()
    root.addHandler(h)
    try:
        async with FakeControlPlane(
            server_kw.pop("mode", "healthy"), recycle_after=server_kw.pop("recycle_after", 2.0)
        ) as cp:
            kw = dict(num_idle_processes=1, setup_fnc=setup, initialize_process_timeout=10.0)
            kw.update(server_kw)
            server = make_server(cp.url, **kw)
            loop = asyncio.get_running_loop()
            t0, wall0 = time.monotonic(), time.time()
            run_task = asyncio.ensure_future(server.run())
            while not cp.registrations and not run_task.done() and time.monotonic() - t0 < 60:
                await asyncio.sleep(0.01)
            registered_after = cp.registrations[0] - t0 if cp.registrations else None
            job_started, job_at = loop.time(), time.monotonic() - t0
            job_error = None
            try:
                await asyncio.wait_for(server.simulate_job("room", fake_job=True), job_budget)
            except BaseException as e:
                job_error = e
            job_took = loop.time() - job_started
            # spawn rate after the job gave up: a hot respawn loop shows here
            rate_from = time.time()
            await asyncio.sleep(watch)
            rate_window = time.time() - rate_from
            await asyncio.wait_for(server.aclose(), 60)
            if not run_task.done():
                run_task.cancel()
            await asyncio.wait({run_task}, timeout=10)
            elapsed = time.monotonic() - t0
    finally:
        root.removeHandler(h)
    spawns = read_spawns(log_path)
    tracebacks = sum(1 for r in h.records if r.exc_info and r.exc_info[0] is not None)
    return {
        "registered_after": None if registered_after is None else round(registered_after, 2),
        "job_took": round(job_took, 2),
        "job_error": None if job_error is None else f"{type(job_error).__name__}: {job_error}",
        "job_error_type": None if job_error is None else type(job_error).__name__,
        "spawns": len(spawns),
        "seconds": round(elapsed, 2),
        "spawns_after_job": sum(1 for t in spawns if t >= rate_from),
        # when each spawn ran the setup, from the start of run() (the rate over any window follows)
        "spawned_at": [round(t - wall0, 1) for t in spawns],
        "spawns_during_job": sum(1 for t in spawns if job_at <= t - wall0 <= job_at + job_took),
        "job_at": round(job_at, 2),
        "rate_window": round(rate_window, 2),
        "tracebacks": tracebacks,
        "control_plane_connections": len(cp.connections),
        "warnings": [r.getMessage()[:200] for r in h.records if r.levelno == logging.WARNING],
    }


def respawns_within(seconds: float) -> int:
    """The most respawns the integration's backoff allows in `seconds` after the first failure: delays of
    0.5 s doubling to 10 s, each with equal jitter, which may take up to half of it off (so at 0.25, 0.75,
    1.75, 3.75 s at the soonest). A hot respawn loop makes dozens."""
    n, at, delay = 0, 0.0, 0.5
    while (at := at + delay / 2) <= seconds:
        n, delay = n + 1, min(delay * 2, 10.0)
    return n


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def scrape(port: int) -> str:
    import urllib.request

    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return r.read().decode()

    return await asyncio.to_thread(get)


def series(text: str, prefix: str) -> list[tuple[str, dict[str, str], float]]:
    """The samples of an exposition whose names start with `prefix`: (name, labels, value)."""
    import re

    out = []
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1).startswith(prefix):
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


async def metrics_scrape(*, recycle_after: float = 1.5, budget: float = 60.0) -> dict:
    """A worker serving Prometheus metrics (`prometheus_port`), its control socket recycled: once it has
    registered twice and its pool spawned a process, GET /metrics and return its tether_ and lk_agents_
    series."""
    log_path = spawn_log()
    port = free_port()
    async with FakeControlPlane("recycle", recycle_after=recycle_after) as cp:
        server = make_server(
            cp.url, num_idle_processes=1, setup_fnc=counting_setup, prometheus_port=port, host="127.0.0.1"
        )
        run_task = asyncio.ensure_future(server.run())
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < budget and not run_task.done():
                if len(cp.registrations) >= 2 and read_spawns(log_path):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # the spawned process reports ready, the reconnect settles
            text = await scrape(port)
        finally:
            await asyncio.wait_for(server.aclose(), 60)
            if not run_task.done():
                run_task.cancel()
            await asyncio.wait({run_task}, timeout=10)
    return {
        "registrations": len(cp.registrations),
        "tether": series(text, "tether_"),
        "lk_agents": series(text, "lk_agents_"),
    }


def check_scrape(m: dict, *, reconnects: bool) -> None:
    """What a scrape of a worker with tether installed shows, on every release: tether's series next to
    livekit's, labelled with the same nodename; the control plane (its reconnect, on 1.x, where tether
    sees the loop's losses) and the process pool, both named "livekit"."""
    lk_nodes = {labels.get("nodename") for _, labels, _ in m["lk_agents"]}
    assert len(lk_nodes) == 1 and None not in lk_nodes, m["lk_agents"]
    assert {labels.get("nodename") for _, labels, _ in m["tether"]} == lk_nodes, m["tether"]

    def value(series: str, **want: str) -> float:
        found = [v for n, labels, v in m["tether"] if n == series and want.items() <= labels.items()]
        assert len(found) == 1, (series, want, m["tether"])
        return found[0]

    assert value("tether_connection_connects_total", name="livekit") >= (2 if reconnects else 1), m
    assert value("tether_connection_count", name="livekit", state="connected") == 1, m
    if reconnects:
        losses = [v for n, labels, v in m["tether"] if n == "tether_connection_losses_total"]
        assert sum(losses) >= 1, m
        assert value("tether_connection_downtime_seconds_count", name="livekit") >= 1, m
    assert value("tether_pool_spawns_total", name="livekit") >= 1, m
    assert value("tether_pool_healthy", name="livekit") == 1, m
    assert value("tether_pool_processes", name="livekit", state="starting") >= 0, m


SCENARIOS = {
    "accept_drop": lambda: control_plane("accept_drop", 10.0),
    "max_retry": lambda: control_plane("accept_drop", 30.0, max_retry=3),
    # two idle processes, as a deployment warms them (the pool is unhealthy before the job arrives)
    "prewarm_fails": lambda: prewarm(num_idle_processes=2),
    # the socket is registered, then recycled every 2 s (a load balancer's idle timeout)
    "recycle": lambda: control_plane("recycle", 30.0, max_retry=3, recycle_after=2.0),
    # the control plane accepts the socket and never answers the registration
    "silent": lambda: control_plane("silent", 60.0, max_retry=3),
    "end_to_end": lambda: prewarm(mode="recycle", recycle_after=2.0, job_budget=20.0, watch=5.0),
    "healthy": lambda: prewarm(setup=counting_setup, job_budget=30.0, watch=3.0),
    "metrics": lambda: metrics_scrape(),
}


async def suite() -> dict:
    """The scenarios that tell a working integration on any release, with `install()` as a user calls it
    (after another library wrapped the connection task)."""
    from importlib.metadata import version

    from tether.integrations import livekit

    instrument_connection_task()
    report = livekit.install()
    out: dict = {
        "version": version("livekit-agents"),
        "patched": list(report.patched),
        "refused": {part: [r.kind.value, str(r)] for part, r in report.refused.items()},
    }
    if out["version"].startswith("1."):
        out["accept_drop"] = await control_plane("accept_drop", 6.0)
    else:
        out["recycle"] = await control_plane("recycle", 30.0, max_retry=3, recycle_after=2.0)
    out["max_retry"] = await control_plane("accept_drop", 60.0, max_retry=2)
    out["prewarm_fails"] = await prewarm(job_budget=120.0, watch=4.0)
    out["healthy"] = await prewarm(setup=counting_setup, job_budget=60.0, watch=1.0)
    out["metrics"] = await metrics_scrape()
    return out


if __name__ == "__main__":
    if sys.argv[1] == "suite":
        print(json.dumps(asyncio.run(suite())))
        sys.exit(0)
    if "--tether" in sys.argv:
        from tether.integrations import livekit

        livekit.install()
    result = asyncio.run(SCENARIOS[sys.argv[1]]())
    result.pop("warnings", None) if "--warnings" not in sys.argv else None
    print(json.dumps(result))
