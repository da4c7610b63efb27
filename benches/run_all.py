"""Run every benches/bench_*.py in turn (each prints its figures and ratios against its goals).

`run_all.py peers ws` runs only bench_peers.py and bench_ws.py. The environment passes through (QUICK=1,
ROUNDS=n, LIBS=..., HERD=n: see bench_peers.py and README.md). bench_peers.py runs twice: on the machine as
it is, then with one core kept busy by a separate process (BUSY=1), since a client with a thread of its own
and one without meet a loaded machine differently.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

# a bench that runs past this is reported as failed rather than left to hang `make bench`
TIMEOUT_S = 1200

here = pathlib.Path(__file__).parent
wanted = set(sys.argv[1:])
failed = []
runs = []
for script in sorted(here.glob("bench_*.py")):
    if wanted and script.stem.removeprefix("bench_") not in wanted:
        continue
    runs.append((script, {}))
    if script.stem == "bench_peers" and os.environ.get("BUSY") != "1":
        runs.append((script, {"BUSY": "1"}))
for script, env in runs:
    label = script.name + "".join(f" {k}={v}" for k, v in env.items())
    print(f"\n== {label}", flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run([sys.executable, str(script)], timeout=TIMEOUT_S, env={**os.environ, **env}).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    print(f"== {label}: {time.monotonic() - t0:.0f} s", flush=True)
    if rc != 0:
        failed.append(f"{label} ({rc})")
if failed:
    print(f"\nfailed: {', '.join(failed)}")
sys.exit(1 if failed else 0)
