"""``python -m tether demo``: every fault scenario against the embedded server, with a timeline.

Each scenario is a module in this package with ``TITLE`` and ``async def run(tl: Timeline)``; it marks
the fault, its detection and the recovery on the timeline, and raises on a wrong outcome (or ``Skip``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
import sys
import time
import traceback
from typing import Any

from ._timeline import Skip, Timeline

# Scenarios run in this order (each name is a module here: tests/test_demo.py checks it); any other
# module found here runs after them, alphabetically.
ORDER = [
    "flapping",
    "ws_server_close",
    "ws_ping_timeout",
    "ws_send_during_outage",
    "ws_fatal",
    "ws_first_connect",
    "chaos_wifi_switch",
    "stall_resume",
    "ghost_room",
    "bounded_close",
    "pool_spawn_fail",
    "pool_crash_loop",
    "readiness_race",
]


def discover() -> list[str]:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


async def _run_one(name: str, timeout: float) -> tuple[str, dict[str, Any]]:
    mod = importlib.import_module(f"{__name__}.{name}")
    print(f"\n== {name}: {getattr(mod, 'TITLE', '')}", flush=True)
    tl = Timeline(name)
    try:
        await asyncio.wait_for(mod.run(tl), timeout)
    except Skip as e:
        print(f"  skipped: {e}")
        return "skipped", {}
    except Exception:
        traceback.print_exc()
        return "FAILED", tl.summary()
    return "ok", tl.summary()


async def main(names: list[str] | None = None, timeout: float = 60.0) -> int:
    names = names or discover()
    unknown = [n for n in names if n not in discover()]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; available: {', '.join(discover())}", file=sys.stderr)
        return 2
    results = []
    t0 = time.monotonic()
    for n in names:
        status, s = await _run_one(n, timeout)
        results.append((n, status, s))
    print(f"\n== summary ({time.monotonic() - t0:.1f}s)")
    print(f"  {'scenario':<24} {'result':<8} {'detect':>10} {'recover':>10}")
    for n, status, s in results:
        d = s.get("detect_ms")
        r = s.get("recover_ms")
        fmt = lambda v: "-" if v is None else f"{v:.1f} ms"  # noqa: E731
        print(f"  {n:<24} {status:<8} {fmt(d):>10} {fmt(r):>10}")
    return 1 if any(st == "FAILED" for _, st, _ in results) else 0


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="  %(levelname)-7s %(name)s: %(message)s"
    )
    from .. import sync_log_level

    sync_log_level()
