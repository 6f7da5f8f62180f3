"""Benchmark: a sweep on a local Dask cluster (``--workers N``) against the in-process sweep.

    /work/venv/bin/python benchmarks/bench_distributed.py                   # finite-width grid
    /work/venv/bin/python benchmarks/bench_distributed.py --grid infinite   # infinite-width grid
    /work/venv/bin/python benchmarks/bench_distributed.py --workers 4 --full

Grids (``--quick``, the default / ``--full``):

* ``finite`` (needs ``ntk_bridge.finite``): widths 64, 128 x depths 1, 2 (``--full``: widths 64, 128,
  256 x depths 1, 2, 4), ``inner_time`` 0.1, ``outer_time`` 1, methods MTL, ANIL, MAML, MTL on all
  points; 5 training tasks, 5 test tasks, 5 support and 5 query points, ``d = 8``. Every cell is its
  own unit: trained networks, each (depth, width) compiled afresh.
* ``infinite``: depths 1..16 (``--full``: 1..32), inner times 0.01, 0.1, 1, MTL on all points and on
  queries, the default task sizes (10 training tasks, 20 test tasks, 5 support, 10 query, ``d = 16``).
  Dask splits the one in-process unit into one per time combination (and depth range).

Each side runs once, in a fresh Python process, as a user would run it: ``in-process`` is
``run_sweep(config, out)``; ``dask`` starts a ``LocalCluster`` of N single-threaded worker processes
on 127.0.0.1 (``DaskExecutor(n_workers=N)``), then ``run_sweep(..., executor=...)``. Both sides pay
their own imports and JIT compilations (each worker compiles for itself). Reported: the sweep's wall
time, the cluster start, the speed-up without and with the start; the CPU seconds of each side's
whole process tree (``cpu_ratio``, Dask's over in-process: the imports and compilations repeated in
every worker, whatever the load); whether ``results.csv`` is byte-identical; the 1-minute load
average before and after each side (the machine is shared: a speed-up measured under load says
little). The in-process side runs first, then the Dask side; with one repeat nothing is interleaved,
so read the ratio beside the load columns.

On the 2-core development machine (load 8-10 from other jobs) Dask was *slower*: 0.62x on the finite
grid, 0.53x on the infinite grid, with 1.8x and 2.2x the CPU time. In-process already keeps both
cores busy (XLA and OpenBLAS threads), so extra processes only add their imports and compilations.
``--workers`` and ``--scheduler`` are for machines and clusters with many more cores than that.

Writes ``benchmarks/results/distributed_<grid>.csv``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common as C


def grid(name: str, full: bool, smoke: bool = False):
    from ntk_bridge.sweep import SweepConfig

    if smoke:  # the same code path on two tiny units
        return SweepConfig.of(depths=(1,), widths=(16.0,) if name == "finite" else (math.inf,), inner_times=(0.1,),
                              finetune_times=(1.0,), outer_times=(1.0,) if name == "finite" else (math.inf,),
                              methods=("mtl", "anil"), mtl_data=("all",), train_tasks=2, test_tasks=2, support=2,
                              query=2, dim=4, seeds=1, outer_steps=2)
    if name == "finite":
        return SweepConfig.of(depths=(1, 2, 4) if full else (1, 2),
                           widths=(64.0, 128.0, 256.0) if full else (64.0, 128.0),
                           inner_times=(0.1,), finetune_times=(1.0,), outer_times=(1.0,),
                           methods=("mtl", "anil", "maml"), mtl_data=("all",), train_tasks=5, test_tasks=5,
                           support=5, query=5, dim=8)
    return SweepConfig.of(depths=tuple(range(1, 33 if full else 17)), widths=(math.inf,),
                       inner_times=(0.01, 0.1, 1.0), finetune_times=(1.0,), outer_times=(math.inf,),
                       methods=("mtl", "anil", "maml"), mtl_data=("all", "query"))


def side(args) -> None:
    """One side, in this (fresh) process; prints one JSON line."""
    t0 = time.perf_counter()
    from ntk_bridge.sweep import make_units, plan, run_sweep

    config = grid(args.grid, args.full, args.smoke)
    t_import = time.perf_counter() - t0
    executor, t_cluster, n_units = None, 0.0, None
    _, cells, keys = plan(config)
    if args.side == "dask":
        from ntk_bridge.distributed import DaskExecutor, split_units

        t = time.perf_counter()
        executor = DaskExecutor(n_workers=args.workers)
        t_cluster = time.perf_counter() - t
        n_units = len(split_units(make_units(config, cells, keys), min_units=2 * args.workers))
    else:
        n_units = len(make_units(config, cells, keys))
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    try:
        df = run_sweep(config, args.out, executor=executor)
    finally:
        t_sweep = time.perf_counter() - t
        if executor is not None:
            executor.close()
    with open(os.path.join(args.out, "results.csv"), "w", newline="") as fh:
        df.to_csv(fh, index=False)
    print(json.dumps(dict(import_s=t_import, cluster_s=t_cluster, sweep_s=t_sweep, cells=len(cells),
                          units=n_units, rows=len(df), load_before=load_before,
                          load_after=os.getloadavg()[0])))


def run_side(args, which: str, out: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--side", which, "--grid", args.grid, "--out", out,
           "--workers", str(args.workers)] + (["--full"] if args.full else []) + \
        (["--smoke"] if args.smoke else [])
    t = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - t
    # CPU seconds of the side's whole process tree (its workers are reaped by their nannies)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"{which} side failed (exit {proc.returncode})")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return dict(json.loads(line), process_s=wall, cpu_s=cpu)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=("finite", "infinite"), default=None,
                    help="default: finite if ntk_bridge.finite is importable, else infinite")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="the larger grid")
    ap.add_argument("--quick", action="store_true", help="the smaller grid (default)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a temporary folder")
    ap.add_argument("--side", choices=("in-process", "dask"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.grid is None:
        try:
            import ntk_bridge.finite  # noqa: F401
            args.grid = "finite"
        except ImportError:
            args.grid = "infinite"
            print("ntk_bridge.finite is not available: benchmarking an infinite-width grid instead")
    C.smoke(["--smoke"] if args.smoke else [])
    if args.side:
        return side(args)

    meta = C.machine()
    print(f"grid {args.grid} ({'full' if args.full else 'quick'}), {args.workers} workers; "
          f"{meta['nproc']} CPUs, load {meta['load_1min']}")
    with tempfile.TemporaryDirectory(prefix="bench-distributed-") as tmp:
        local = run_side(args, "in-process", os.path.join(tmp, "local"))
        dask = run_side(args, "dask", os.path.join(tmp, "dask"))
        with open(os.path.join(tmp, "local", "results.csv"), "rb") as a, \
                open(os.path.join(tmp, "dask", "results.csv"), "rb") as b:
            identical = a.read() == b.read()
    rows = []
    for name, r, workers in (("in-process", local, 0), ("dask", dask, args.workers)):
        rows.append(dict(
            grid=args.grid, size="smoke" if args.smoke else "full" if args.full else "quick", mode=name, workers=workers,
            cells=r["cells"], units=r["units"], sweep_s=round(r["sweep_s"], 2),
            cluster_start_s=round(r["cluster_s"], 2), process_s=round(r["process_s"], 2),
            cpu_s=round(r["cpu_s"], 1), cpu_ratio=round(r["cpu_s"] / local["cpu_s"], 3),
            speedup_sweep=round(local["sweep_s"] / r["sweep_s"], 3),
            speedup_with_start=round(local["sweep_s"] / (r["sweep_s"] + r["cluster_s"]), 3),
            identical_results=identical, load_before=round(r["load_before"], 2),
            load_after=round(r["load_after"], 2), commit=C.git_commit()))
    C.print_table(f"sweep on {args.workers} local Dask workers vs in-process ({args.grid} grid)", rows,
                  ["mode", "workers", "cells", "units", "sweep_s", "cluster_start_s", "speedup_sweep",
                   "speedup_with_start", "cpu_s", "cpu_ratio", "identical_results", "load_before",
                   "load_after"])
    C.write_csv(f"distributed_{args.grid}", rows, meta)
    if not identical:
        raise SystemExit("results.csv differs between in-process and Dask")


if __name__ == "__main__":  # a guard that LocalCluster's spawned workers need
    main()
