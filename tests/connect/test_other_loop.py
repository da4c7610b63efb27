"""A connection awaited from another thread's event loop (a worker or cleanup thread that runs its own
`asyncio.run`), against a `websockets` server: what waits there is woken there, and `aclose()` waits for
the end of the close. Before, a wait completed from the connection's thread set the other loop's future
without waking that loop (`flush()` slept until something else woke it, for ever if nothing did), and
`aclose()` returned before the close began."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import websockets

import tether
from support import DEADLINE


@pytest.fixture
async def server():
    """A `websockets` echo server that records what it read: (url, messages read, connection ended)."""
    got: list[str] = []
    ended = asyncio.Event()

    async def handler(ws):  # type: ignore[no-untyped-def]
        try:
            async for m in ws:
                got.append(m)
                if m.startswith("echo"):
                    await ws.send(m)
        finally:
            ended.set()

    async with websockets.serve(handler, "127.0.0.1", 0) as srv:
        yield f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}/", got, ended


async def on_another_loop(body: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """`body()` run by `asyncio.run` on a thread of its own; its result. A thread still running after
    DEADLINE is a hang: its loop is woken once so that the thread can end, and the test fails."""
    out: dict[str, Any] = {}
    loops: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loops.append(asyncio.get_running_loop())
        out["result"] = await body()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    await asyncio.to_thread(t.join, DEADLINE)
    hung = t.is_alive()
    if hung and loops:
        loops[0].call_soon_threadsafe(lambda: None)
        await asyncio.to_thread(t.join, DEADLINE)
    assert not hung, f"the other loop was never woken (after a nudge: {out})"
    if "error" in out:
        raise out["error"]
    return out["result"]


async def test_a_flush_awaited_on_another_loop_returns(server):
    url, got, _ = server
    async with tether.connect(url) as conn:

        async def flush() -> str:
            conn.send("x")
            await conn.flush()  # one round trip: completed from the connection's thread
            return "flushed"

        assert await on_another_loop(flush) == "flushed"
        assert got == ["x"]


async def test_a_recv_awaited_on_another_loop_gets_the_message(server):
    url, _, _ = server
    async with tether.connect(url) as conn:
        waiting = threading.Event()

        async def recv() -> Any:
            task = asyncio.ensure_future(conn.recv())
            await asyncio.sleep(0)  # its first step: nothing buffered, it waits
            waiting.set()
            return await task

        other = asyncio.ensure_future(on_another_loop(recv))
        await asyncio.to_thread(waiting.wait, DEADLINE)
        await conn.send("echo 1")
        assert await other == "echo 1"


async def test_aclose_awaited_on_another_loop_returns_once_closed(server):
    url, got, ended = server
    conn = await tether.connect(url, close_timeout=DEADLINE / 2)

    async def close() -> tuple[str, bool]:
        for i in range(50):
            conn.send(f"m{i}")
        await conn.aclose()
        state = conn.state
        try:
            conn.send("late")
        except tether.ConnectionClosed:
            return state, True
        return state, False

    assert await on_another_loop(close) == ("closed", True)
    # a close on a live connection writes everything accepted first, and the server has it
    assert got == [f"m{i}" for i in range(50)]
    await asyncio.wait_for(ended.wait(), DEADLINE)
