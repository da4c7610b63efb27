import logging
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import tether
from support import installed_version
from support.netns import netns  # noqa: F401 (a fixture: a network namespace for kernel black holes)


def pytest_addoption(parser):  # type: ignore[no-untyped-def]
    parser.addoption(
        "--event-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop the asyncio tests run on (uvloop: those that look into asyncio's own loop are skipped)",
    )


class _OnUvloop:
    """Every asyncio test on a uvloop loop (pytest-asyncio's loop factories)."""

    def pytest_asyncio_loop_factories(self, config, item):  # type: ignore[no-untyped-def]
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


def pytest_configure(config):  # type: ignore[no-untyped-def]
    config.addinivalue_line("markers", "asyncio_loop_only(why): looks into asyncio's own loop; skipped on uvloop")
    if config.getoption("--event-loop") == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError as e:
            raise pytest.UsageError("--event-loop uvloop: uvloop is not installed") from e
        config.pluginmanager.register(_OnUvloop(), "tether-on-uvloop")


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    if config.getoption("--event-loop") != "uvloop":
        return
    for item in items:
        if m := item.get_closest_marker("asyncio_loop_only"):
            item.add_marker(pytest.mark.skip(reason=f"asyncio's own loop: {m.args[0]}"))


@pytest.fixture
def busy_core(request):
    """One CPU core kept busy by a spinning process for the test, when its parameter (indirect) is true."""
    if not request.param:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


@pytest.fixture
def tether_logs(caplog):
    """Capture tether's records at DEBUG and push the level into the Rust-side filter."""
    caplog.set_level(logging.DEBUG, logger="tether")
    tether.sync_log_level()
    yield caplog
    logging.getLogger("tether").setLevel(logging.NOTSET)
    tether.sync_log_level()


# At the end of a run, one line per framework release the integration tests ran against (or skipped), so
# a run says which releases it proved: the venv's own and those installed aside in .venv/ by the Makefile.
VENV = Path(__file__).parent.parent / ".venv"

_outcomes: dict[str, list[str]] = defaultdict(list)


def _venv_version(dist: str) -> str:
    return installed_version(dist) or "not installed"


def _aside(prefix: str) -> str:
    found = sorted(VENV.glob(f"{prefix}-*"))
    return found[0].name.removeprefix(f"{prefix}-") if found else "not installed"


def _release(nodeid: str) -> str | None:
    parts = nodeid.split("::")[0].split("/")
    folder, name = (parts[-2] if len(parts) > 1 else ""), parts[-1]
    if folder == "livekit":
        if name == "test_releases.py":
            m = re.search(r"\[(.+)\]", nodeid)
            return f"livekit-agents {m.group(1)}" if m else None
        if name in ("test_agent_server.py", "test_room.py", "test_dispatch.py"):
            return f"livekit-agents {_venv_version('livekit-agents')}"
    if name == "test_signaling.py":
        if "test_older_getstream" in nodeid:
            m = re.search(r"\[(.+)-[a-z]+\]$", nodeid)
            return f"getstream {m.group(1)}" if m else None
        return f"getstream {_venv_version('getstream')}"
    if name == "test_call_watch.py":
        # two of its tests check the refusal in this venv's older getstream; the rest run 7.x aside
        if "refuses_other_versions" in nodeid or "names_why_it_cannot_watch" in nodeid:
            return f"getstream {_venv_version('getstream')}"
        return f"getstream {_aside('getstream7')}"
    if folder == "pipecat":
        m = re.search(r"test_older_release\[(.+)-[a-z_]+\]$", nodeid)
        return f"pipecat-ai {m.group(1) if m else _aside('pipecat')}"
    return None


def pytest_runtest_logreport(report):  # type: ignore[no-untyped-def]
    release = _release(report.nodeid)
    if release is None or (report.when != "call" and not (report.skipped or report.failed)):
        return
    _outcomes[release].append(report.outcome)


def pytest_terminal_summary(terminalreporter):  # type: ignore[no-untyped-def]
    if not _outcomes:
        return
    lines = []
    for release, outcomes in sorted(_outcomes.items()):
        if "failed" in outcomes:
            verdict = f"FAILED ({outcomes.count('failed')} of {len(outcomes)})"
        elif all(o == "skipped" for o in outcomes):
            verdict = "skipped"
        else:
            verdict = f"ran ({outcomes.count('passed')} passed, {outcomes.count('skipped')} skipped)"
        lines.append(f"  {release}: {verdict}")
    terminalreporter.write_line("framework releases the integration tests ran against:")
    for line in lines:
        terminalreporter.write_line(line)
