"""Benchmark 7: the meta-kernel predictor at paper scale, through the structured outer solves
(``ntk_bridge.solvers`` on the outer problems of ``ntk_bridge.outer``), against the dense path and the floor of its linear algebra.

    python benchmarks/bench_structured.py                      # --quick: N = 25, 75, 200
    python benchmarks/bench_structured.py --full               # + N = 1000
    python benchmarks/bench_structured.py --sizes 1000 --solvers cholesky
    python benchmarks/bench_structured.py --sizes 2000 --solvers cholesky --kernels-on-disk /var/tmp/k \
        --csv structured_2000 --timeout 5400                  # the kernels in 26 GB of files

Tasks: 5-way 1-shot episodes with 15 queries, as sizes: ``subspace_tasks(n_train=N, n_test=20,
n_support=5, n_query=15, dim=16, n_outputs=5)`` (20 points a task, ``k = 5`` outputs; the kanji
renders hold about 210 training episodes of 20 distinct images, too few for N = 1000, and an outer
solve's cost depends on the sizes only). Kernels: the fully connected network at depth 4, one pass
(blocked under ``kernels.KERNEL_MEMORY_BYTES``). Outer systems: the meta-kernel ``N n_q = 15 N``
square (ANIL, MAML), MTL's kernel on all points ``20 N`` square. At N = 1000 these are 15,000 and
20,000 square (1.8 and 3.2 GB).

Each (N, solver) runs in a fresh process (peak memory is per process; ``ru_maxrss``): kernels, then
``predict_from_kernels(Theta, K, tasks, cfg, (method,), solver=...)`` for MTL then ANIL (times
``inf``, ``lambda tau = 0.1``, ``s_hat = 1``), timed on a second call up to N = 200 (JAX compiles
per shape; about a second), on the first above, the peak RSS after each stage. The floor, in its own process: one dense
``dpotrf`` (Cholesky) of an SPD matrix of the same size (random lower triangle, diagonally dominant), in place: ``n^3 / 3`` flops and ``8 n^2`` bytes, the least any direct solve of that system needs. From ``blocked.LAPACK_MAX_ORDER`` (23,000) on, where scipy's ``dpotrf`` crashes, the floor is ``n^3 / 3`` flops at the machine's ``dgemm`` rate (a 4096-square product, best of 3), which no factorisation beats.
``dense``: the library's ``eigh`` path (every default sweep; skipped above N = 200: tens of minutes).
The predictions of the structured solvers are compared with the dense path's where both ran.

Writes ``benchmarks/results/structured.csv`` (``--csv NAME``: ``NAME.csv``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import _common as C

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tasks_of(N):
    from ntk_bridge.families import subspace_tasks

    return subspace_tasks(seed=0, n_train=N, n_test=20, n_support=5, n_query=15, dim=16, n_outputs=5)


def child(N: int, solver: str, threads: int, save: str | None, disk: str | None = None) -> None:
    import numpy as np

    import ntk_bridge  # noqa: F401
    from ntk_bridge import runtime
    from ntk_bridge.kernels import kernels_by_depth
    from ntk_bridge.predictors import PredictorConfig, predict_from_kernels

    out = dict(N=N, solver=solver, threads=threads, rss_start_mib=rss_mib(), kernels_on_disk=bool(disk))
    cfg = PredictorConfig(inner_time=0.1, finetune_time=1.0)
    with runtime.blas_threads(threads):
        tasks = tasks_of(N)
        t = time.perf_counter()
        allocate = None
        if disk:  # the kernels in memory-mapped files (N = 2000: 2 x 13 GB, more than this machine's memory)
            from numpy.lib.format import open_memmap

            allocate = lambda name, shape: open_memmap(os.path.join(disk, f"{name}.npy"), "w+", np.float64, shape)  # noqa: E731
        (k,) = list(kernels_by_depth(tasks.all_points(), depths=[4], allocate=allocate))
        out.update(points=tasks.layout.n_points, kernel_s=time.perf_counter() - t, rss_kernels_mib=rss_mib())
        preds = {}
        for m in ("mtl", "anil"):
            for _ in range(2 if N <= 200 else 1):  # the second call warm (JAX compiles per shape, about 1 s)
                t = time.perf_counter()
                p = predict_from_kernels(k.ntk, k.readout, tasks, cfg, (m,), solver=solver)[m]
                out[f"{m}_s"] = time.perf_counter() - t
            out[f"rss_{m}_mib"] = rss_mib()
            out[f"{m}_status"] = str(p.diagnostics)
            preds[m] = p.values
        if save:
            np.savez(save, **preds)
    print("RESULT " + json.dumps(out))


def floor_child(n: int, threads: int, N: int) -> None:
    import numpy as np
    from scipy.linalg import lapack

    import ntk_bridge  # noqa: F401
    from ntk_bridge import runtime

    from ntk_bridge.blocked import LAPACK_MAX_ORDER

    if n >= LAPACK_MAX_ORDER:  # scipy's dpotrf crashes at this order (blocked.LAPACK_MAX_ORDER)
        with runtime.blas_threads(threads):
            b = np.random.default_rng(N).random((4096, 4096))
            best = math.inf
            for _ in range(3):
                t = time.perf_counter()
                b @ b
                best = min(best, time.perf_counter() - t)
        rate = 2 * 4096**3 / best
        print("RESULT " + json.dumps(dict(n=n, floor_s=n**3 / 3 / rate, floor_kind="n^3/3 flops at the dgemm rate",
                                          dgemm_gflops=rate / 1e9, info=0, rss_before_mib=rss_mib(),
                                          rss_after_mib=rss_mib(), matrix_mib=8 * n * n / 2**20)))
        return
    with runtime.blas_threads(threads):
        rng = np.random.default_rng(N)
        # dpotrf reads the lower triangle only: entries in [0, 1) with n on the diagonal define an SPD
        # matrix (Gershgorin) and the work does not depend on them; filled a block of columns at a
        # time, so the one n x n array is the only one (n = 40,000: 12.8 GB)
        a = np.empty((n, n), order="F")
        for j in range(0, n, 1024):
            a[:, j:j + 1024] = rng.random((n, min(1024, n - j)))
        a[np.diag_indices(n)] += n
        before = rss_mib()
        t = time.perf_counter()
        _, info = lapack.dpotrf(a, lower=1, overwrite_a=1, clean=0)
        seconds = time.perf_counter() - t
    print("RESULT " + json.dumps(dict(n=n, floor_s=seconds, floor_kind="dpotrf", info=int(info), rss_before_mib=before,
                                      rss_after_mib=rss_mib(), matrix_mib=8 * n * n / 2**20)))


def run(args: list[str], timeout: float) -> dict | None:
    try:
        p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout:.0f} s: {args}")
        return None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(p.stdout[-2000:], p.stderr[-3000:])
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a temporary folder")
    ap.add_argument("--sizes", default=None, help="comma list of N")
    ap.add_argument("--solvers", default="dense,cholesky,cg")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1500)
    ap.add_argument("--child", nargs=2, default=None)
    ap.add_argument("--floor", nargs=2, type=int, default=None)
    ap.add_argument("--save", default=None)
    ap.add_argument("--csv", default="structured", help="results/<CSV>.csv to write")
    ap.add_argument("--kernels-on-disk", default=None, metavar="DIR",
                    help="assemble the kernels in memory-mapped files in DIR (needed for N = 2000 in 23 GB)")
    args = ap.parse_args(argv)
    if args.child:
        return child(int(args.child[0]), args.child[1], args.threads, args.save, args.kernels_on_disk)
    if args.floor:
        return floor_child(args.floor[0], args.threads, args.floor[1])
    C.smoke(["--smoke"] if args.smoke else [])
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else ([3] if args.smoke else [25, 75, 200, 1000]
                                                                          if args.full else [25, 75, 200])
    import tempfile

    import numpy as np

    rows = []
    tmp = tempfile.mkdtemp()
    for N in sizes:
        saved = {}
        for solver in args.solvers.split(","):
            if solver == "dense" and N > 200:
                continue
            if solver == "cg" and N > 200:
                continue
            path = os.path.join(tmp, f"{N}_{solver}.npz")
            print(f"N = {N}, {solver} ...", flush=True)
            disk = ["--kernels-on-disk", args.kernels_on_disk] if args.kernels_on_disk else []
            r = run(["--child", str(N), solver, "--threads", str(args.threads), "--save", path, *disk], args.timeout)
            if r is None:
                continue
            saved[solver] = path
            rows.append(r)
            print("  ", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if "status" not in k})
        if "dense" in saved:
            ref = np.load(saved["dense"])
            for solver, path in saved.items():
                got = np.load(path)
                for r in rows:
                    if r["N"] == N and r["solver"] == solver:
                        r.update({f"{m}_vs_dense_rel": C.max_rel(got[m], ref[m]) for m in ref.files})
        for n_of, n in (("mtl", 20 * N), ("anil", 15 * N)):
            f = run(["--floor", str(n), str(N), "--threads", str(args.threads)], args.timeout)
            if f is None:
                continue
            print(f"   floor {n_of} n = {n}: {f['floor_s']:.3f} s")
            for r in rows:
                if r["N"] == N:
                    r[f"{n_of}_floor_s"] = f["floor_s"]
                    r[f"{n_of}_floor_rss_mib"] = f["rss_after_mib"]
                    r[f"{n_of}_over_floor"] = r[f"{n_of}_s"] / f["floor_s"]
    C.print_table("structured outer solves", rows, ["N", "solver", "points", "kernel_s", "mtl_s", "mtl_floor_s",
                                                    "mtl_over_floor", "anil_s", "anil_floor_s", "anil_over_floor",
                                                    "rss_kernels_mib", "rss_mtl_mib", "rss_anil_mib",
                                                    "mtl_vs_dense_rel", "anil_vs_dense_rel"])
    C.write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
