"""tether.testing.Timeline and `python -m tether demo --html`: the recorder keeps what a real connection
reports across a drop by the `websockets` server, with times, lanes and redacted texts; the page is
well-formed HTML that fetches nothing, shows every scenario of a demo run and every kind of entry the
run printed."""

import asyncio
import contextlib
import html.parser
import logging
import os
import re
import subprocess
import sys

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

import tether
from support import eventually
from tether.testing import SignalServer, Timeline

# a line of the demo's printed timeline: "  [   12.3 ms] KIND         text" (the kind padded to 12)
MARK = re.compile(r"^  \[\s*[\d.]+ ms\] (.*)$")
VOID = {"meta", "br", "hr", "img", "input", "link", "wbr", "source", "area", "base", "col", "embed", "track"}


class Structure(html.parser.HTMLParser):
    """Every element closed in order; what the page references, by attribute and in CSS."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.refs: list[str] = []
        self.tags: set[str] = set()
        self.ids: list[str] = []
        self.cells: list[tuple[str, str]] = []  # (class, text) of table cells
        self._cell: tuple[str, list[str]] | None = None
        self._style: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        a = dict(attrs)
        for name in ("src", "href", "xlink:href", "action", "data", "poster", "srcset"):
            if name in a:
                self.refs.append(f"{name}={a[name]}")
        for value in a.values():
            if value and "url(" in value and "url(#" not in value:
                self.refs.append(value)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "td":
            self._cell = (a.get("class") or "", [])
        if tag == "style":
            self._in_style = True
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <rect .../> in SVG: opened and closed at once
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag == "td" and self._cell:
            self.cells.append((self._cell[0], "".join(self._cell[1])))
            self._cell = None
        if tag == "style":
            self._in_style = False
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()

    def handle_data(self, data):
        if self._cell:
            self._cell[1].append(data)
        if self._in_style:
            self._style.append(data)

    def css(self) -> str:
        return "".join(self._style)


def parse(page: str) -> Structure:
    s = Structure()
    s.feed(page)
    s.close()
    assert s.errors == [] and s.stack == [], (s.errors, s.stack)
    assert page.startswith("<!DOCTYPE html>")
    return s


def fetches_nothing(s: Structure) -> None:
    assert s.refs == [], s.refs
    assert not {"link", "img", "iframe", "object", "embed", "script", "video", "audio"} & s.tags, s.tags
    css = s.css()
    assert "@import" not in css and not re.search(r"url\((?!#)", css), css


async def test_the_recorder_keeps_a_drop_by_the_websockets_server(tmp_path):
    served = []

    async def echo(ws):
        served.append(ws)
        with contextlib.suppress(ConnectionClosed):  # the drop below
            async for msg in ws:
                await ws.send(msg)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = tether.connect(f"ws://127.0.0.1:{port}/?token=SECRET-TOKEN", quiet_jitter=0, name="signal")
        rec = Timeline("a drop")
        rec.watch(conn)  # before the first connect: every event of it is recorded
        async with conn:
            await conn.send("hello")
            assert await conn.recv() == "hello"
            rec.mark("fault", "the server aborts the TCP connection")
            served[-1].transport.abort()
            await eventually(lambda: rec.seen("Reconnected"), what="Reconnected recorded")
            await conn.send("again")
            assert await conn.recv() == "again"
        rec.stop()

    kinds = [e.kind for e in rec.entries]
    for k in ("Connecting", "Connected", "fault", "ConnectionLost", "Reconnecting", "Reconnected"):
        assert k in kinds, kinds
    assert kinds.index("fault") < kinds.index("ConnectionLost") < kinds.index("Reconnected")
    times = [e.at for e in rec.entries]
    assert times == sorted(times) and times[0] >= 0
    assert rec.lanes == ["signal"] and {e.lane for e in rec.entries if e.event} == {"signal"}
    lost = next(e for e in rec.entries if e.kind == "Reconnecting")
    assert lost.fields["delay"] == 0.0 and lost.event == "Reconnecting"

    text = rec.text()
    assert "ConnectionLost" in text and "Reconnected" in text and "fault" in text
    path = tmp_path / "timeline.html"
    rec.write_html(path)
    page = path.read_text(encoding="utf-8")
    s = parse(page)
    fetches_nothing(s)
    assert "SECRET-TOKEN" not in page + text
    assert {k for _, k in (c for c in s.cells if c[0] == "k")} >= set(kinds)
    assert "<svg" in page and "signal" in page


async def test_sources_of_every_kind_and_log_records():
    rec = Timeline("sources")
    wd = tether.Watchdog("room")
    wd.liveness("audio", 0.05)
    rec.watch(wd)  # a watchdog's alarms
    r = tether.Reconnector(tether.Backoff(0.01, max_attempts=1, jitter="none"), quiet_jitter=0, name="ctl")
    rec.watch(r)
    pool = tether.ProcPool(
        command=[sys.executable, "-m", "tether.worker", "--fail"],
        acquire_attempts=1,
        respawn=tether.Backoff(0.01, jitter="none"),
    )
    rec.watch(pool, lane="pool")
    logging.getLogger("tether").setLevel(logging.INFO)
    tether.sync_log_level()
    rec.capture_logs("tether")
    try:

        async def refused():
            raise OSError("refused")

        with pytest.raises(tether.GaveUp):
            await r.run(refused)
        with pytest.raises(tether.PoolExhausted):
            await pool.acquire(timeout=30)
        await eventually(lambda: rec.seen("Alarm"), what="the alarm recorded")
    finally:
        await pool.aclose()
        wd.close()
        rec.stop()
        logging.getLogger("tether").setLevel(logging.NOTSET)
        tether.sync_log_level()
    by_lane = {lane: {e.kind for e in rec.entries if e.lane == lane} for lane in rec.lanes}
    assert rec.lanes == ["Watchdog", "ctl", "pool"], rec.lanes
    assert "Alarm" in by_lane["Watchdog"]
    assert {"Connecting", "Reconnecting", "GaveUp"} <= by_lane["ctl"]
    assert "SpawnFailed" in by_lane["pool"]
    assert any(e.kind == "log WARNING" for e in rec.entries), [e.kind for e in rec.entries]
    text = rec.text()
    assert "(pool) SpawnFailed" in text and "(ctl) GaveUp" in text  # several lanes: each line names its own
    fetches_nothing(parse(rec.html()))


async def test_render_takes_events_the_task_has_not_recorded_yet():
    async with SignalServer() as srv:
        conn = tether.connect(srv.url)
        rec = Timeline()
        rec.watch(conn)
        await conn
        # no yield to the recording task since the connect completed: text() takes what is queued
        assert "Connected" in rec.text()
        await conn.aclose()
        rec.stop()


def test_marks_are_redacted_and_bad_sources_refused(tmp_path):
    rec = Timeline("wss://h/?access_token=abc.def")
    rec.mark("note", "retrying wss://sfu.example/ws?access_token=eyJ.SECRET.sig")
    assert "SECRET" not in rec.text() and "SECRET" not in rec.html()
    assert "abc.def" not in rec.text()
    with pytest.raises(RuntimeError):  # recording needs a running event loop
        rec.watch(tether.Reconnector())

    async def wrong():
        with pytest.raises(TypeError, match="cannot watch int"):
            rec.watch(5)

    asyncio.run(wrong())
    page = rec.html()
    fetches_nothing(parse(page))


@pytest.mark.timeout(300)
def test_demo_html_shows_every_scenario_and_every_printed_kind(tmp_path):
    out = tmp_path / "demo.html"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "demo", "--html", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page = out.read_text(encoding="utf-8")
    s = parse(page)
    fetches_nothing(s)
    names = subprocess.run(
        [sys.executable, "-m", "tether", "demo", "--list"], capture_output=True, text=True, timeout=60
    ).stdout.split()
    assert set(names) <= set(s.ids), set(names) - set(s.ids)
    printed = set()
    for line in proc.stdout.splitlines():
        if m := MARK.match(line):
            rest = m[1]
            printed.add(rest[:12].rstrip() if rest[12:13] == " " else rest.split(" ", 1)[0])
    shown = {text for cls, text in s.cells if cls == "k"}
    assert printed and printed <= shown, printed - shown
    # the tether log records the run printed are on the page too
    logged = {m[1] for m in re.finditer(r"^\s+(WARNING|ERROR)\s+tether\.", proc.stderr, re.M)}
    assert {f"log {level}" for level in logged} <= shown, (logged, shown)
    assert "SECRET" not in page
    for scenario in names:
        section = page.split(f'<section id="{scenario}">', 1)[1].split("</section>", 1)[0]
        assert "<svg" in section and "status ok" in section, scenario
