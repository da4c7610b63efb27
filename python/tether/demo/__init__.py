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

from ..testing._timeline_html import Section, ms, page
from ._timeline import Skip, Timeline

# Scenarios run in this order (each name is a module here: tests/demo/test_demo.py checks it); any other
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


async def _run_one(name: str, timeout: float) -> tuple[str, dict[str, Any], Section]:
    mod = importlib.import_module(f"{__name__}.{name}")
    title = getattr(mod, "TITLE", "")
    print(f"\n== {name}: {title}", flush=True)
    tl = Timeline(name)
    tl.capture_logs("tether")  # for the page; the console has them from logging already
    status = "ok"
    try:
        await asyncio.wait_for(mod.run(tl), timeout)
    except Skip as e:
        print(f"  skipped: {e}")
        status = "skipped"
    except Exception:
        traceback.print_exc()
        status = "FAILED"
    finally:
        tl.stop()
    s = tl.summary() if status != "skipped" else {}
    return status, s, Section(name, title, status, tl, _said(s))


def _said(s: dict[str, Any]) -> str:
    """The summary's detection and recovery times as a sentence for the page."""
    parts = [
        f"{what} {ms(s[key] / 1000)} after the fault"
        for key, what in (("detect_ms", "detected"), ("recover_ms", "recovered"))
        if s.get(key) is not None
    ]
    return "; ".join(parts)


async def main(names: list[str] | None = None, timeout: float = 60.0, html: str | None = None) -> int:
    names = names or discover()
    unknown = [n for n in names if n not in discover()]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; available: {', '.join(discover())}", file=sys.stderr)
        return 2
    results = []
    sections = []
    t0 = time.monotonic()
    for n in names:
        status, s, section = await _run_one(n, timeout)
        results.append((n, status, s))
        sections.append(section)
    print(f"\n== summary ({time.monotonic() - t0:.1f}s)")
    print(f"  {'scenario':<24} {'result':<8} {'detect':>10} {'recover':>10}")
    for n, status, s in results:
        d = s.get("detect_ms")
        r = s.get("recover_ms")
        fmt = lambda v: "-" if v is None else f"{v:.1f} ms"  # noqa: E731
        print(f"  {n:<24} {status:<8} {fmt(d):>10} {fmt(r):>10}")
    if html:
        _write_page(html, sections)
        print(f"\ntimeline page: {html}")
    return 1 if any(st == "FAILED" for _, st, _ in results) else 0


def _write_page(path: str, sections: list[Section]) -> None:
    # every scenario has ended: nothing else waits on the loop while the file is written
    with open(path, "w", encoding="utf-8") as f:
        f.write(page("python -m tether demo", sections, intro=INTRO))


INTRO = (
    "Every fault scenario against tether's embedded servers, each on its own time axis (0 = the "
    "scenario's start): the states of the connection, loop or pool it watches, the fault, its detection, "
    "each retry with its delay, and the recovery. Hover a marker for its details; each section's table "
    "lists every entry."
)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="  %(levelname)-7s %(name)s: %(message)s"
    )
    from .. import sync_log_level

    sync_log_level()
