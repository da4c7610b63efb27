"""tether against the pure-Python and Cython WebSocket clients it should replace.

One server process (benches/_server.py, written with picows, that none of the clients wrote) runs on loopback
for the whole run; the compressed signaling workload talks to a second one, written with websockets, that agrees
to permessage-deflate (picows has no compression). Every measurement runs in a fresh client process (benches/_client.py), every client with its
library's default settings. Each workload is repeated ROUNDS times; in each round the clients run in a rotated
order, and the tether/peer ratio is taken within the round. The summary gives min / median / max over the
rounds and checks each goal on the median ratio.

Environment: QUICK=1 (small sizes, a smoke run), ROUNDS=n (default 3), LIBS=tether,websockets,...
(default: all four), HERD=n (clients in the herd test, default 1000), SERVER=websockets (the same server
written with websockets instead of picows, a cross-check), ONLY=echo,paced,... (only these workloads; names:
echo, send, paced, flood, signaling, idle, unstarted, herd), PIN=1 (the servers on one CPU and every client
process on another, so client and server never wait for each other's core and the CPU's wake-up from idle
is the same for every client; BUSY=1's burner stays unpinned).
Run: make bench   (or .venv/bin/python benches/bench_peers.py)
"""

from __future__ import annotations

import json
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _libs import LIBS, OPENERS

HERE = Path(__file__).parent
PY = sys.executable
QUICK = os.environ.get("QUICK") == "1"
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CLIENTS = [x for x in os.environ.get("LIBS", ",".join(LIBS)).split(",") if x]
HERD_N = int(os.environ.get("HERD", "200" if QUICK else "1000"))
SERVERS = {"picows": "_server.py", "websockets": "_server_websockets.py"}
SERVER = os.environ.get("SERVER", "picows")
BUSY = os.environ.get("BUSY") == "1"
ONLY = [x for x in os.environ.get("ONLY", "").split(",") if x]
PIN = os.environ.get("PIN") == "1"
CHILD_TIMEOUT = 180.0
FAILURES: list[str] = []  # measurements that gave no figure: the run exits non-zero


def scale(full, quick):
    return quick if QUICK else full


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass
class Goal:
    key: str
    peer: str
    op: str  # "<=" or ">=" on the median of the per-round tether/peer ratios
    factor: float
    text: str


@dataclass
class Workload:
    child: str
    short: str  # the row label of the closing table
    title: str
    args: dict
    metrics: list[Metric]
    goals: list[Goal] = field(default_factory=list)
    # "deflate": the websockets server that agrees to permessage-deflate, instead of the run's server
    server: str = "main"
    # the clients that take part (None: all of LIBS), for a workload only some do with default settings
    libs: tuple[str, ...] | None = None


LAT = [Metric("p50", "p50", "µs", False), Metric("p99", "p99", "µs", False)]
RATE = [Metric("msg_s", "rate", "msg/s", True)]

WORKLOADS = [
    Workload(
        "echo",
        "echo round trip, 32 B",
        "echo round trip, 32 B (send, then receive the echo)",
        {"n": scale(3000, 300)},
        LAT,
        [
            Goal("p50", "picows", "<=", 1.0, "echo p50 ≤ picows"),
            Goal("p50", "websockets", "<=", 1.0, "echo p50 ≤ websockets"),
        ],
    ),
    Workload(
        "send",
        "`await send()` one by one, 32 B",
        "`await send()` one by one, 32 B (rate counted at the server)",
        {"seconds": scale(1.0, 0.2)},
        RATE,
        [
            Goal("msg_s", "picows", ">=", 1.0, "send rate ≥ picows"),
            Goal("msg_s", "websockets", ">=", 1.0, "send rate ≥ websockets"),
        ],
    ),
    Workload(
        "paced",
        "paced stream 1 msg/ms, CPU per message",
        "paced stream, 1 msg/ms of 32 B, CPU time of the client process per message",
        {"seconds": scale(3.0, 0.5)},
        [Metric("cpu_us", "cpu/msg", "µs", False)],
        [
            Goal("cpu_us", "picows", "<=", 1.0, "paced CPU per message ≤ picows"),
            Goal("cpu_us", "websockets", "<=", 1.0, "paced CPU per message ≤ websockets"),
        ],
    ),
    Workload(
        "flood",
        "flood 1 KiB into `async for`",
        "server flood of 1 KiB messages consumed with `async for`",
        {"n": scale(200_000, 20_000), "size": 1024},
        RATE,
        [Goal("msg_s", "picows", ">=", 1.5, "flood 1 KiB ≥ 1.5× picows")],
    ),
    Workload(
        "flood",
        "flood 32 B into `async for`",
        "server flood of 32 B messages consumed with `async for`",
        {"n": scale(500_000, 50_000), "size": 32},
        RATE,
        [
            Goal("msg_s", "picows", ">=", 1.0, "flood 32 B ≥ picows"),
            Goal("msg_s", "websockets", ">=", 6.0, "flood 32 B ≥ 6× websockets"),
        ],
    ),
    Workload(
        "signaling",
        "compressed JSON signaling, 2-3 KiB request/response",
        "JSON signaling of 2-3 KiB, request/response (send, await the echo) through a server that agrees to"
        " permessage-deflate; only the clients that offer it by default (picows has none, aiohttp's is off)",
        {"seconds": scale(2.0, 0.4)},
        [Metric("msg_s", "rate", "msg/s", True), Metric("cpu_us", "cpu/msg", "µs", False)],
        [
            Goal("msg_s", "websockets", ">=", 1.0, "compressed signaling rate ≥ websockets"),
            Goal("cpu_us", "websockets", "<=", 1.0, "compressed signaling CPU per round trip ≤ websockets"),
        ],
        server="deflate",
        libs=("tether", "websockets"),
    ),
    Workload(
        "timers",
        f"application timers, {scale(1000, 200)} idle connections open",
        f"what {scale(1000, 200)} open, idle connections cost the application's own timers: CPU per"
        " `asyncio.sleep` of a loop paced at 1 ms (a timer a connection keeps in asyncio's heap makes every"
        " sleep compare against it, in Python)",
        {"n": scale(1000, 200), "seconds": scale(2.0, 0.5)},
        [Metric("cpu_us", "cpu/sleep", "µs", False)],
        [Goal("cpu_us", "websockets", "<=", 1.0, "application timers with connections open ≤ websockets")],
    ),
    Workload(
        "idle",
        f"memory per idle connection ({scale(1000, 200)} conns)",
        f"memory per idle connection, {scale(1000, 200)} connections (RSS delta / n, fresh process)",
        {"n": scale(1000, 200)},
        [Metric("kib", "memory", "KiB", False)],
        [
            Goal("kib", "websockets", "<=", 1.0, "memory per idle connection ≤ websockets"),
            Goal("kib", "picows", "<=", 1.0, "memory per idle connection ≤ picows"),
        ],
    ),
]


# -- processes ---------------------------------------------------------------------------------------------


# what ONLY= may name: the workloads above, and the two measured on their own below
ONLY_NAMES = tuple(dict.fromkeys([*(w.child for w in WORKLOADS), "unstarted", "herd"]))


def chosen(name: str) -> bool:
    return not ONLY or name in ONLY


def pinned(role: str):
    """PIN=1: a preexec_fn that binds the child to the servers' CPU or to the clients' one, else None."""
    if not PIN:
        return None
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[0] if role == "server" else cpus[1]
    return lambda: os.sched_setaffinity(0, {cpu})


def read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """The next stdout line of proc, or None when it ends or the deadline passes."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return None
        line = proc.stdout.readline()
        return line.decode().strip() if line else None
    finally:
        sel.close()


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.stdin and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_server(script: str, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [PY, str(HERE / script), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=pinned("server")
    )
    line = read_line(proc, 30.0)
    if not line or not line.startswith("PORT "):
        stop(proc, 5)
        raise SystemExit(f"benchmark server did not start (said {line!r})")
    return proc, f"ws://127.0.0.1:{line.split()[1]}"


def run_child(lib: str, workload: str, base: str, args: dict) -> dict | None:
    cmd = [PY, str(HERE / "_client.py"), lib, workload, base, *(f"{k}={v}" for k, v in args.items())]
    try:
        p = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=pinned("client"),
        )
    except subprocess.TimeoutExpired:
        print(f"    {lib} {workload}: no result within {CHILD_TIMEOUT:.0f} s", flush=True)
        FAILURES.append(f"{lib} {workload}")
        return None
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        tail = "\n      ".join(p.stderr.strip().splitlines()[-5:])
        print(f"    {lib} {workload}: failed (exit {p.returncode})\n      {tail}", flush=True)
        FAILURES.append(f"{lib} {workload}")
        return None
    return json.loads(lines[-1])


# -- figures -----------------------------------------------------------------------------------------------


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    if unit == "msg/s":
        return f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.1f} k"
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def three(xs: list[float], unit: str = "") -> str:
    if not xs:
        return "no result"
    return f"{fmt(min(xs), unit)} / {fmt(statistics.median(xs), unit)} / {fmt(max(xs), unit)}"


def rotated(clients: list[str], r: int) -> list[str]:
    k = r % len(clients)
    return clients[k:] + clients[:k]


def holds(op: str, ratio: float, factor: float) -> bool:
    return ratio <= factor if op == "<=" else ratio >= factor


TABLE: list[tuple[str, dict[str, float | None], str]] = []  # rows of the closing table: (label, medians, goals)


def run_workload(w: Workload, base: str) -> None:
    clients = [c for c in CLIENTS if w.libs is None or c in w.libs]
    if not clients:
        return
    peers = [c for c in clients if c != "tether"]
    better = {m.key: "higher" if m.higher_is_better else "lower" for m in w.metrics}
    print(f"\n== {w.title}  [{', '.join(f'{m.label}: {better[m.key]} is better' for m in w.metrics)}]", flush=True)
    values: dict[str, dict[str, list[float]]] = {m.key: {c: [] for c in clients} for m in w.metrics}
    ratios: dict[str, dict[str, list[float]]] = {m.key: {p: [] for p in peers} for m in w.metrics}
    tether_threads: list[tuple[int, int]] = []  # (before, after) the connections, per round
    for r in range(ROUNDS):
        order = rotated(clients, r)
        res = {lib: run_child(lib, w.child, base, w.args) for lib in order}
        t = res.get("tether") or {}
        if "threads_before" in t:
            tether_threads.append((int(t["threads_before"]), int(t["threads_after"])))
        print(f"  round {r + 1} (order: {' > '.join(order)})", flush=True)
        for m in w.metrics:
            got = {lib: (res[lib] or {}).get(m.key) for lib in clients}
            for lib, v in got.items():
                if v is not None:
                    values[m.key][lib].append(v)
            figs = "  ".join(f"{lib} {fmt(got[lib], m.unit)}" for lib in clients)
            line = f"    {m.label:8} {m.unit:6} {figs}"
            if got.get("tether") is not None:
                rs = []
                for p in peers:
                    if got[p]:
                        ratios[m.key][p].append(got["tether"] / got[p])
                        rs.append(f"{p} {got['tether'] / got[p]:.2f}")
                if rs:
                    line += "   | tether/ " + "  ".join(rs)
            print(line, flush=True)
        details = []
        for lib in clients:
            extra = {k: round(v, 1) for k, v in (res[lib] or {}).items() if k not in values}
            if extra.get("received", 0) < extra.get("sent", 0):
                extra["LOST"] = extra["sent"] - extra["received"]
            if extra:
                details.append(f"{lib} " + " ".join(f"{k}={v:g}" for k, v in extra.items()))
        if details:
            print("    details: " + "; ".join(details), flush=True)
    print(f"  over {ROUNDS} rounds, min / median / max:")
    for m in w.metrics:
        for lib in clients:
            print(f"    {m.label:8} {lib:11} {three(values[m.key][lib], m.unit)} {m.unit}")
        for p in peers:
            print(f"    {m.label:8} tether/{p:11} {three(ratios[m.key][p])}")
    goals = []
    for g in w.goals:
        rs = ratios[g.key].get(g.peer, [])
        if not rs:
            verdict = "not measured"
        else:
            med = statistics.median(rs)
            verdict = f"median ratio {med:.3f} -> {'MET' if holds(g.op, med, g.factor) else 'MISSED'}"
        print(f"  goal: {g.text} (tether/{g.peer} {g.op} {g.factor:g}): {verdict}", flush=True)
        goals.append(f"{g.text}: {verdict}")
    if tether_threads:
        # no thread per connection, and none started by connecting (the loop runs every connection)
        constant = all(b == a for b, a in tether_threads)
        seen = ", ".join(f"{b}->{a}" for b, a in tether_threads)
        verdict = f"{seen} -> {'MET' if constant else 'MISSED'}"
        print(f"  goal: threads constant as connections are opened (tether, per round): {verdict}", flush=True)
        goals.append(f"threads constant: {verdict}")
    for m in w.metrics:
        med = {lib: statistics.median(values[m.key][lib]) if values[m.key][lib] else None for lib in clients}
        TABLE.append((f"{w.short}, {m.label} ({m.unit})", med, "; ".join(goals) if m is w.metrics[0] else ""))


def run_unstarted(base: str) -> None:
    n = scale(1000, 200)
    print(f"\n== an unstarted `tether.connect()` object, {n} of them  [lower is better; goal ≤ 4 KiB]", flush=True)
    rss, traced = [], []
    for r in range(ROUNDS):
        res = run_child("tether", "unstarted", base, {"n": n})
        if res:
            rss.append(res["rss_kib"])
            traced.append(res["traced_kib"])
            print(
                f"  round {r + 1}: RSS {res['rss_kib']:.2f} KiB each, Python heap (tracemalloc) {res['traced_kib']:.2f} KiB each"
            )
    if rss:
        med = statistics.median(rss)
        verdict = f"median {med:.2f} KiB -> {'MET' if med <= 4 else 'MISSED'}"
        print(f"  over {ROUNDS} rounds: RSS {three(rss)} KiB, tracemalloc {three(traced)} KiB; goal ≤ 4 KiB: {verdict}")
        TABLE.append(("unstarted connect() object, RSS (KiB)", {"tether": med}, f"≤ 4 KiB: {verdict}"))


def control(base: str):
    from websockets.sync.client import connect

    return connect(base + "/control", open_timeout=10)


def ask(ctl, cmd: str) -> str:
    ctl.send(cmd)
    return ctl.recv(timeout=10)


def herd_once(lib: str, base: str, n: int) -> dict | None:
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [PY, str(HERE / "_client.py"), lib, "herd", base, f"n={n}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=err,
        preexec_fn=pinned("client"),
    )
    try:
        if read_line(proc, CHILD_TIMEOUT) != "ready":
            err.seek(0)
            print(f"    {lib}: the herd did not connect: {err.read().decode()[-600:]}", flush=True)
            FAILURES.append(f"{lib} herd")
            return None
        with control(base) as ctl:
            deadline = time.monotonic() + 30
            while int(ask(ctl, "herd")) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)  # let the initial connection storm settle
            dropped = int(ask(ctl, f"drop {n}"))
            deadline = time.monotonic() + 20
            while True:
                time.sleep(0.25)
                rep = json.loads(ask(ctl, "report"))
                if rep["all_back"] is not None or time.monotonic() > deadline:
                    break
            rep["dropped"] = dropped
            return rep
    finally:
        stop(proc, 60)
        err.close()


def window_max(ts: list[float], width: float = 0.1) -> int:
    ts, best, j = sorted(ts), 0, 0
    for i, t in enumerate(ts):
        while ts[j] < t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def run_herd(base: str) -> None:
    libs = [lib for lib in ("tether", "tether-metrics", "websockets") if lib in CLIENTS]
    # the goal is set for 1,000 clients (300 per 100 ms); a smaller herd keeps the same share
    cap = round(300 * HERD_N / 1000)
    print(
        f"\n== herd: {HERD_N} clients with default settings, the server aborts them all at once"
        f"  [goal for tether: ≤ {cap} re-handshakes in any 100 ms window, all back within 2 s]",
        flush=True,
    )
    peaks: dict[str, float | None] = {}
    backs: dict[str, float | None] = {}
    verdict = ""
    for lib in libs:
        rep = herd_once(lib, base, HERD_N)
        if rep is None:
            continue
        hs = rep["handshakes"]
        peak = window_max(hs) if hs else 0
        back = rep["all_back"]
        peaks[lib], backs[lib] = peak, back
        buckets = [0] * 20
        for t in hs:
            if t < 2.0:
                buckets[int(t * 10)] += 1
        back_s = f"{back:.2f} s" if back is not None else f"not all back after 20 s ({rep['connected']}/{HERD_N})"
        print(
            f"  {lib}: dropped {rep['dropped']}, {len(hs)} re-handshakes; max in any 100 ms window {peak}; all back after {back_s}"
        )
        print(f"    re-handshakes per 100 ms over the first 2 s: {' '.join(map(str, buckets))}")
        if hs:
            print(
                f"    first {min(hs) * 1000:.0f} ms, median {statistics.median(hs) * 1000:.0f} ms, last {max(hs) * 1000:.0f} ms after the drop"
            )
        if lib == "tether":
            met = peak <= cap and back is not None and back <= 2.0
            verdict = f"≤ {cap} per 100 ms, all back ≤ 2 s: {'MET' if met else 'MISSED'}"
            print(f"  goal: {verdict}", flush=True)
    TABLE.append((f"herd of {HERD_N}: max re-handshakes in 100 ms", peaks, verdict))
    TABLE.append((f"herd of {HERD_N}: all back after (s)", backs, ""))


def print_table() -> None:
    print(
        "\n== medians (this run"
        + (", QUICK sizes" if QUICK else "")
        + (", one core busy" if BUSY else "")
        + (", pinned" if PIN else "")
        + ")\n"
    )
    print("| workload | " + " | ".join(CLIENTS) + " | goal |")
    print("|---" * (len(CLIENTS) + 2) + "|")
    for label, med, goal in TABLE:
        cells = []
        for lib in CLIENTS:
            v = med.get(lib)
            unit = "msg/s" if "msg/s" in label else ""
            cells.append(fmt(v, unit) if v is not None else "–")
        print(f"| {label} | " + " | ".join(cells) + f" | {goal} |")


def busy_core() -> subprocess.Popen | None:
    """A separate process that keeps one core busy (BUSY=1) for the whole run."""
    if not BUSY:
        return None
    return subprocess.Popen([PY, "-c", "while True: pass"], stdin=subprocess.DEVNULL)


def main() -> None:
    unknown = set(CLIENTS) - set(OPENERS)
    if unknown:
        raise SystemExit(f"LIBS: unknown client {', '.join(sorted(unknown))} (known: {', '.join(OPENERS)})")
    if SERVER not in SERVERS:
        raise SystemExit(f"SERVER: unknown server {SERVER} (known: {', '.join(SERVERS)})")
    if set(ONLY) - set(ONLY_NAMES):
        bad = ", ".join(sorted(set(ONLY) - set(ONLY_NAMES)))
        raise SystemExit(f"ONLY: unknown workload {bad} (known: {', '.join(ONLY_NAMES)})")
    if PIN and len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("PIN=1 needs two CPUs")
    load = os.getloadavg()[0]
    print(
        f"clients: {', '.join(CLIENTS)}; {ROUNDS} rounds; {'QUICK sizes; ' if QUICK else ''}"
        f"{os.cpu_count()} CPUs, load average {load:.2f} at start"
        f"{'; one core kept busy by a separate process (BUSY=1)' if BUSY else ''}"
        f"{'; servers pinned to one CPU, clients to another (PIN=1)' if PIN else ''}"
        f"{'; only ' + ','.join(ONLY) if ONLY else ''}"
    )
    burner = busy_core()
    server, base = start_server(SERVERS[SERVER])
    deflate = None
    try:
        print(f"server: benches/{SERVERS[SERVER]} ({SERVER}) at {base}, pid {server.pid}")
        bases = {"main": base}
        for w in WORKLOADS:
            if not chosen(w.child):
                continue
            if w.server == "deflate" and "deflate" not in bases:
                deflate, bases["deflate"] = start_server(SERVERS["websockets"], "deflate")
                print(f"server: benches/{SERVERS['websockets']} deflate (permessage-deflate on) at {bases['deflate']}")
            run_workload(w, bases[w.server])
        if "tether" in CLIENTS and chosen("unstarted"):
            run_unstarted(base)
        if chosen("herd"):
            run_herd(base)
    finally:
        stop(server, 10)
        if deflate is not None:
            stop(deflate, 10)
        if burner is not None:
            burner.kill()
            burner.wait()
    print_table()
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if FAILURES:
        raise SystemExit(f"no figure from: {', '.join(FAILURES)}")


if __name__ == "__main__":
    main()
