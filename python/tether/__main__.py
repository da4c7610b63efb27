"""``python -m tether demo [scenario ...] [--html PATH]`` and ``python -m tether proxy --upstream HOST:PORT``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any


def _run_bounded(coro: Coroutine[Any, Any, int], cleanup: float = 2.0) -> int:
    """Like asyncio.run, but the final cleanup is bounded: a task left behind that ignores
    cancellation (a wedged SDK call, say) cannot keep the process alive."""
    loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(coro)
        leftovers = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in leftovers:
            t.cancel()
        if leftovers:
            loop.run_until_complete(asyncio.wait(leftovers, timeout=cleanup))
        loop.run_until_complete(loop.shutdown_asyncgens())
        return result
    finally:
        loop.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tether")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run every fault scenario against the embedded server, with a timeline")
    d.add_argument("scenarios", nargs="*", help="run only these (default: all)")
    d.add_argument("--list", action="store_true", help="list scenarios and exit")
    d.add_argument("-v", "--verbose", action="store_true", help="show DEBUG records too")
    d.add_argument("--timeout", type=float, default=60.0, help="per-scenario bound in seconds")
    d.add_argument(
        "--html", metavar="PATH", help="also write the run as a timeline page (one self-contained HTML file)"
    )
    from .testing._proxy_cli import commands_help

    px = sub.add_parser(
        "proxy",
        help="a chaos proxy in front of your own server (reproduce a Wi-Fi switch)",
        description="A chaos proxy in front of your own server, driven by commands on stdin or a control port.",
        epilog=commands_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    px.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    px.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (default 127.0.0.1:0)")
    px.add_argument("--control", default=None, help="HOST:PORT for the line-based control interface")
    args = p.parse_args(argv)

    if args.cmd == "demo":
        from . import demo

        if args.list:
            print("\n".join(demo.discover()))
            return 0
        demo.setup_logging(args.verbose)
        return _run_bounded(demo.main(args.scenarios or None, args.timeout, args.html))
    if args.cmd == "proxy":
        from .testing import _proxy_cli

        return asyncio.run(_proxy_cli.main(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())
