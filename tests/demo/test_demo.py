"""`python -m tether demo` as a user runs it: five runs in a row (the last two with one CPU core kept
busy), each exits 0 with every scenario ok, nothing on stderr about an unclosed event loop or
transport, and every scenario's title true of what it printed."""

import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

import tether
from support import other_cpythons_or_skip

RUNS = 5
BUSY_RUNS = 2
BAD_STDERR = re.compile(r"Event loop is closed|Exception ignored|unclosed|ResourceWarning|Traceback", re.I)
# one timeline line: "  [   12.3 ms] KIND         text", the kind padded to 12 characters (longer kinds
# are followed by one space)
MARK = re.compile(r"^  \[\s*([\d.]+) ms\] (.*)$")


def summary(stdout: str) -> dict[str, str]:
    """{scenario: result} from the summary table."""
    tail = stdout.split("== summary", 1)[1].splitlines()[2:]
    return {cols[0]: cols[1] for cols in (line.split() for line in tail) if len(cols) >= 2}


def failing(stdout: str) -> str:
    """The sections of the scenarios the summary does not call ok, then the summary (all of stdout's end
    if there is none): what a failed run is read by."""
    if "== summary" not in stdout:
        return stdout[-6000:]
    bad = [n for n, r in summary(stdout).items() if r != "ok"]
    sections = [s for s in stdout.split("\n== ") if s.split(":", 1)[0] in bad]
    return "\n".join(f"== {s}" for s in sections) + "\n== summary" + stdout.split("== summary", 1)[1]


def timelines(stdout: str) -> dict[str, tuple[str, list[tuple[float, str, str]]]]:
    """{scenario: (title, [(ms, kind, text), ...])} from the scenarios' sections."""
    out = {}
    for section in stdout.split("\n== ")[1:]:
        head, *lines = section.splitlines()
        if head.startswith("summary"):
            continue
        name, title = head.split(": ", 1)
        marks = []
        for m in filter(None, map(MARK.match, lines)):
            rest = m[2]
            kind, text = (rest[:12].rstrip(), rest[13:]) if rest[12:13] == " " else rest.split(" ", 1)
            marks.append((float(m[1]), kind, text))
        out[name] = (title, marks)
    return out


Marks = list[tuple[float, str, str]]


def kinds(marks: Marks, kind: str, contains: str = "") -> list[tuple[float, str, str]]:
    return [m for m in marks if m[1] == kind and contains in m[2]]


def first(marks: Marks, kind: str, contains: str = "") -> int:
    """Where the first such mark was printed (its index: the timeline's order, which ties in time do
    not blur)."""
    for i, (_, k, text) in enumerate(marks):
        if k == kind and contains in text:
            return i
    raise AssertionError(f"no {kind} mark containing {contains!r}")


def at(marks: Marks, kind: str, contains: str = "") -> float:
    """When the first such mark was printed, in ms."""
    return marks[first(marks, kind, contains)][0]


# What each title promises, checked against what the scenario printed. A scenario without an entry
# fails the test: a new scenario comes with the check of its title.
def flapping(m: Marks) -> None:
    # "escalating backoff": each retry waits longer than the one before
    delays = [float(re.search(r"delay=([\d.]+)", t)[1]) for _, _, t in kinds(m, "Reconnecting")]
    assert delays == sorted(delays) and len(set(delays)) == len(delays), delays
    # "DEBUG -> WARNING -> ERROR": the quiet first retry below WARNING, then WARNINGs, then the ERROR
    assert first(m, "log DEBUG", "retrying immediately") < first(m, "log WARNING") < first(m, "log ERROR")
    assert kinds(m, "DETECTED", "GaveUp")  # "GaveUp"


def ws_server_close(m: Marks) -> None:
    assert len(kinds(m, "DETECTED")) == 1  # "detected, reported once"
    assert kinds(m, "Reconnecting", "delay=0.0 ")  # "reconnected at once (no backoff)"
    assert first(m, "DETECTED") < first(m, "RECOVERED")


def ws_ping_timeout(m: Marks) -> None:
    assert first(m, "FAULT") < first(m, "DETECTED", "ping timeout")  # "detected by the ping deadline"
    # "resume refused -> restart"
    assert first(m, "Connecting", "'resume'") < first(m, "Connecting", "'restart'") < first(m, "RECOVERED")
    assert not kinds(m, "Connected", "attempt=2")


def ws_send_during_outage(m: Marks) -> None:
    assert first(m, "FAULT") < first(m, "RECOVERED") < first(m, "note", "echoed back in order")


def ws_fatal(m: Marks) -> None:
    (detected,) = kinds(m, "DETECTED", "GaveUp")  # "GaveUp at once"
    assert "after 1 attempt " in detected[2] and "401" in detected[2]
    assert not any("SECRET" in t for _, _, t in m)  # "token redacted everywhere" (stderr: below)


def ws_first_connect(m: Marks) -> None:
    wrong, down = kinds(m, "DETECTED", "GaveUp")
    assert "after 1 attempt" in wrong[2] and "HTTP 404" in wrong[2]  # "at once"
    assert "connect_timeout exceeded" in down[2]  # "by connect_timeout"


def chaos_wifi_switch(m: Marks) -> None:
    assert first(m, "FAULT") < first(m, "DETECTED", "ping timeout")  # "detected by ping deadline"
    assert first(m, "heal") < first(m, "RECOVERED")  # "recovered after heal"


def stall_resume(m: Marks) -> None:
    # "attempt abandoned at its deadline (open_timeout 0.5 s), ladder escalates to restart"; marks are
    # the times the events reached Python, which can be late by a few ms each
    resume = at(m, "Connecting", "'resume'")
    restart = at(m, "Reconnecting", "'restart'")
    assert restart - resume >= 400, (resume, restart)
    assert first(m, "Reconnecting", "'restart'") < first(m, "Connected", "attempt=3") < first(m, "RECOVERED")


def ghost_room(m: Marks) -> None:
    # "connected but no frames -> liveness alarm naming the track"
    assert "audio:remote-participant" in kinds(m, "DETECTED")[0][2]
    assert first(m, "FAULT") < first(m, "DETECTED")


def bounded_close(m: Marks) -> None:
    # "bounded() frees the caller at its 0.5 s bound" (and not long after it)
    took = float(re.search(r"caller free after (\d+) ms", kinds(m, "RECOVERED")[0][2])[1])
    assert 500 <= took < 700, took


def pool_spawn_fail(m: Marks) -> None:
    # "acquire raises PoolExhausted naming the causes"
    (detected,) = kinds(m, "DETECTED", "PoolExhausted")
    assert "agent_plugins" in detected[2]


def pool_crash_loop(m: Marks) -> None:
    # "paced respawns, healthy flips false, recovers when the child is fixed"
    assert first(m, "DETECTED", "healthy=False") < first(m, "fix") < first(m, "RECOVERED", "healthy=True")
    spawns = int(re.search(r"(\d+) spawns in 1.5 s", kinds(m, "note")[0][2])[1])
    assert spawns <= 8, spawns


def readiness_race(m: Marks) -> None:
    # "NotReady names the stuck stage; a healthy agent passes"
    assert "never ready" in kinds(m, "DETECTED", "NotReady")[0][2]
    assert kinds(m, "RECOVERED", "healthy agent ready")


CLAIMS: dict[str, Callable[[Marks], None]] = {
    f.__name__: f
    for f in (
        flapping,
        ws_server_close,
        ws_ping_timeout,
        ws_send_during_outage,
        ws_fatal,
        ws_first_connect,
        chaos_wifi_switch,
        stall_resume,
        ghost_room,
        bounded_close,
        pool_spawn_fail,
        pool_crash_loop,
        readiness_race,
    )
}


def test_the_running_order_names_only_scenarios_that_exist():
    import pkgutil

    import tether.demo

    present = {m.name for m in pkgutil.iter_modules(tether.demo.__path__) if not m.name.startswith("_")}
    assert [n for n in tether.demo.ORDER if n not in present] == [], "ORDER names scenarios that do not exist"
    listed = subprocess.run(
        [sys.executable, "-m", "tether", "demo", "--list"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert sorted(listed) == sorted(present)


def demo(python: str = sys.executable, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """One `python -m tether demo`, checked: exit 0, every scenario ok, nothing bad on stderr, no secret;
    returns it with the scenarios' names."""
    # unbuffered stdio (common in containers) makes every write a syscall: frames arrive in pieces
    env = {**os.environ, "PYTHONWARNINGS": "default::ResourceWarning", "PYTHONUNBUFFERED": "1", **env}
    proc = subprocess.run([python, "-m", "tether", "demo"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"{python}: exit {proc.returncode}\n{failing(proc.stdout)}\n{proc.stderr[-3000:]}"
    results = summary(proc.stdout)
    names = subprocess.run(
        [sys.executable, "-m", "tether", "demo", "--list"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert sorted(results) == sorted(names)
    assert {n: r for n, r in results.items() if r != "ok"} == {}, python
    bad = [line for line in proc.stderr.splitlines() if BAD_STDERR.search(line)]
    assert bad == [], python
    assert "SECRET" not in proc.stdout + proc.stderr
    return proc, names


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("run", "busy_core"), [(n, n >= RUNS - BUSY_RUNS) for n in range(RUNS)], indirect=["busy_core"]
)
def test_demo_passes_every_time(run, busy_core):
    proc, names = demo()
    printed = timelines(proc.stdout)
    assert sorted(CLAIMS) == sorted(names), "every scenario needs the check of its title in CLAIMS"
    for name, check in CLAIMS.items():
        title, marks = printed[name]
        try:
            check(marks)
        except AssertionError as e:
            section = proc.stdout.split(f"== {name}:", 1)[1].split("\n== ", 1)[0]
            raise AssertionError(f"{name}: the title {title!r} is not what it printed: {e}\n{section}") from e


@pytest.mark.timeout(600)
def test_demo_passes_on_every_cpython():
    """The demo on every other CPython >= 3.10 this machine has. On 3.12 and 3.13 a child the crash-loop
    scenario's spawn had started when the pool closed outlived it (a spawn cancelled mid-way must kill
    what it started); on 3.11 the close came before that child existed."""
    pythons = other_cpythons_or_skip()
    package = os.path.dirname(os.path.dirname(tether.__file__))
    for exe in pythons:
        demo(exe, PYTHONPATH=package)
