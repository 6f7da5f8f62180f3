"""Benchmark 1: the kernels of every depth 1..L in one pass vs one ``kernel_fn`` call per depth.

    /work/venv/bin/python benchmarks/bench_kernels.py            # --quick: L = 8, 32
    /work/venv/bin/python benchmarks/bench_kernels.py --full     # L = 8, 32, 128

Point set: the default sweep's, ``build.task_set(SweepConfig()).all_points()`` (450 points, d = 16).

* ``one_pass``: ``list(kernels_by_depth(x, max_depth=L))`` -- L hidden-block and L readout kernel
  evaluations.
* ``per_depth``: ``Architecture().network(d)[2](x, None, ('ntk', 'nngp'))`` for d = 1..L -- the naive
  way, L (L + 1) / 2 hidden-block evaluations.

Both run eagerly (as the library does). The two are timed interleaved in one process; the median over
repeats is reported, with the ratio ``per_depth / one_pass`` and whether every depth's ``Theta`` and
``K`` agree bit for bit. At L = 128 (``--full``) the per-depth side would take minutes, so it is timed on
a sample of depths and its total is *estimated* from a least-squares fit ``t(d) = a + b d`` (marked
``estimated`` in the CSV); ``--exhaustive`` times every depth instead.

An extra row (``jit_one_pass``, informational) times the same one-pass walk with each layer step under
``jax.jit``: faster, but XLA contracts ``prod - nngp**2`` in the ReLU kernel into an FMA, which moves
``Theta`` on the diagonal by ~3e-9 relative per layer (the reason the library stays eager).

Writes ``benchmarks/results/kernels.csv``.
"""
from __future__ import annotations

import argparse
import time

import _common as C


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="L = 8, 32, 128 and more repeats")
    ap.add_argument("--quick", action="store_true", help="L = 8, 32 (default)")
    ap.add_argument("--exhaustive", action="store_true", help="time every depth at L = 128 (minutes)")
    ap.add_argument("--depths", type=str, default=None, help="comma list of L, overrides the mode")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a temporary folder")
    args = ap.parse_args(argv)
    C.smoke(["--smoke"] if args.smoke else [])

    import jax
    import numpy as np

    import ntk_bridge  # noqa: F401  (float64)
    from ntk_bridge.kernels import Architecture, kernels_by_depth
    from ntk_bridge import build
    from ntk_bridge.sweep import SweepConfig

    x = build.task_set(SweepConfig()).all_points()
    arch = Architecture()
    if args.smoke:
        plan = [(3, 1)]
    elif args.depths:
        plan = [(int(L), 3) for L in args.depths.split(",")]
    elif args.full:
        plan = [(8, 7), (32, 3), (128, 1)]
    else:
        plan = [(8, 5), (32, 2)]

    def one_pass(L):
        return list(kernels_by_depth(x, max_depth=L, architecture=arch))

    def per_depth_one(d):
        out = arch.network(d)[2](x, None, ("ntk", "nngp"))
        return np.asarray(out.ntk, np.float64), np.asarray(out.nngp, np.float64)

    def per_depth(L, depths=None):
        return [per_depth_one(d) for d in (depths or range(1, L + 1))]

    # jitted walk (informational)
    _, _, hidden_kernel = arch.hidden_block()
    _, _, readout_kernel = arch.readout()

    @jax.jit
    def jit_first(xx):
        k = hidden_kernel(xx, None)
        o = readout_kernel(k)
        return k, o.ntk, o.nngp

    @jax.jit
    def jit_step(k):
        k = hidden_kernel(k)
        o = readout_kernel(k)
        return k, o.ntk, o.nngp

    def jit_one_pass(L):
        k, a, b = jit_first(x)
        out = [(np.asarray(a), np.asarray(b))]
        for _ in range(2, L + 1):
            k, a, b = jit_step(k)
            out.append((np.asarray(a), np.asarray(b)))
        return out

    # warm the eager per-op caches of both paths (and compile the jitted steps)
    one_pass(2)
    per_depth(2)
    t0 = time.perf_counter()
    jit_one_pass(2)
    jit_compile_s = time.perf_counter() - t0

    rows = []
    for L, repeats in plan:
        estimated = L >= 128 and not args.exhaustive
        if not estimated:
            times = C.interleaved({"one_pass": lambda: one_pass(L), "per_depth": lambda: per_depth(L),
                                   "jit_one_pass": lambda: jit_one_pass(L)}, repeats, warmup=False)
            t_naive = C.median(times["per_depth"])
            naive_spread = C.spread(times["per_depth"])
            sample = list(range(1, L + 1))
        else:
            # per-depth calls on a sample of depths, interleaved with the one-pass runs
            sample = sorted({1, 2, 4} | set(range(16, L + 1, 16)))
            times = {"one_pass": [], "jit_one_pass": [], "per_depth": []}
            per_d = {d: [] for d in sample}
            for r in range(repeats):
                times["one_pass"].append(C.timed(lambda: one_pass(L))[0])
                times["jit_one_pass"].append(C.timed(lambda: jit_one_pass(L))[0])
                for d in sample:
                    per_d[d].append(C.timed(lambda: per_depth_one(d))[0])
                times["one_pass"].append(C.timed(lambda: one_pass(L))[0])
            ds = np.array(sample, float)
            ts = np.array([C.median(per_d[d]) for d in sample])
            b, a = np.polyfit(ds, ts, 1)
            t_naive = float(sum(a + b * d for d in range(1, L + 1)))
            naive_spread = float("nan")
        fast = one_pass(L)
        slow = per_depth(L, sample)
        by_depth = {k.depth: k for k in fast}
        diffs = [max(float(np.max(np.abs(by_depth[d].ntk - th))), float(np.max(np.abs(by_depth[d].readout - kk))))
                 for d, (th, kk) in zip(sample, slow)]
        exact = all(np.array_equal(by_depth[d].ntk, th) and np.array_equal(by_depth[d].readout, kk)
                    for d, (th, kk) in zip(sample, slow))
        jit_out = jit_one_pass(L)
        jit_rel = max(C.max_rel(a, k.ntk) for (a, _), k in zip(jit_out, fast))
        jit_rel_k = max(C.max_rel(b, k.readout) for (_, b), k in zip(jit_out, fast))
        t_fast = C.median(times["one_pass"])
        t_jit = C.median(times["jit_one_pass"])
        rows.append(dict(
            L=L, n_points=x.shape[0], repeats=repeats,
            per_depth_s=t_naive, one_pass_s=t_fast, ratio_per_depth_over_one_pass=t_naive / t_fast,
            layer_count_ratio=(L * (L + 1) / 2 + L) / (2 * L),
            per_depth_timing="estimated (fit on depths " + ",".join(map(str, sample)) + ")" if estimated
            else "measured",
            exact_all_depths=exact, max_abs_diff=max(diffs),
            spread_one_pass=C.spread(times["one_pass"]), spread_per_depth=naive_spread,
            one_pass_ms_per_depth=1e3 * t_fast / L,
            jit_one_pass_s=t_jit, ratio_one_pass_over_jit=t_fast / t_jit, jit_compile_s=jit_compile_s,
            jit_max_rel_diff_theta=jit_rel, jit_max_rel_diff_k=jit_rel_k,
        ))
        print(f"L={L}: per-depth {t_naive:.2f} s, one pass {t_fast:.2f} s, ratio {t_naive / t_fast:.1f}, "
              f"exact={exact}", flush=True)

    C.print_table("kernels of every depth: one pass vs one kernel_fn per depth (median seconds)", rows,
                  ["L", "repeats", "per_depth_s", "one_pass_s", "ratio_per_depth_over_one_pass",
                   "layer_count_ratio", "exact_all_depths", "per_depth_timing"])
    C.print_table("informational: one pass with jitted layer steps", rows,
                  ["L", "one_pass_s", "jit_one_pass_s", "ratio_one_pass_over_jit", "jit_compile_s",
                   "jit_max_rel_diff_theta", "jit_max_rel_diff_k"])
    C.write_csv("kernels", rows)
    return rows


if __name__ == "__main__":
    main()
