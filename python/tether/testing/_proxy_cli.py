"""``python -m tether proxy --upstream HOST:PORT [--listen HOST:PORT] [--control HOST:PORT]``.

Puts a ChaosProxy in front of your own server so you can reproduce a Wi-Fi switch (``blackhole``, then
``heal``), an edge reset, latency or a slow link against it. Commands, one per line, on stdin and on
the optional TCP control port: see ``COMMANDS`` (``--help`` lists them).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading

from ._chaos import ChaosProxy

# The commands read from stdin and the control port: one list for `--help`, the `help` command and the
# line printed at start-up, so none of them can miss one.
COMMANDS = (
    ("blackhole [up|down|both]", "stop forwarding, no FIN, no RST (a Wi-Fi switch); held bytes flow after heal"),
    ("reset", "reset (RST) every connection"),
    ("close", "close (FIN) every connection"),
    ("latency MS [up|down|both]", "delay the traffic by MS milliseconds"),
    ("bandwidth BPS|off [up|down|both]", "throttle to BPS bytes per second, or stop throttling"),
    ("heal", "clear every fault"),
    ("stats", "print the proxy's counters"),
    ("help", "list the commands"),
    ("quit", "stop the proxy (also: exit)"),
)
HELP = "commands: " + " | ".join(c for c, _ in COMMANDS)


def commands_help() -> str:
    """The commands with what each does, for ``python -m tether proxy --help``."""
    width = max(len(c) for c, _ in COMMANDS)
    lines = [f"  {c:<{width}}  {what}" for c, what in COMMANDS]
    return "commands, one per line on stdin or on the --control port (direction: both unless given):\n" + "\n".join(
        lines
    )


def execute(proxy: ChaosProxy, line: str) -> tuple[str, bool]:
    """Run one command; returns (reply, quit?)."""
    parts = line.split()
    if not parts:
        return "", False
    cmd, args = parts[0].lower(), parts[1:]
    try:
        if cmd == "blackhole":
            proxy.blackhole(*(args[:1] or ["both"]))
            return f"ok: black-holed {args[0] if args else 'both'}", False
        if cmd == "reset":
            return f"ok: reset {proxy.reset()} connection(s)", False
        if cmd == "close":
            return f"ok: closed {proxy.close()} connection(s)", False
        if cmd == "latency":
            proxy.latency(float(args[0]), *(args[1:2] or ["both"]))
            return f"ok: latency {args[0]} ms", False
        if cmd == "bandwidth":
            bps = None if args[0].lower() in ("off", "none") else int(args[0])
            proxy.bandwidth(bps, *(args[1:2] or ["both"]))
            return f"ok: bandwidth {args[0]}", False
        if cmd == "heal":
            proxy.heal()
            return "ok: healed", False
        if cmd == "stats":
            return " ".join(f"{k}={v}" for k, v in proxy.stats().items()), False
        if cmd in ("quit", "exit"):
            return "bye", True
        if cmd == "help":
            return HELP, False
        return f"error: unknown command {cmd!r}; {HELP}", False
    except (IndexError, ValueError, TypeError) as e:
        return f"error: {e}; {HELP}", False


async def main(args) -> int:
    async with ChaosProxy(args.upstream, listen=args.listen) as proxy:
        print(f"tether proxy: listening on {proxy.address} -> {proxy.upstream}", flush=True)
        print(HELP, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)

        async def serve_lines(reader, writer):
            while not stop.is_set():
                line = await reader.readline()
                if not line:
                    break
                reply, quit_ = execute(proxy, line.decode(errors="replace"))
                if reply:
                    writer.write((reply + "\n").encode())
                    await writer.drain()
                if quit_:
                    stop.set()
            writer.close()

        server = None
        if args.control:
            host, _, port = args.control.rpartition(":")
            server = await asyncio.start_server(serve_lines, host or "127.0.0.1", int(port))
            print(
                f"tether proxy: control on {server.sockets[0].getsockname()[0]}:{server.sockets[0].getsockname()[1]}",
                flush=True,
            )

        def on_stdin_line(line: str) -> None:
            reply, quit_ = execute(proxy, line)
            if reply:
                print(reply, flush=True)
            if quit_:
                stop.set()

        def read_stdin() -> None:
            # a daemon thread: a blocked readline must not keep the process alive at exit
            for line in sys.stdin:
                loop.call_soon_threadsafe(on_stdin_line, line)

        if sys.stdin is not None and not sys.stdin.closed:
            threading.Thread(target=read_stdin, name="tether-proxy-stdin", daemon=True).start()
        await stop.wait()
        if server:
            server.close()
    return 0
