"""Benchmark 4: peak memory of the default sweep and of a 200-task meta-kernel computation.

    /work/venv/bin/python benchmarks/bench_memory.py            # --quick: sweep once, N = 200 stages
    /work/venv/bin/python benchmarks/bench_memory.py --full     # + the same with TensorFlow's import deferred

* Sweep: ``ntk-bridge sweep --depth 2..32 --out <tmp>`` as a subprocess under ``/usr/bin/time -v``
  (maximum resident set size), cross-checked with ``resource.getrusage(RUSAGE_CHILDREN)``.
* 200 tasks (``subspace_tasks(n_train=200, n_test=20, n_support=5, n_query=10)``, 3300 points, depth 4):
  a fresh process reports its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) after each stage --
  imports, kernels (``kernels_by_depth``, 2 x 3300^2 float64 = 174 MB of output), ``meta_kernel``
  (ANIL, 2000 x 2000 = 32 MB), the ANIL predictor, and all four methods (MTL's kernel is 3000 x 3000).
  Peak RSS only grows, so the increase at a stage is the memory that stage needed beyond the earlier
  peak. One BLAS thread (so the run is short on a shared machine; memory is not affected).

``--full`` repeats the sweep three times.

Writes ``benchmarks/results/memory.csv``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.dirname(sys.executable)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def child(n_train: int, depth: int) -> None:
    stages = [("python start", rss_mib(), 0.0)]
    t = time.perf_counter()

    def mark(name):
        nonlocal t
        stages.append((name, rss_mib(), time.perf_counter() - t))
        t = time.perf_counter()

    import ntk_bridge  # noqa: F401
    from ntk_bridge import operators as O
    from ntk_bridge import predictors as P
    from ntk_bridge import runtime
    from ntk_bridge.kernels import kernels_by_depth
    from ntk_bridge.families import subspace_tasks

    limit = runtime.blas_threads(1)
    limit.__enter__()
    mark("imports (numpy, jax, neural_tangents)")
    tasks = subspace_tasks(seed=0, n_train=n_train, n_test=20, n_support=5, n_query=10, dim=16)
    (k,) = list(kernels_by_depth(tasks.all_points(), depths=[depth]))
    Th, K = k.ntk, k.readout
    mark(f"kernels_by_depth: Theta, K over {Th.shape[0]} points")
    phi = O.meta_kernel(Th, K, tasks.layout, O.Dynamics(0.1))
    mark(f"meta_kernel (ANIL): {phi.shape[0]} x {phi.shape[1]}")
    P.predict_from_kernels(Th, K, tasks, P.PredictorConfig(), ("anil",))
    mark("predict_from_kernels, ANIL (compile + run)")
    P.predict_from_kernels(Th, K, tasks, P.PredictorConfig(), ("mtl", "baseline", "anil", "maml"))
    mark("predict_from_kernels, MTL + baseline + ANIL + MAML")
    print("BENCH_JSON " + json.dumps(dict(stages=stages, n_points=int(Th.shape[0]), meta_kernel=int(phi.shape[0]))))


def run_child(n_train, depth) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--n-train", str(n_train), "--depth", str(depth)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"memory child failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(line[-1][len("BENCH_JSON "):])


def run_sweep(depths: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="ntkb-bench-mem-") as tmp:
        out = os.path.join(tmp, "run")
        cmd = [os.path.join(VENV_BIN, "ntk-bridge"), "sweep", *depths, "--out", out]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if p.returncode != 0:
            raise RuntimeError(f"sweep failed ({p.returncode}):\n{p.stderr[-3000:]}")
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
        return dict(max_rss_mib=int(m.group(1)) / 1024 if m else float("nan"),
                    rusage_children_max_rss_mib=after / 1024 if after > before else float("nan"), wall_s=wall)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the sweep three times")
    ap.add_argument("--quick", action="store_true", help="(default)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a temporary folder")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--depth", type=int, default=4)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.n_train, args.depth)

    import _common as C

    if C.smoke(["--smoke"] if args.smoke else []):
        args.n_train, args.depth = 4, 2
    rows = []
    for repeat in range(3 if args.full else 1):
        label = f"run {repeat + 1}"
        s = run_sweep(["--depth", "2..3"] if args.smoke else ["--depth", "2..32"])
        rows.append(dict(what="default sweep: ntk-bridge sweep --depth 2..32", variant=label,
                         stage="whole run (/usr/bin/time -v)", peak_rss_mib=s["max_rss_mib"],
                         rusage_children_peak_rss_mib=s["rusage_children_max_rss_mib"], seconds=s["wall_s"]))
        print(f"sweep ({label}): {s['max_rss_mib']:.0f} MiB peak RSS", flush=True)
        if repeat:
            continue
        d = run_child(args.n_train, args.depth)
        prev = 0.0
        for name, rss, secs in d["stages"]:
            rows.append(dict(what=f"{args.n_train}-task meta-kernel and predictors ({d['n_points']} points, "
                                  f"depth {args.depth})", variant=label, stage=name, peak_rss_mib=rss,
                             increase_mib=rss - prev, seconds=secs))
            prev = rss
        print(f"{args.n_train} tasks ({label}): {prev:.0f} MiB peak RSS", flush=True)
    C.print_table("peak memory (resident set size, MiB)", rows,
                  ["what", "variant", "stage", "peak_rss_mib", "increase_mib", "rusage_children_peak_rss_mib",
                   "seconds"])
    C.write_csv("memory", rows)
    return rows


if __name__ == "__main__":
    main()
