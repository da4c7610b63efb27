"""Run every benches/bench_*.py in turn (each prints its figures and ratios against its issue's anchor).

`run_all.py peers ws` runs only bench_peers.py and bench_ws.py. The environment passes through (QUICK=1,
ROUNDS=n, LIBS=..., HERD=n: see bench_peers.py and README.md).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

# a bench that runs past this is reported as failed rather than left to hang `make bench`
TIMEOUT_S = 1200

here = pathlib.Path(__file__).parent
wanted = set(sys.argv[1:])
failed = []
for script in sorted(here.glob("bench_*.py")):
    if wanted and script.stem.removeprefix("bench_") not in wanted:
        continue
    print(f"\n== {script.name}", flush=True)
    t0 = time.monotonic()
    try:
        rc = subprocess.run([sys.executable, str(script)], timeout=TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    print(f"== {script.name}: {time.monotonic() - t0:.0f} s", flush=True)
    if rc != 0:
        failed.append(f"{script.name} ({rc})")
if failed:
    print(f"\nfailed: {', '.join(failed)}")
sys.exit(1 if failed else 0)
