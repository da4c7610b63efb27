"""What the tests share: one timing unit, one way to wait for a condition, the connection and pool
profiles, and small readers of what tether reports. The fake servers are the modules beside this one.

Importing this module imports nothing heavy (not even tether): the integration scenarios, run as scripts
in subprocesses against framework releases installed aside, import the fakes from here.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# The timing unit. A scenario's own waits (a server that stays silent, a deadline that must pass, a
# profile's ping interval) are written as multiples of it. Waiting for something to happen is not a
# scenario wait: use `eventually`, an asyncio.Event or an event stream instead of a sleep.
MS = 0.001

# How long `eventually` waits by default: far longer than anything should take, so that a slow, shared
# 2-core box does not fail a test that is right; a wrong test still fails, just later.
DEADLINE = 10.0

# A connection that notices a loss and reconnects within a second or so: pings every 200 ms, an answer
# due 500 ms after, a handshake or close bounded by 2 s / 500 ms. Tests whose scenario needs other
# values say so next to the override.
FAST = dict(ping_interval=200 * MS, ping_timeout=500 * MS, open_timeout=2000 * MS, close_timeout=500 * MS)


def policy(**kw: Any) -> Any:
    """A reconnect policy that retries fast and deterministically (no jitter): 20 ms doubling up to
    100 ms, unless overridden (``initial``, ``factor``, ``max_delay``, any other ``Backoff`` argument)."""
    import tether

    kw.setdefault("jitter", "none")
    return tether.Backoff(
        kw.pop("initial", 20 * MS), kw.pop("factor", 2.0), max_delay=kw.pop("max_delay", 100 * MS), **kw
    )


def respawn() -> Any:
    """A ProcPool respawn policy: 50 ms doubling up to 500 ms, no jitter."""
    import tether

    return tether.Backoff(50 * MS, 2, max_delay=500 * MS, jitter="none")


async def eventually(predicate: Callable[[], T], timeout: float = DEADLINE, *, what: str | None = None) -> T:
    """Wait until ``predicate()`` returns something truthy and return it; fail the test with an
    AssertionError naming ``what`` if that has not happened within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what or getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(10 * MS)


async def drop(server: Any, n: int = 1) -> None:
    """Drop the server's ``n`` connections once it has them: the SignalServer registers a connection
    after writing the handshake's answer, which the client may act on first (a drop then finds none)."""
    assert await server.wait_for(n), f"the server never had {n} connection(s)"
    assert server.drop() == n


def first_of(items: list[Any], kind: type | tuple[type, ...]) -> Any:
    """The first item of ``items`` that is a ``kind``, or None."""
    return next((x for x in items if isinstance(x, kind)), None)


async def collect(stream: AsyncIterable[Any], into: list[Any]) -> None:
    """Append every item of ``stream`` to ``into``. Pass a stream that already subscribed (an event
    stream subscribes when ``events()`` is called), so nothing between the call and the task's first
    step is missed."""
    async for item in stream:
        into.append(item)


async def frozen_server_is_detected_and_recovered(srv: Any) -> None:
    """A SignalServer that stops answering: the ping that gets no answer ends the link (ping timeout)
    within interval + timeout (and slack), the reconnect waits out its backoff, and the link comes back
    and carries a message again."""
    import time

    import tether
    from tether import events as ev

    got: list[Any] = []
    async with tether.connect(srv.url, policy=policy(), **FAST) as c:
        watcher = asyncio.ensure_future(collect(c.events(), got))
        await srv.wait_for(1)
        t0 = time.monotonic()
        srv.freeze()
        lost = await eventually(lambda: first_of(got, ev.ConnectionLost), what="ConnectionLost")
        assert "ping timeout" in lost.reason, lost.reason
        assert time.monotonic() - t0 < FAST["ping_interval"] + FAST["ping_timeout"] + 2.0
        srv.unfreeze()
        await eventually(lambda: first_of(got, ev.Reconnected), what="Reconnected")
        await c.send("after")
        assert await c.recv() == "after"
    await asyncio.wait_for(watcher, 5)


def running(pid: int) -> bool:
    """Whether process ``pid`` is alive and not a zombie (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"
    except OSError:
        return False


def records(caplog: Any, logger_prefix: str = "tether") -> list[Any]:
    return [r for r in caplog.records if r.name.startswith(logger_prefix)]


def returns_at_once(aw: Any) -> bool:
    """Whether awaiting the native coroutine ``aw`` returns at its first step, with no waiting (it is
    used up either way: closed if it would wait)."""
    try:
        aw.send(None)
    except StopIteration:
        return True
    aw.close()
    return False


def accept_key(request: bytes) -> str:
    """The `Sec-WebSocket-Accept` a server answers the upgrade `request` (its raw head) with."""
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    return base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()).decode()


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """An unmasked close frame with `code` and `reason`, as a server writes it."""
    payload = code.to_bytes(2, "big") + reason
    return bytes([0x88, len(payload)]) + payload


class RawServer:
    """A raw asyncio server on a random local port, for tests that script the bytes a WebSocket server
    sends: a subclass defines `handle(reader, writer)`; `async with` starts and closes it."""

    server: asyncio.Server

    async def __aenter__(self) -> Any:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


def other_cpythons() -> list[str]:
    """CPython 3.10+ interpreters on this machine besides the one running the tests (PATH, pyenv)."""
    found: dict[str, str] = {}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(10, 20)]
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv.glob("3.1*/bin/python3"))
    for exe in filter(None, candidates):
        try:
            out = subprocess.run(
                [exe, "-c", "import sys; print(sys.version_info[:2] >= (3, 10), sys.version.split()[0])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        ok, _, ver = out.stdout.strip().partition(" ")
        if out.returncode == 0 and ok == "True" and ver.rsplit(".", 1)[0] != "{}.{}".format(*sys.version_info[:2]):
            found.setdefault(ver.rsplit(".", 1)[0], exe)
    return list(found.values())


def other_cpythons_or_skip() -> list[str]:
    """`other_cpythons()`, skipping the test where there is none."""
    import pytest

    pythons = other_cpythons()
    if not pythons:
        pytest.skip("no other CPython >= 3.10 on this machine")
    return pythons


def installed_version(dist: str) -> str | None:
    """The version of `dist` installed in the running venv, by its metadata (None: not installed). Not by
    importing it: `import getstream` may find tests/integrations/getstream instead, a namespace package of
    the same name once tests/integrations is on sys.path."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


R = TypeVar("R")


def each_release(
    releases: Sequence[Path], faults: Sequence[str], run: Callable[[Path, str], R], *, at_once: int
) -> dict[tuple[str, str], R]:
    """`run(release, fault)` for every framework release installed aside (its directory) and every fault,
    `at_once` at a time (each run mostly waits on its fault): the results by (directory name, fault)."""
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        runs = {(p.name, f): pool.submit(run, p, f) for p in releases for f in faults}
        return {key: r.result() for key, r in runs.items()}
