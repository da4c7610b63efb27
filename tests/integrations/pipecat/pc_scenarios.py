"""pipecat WebsocketService reconnect scenarios, run as a script (pipecat is installed aside, see the
Makefile): `python pc_scenarios.py blip|outage|accept_drop [--tether] [--uvloop]` prints one JSON line.

The service is a minimal real `WebsocketService` subclass (connect / receive / disconnect through
pipecat's own `_websocket_connect`) driven by pipecat's receive loop against a `websockets` server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from importlib import metadata

import websockets

RECORDS: list[tuple[str, str]] = []  # (level, message) from loguru (pipecat) and logging (tether)


class Server:
    """mode "healthy" keeps connections open; "accept_drop" closes each at once."""

    def __init__(self) -> None:
        self.mode = "healthy"
        self.slow_accepts = False  # every handshake after the first takes 0.3 s
        self.connections: list[float] = []
        self.port = 0
        self._server = None
        self._sockets: set = set()

    async def start(self) -> None:
        self._server = await websockets.serve(
            self._handle,
            "127.0.0.1",
            self.port,
            logger=logging.getLogger("tests.pc_server"),
            process_request=self._accept,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            ws.transport.abort()
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), 5)

    def abort_all(self) -> None:
        for ws in list(self._sockets):
            ws.transport.abort()

    async def _accept(self, ws, request) -> None:
        if self.slow_accepts and self.connections:
            await asyncio.sleep(0.3)

    async def _handle(self, ws) -> None:
        self.connections.append(time.monotonic())
        self._sockets.add(ws)
        try:
            if self.mode == "accept_drop":
                await ws.close(1008, "invalid API key")
                return
            async for _ in ws:
                pass
        except websockets.ConnectionClosed:
            pass
        finally:
            self._sockets.discard(ws)


def make_service(url: str):
    from pipecat.services.websocket_service import WebsocketService

    class EchoService(WebsocketService):
        def __init__(self) -> None:
            super().__init__()
            self.received = 0

        def __str__(self) -> str:
            return "EchoService#0"

        async def _connect_websocket(self) -> None:
            self._websocket = await self._websocket_connect(url)

        async def _disconnect_websocket(self) -> None:
            if self._websocket is not None:
                await self._websocket.close()
                self._websocket = None

        async def _receive_messages(self) -> None:
            async for _ in self._websocket:
                self.received += 1

    return EchoService()


async def run(scenario: str) -> dict:
    server = Server()
    await server.start()
    service = make_service(f"ws://127.0.0.1:{server.port}")
    errors: list[tuple[str, bool]] = []

    async def report_error(frame, force_treat_as_permanent: bool = False) -> None:
        errors.append((frame.error, force_treat_as_permanent))

    await service._connect()
    await service._connect_websocket()
    loop_task = asyncio.ensure_future(service._receive_task_handler(report_error))
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    recovered_after = None
    if scenario == "blip":  # one TCP abort, the server stays up
        server.abort_all()
    elif scenario == "outage":  # the provider is unreachable for 12 s
        await server.stop()
        await asyncio.sleep(12)
        await server.start()
    elif scenario == "accept_drop":  # every new connection is refused after the handshake
        server.mode = "accept_drop"
        server.abort_all()
    end = time.monotonic() + (60 if scenario == "accept_drop" else 20)
    while time.monotonic() < end and not loop_task.done():
        if recovered_after is None and scenario != "accept_drop" and len(server.connections) > 1 and server._sockets:
            recovered_after = server.connections[-1] - t0
            break
        await asyncio.sleep(0.01)
    ended = loop_task.done()
    ended_after = time.monotonic() - t0 if ended else None
    service._disconnecting = True
    loop_task.cancel()
    await asyncio.wait({loop_task}, timeout=5)
    await service._disconnect_websocket()
    await server.stop()
    return {
        "scenario": scenario,
        "version": metadata.version("pipecat-ai"),
        "loop": type(asyncio.get_running_loop()).__module__,
        "connections": len(server.connections),
        "recovered_after": None if recovered_after is None else round(recovered_after, 3),
        "loop_ended": ended,
        "ended_after": None if ended_after is None else round(ended_after, 2),
        "permanent_error": any(p for _, p in errors),
        "errors": [e for e, _ in errors],
        "levels": sorted({level for level, _ in RECORDS}),
        "warnings_or_worse": sum(1 for level, _ in RECORDS if level in ("WARNING", "ERROR")),
    }


class Running:
    """``service`` connected to ``server`` with its receive loop running (``errors``: what it reported),
    torn down on exit: the scenarios below."""

    def __init__(self, server: Server, service) -> None:
        self.server, self.service = server, service
        self.errors: list[tuple[str, bool]] = []
        self.loop_task: asyncio.Task | None = None

    async def report_error(self, frame, force_treat_as_permanent: bool = False) -> None:
        self.errors.append((frame.error, force_treat_as_permanent))

    async def __aenter__(self) -> Running:
        await self.service._connect()
        await self.service._connect_websocket()
        self.loop_task = asyncio.ensure_future(self.service._receive_task_handler(self.report_error))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.loop_task is not None
        self.service._disconnecting = True
        self.loop_task.cancel()
        await asyncio.wait({self.loop_task}, timeout=5)
        await self.service._disconnect_websocket()
        await self.server.stop()


async def started(server: Server, make=make_service) -> Running:
    await server.start()
    return Running(server, make(f"ws://127.0.0.1:{server.port}"))


async def send_during_reconnect() -> dict:
    """The link drops and the application sends meanwhile through ``send_with_retry`` (Inworld TTS,
    Deepgram Flux, Cartesia turns in 1.8-1.13): how many sockets the provider then holds open."""
    server = Server()
    server.slow_accepts = True
    async with await started(server) as run:
        await asyncio.sleep(0.3)
        server.abort_all()
        await asyncio.sleep(0.05)
        send = asyncio.ensure_future(run.service.send_with_retry("hello", run.report_error))
        await asyncio.sleep(3)  # both reconnects are long done
        open_then = len(server._sockets)
        send.cancel()
        await asyncio.wait({send}, timeout=5)
        run.service._disconnecting = True
        await run.service._disconnect_websocket()
        await asyncio.sleep(0.3)
        return {"open_on_server": open_then, "open_after_disconnect": len(server._sockets)}


async def sender_reconnects_first() -> dict:
    """The link drops and the application's ``send_with_retry`` reconnects (and re-sends) before the
    receive loop's first retry is due: how many sockets the service opened, and whether the one the
    message went out on is the one it keeps."""
    server = Server()
    async with await started(server) as run:
        await asyncio.sleep(0.3)
        server.abort_all()
        await asyncio.sleep(0.05)
        await run.service.send_with_retry("hello", run.report_error)
        resent_on = run.service._websocket
        await asyncio.sleep(1.5)  # the loop's first retry (0.5 s at most here) is long done
        return {"connections": len(server.connections), "kept": run.service._websocket is resent_on}


async def reconnect_hook() -> dict:
    """A service that overrides ``_reconnect_websocket`` (1.14's TTS services close their audio contexts
    there): how often the hook ran for one drop."""
    server = Server()
    run = await started(server)
    hook_calls = 0
    reconnect = run.service._reconnect_websocket

    async def hooked(attempt_number: int) -> bool:
        nonlocal hook_calls
        hook_calls += 1
        return await reconnect(attempt_number)

    run.service._reconnect_websocket = hooked
    async with run:
        await asyncio.sleep(0.3)
        server.abort_all()
        end = time.monotonic() + 20
        while len(server.connections) < 2 and time.monotonic() < end:
            await asyncio.sleep(0.01)
        return {"connections": len(server.connections), "hook_calls": hook_calls}


def confirming_service(url: str):
    """A service that waits for the provider's confirmation message (pipecat 1.14's
    ``_receive_until_confirmed``, here within 1 s), as Deepgram Flux does."""
    from pipecat.services.websocket_service import WebsocketService

    class ConfirmingService(WebsocketService):
        def __init__(self) -> None:
            super().__init__()
            self.confirmed = asyncio.Event()

        def __str__(self) -> str:
            return "ConfirmingService#0"

        async def _connect_websocket(self) -> None:
            self.confirmed.clear()
            self._websocket = await self._websocket_connect(url)

        async def _disconnect_websocket(self) -> None:
            if self._websocket is not None:
                await self._websocket.close()
                self._websocket = None

        async def _handle(self, message) -> None:
            if message == "Connected":
                self.confirmed.set()

        async def _receive_messages(self) -> None:
            messages = aiter(self._websocket)
            if await self._receive_until_confirmed(messages, self.confirmed, self._handle, 1.0):
                async for _ in messages:
                    pass

    return ConfirmingService()


async def never_confirmed() -> dict:
    """A provider that accepts and never sends the confirmation."""
    server = Server()
    async with await started(server, confirming_service) as run:
        t0 = time.monotonic()
        assert run.loop_task is not None
        done, _ = await asyncio.wait({run.loop_task}, timeout=15)
        return {
            "loop_ended": bool(done),
            "ended_after": round(time.monotonic() - t0, 1) if done else None,
            "connections": len(server.connections),
            "permanent_error": any(p for _, p in run.errors),
        }


def capture_logs() -> None:
    from loguru import logger

    logger.remove()
    logger.add(lambda m: RECORDS.append((m.record["level"].name, m.record["message"])), level="DEBUG")

    class ToRecords(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            RECORDS.append((record.levelname, record.getMessage()))

    tether_log = logging.getLogger("tether")
    tether_log.addHandler(ToRecords())
    tether_log.setLevel(logging.DEBUG)


def drift() -> dict:
    """A renamed private method: install() must refuse and leave pipecat untouched."""
    from pipecat.services.websocket_service import WebsocketService

    from tether.integrations import pipecat

    original = WebsocketService._receive_task_handler
    del WebsocketService._verify_connection
    report = pipecat.install()
    return {
        "patched": list(report.patched),
        "refused": report.refused,
        "untouched": WebsocketService._receive_task_handler is original,
        "warnings": [m for level, m in RECORDS if level == "WARNING"],
    }


def edited(edit: bool) -> dict:
    """pipecat's receive loop compiled from its own source, with (``edit``) a change inside it that keeps
    every name: a normal close (1000) is retried instead of ending the loop. install() must refuse it."""
    import inspect
    import linecache
    import textwrap

    import pipecat.services.websocket_service as ws_module
    from pipecat.services.websocket_service import WebsocketService

    from tether.integrations import pipecat

    source = textwrap.dedent(inspect.getsource(WebsocketService._receive_task_handler))
    if edit:
        closed_ok = 'logger.debug(f"{self} connection closed normally: {e}")\n            break\n'
        assert closed_ok in source
        source = source.replace(closed_ok, closed_ok.replace("break", "continue"))
    filename = f"<pipecat websocket_service.py edited={edit}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    ns = dict(vars(ws_module))
    exec(compile(source, filename, "exec"), ns)
    loop = WebsocketService._receive_task_handler = ns["_receive_task_handler"]
    report = pipecat.install()
    return {
        "patched": list(report.patched),
        "refused": report.refused,
        "kinds": {k: v.kind.value for k, v in report.refused.items()},
        "untouched": WebsocketService._receive_task_handler is loop,
    }


if __name__ == "__main__":
    capture_logs()
    if sys.argv[1] == "drift":
        print(json.dumps(drift()))
        sys.exit(0)
    if sys.argv[1] in ("edited", "recompiled"):
        print(json.dumps(edited(sys.argv[1] == "edited")))
        sys.exit(0)
    if "--tether" in sys.argv:
        import tether
        from tether.integrations import pipecat

        # the never-confirmed provider: 3 retries, and a connection stable after 0.5 s (below the 1 s
        # confirmation timeout, as pipecat's 5 s default is below its services' 10 s)
        short = {"policy": tether.Backoff(0.05, 2.0, max_delay=0.2, jitter="none", max_attempts=3), "stable_after": 0.5}
        # the first retry of the sender-first drop comes late (0.5 s at most), after the sender's
        late = {"quiet_jitter": 0.5}
        given = {"never_confirmed": short, "sender_reconnects_first": late}.get(sys.argv[1], {})
        report = pipecat.install(**given)
        assert report.patched == ("websocket_service",), report
    if sys.argv[1] in ("send_during_reconnect", "never_confirmed", "sender_reconnects_first", "reconnect_hook"):
        print(json.dumps(asyncio.run(globals()[sys.argv[1]]())))
        sys.exit(0)
    run_loop = asyncio.run
    if "--uvloop" in sys.argv:
        import uvloop

        run_loop = uvloop.run
    print(json.dumps(run_loop(run(sys.argv[1]))))
