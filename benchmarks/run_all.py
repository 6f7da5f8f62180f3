"""Run every benchmark in turn (each in its own process, so none disturbs another's timings).

    python benchmarks/run_all.py            # --quick (about 10-15 min on 2 busy cores)
    python benchmarks/run_all.py --full     # (about 30-40 min)

Each script prints its tables and writes CSVs under ``benchmarks/results/``; see ``benchmarks/README.md``.
``benchmarks/bench_finite.py`` (finite-network time per outer step) is run too when it exists.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# (script and arguments, whether it takes --quick/--full)
STEPS = [
    (["bench_kernels.py"], True),
    (["bench_predictors.py", "--skip-floor"], True),
    (["bench_predictors.py", "--skip-loop"], True),
    (["bench_memory.py"], True),
    (["bench_sweep.py"], False),
    (["bench_finite.py"], False),  # its own defaults
]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    mode = ["--full"] if "--full" in argv else []
    failed = []
    for step, takes_mode in STEPS:
        path = os.path.join(HERE, step[0])
        if not os.path.exists(path):
            print(f"-- skipping {step[0]} (not present)")
            continue
        cmd = [sys.executable, path, *step[1:], *(mode if takes_mode else [])]
        print(f"\n-- {' '.join(os.path.relpath(c) if c.startswith('/') else c for c in cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        print(f"-- {step[0]}: exit {rc}, {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(" ".join(step))
    if failed:
        print("failed: " + "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
