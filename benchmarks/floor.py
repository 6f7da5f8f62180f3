"""The main job's floor: what ``ntk-bridge sweep --depth 2..32`` cannot avoid, in one process and nothing else.

    python benchmarks/floor.py [--depth 2..32]     # prints the seconds of each part, and the total

* Python's start and the imports of numpy, JAX and neural-tangents;
* the default task set (:func:`ntk_bridge.build.task_set`);
* the kernels of every depth in one pass over the layers (:func:`ntk_bridge.kernels.kernels_by_depth`, with
  the persistent compilation cache on, as the sweep has it);
* per depth, the dense linear algebra of the grid's closed forms, in numpy with one BLAS thread: MTL's outer
  eigendecomposition for each of its two training sets (150 and 100 points) and its test-time products;
  for each of the three inner times, ANIL's and MAML's per-task inner eigendecompositions, their 100 x 100
  meta-kernel, its eigendecomposition and the test tasks' adaptation; the baseline's per-test-task solves.

No results table, no cell files, no figure, no checks, and no interpreter teardown (the command skips it too,
:mod:`ntk_bridge.leave`): ``bench_sweep.py`` runs this as its ``floor`` scenario
and reports the main job's time over it.
"""
from __future__ import annotations

import os
import sys
import time

T0 = time.perf_counter()


def main(argv=None) -> dict:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", default="2..32")
    args = ap.parse_args(argv)
    lo, hi = (int(v) for v in args.depth.split(".."))
    parts = {}
    t = time.perf_counter()
    import ntk_bridge  # noqa: F401  (float64; neural-tangents without TensorFlow)
    import numpy as np
    import jax  # noqa: F401
    import neural_tangents  # noqa: F401
    from threadpoolctl import threadpool_limits

    from ntk_bridge import build, runtime
    from ntk_bridge.config import SweepConfig
    from ntk_bridge.kernels import kernels_by_depth

    parts["imports"] = time.perf_counter() - t
    t = time.perf_counter()
    tasks = build.task_set(SweepConfig())
    lay = tasks.layout
    x = tasks.all_points()
    runtime.enable_compilation_cache()
    parts["task set"] = time.perf_counter() - t
    # point indices in the layout's order: training supports, training queries, test supports, test queries
    ns, nq = lay.n_train * lay.n_support, lay.n_train * lay.n_query
    ts = lay.n_test * lay.m_support
    tr_s, tr_q = np.arange(ns), ns + np.arange(nq)
    te_s, te_q = ns + nq + np.arange(ts), ns + nq + ts + np.arange(lay.n_test * lay.m_query)
    y_train = np.concatenate([tasks.train_support_y.reshape(ns, -1), tasks.train_query_y.reshape(nq, -1)])
    kernel_s = linalg_s = 0.0
    with threadpool_limits(1):
        t = time.perf_counter()
        for kern in kernels_by_depth(x, depths=range(lo, hi + 1)):
            kernel_s += time.perf_counter() - t
            t = time.perf_counter()
            Th, K = kern.ntk, kern.readout
            for idx, y in ((np.concatenate([tr_s, tr_q]), y_train), (tr_q, y_train[ns:])):  # MTL: all, queries
                w, U = np.linalg.eigh(Th[np.ix_(idx, idx)])
                coef = U @ ((U.T @ y) / np.maximum(w, 1e-12)[:, None])
                _ = Th[np.ix_(te_q, idx)] @ coef
            for tau in (0.01, 0.1, 1.0):
                for G in (K, Th):  # ANIL's and MAML's inner kernel
                    blocks = G[np.ix_(tr_s, tr_s)].reshape(lay.n_train, lay.n_support, lay.n_train, lay.n_support)
                    w, U = np.linalg.eigh(blocks[np.arange(lay.n_train), :, np.arange(lay.n_train)])
                    inner = U @ ((-np.expm1(-tau * w) / w)[..., None] * np.swapaxes(U, -1, -2))
                    A = np.zeros((ns, ns))
                    for i in range(lay.n_train):
                        A[i * lay.n_support:(i + 1) * lay.n_support, i * lay.n_support:(i + 1) * lay.n_support] = inner[i]
                    Gqs, Thqs, Thss = G[np.ix_(tr_q, tr_s)], Th[np.ix_(tr_q, tr_s)], Th[np.ix_(tr_s, tr_s)]
                    M = (Th[np.ix_(tr_q, tr_q)] - Gqs @ A @ Thqs.T - Thqs @ A.T @ Gqs.T
                         + Gqs @ A @ Thss @ A.T @ Gqs.T)  # the meta-kernel over the training queries
                    w, U = np.linalg.eigh(M)
                    coef = U @ ((U.T @ y_train[ns:]) / np.maximum(w, 1e-12)[:, None])
                    tb = G[np.ix_(te_s, te_s)].reshape(lay.n_test, lay.m_support, lay.n_test, lay.m_support)
                    wt, Ut = np.linalg.eigh(tb[np.arange(lay.n_test), :, np.arange(lay.n_test)])
                    _ = Th[np.ix_(te_q, tr_q)] @ coef, Ut @ np.exp(-tau * wt)[..., None]
            test_blocks = K[np.ix_(te_s, te_s)].reshape(lay.n_test, lay.m_support, lay.n_test, lay.m_support)
            _ = np.linalg.solve(test_blocks[np.arange(lay.n_test), :, np.arange(lay.n_test)],
                                tasks.test_support_y)  # the baseline's kernel heads
            linalg_s += time.perf_counter() - t
            t = time.perf_counter()
    parts["kernels, one pass"] = kernel_s
    parts["linear algebra of the closed forms"] = linalg_s
    parts["total (from the interpreter's start)"] = time.perf_counter() - T0
    for name, secs in parts.items():
        print(f"{secs:7.2f} s  {name}")
    return parts


if __name__ == "__main__":
    ok = bool(main())
    sys.stdout.flush()
    os._exit(0 if ok else 1)  # as the command ends (ntk_bridge.leave): the interpreter's teardown is no part of it
