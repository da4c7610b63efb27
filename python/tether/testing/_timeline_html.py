"""The HTML page of ``tether.testing.Timeline``: one self-contained file (inline CSS and SVG, no script,
no font, no image, nothing fetched when it is opened), so it can be attached to a failing test or a bug
report and opened anywhere.

Each section is one recorder: a row per watched source, whose band shows the states its events imply
(connecting, connected, down, waiting a retry's delay, failed, unhealthy), with a marker per event; a
row for the recorder's own marks; the fault, its detection and the recovery as lines across the rows;
a time axis; and a table of every entry. Hovering any marker shows its time, kind and text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._timeline import Entry, Timeline, _Lane

WIDTH = 1000  # the SVG's coordinate width; it scales to the page
LEFT = 150  # room for the row labels
RIGHT = 24
ROW = 30
TIER = 14  # one row of labels above the plot
MAX_TIERS = 4
CHAR = 6.1  # average width of an 11px label character, for placing labels without overlap

# the states a source's events imply, with their colours and legend text
STATES = {
    "connecting": ("#9cc3e6", "connecting (an attempt in progress)"),
    "connected": ("#5cb85c", "connected"),
    "down": ("#f0ad4e", "down (lost, not yet retrying)"),
    "backoff": ("#f7d59c", "waiting a retry's delay"),
    "failed": ("#d9534f", "gave up"),
    "unhealthy": ("#e8847f", "pool unhealthy"),
    "healthy": ("#8fd19e", "pool healthy"),
    "closed": ("#c8c8c8", "closed (its events ended)"),
}
# lines across a section, for marks of these kinds (any case)
LINES = {"fault": "#d9534f", "detected": "#e67e22", "recovered": "#2e8b57"}
LEVELS = {"DEBUG": "#9a9a9a", "INFO": "#337ab7", "WARNING": "#e67e22", "ERROR": "#c0392b", "CRITICAL": "#8e1b10"}


@dataclass
class Section:
    """One recorder on the page: its heading, a subtitle, a status ("ok", "FAILED", "skipped" or None)
    and a summary line."""

    name: str
    subtitle: str
    status: str | None
    timeline: Timeline
    summary: str = ""


def ms(seconds: float) -> str:
    """A duration for a person: "0.4 ms", "12.5 ms", "402 ms", "1.25 s"."""
    v = seconds * 1000
    if abs(v) < 10:
        return f"{v:.1f} ms"
    if abs(v) < 1000:
        return f"{v:.0f} ms"
    return f"{seconds:.2f} s"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ticks(span: float) -> list[float]:
    """Round tick positions (1, 2 or 5 times a power of ten) from 0 to ``span`` seconds, 4 to 10 of them."""
    raw = span / 8
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 0.001
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(int(span / step) + 1)]


@dataclass
class _Canvas:
    """The SVG of one section: its rows are drawn into ``parts``; the labels of the lines across are
    collected and laid out in tiers once every line is known."""

    span: float
    parts: list[str] = field(default_factory=list)
    labels: list[tuple[float, str, str, str]] = field(default_factory=list)  # x, text, colour, tooltip

    def x(self, t: float) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * max(0.0, min(t, self.span)) / self.span

    def add(self, svg: str) -> None:
        self.parts.append(svg)


def _tip(e: Entry) -> str:
    where = f" · {e.lane}" if e.lane else ""
    return f"<title>{esc(ms(e.at))}{esc(where)} · {esc(e.kind)}\n{esc(e.text)}</title>"


def _states(entries: Sequence[Entry], lane: _Lane, span: float) -> list[tuple[float, float, str]]:
    """(from, to, state) segments of one source: from its state when watching began, then from the events
    that imply a state, to the end of its stream (then "closed") or of the page."""
    out: list[tuple[float, float, str]] = []
    state: str | None = lane.initial
    since = lane.started_at
    end = lane.ended_at
    for e in entries:
        new = {
            "Connecting": "connecting",
            "Connected": "connected",
            "Reconnected": "connected",
            "ConnectionLost": "down",
            "Reconnecting": "backoff",
            "GaveUp": "failed",
            "PoolClosed": "closed",
        }.get(e.event or "")
        if e.event == "HealthChanged":
            new = "healthy" if e.fields.get("healthy") else "unhealthy"
        if new is None or new == state:
            continue
        if state is not None:
            out.append((since, e.at, state))
        state, since = new, e.at
    if state is not None:
        stop = span if end is None else end
        out.append((since, stop, state))
        if end is not None and state not in ("failed", "closed") and end < span:
            out.append((end, span, "closed"))
    return out


def _marker(c: _Canvas, e: Entry, y: float) -> None:
    """One event's marker on the row centred at ``y``, with its tooltip."""
    x = c.x(e.at)
    tip = _tip(e)
    ev = e.event or ""
    if ev == "ConnectionLost":
        c.add(
            f'<g class="m">{tip}<path d="M{x - 5:.1f},{y - 5:.1f} l10,10 m0,-10 l-10,10" stroke="#b52b27" '
            f'stroke-width="2.5"/></g>'
        )
    elif ev in ("Connected", "Reconnected", "Spawned"):
        r = 5 if ev == "Reconnected" else 4
        c.add(f'<g class="m">{tip}<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="#2e7d32" stroke="#fff"/></g>')
    elif ev == "Connecting":
        c.add(f'<g class="m">{tip}<rect x="{x - 1.5:.1f}" y="{y - 8:.1f}" width="3" height="16" fill="#31708f"/></g>')
    elif ev in ("Reconnecting", "SpawnFailed"):
        delay = float(e.fields.get("delay", e.fields.get("retry_in", 0.0)) or 0.0)
        x2 = c.x(e.at + delay)
        if x2 - x >= 1:
            c.add(
                f'<g class="m">{tip}<rect x="{x:.1f}" y="{y + 8:.1f}" width="{x2 - x:.1f}" height="5" '
                f'fill="url(#hatch)" stroke="#c77c0e" stroke-width="0.6"/></g>'
            )
            label = ms(delay)
            if x2 - x >= len(label) * 5 + 6:
                c.add(
                    f'<text x="{(x + x2) / 2:.1f}" y="{y + 22:.1f}" class="small" text-anchor="middle">{esc(label)}</text>'
                )
        colour = "#c0392b" if ev == "SpawnFailed" else "#c77c0e"
        c.add(
            f'<g class="m">{tip}<path d="M{x:.1f},{y - 6:.1f} l5,9 h-10 z" fill="{colour}" stroke="#fff" '
            f'stroke-width="0.8"/></g>'
        )
    elif ev in ("GaveUp", "Exhausted"):
        c.add(f'<g class="m">{tip}<rect x="{x - 5:.1f}" y="{y - 5:.1f}" width="10" height="10" fill="#a52a2a"/></g>')
    elif ev == "Alarm":
        c.add(
            f'<g class="m">{tip}<path d="M{x:.1f},{y - 8:.1f} l7,13 h-14 z" fill="#f39c12" stroke="#7a4a00"/>'
            f'<text x="{x:.1f}" y="{y + 4:.1f}" class="small" text-anchor="middle">!</text></g>'
        )
    elif ev == "HealthChanged":
        fill = "#2e7d32" if e.fields.get("healthy") else "#c0392b"
        c.add(f'<g class="m">{tip}<path d="M{x:.1f},{y - 6:.1f} l6,6 l-6,6 l-6,-6 z" fill="{fill}" stroke="#fff"/></g>')
    else:  # another event, or a mark given a lane
        c.add(f'<g class="m">{tip}<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="#777" stroke="#fff"/></g>')


def _layout_labels(c: _Canvas) -> tuple[int, list[str]]:
    """Place the labels of the lines in tiers above the plot so none overlaps another; returns the
    number of tiers used and their SVG. A label that fits no tier keeps only its line and tooltip."""
    ends: list[float] = []
    placed: list[tuple[float, int, str, str, str, str]] = []
    for x, text, colour, tip in sorted(c.labels):
        width = len(text) * CHAR
        anchor, start = ("start", x + 3) if x + 3 + width <= WIDTH - 2 else ("end", x - 3 - width)
        for tier, end in enumerate(ends):
            if start > end + 6:
                ends[tier] = start + width
                break
        else:
            if len(ends) == MAX_TIERS:
                continue
            ends.append(start + width)
            tier = len(ends) - 1
        placed.append((x, tier, text, colour, tip, anchor))
    svg = []
    for x, tier, text, colour, tip, anchor in placed:
        y = (tier + 1) * TIER - 3
        tx = x + 3 if anchor == "start" else x - 3
        svg.append(
            f'<g class="m">{tip}<text x="{tx:.1f}" y="{y}" class="label" fill="{colour}" '
            f'text-anchor="{anchor}">{esc(text)}</text></g>'
        )
    return len(ends), svg


def section_svg(tl: Timeline) -> str:
    entries = list(tl.entries)
    lanes = {lane.name: lane for lane in tl._lanes}
    ends = [lane.ended_at for lane in lanes.values()]
    last = max([e.at for e in entries] + [t for t in ends if t is not None] + [0.001])
    # room after the last entry for a retry delay that runs past it, and a margin
    for e in entries:
        if e.event in ("Reconnecting", "SpawnFailed"):
            last = max(last, e.at + float(e.fields.get("delay", e.fields.get("retry_in", 0.0)) or 0.0))
    span = last * 1.04
    c = _Canvas(span)

    def line_kind(e: Entry) -> str | None:
        k = e.kind.lower()
        return k if k in LINES else None

    marks = [e for e in entries if e.lane is None and not e.kind.startswith("log ") and not line_kind(e)]
    logs = [e for e in entries if e.lane is None and e.kind.startswith("log ")]
    rows: list[tuple[str, str]] = []  # (kind, name)
    if marks:
        rows.append(("marks", "marks"))
    rows += [("lane", name) for name in lanes]
    if logs:
        rows.append(("logs", "log records"))
    if not rows:  # only lines across: they need a row to cross
        rows.append(("marks", "marks"))

    # the rows, placed below the label tiers once their number is known (translated as a group)
    body = c.parts
    for i, (kind, name) in enumerate(rows):
        y = i * ROW + ROW / 2
        body.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" class="row"/>')
        body.append(
            f'<text x="{LEFT - 8}" y="{y + 4:.1f}" class="rowname" text-anchor="end">{esc(_short(name))}</text>'
        )
        if kind == "lane":
            mine = [e for e in entries if e.lane == name]
            for a, b, state in _states(mine, lanes[name], span):
                colour, what = STATES[state]
                x1, x2 = c.x(a), c.x(b)
                body.append(
                    f'<rect x="{x1:.1f}" y="{y - 6:.1f}" width="{max(x2 - x1, 0.8):.1f}" height="12" '
                    f'fill="{colour}" class="band"><title>{esc(what)}: {esc(ms(a))} to {esc(ms(b))} '
                    f"({esc(ms(b - a))})</title></rect>"
                )
            for e in mine:
                _marker(c, e, y)
        elif kind == "marks":
            label_end = -1.0
            for e in marks:
                x = c.x(e.at)
                body.append(
                    f'<g class="m">{_tip(e)}<line x1="{x:.1f}" y1="{y - 9:.1f}" x2="{x:.1f}" y2="{y + 9:.1f}" '
                    f'stroke="#555" stroke-width="1.5"/><circle cx="{x:.1f}" cy="{y - 9:.1f}" r="3" fill="#555"/></g>'
                )
                # a short label beside the pin where it has room: the kind, or the text of a plain
                # "mark"; a note is a sentence, left to the tooltip and the table
                text = _short(e.text, 28) if e.kind == "mark" else "" if e.kind == "note" else _short(e.kind, 28)
                width = len(text) * CHAR * 0.9
                if text and x + 5 > label_end + 4 and x + 5 + width <= WIDTH - 2:
                    body.append(f'<text x="{x + 5:.1f}" y="{y + 4:.1f}" class="pin">{esc(text)}</text>')
                    label_end = x + 5 + width
        else:
            for e in logs:
                x = c.x(e.at)
                colour = LEVELS.get(e.kind.split(" ", 1)[1], "#777")
                body.append(
                    f'<g class="m">{_tip(e)}<rect x="{x - 1.5:.1f}" y="{y - 8:.1f}" width="3" height="16" '
                    f'fill="{colour}"/></g>'
                )
    height = len(rows) * ROW
    # lines across every row for the fault, its detection and the recovery, labelled above the plot
    fault_at: float | None = None
    for e in entries:
        k = line_kind(e)
        if k is None:
            continue
        x = c.x(e.at)
        colour = LINES[k]
        dash = ' stroke-dasharray="5,3"' if k == "fault" else ""
        body.append(
            f'<g class="m">{_tip(e)}<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}" stroke="{colour}" '
            f'stroke-width="2"{dash}/></g>'
        )
        label = k
        if k == "fault":
            fault_at = e.at
        elif fault_at is not None:
            label = f"{k} +{ms(e.at - fault_at)}"
        c.labels.append((x, label, colour, _tip(e)))
    tiers, labels = _layout_labels(c)
    top = max(tiers, 1) * TIER + 4
    axis_y = top + height + 4
    out = [f'<g transform="translate(0,{top})">', *body, "</g>", *labels]
    # the time axis
    out.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{WIDTH - RIGHT}" y2="{axis_y}" class="axis"/>')
    for t in _ticks(span):
        x = c.x(t)
        out.append(f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{axis_y + 4}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{axis_y + 16}" class="tick" text-anchor="middle">{esc(ms(t))}</text>')
    total = axis_y + 24
    return (
        f'<svg viewBox="0 0 {WIDTH} {total}" width="100%" role="img" aria-label="{esc(tl.title)} timeline" '
        f'preserveAspectRatio="xMinYMin meet">{"".join(out)}</svg>'
    )


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


# defined once per page, in a hidden SVG: the sections and the legend refer to it by id
_DEFS = (
    '<svg width="0" height="0" style="position:absolute" aria-hidden="true"><defs><pattern id="hatch" width="5" '
    'height="5" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="5" height="5" '
    'fill="#fbe3b6"/><line x1="0" y1="0" x2="0" y2="5" stroke="#d9901f" stroke-width="2"/></pattern></defs></svg>'
)

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0; }
section { border-top: 1px solid #ddd; padding: 14px 0 10px; }
.sub { color: #555; margin: 2px 0 6px; }
.status { display: inline-block; font-size: 12px; padding: 0 7px; border-radius: 9px; margin-left: 8px;
          vertical-align: 2px; color: #fff; background: #777; }
.status.ok { background: #2e7d32; } .status.FAILED { background: #c0392b; } .status.skipped { background: #999; }
svg { display: block; overflow: visible; }
svg text { font: 11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; fill: #333; }
svg text.small { font-size: 9px; fill: #6b4a12; }
svg text.pin { font-size: 10px; fill: #444; }
svg text.label { font-weight: 600; }
svg text.rowname { font-size: 12px; fill: #333; }
svg text.tick { fill: #666; }
svg .row { stroke: #eee; } svg .axis { stroke: #999; } svg .grid { stroke: #f0f0f0; }
svg .band { opacity: .9; }
svg .m { cursor: default; } svg .m:hover { filter: brightness(.8); }
details { margin: 6px 0 0; } summary { cursor: pointer; color: #555; }
table { border-collapse: collapse; font-size: 12.5px; margin-top: 6px; width: 100%; }
td, th { border-bottom: 1px solid #eee; padding: 2px 8px; text-align: left; vertical-align: top; }
td.t { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; color: #555; }
td.k { white-space: nowrap; font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; color: #444; font-size: 12.5px; margin: 8px 0 4px; }
.legend span { white-space: nowrap; } .legend svg { display: inline-block; vertical-align: -3px; }
"""


def _legend() -> str:
    items = []
    for colour, what in STATES.values():
        items.append(
            f'<span><svg width="22" height="12"><rect width="22" height="12" fill="{colour}"/></svg> {esc(what)}</span>'
        )
    shapes = [
        ('<rect x="9.5" y="0" width="3" height="14" fill="#31708f"/>', "attempt starts (Connecting)"),
        ('<circle cx="11" cy="7" r="4" fill="#2e7d32"/>', "connected / spawned"),
        ('<path d="M6,2 l10,10 m0,-10 l-10,10" stroke="#b52b27" stroke-width="2.5"/>', "connection lost"),
        (
            '<path d="M5,2 l5,9 h-10 z" fill="#c77c0e" transform="translate(6,0)"/>'
            '<rect x="12" y="9" width="10" height="5" fill="url(#hatch)"/>',
            "retry and its delay",
        ),
        ('<rect x="6" y="2" width="10" height="10" fill="#a52a2a"/>', "gave up"),
        ('<path d="M11,0 l7,13 h-14 z" fill="#f39c12"/>', "watchdog alarm"),
        ('<line x1="11" y1="0" x2="11" y2="14" stroke="#d9534f" stroke-width="2" stroke-dasharray="4,2"/>', "fault"),
        ('<line x1="11" y1="0" x2="11" y2="14" stroke="#e67e22" stroke-width="2"/>', "detected"),
        ('<line x1="11" y1="0" x2="11" y2="14" stroke="#2e8b57" stroke-width="2"/>', "recovered"),
    ]
    for shape, what in shapes:
        items.append(f'<span><svg width="22" height="14">{shape}</svg> {esc(what)}</span>')
    return '<div class="legend">' + "".join(items) + "</div>"


def _table(tl: Timeline) -> str:
    several = len(tl.lanes) > 1
    head = "<tr><th>time</th>" + ("<th>source</th>" if several else "") + "<th>kind</th><th>text</th></tr>"
    rows = []
    for e in tl.entries:
        lane = f"<td>{esc(e.lane or '')}</td>" if several else ""
        rows.append(
            f'<tr><td class="t">{esc(ms(e.at))}</td>{lane}<td class="k">{esc(e.kind)}</td><td>{esc(e.text)}</td></tr>'
        )
    return f"<details><summary>{len(tl.entries)} entries</summary><table>{head}{''.join(rows)}</table></details>"


def page(title: str, sections: Sequence[Section], intro: str = "") -> str:
    """The whole page: a heading, the legend, then one section per recorder."""
    body = []
    for s in sections:
        status = f'<span class="status {esc(s.status)}">{esc(s.status)}</span>' if s.status else ""
        sub = f'<p class="sub">{esc(s.subtitle)}</p>' if s.subtitle else ""
        summary = f'<p class="sub">{esc(s.summary)}</p>' if s.summary else ""
        graph = section_svg(s.timeline) if s.timeline.entries else '<p class="sub">nothing recorded</p>'
        body.append(
            f'<section id="{esc(s.name)}"><h2>{esc(s.name)}{status}</h2>{sub}{summary}{graph}{_table(s.timeline)}</section>'
        )
    intro_html = f'<p class="sub">{esc(intro)}</p>' if intro else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"{_DEFS}<h1>{esc(title)}</h1>{intro_html}{_legend()}{''.join(body)}</body></html>\n"
    )
