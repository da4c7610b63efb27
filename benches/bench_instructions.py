"""Instructions per operation, counted by valgrind's callgrind: the same count for the same build whatever
else the machine does, where CPU time on a shared 2-core box moves by 10-20 % between runs.

Three operations, each measured as the difference between a run of M and one of 3·M (so start-up, imports and
the connection's opening cancel out), the client under callgrind, the picows server (`_server.py`) outside:
- echo round trip: `await send(32 B)`, then `await recv()` of its echo (tether through `__anext__`, as in
  `bench_peers.py`);
- paced send: `await send(32 B)` then `await asyncio.sleep(0.0002)`, per message (the paced workload of
  `bench_peers.py`; under callgrind each step takes longer, so a confirmation covers fewer messages than at
  1 msg/ms: tether's figure here is an upper bound);
- application sleep with N idle connections open: one `await asyncio.sleep(0.0002)` of the application, what
  the library's timers in asyncio's heap add to it.

`python benches/bench_instructions.py` (QUICK=1: smaller M); needs valgrind, says so and exits 0 without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
QUICK = os.environ.get("QUICK") == "1"
M = 300 if QUICK else 1000
N = 100

CHILD = """
import asyncio, sys
sys.path.insert(0, {here!r})
from _libs import open_conn
from _client import open_many, close_all
op, lib, url, n, m = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
P = b"x" * 32
async def main():
    if op == "send":
        c = await open_conn(lib, url + "/sink")
        snd = c.send
        for _ in range(m):
            await snd(P)
            await asyncio.sleep(0.0002)
        await c.close()
    elif op == "echo":
        c = await open_conn(lib, url + "/echo")
        snd, rcv = c.send, c.recv
        for _ in range(m):
            await snd(P)
            await rcv()
        await c.close()
    else:
        conns = await open_many(lib, url + "/idle", n)
        await asyncio.sleep(0.1)
        for _ in range(m):
            await asyncio.sleep(0.0002)
        await close_all(conns)
asyncio.run(main())
"""


def instructions(script: str, op: str, lib: str, url: str, n: int, m: int) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={d}/cg.out",
                PY,
                script,
                op,
                lib,
                url,
                str(n),
                str(m),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or not found:
        raise SystemExit(f"callgrind run failed ({op} {lib}): {out.stderr[-500:]}")
    return int(found.group(1))


def per_op(script: str, op: str, lib: str, url: str, n: int) -> float:
    return (instructions(script, op, lib, url, n, 3 * M) - instructions(script, op, lib, url, n, M)) / (2 * M)


def main() -> None:
    if shutil.which("valgrind") is None:
        print("bench_instructions: valgrind is not installed; nothing measured")
        return
    server = subprocess.Popen([PY, str(HERE / "_server.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        url = f"ws://127.0.0.1:{line.split()[1]}"
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(CHILD.format(here=str(HERE)))
            script = f.name
        print(f"== instructions per operation (callgrind; difference of {3 * M} and {M} operations)")
        rows = [
            ("echo round trip of 32 B (send, then receive the echo)", "echo", 0, ("tether", "picows", "websockets")),
            ("paced send + sleep, per message", "send", 0, ("tether", "picows", "websockets")),
            (f"application sleep, {N} idle connections open", "sleep", N, ("tether", "picows", "websockets")),
        ]
        for title, op, n, libs in rows:
            got = {lib: per_op(script, op, lib, url, n) for lib in libs}
            cells = "  ".join(f"{lib} {v / 1000:.1f}k" for lib, v in got.items())
            ratios = "  ".join(f"tether/{lib} {got['tether'] / v:.3f}" for lib, v in got.items() if lib != "tether")
            print(f"  {title}: {cells}   | {ratios}", flush=True)
        os.unlink(script)
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(30)


if __name__ == "__main__":
    main()
