"""tether.integrations.livekit with the real livekit-agents `AgentServer.run()` against a fake control
plane (`websockets` server) on loopback: control-plane reconnects and failing prewarm."""

from __future__ import annotations

import asyncio
import inspect
import linecache
import logging
import textwrap

import pytest

pytest.importorskip("livekit.agents", reason="livekit-agents is not installed")

from aiohttp import web
from livekit.agents import worker as lk_worker
from livekit.agents.ipc import job_proc_executor
from livekit.agents.ipc import proc_pool as lk_proc_pool
from lk_scenarios import Records, control_plane, counting_setup, make_server, prewarm, respawns_within, run_server

import tether
from support import MS
from tether.integrations import livekit
from tether.integrations._patch import RefusalKind

ORIGINAL_TASK = lk_worker.AgentServer._connection_task
ORIGINAL_POOL = lk_proc_pool.ProcPool
ORIGINAL_RUN = lk_worker.AgentServer.run
LK_LOGGER = logging.getLogger("livekit.agents")


def untouched() -> bool:
    return (
        lk_worker.AgentServer._connection_task is ORIGINAL_TASK
        and lk_proc_pool.ProcPool is ORIGINAL_POOL
        and lk_worker.AgentServer.run is ORIGINAL_RUN
        and lk_worker.asyncio is asyncio
        and LK_LOGGER.filters == []
    )


@pytest.fixture
def installed():
    report = livekit.install(stable_after=1.0)
    assert report.patched == ("control_plane", "proc_pool", "metrics"), report
    # wrapped, not replaced: the shipped loop is still what runs
    assert lk_worker.AgentServer._connection_task.__wrapped__ is ORIGINAL_TASK
    yield report
    livekit.uninstall()
    assert untouched()


async def test_as_shipped_accept_drop_hot_loops_at_warning():
    r = await control_plane("accept_drop", 1.5, max_retry=3)
    assert r["connections"] > 30, r  # ~14,000 in 10 s on a quiet machine
    assert set(r["retry_levels"]) == {"WARNING"} and r["outcome"] == "running", r  # max_retry=3 never fails


async def test_accept_drop_backs_off_quiet_first_then_warning(installed):
    r = await control_plane("accept_drop", 6.0)
    # delays: quiet retry, then >= 0.5, 1, 2, 4 s: at most 5 connections in 6 s however slow the box
    assert 2 <= r["connections"] <= 5, r
    assert r["retry_levels"][0] == "DEBUG" and set(r["retry_levels"][1:]) == {"WARNING"}, r
    assert r["retry_loggers"] == ["livekit.agents"], r
    assert r["outcome"] == "running"


async def test_max_retry_is_honoured(installed):
    r = await control_plane("accept_drop", 60.0, max_retry=2)
    assert r["connections"] == 3, r  # the first attempt and 2 retries
    assert r["outcome"].startswith("RuntimeError: failed to connect to livekit after 3 attempts"), r
    assert r["cause"] == "GaveUp"
    assert any("gave up on livekit" in m for m in r["errors"]), r


async def test_counter_resets_only_after_registration_plus_stable_after(installed):
    # registered, then dropped after 0.2 s: never stable (stable_after=1 s), so max_retry=2 runs out
    r = await control_plane("recycle", 60.0, max_retry=2, recycle_after=0.2)
    assert r["registrations"] == 3 and r["outcome"].startswith("RuntimeError"), r
    # dropped after 1.5 s: each connection was stable, every drop starts a fresh outage (quiet retry)
    r = await control_plane("recycle", 5.0, max_retry=1, recycle_after=1.5)
    assert r["outcome"] == "running" and r["registrations"] >= 2, r
    assert "WARNING" not in r["retry_levels"], r


async def test_unanswered_registration_is_bounded():
    # as shipped the loop waits for the register response as long as the socket stays open
    livekit.install(register_timeout=0.5, proc_pool=False)
    try:
        r = await control_plane("silent", 60.0, max_retry=2)
    finally:
        livekit.uninstall()
    assert r["connections"] == 3 and r["registrations"] == 0, r
    assert r["outcome"].startswith("RuntimeError: failed to connect to livekit after 3 attempts"), r
    assert r["seconds"] < 30, r


async def test_worker_token_never_reaches_the_retry_records(monkeypatch):
    """Hosted agents authenticate with LIVEKIT_WORKER_TOKEN, which livekit-agents sends as the
    ``worker_token`` query parameter of the control-plane URL, and aiohttp's handshake error quotes that
    URL. tether's retry records carry the error; before, ``worker_token`` was not a secret name and the
    token was in them (livekit's own retry line never quotes the URL)."""
    secret = "wt_S3CRET_WORKER_TOKEN"
    monkeypatch.setenv("LIVEKIT_WORKER_TOKEN", secret)

    async def reject(request: web.Request) -> web.Response:
        return web.Response(status=401, text="unauthorized")

    app = web.Application()
    app.router.add_get("/agent", reject)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    records = Records()
    logging.getLogger().addHandler(records)
    level = LK_LOGGER.level
    LK_LOGGER.setLevel(logging.DEBUG)
    livekit.install(proc_pool=False, metrics=False)
    try:
        await run_server(make_server(f"http://127.0.0.1:{port}", max_retry=2), 4.0)
    finally:
        livekit.uninstall()
        logging.getLogger().removeHandler(records)
        LK_LOGGER.setLevel(level)
        await runner.cleanup()
    retries = [r for r in records.records if "failed to connect to livekit" in r.getMessage()]
    assert retries and all("worker_token=REDACTED" in r.getMessage() for r in retries), [
        r.getMessage() for r in records.records
    ]
    leaks = [r.getMessage() for r in records.records if secret in f"{r.getMessage()} {vars(r)}"]
    assert leaks == []


async def test_healthy_server_logs_no_warning(installed):
    r = await prewarm(setup=counting_setup, job_budget=60.0, watch=1.0)
    assert r["registered_after"] is not None
    assert r["job_error"] is None, r
    # livekit's own event-loop lag monitor may warn on a loaded box; nothing else may
    assert [w for w in r["warnings"] if not w.startswith("event loop blocked")] == [], r


async def test_prewarm_failure_raises_pool_exhausted_with_the_real_cause(installed):
    r = await prewarm(job_budget=120.0, watch=4.0)
    assert r["job_error_type"] == "PoolExhausted", r
    assert "prewarm failed: model file /models/vad.onnx not found" in r["job_error"], r
    assert r["registered_after"] is not None and r["control_plane_connections"] == 1, r
    # respawn backoff (0.5 s doubling to 10 s): no hot loop, whatever the speed of the box
    assert r["spawns"] <= 2 + r["seconds"] / 1.5, r
    assert r["spawns_after_job"] <= 2, r


async def test_prewarm_failure_with_two_idle_processes_fails_the_job_at_the_next_spawn_failure(installed):
    # two idle processes through livekit's forkserver: the pool is unhealthy before the job comes, so
    # launch_job fails with the next spawn failure instead of waiting for three spawns of its own
    r = await prewarm(num_idle_processes=2, job_budget=120.0, watch=4.0)
    assert r["job_error_type"] == "PoolExhausted", r
    assert "prewarm failed: model file /models/vad.onnx not found" in r["job_error"], r
    # the one spawn in flight when the job came, or the next (a spawn's setup may also run just after
    # the job ends); three or more means the job waited for spawns of its own
    assert r["spawns_during_job"] <= 2, r
    assert "unhealthy" in r["job_error"], r
    # backoff and one spawn at a time once unhealthy: however slow the box, no more than its schedule
    # allows (a bound of one per 2 s failed at 5 spawns in 5.96 s, which is that schedule)
    assert r["spawns"] <= 2 + respawns_within(r["seconds"]), r


def test_changed_loop_code_refuses_that_part_only(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="tether.integrations")

    async def _connection_task(self):  # an upstream change that keeps every name the part checks
        self._max_retry = max(self._max_retry, 1)
        return await ORIGINAL_TASK(self)

    monkeypatch.setattr(lk_worker.AgentServer, "_connection_task", _connection_task)
    report = livekit.install()
    try:
        assert report.patched == ("proc_pool", "metrics")
        assert report.refused["control_plane"].kind is RefusalKind.CHANGED_CODE, report
        assert "code fingerprint" in report.refused["control_plane"]
        assert lk_worker.AgentServer._connection_task is _connection_task and lk_worker.asyncio is asyncio
        assert any(
            "not patching control_plane" in r.getMessage() and "fingerprint" in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING
        )
    finally:
        livekit.uninstall()


def edited_loop(edit=lambda source: source):
    """livekit's own loop compiled from its source with ``edit`` applied, in the worker's namespace (as an
    upstream release that changed only that would ship it)."""
    source = textwrap.dedent(inspect.getsource(inspect.unwrap(ORIGINAL_TASK)))
    edited = edit(source)
    filename = f"<livekit worker.py edited {id(edited)}>"
    linecache.cache[filename] = (len(edited), None, edited.splitlines(keepends=True), filename)
    ns = dict(vars(lk_worker))
    exec(compile(edited, filename, "exec"), ns)
    return edited != source, ns["_connection_task"]


@pytest.mark.parametrize(
    "edit",
    [
        # the counter resets only after registration (the upstream fix of the hot loop)
        lambda s: s.replace("            retry_count = 0\n\n", "", 1).replace(
            "self._handle_register(msg.register)\n",
            "self._handle_register(msg.register)\n            retry_count = 0\n",
        ),
        lambda s: s.replace("min(retry_count * 2, 10)", "min(retry_count * 2, 60)"),
        lambda s: s.replace("retry_count >= self._max_retry", "retry_count > self._max_retry"),
    ],
    ids=["reset-after-registration", "max-delay", "comparison"],
)
def test_loop_edited_inside_keeping_its_names_is_refused(monkeypatch, edit):
    changed, task = edited_loop(edit)
    assert changed
    monkeypatch.setattr(lk_worker.AgentServer, "_connection_task", task)
    report = livekit.install(proc_pool=False, metrics=False)
    try:
        assert report.patched == () and report.refused["control_plane"].kind is RefusalKind.CHANGED_CODE, report
        assert lk_worker.AgentServer._connection_task is task
    finally:
        livekit.uninstall()


def test_loop_recompiled_unchanged_is_patched(monkeypatch):
    # the refusals above come from the edits, not from compiling the loop anew
    changed, task = edited_loop()
    assert not changed
    monkeypatch.setattr(lk_worker.AgentServer, "_connection_task", task)
    try:
        assert livekit.install(proc_pool=False, metrics=False).patched == ("control_plane",)
    finally:
        livekit.uninstall()


def test_changed_constructor_refuses_the_pool(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="tether.integrations")

    class Renamed(job_proc_executor.ProcJobExecutor):
        # a required argument that neither livekit's pool nor its defaults supply
        def __init__(self, *, initialize_process_fnc, job_entrypoint_fnc, mp_ctx_factory): ...

    monkeypatch.setattr(job_proc_executor, "ProcJobExecutor", Renamed)
    report = livekit.install()
    try:
        assert report.patched == ("control_plane", "metrics")
        assert "mp_ctx_factory=" in report.refused["proc_pool"], report
        assert report.refused["proc_pool"].kind is RefusalKind.MISSING_NAMES
        assert lk_proc_pool.ProcPool is ORIGINAL_POOL
    finally:
        livekit.uninstall()


def test_renamed_instance_attribute_refuses(monkeypatch):
    monkeypatch.setattr(livekit, "_SERVER_ATTRS_1X", (*livekit._SERVER_ATTRS_1X, "_renamed_retry_budget"))
    report = livekit.install(proc_pool=False, metrics=False)
    try:
        assert report.patched == ()
        assert "AgentServer()._renamed_retry_budget" in report.refused["control_plane"]
        assert report.refused["control_plane"].kind is RefusalKind.MISSING_NAMES
    finally:
        livekit.uninstall()


def test_untested_version_is_refused_unless_allowed(monkeypatch):
    from tether.integrations import _patch

    monkeypatch.setattr(_patch, "installed_version", lambda dist: "3.0.0")
    try:
        report = livekit.install()
        assert report.patched == () and report.refused["control_plane"].kind is RefusalKind.UNTESTED_VERSION
        assert "outside the tested range >=1.5,<1.9 or >=2.0.0b1,<3" in report.refused["control_plane"]
        assert report.refused["proc_pool"].kind is RefusalKind.UNTESTED_VERSION and untouched()
        assert report.refused["metrics"].kind is RefusalKind.UNTESTED_VERSION
        # tried anyway: the 1.x loop's code is the one read, so it fits
        report = livekit.install(allow_untested=True)
        assert report.patched == ("control_plane", "proc_pool", "metrics")
    finally:
        livekit.uninstall()


def test_each_variant_checks_its_own_names(monkeypatch):
    from tether.integrations import _patch

    # a release that says 2.x but has the 1.x loop: the 2.x variant needs the native worker
    monkeypatch.setattr(_patch, "installed_version", lambda dist: "2.0.0b1")
    try:
        report = livekit.install()
        assert report.patched == ("proc_pool", "metrics")
        assert report.refused["control_plane"].kind is RefusalKind.MISSING_NAMES
        assert "livekit.agents.worker._core" in report.refused["control_plane"]
    finally:
        livekit.uninstall()


def test_declared_ranges():
    assert livekit.instrumentation_dependencies() == (
        "livekit-agents>=1.5,<1.9",
        "livekit-agents>=2.0.0b1,<3",
        "livekit-agents>=1.5,<3",
    )


def test_install_is_idempotent_and_import_is_lazy():
    import subprocess
    import sys

    code = (
        "import sys, tether, tether.integrations\n"
        "import tether.integrations.livekit, tether.integrations.getstream, tether.integrations.pipecat\n"
        "heavy = ('livekit', 'getstream', 'pipecat', 'opentelemetry', 'prometheus_client')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "assert not bad, bad\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
    try:
        assert livekit.install() == livekit.install()
        assert isinstance(livekit.install(), tether.integrations.InstallReport)
    finally:
        livekit.uninstall()


def test_a_second_install_names_the_settings_it_cannot_change(caplog):
    """A library called ``install()`` first; the application's own call with other settings keeps the
    parts as patched. Before, it returned the same report and said nothing; then a setting of a part not
    patched yet was reported as not applying to the parts patched."""
    caplog.set_level(logging.WARNING, logger="tether.integrations")
    try:
        livekit.install(proc_pool=False)
        assert caplog.records == []
        livekit.install(proc_pool=False, register_timeout=30, stable_after=60)
        assert [r.getMessage() for r in caplog.records] == [
            "tether.integrations.livekit: already installed (control_plane) with stable_after=10.0, "
            "register_timeout=10.0: this call's stable_after=60, register_timeout=30 do not apply; uninstall() "
            "first to change them"
        ]
        # a setting of a part not patched yet is that part's: patched with it, no warning
        caplog.clear()
        respawn = tether.Backoff(0.1, 2.0, max_delay=1.0)
        assert livekit.install(respawn=respawn, register_timeout=30, stable_after=60).patched == (
            "control_plane",
            "metrics",
            "proc_pool",
        )
        assert [r.getMessage() for r in caplog.records] == [
            "tether.integrations.livekit: already installed (control_plane) with stable_after=10.0, "
            "register_timeout=10.0: this call's stable_after=60, register_timeout=30 do not apply; uninstall() "
            "first to change them"
        ]
    finally:
        livekit.uninstall()


async def test_lower_idle_target_keeps_warm_processes(installed):
    import asyncio
    import multiprocessing

    from livekit.agents import JobExecutorType
    from lk_scenarios import entrypoint

    pool = lk_proc_pool.ProcPool(
        initialize_process_fnc=lambda proc: None,
        job_entrypoint_fnc=entrypoint,
        session_end_fnc=None,
        simulation_end_fnc=None,
        num_idle_processes=1,
        initialize_timeout=10.0,
        close_timeout=5.0,
        session_end_timeout=5.0,
        inference_executor=None,
        job_executor_type=JobExecutorType.THREAD,
        mp_ctx=multiprocessing.get_context("spawn"),
        memory_warn_mb=0,
        memory_limit_mb=0,
        http_proxy=None,
        loop=asyncio.get_running_loop(),
    )
    closed = []
    pool.on("process_closed", closed.append)
    try:
        await asyncio.wait_for(pool.start(), 30)
        assert len(pool.processes) == 1
        # livekit's load task lowers the target under load: no new spawns, but the warm one stays
        pool.set_target_idle_processes(0)
        await asyncio.sleep(1000 * MS)  # room for a wrong disposal of the warm process
        assert closed == [] and len(pool.processes) == 1
    finally:
        await asyncio.wait_for(pool.aclose(), 30)
    assert len(closed) == 1
