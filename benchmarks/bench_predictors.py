"""Benchmarks 2 and 3: the vectorised meta-kernel and GBML predictor against a per-task-pair loop,
and the predictor against the floor of its own dense linear algebra.

    /work/venv/bin/python benchmarks/bench_predictors.py            # --quick: N = 10, 50, 200 (ANIL)
    /work/venv/bin/python benchmarks/bench_predictors.py --full     # + MAML, more repeats

Tasks: ``subspace_tasks(seed=0, n_train=N, n_test=20, n_support=5, n_query=10, dim=16)`` (the default
sweep's family and sizes, N varied); kernels of depth 4 (``--depth``), cached in
``benchmarks/results/tmp/`` (git-ignored). Inner time 0.1, fine-tuning time 1, outer time inf
(``PredictorConfig()`` defaults). The meta-kernel is ``N*n_q = 10 N`` square.

Item 2 (vectorised vs loop), interleaved, median of repeats:

* ``meta_kernel`` (library, vectorised over task blocks with einsum and a batched ``eigh``) vs
  ``loop_meta_kernel`` below: a Python double loop over task pairs with one ``eigh`` per task, numpy,
  the way the official kernel codes (Meta-Neural-Kernel, MetaNTK-NAS) build the meta-kernel.
* ``predict_from_kernels(..., methods=(m,))`` warm (compiled) vs ``tests/reference.py``'s ``gbml``
  (per-task-pair loop, ``scipy.linalg.expm`` per task, ``inv`` for the outer solve).
  Agreement: ``max |a - b| / max |b|`` of the meta-kernels and of the predictions.

Item 3 (floor): the warm predictor (one depth, one method) vs ``eigh`` of the meta-kernel plus one
product of the same size, ``U phi(m) U^T`` (numpy and jitted JAX, same process, interleaved). Compile
time (first call minus a warm call; and JAX's own compile events) is reported separately. Everything
in item 3 runs twice: with OpenBLAS's default thread count and with one BLAS thread
(``threadpoolctl``), because the default collapses on a shared machine (README). A sub-step profile
(jitted pieces timed alone) is measured in the same loop.

Writes ``benchmarks/results/predictors_vs_loop.csv``, ``predictors_vs_floor.csv`` and
``predictors_profile.csv``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import _common as C

sys.path.insert(0, os.path.join(C.REPO, "tests"))


# ---------------------------------------------------------------------------------------------
# The naive meta-kernel: one eigh per task, a Python double loop over task pairs (numpy)
# ---------------------------------------------------------------------------------------------

def loop_meta_kernel(Theta, G, layout, inner_time):
    """``Phi`` block by block, ``Phi_ij = Theta(X_i,X_j) - A_i Theta(X'_i,X_j) - Theta(X_i,X'_j) A_j^T
    + A_i Theta(X'_i,X'_j) A_j^T`` with ``A_i = G(X_i,X'_i) T_i``, ``T_i = U phi(m) U^T``."""
    import numpy as np

    N, ns, nq = layout.n_train, layout.n_support, layout.n_query
    s0, q0 = 0, N * ns
    sup = [slice(s0 + i * ns, s0 + (i + 1) * ns) for i in range(N)]
    qry = [slice(q0 + i * nq, q0 + (i + 1) * nq) for i in range(N)]
    A = []
    for i in range(N):
        m, U = np.linalg.eigh(G[sup[i], sup[i]])
        x = inner_time * m
        phi = np.where(np.abs(x) < 1e-8, inner_time * (1 - x / 2), -np.expm1(-x) / np.where(m == 0, 1, m))
        A.append(G[qry[i], sup[i]] @ ((U * phi) @ U.T))
    Phi = np.empty((N * nq, N * nq))
    for i in range(N):
        for j in range(N):
            Phi[i * nq:(i + 1) * nq, j * nq:(j + 1) * nq] = (
                Theta[qry[i], qry[j]] - A[i] @ Theta[sup[i], qry[j]] - Theta[qry[i], sup[j]] @ A[j].T
                + A[i] @ Theta[sup[i], sup[j]] @ A[j].T)
    return Phi


# ---------------------------------------------------------------------------------------------
# Set-up
# ---------------------------------------------------------------------------------------------

def kernels_for(N, depth, tasks):
    """``(Theta, K)`` of one depth over ``tasks.all_points()``, cached on disk (git-ignored)."""
    import numpy as np

    from ntk_bridge.kernels import kernels_by_depth

    folder = os.path.join(C.RESULTS, "tmp")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"kernels_subspace_N{N}_L{depth}_{tasks.fingerprint()[:12]}.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["ntk"], z["readout"]
    t = time.perf_counter()
    (k,) = list(kernels_by_depth(tasks.all_points(), depths=[depth]))
    print(f"  kernels for N={N} ({tasks.all_points().shape[0]} points): {time.perf_counter() - t:.1f} s "
          f"(cached in {os.path.relpath(path, C.REPO)})", flush=True)
    np.savez(path, ntk=k.ntk, readout=k.readout)
    return k.ntk, k.readout


class CompileEvents:
    """Sum of JAX compile-stage durations (tracing, lowering, XLA) while active."""

    def __init__(self):
        import jax

        self.total = 0.0
        self.active = False

        def listener(event, duration, **_):
            if self.active and event.startswith("/jax/core/compile/"):
                self.total += duration

        jax.monitoring.register_event_duration_secs_listener(listener)

    def __enter__(self):
        self.total, self.active = 0.0, True
        return self

    def __exit__(self, *exc):
        self.active = False


def blas_context(threads):
    """``threadpoolctl`` limit on every loaded BLAS (``None``: leave the default)."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    import scipy.linalg  # noqa: F401  (jaxlib's LAPACK uses scipy's OpenBLAS: load it so the limit reaches it)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="blas")


def default_blas_threads():
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"), default=0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="ANIL and MAML, more repeats")
    ap.add_argument("--quick", action="store_true", help="ANIL only (default)")
    ap.add_argument("--tasks", type=str, default="10,50,200", help="training-task counts N")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--skip-loop", action="store_true", help="only item 3 (floor)")
    ap.add_argument("--skip-floor", action="store_true", help="only item 2 (loop)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a temporary folder")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    import ntk_bridge  # noqa: F401  (float64)
    import reference as ref
    from ntk_bridge import closed_forms as CF
    from ntk_bridge import operators as O
    from ntk_bridge import predictors as P
    from ntk_bridge.metrics import status_of
    from ntk_bridge.families import subspace_tasks

    methods = ("anil", "maml") if args.full else ("anil",)
    Ns = [int(n) for n in args.tasks.split(",")]
    if C.smoke(["--smoke"] if args.smoke else []):
        Ns, args.depth = [2], 2
    reps = {n: (25 if n <= 10 else 11 if n <= 50 else 3) if args.full else (15 if n <= 10 else 7 if n <= 50 else 2)
            for n in Ns} if not args.smoke else {n: 1 for n in Ns}
    cfg = P.PredictorConfig()  # inner 0.1, finetune 1, outer inf
    events = CompileEvents()
    nthreads = default_blas_threads()

    loop_rows, floor_rows, prof_rows = [], [], []
    for N in Ns:
        tasks = subspace_tasks(seed=0, n_train=N, n_test=20, n_support=5, n_query=10, dim=16)
        layout = tasks.layout
        Th, K = kernels_for(N, args.depth, tasks)
        nq = N * layout.n_query
        print(f"N={N}: meta-kernel {nq} x {nq}, {tasks.all_points().shape[0]} points", flush=True)
        for method in methods:
            G = K if method == "anil" else Th

            # -- compile (first call of this shape, one BLAS thread) -------------------------------
            with events, blas_context(1):
                t_cold, _ = C.timed(lambda: P.predict_from_kernels(Th, K, tasks, cfg, (method,)))
            compile_events = events.total

            # -- item 2: vectorised vs loop ------------------------------------------------------
            if not args.skip_loop:
                dyn_inner = O.Dynamics(cfg.inner_time)

                @jax.jit
                def meta_kernel_jit(th, g):  # the public meta_kernel's body, jitted
                    A, _ = O.adapt_train(g, layout, dyn_inner, None, cfg.rcond)
                    phi = O.meta_kernel_blocks(th, A, layout).reshape(nq, nq)
                    return 0.5 * (phi + phi.T)

                jThm, jGm = jnp.asarray(Th), jnp.asarray(G)
                phi_vec = O.meta_kernel(Th, G, layout, dyn_inner)
                phi_jit = np.asarray(meta_kernel_jit(jThm, jGm))
                phi_loop = loop_meta_kernel(Th, G, layout, cfg.inner_time)
                pred = P.predict_from_kernels(Th, K, tasks, cfg, (method,))[method]
                pred_ref, phi_ref = ref.gbml(Th, G, tasks, (cfg.inner_time, None), (cfg.finetune_time, None),
                                             (math.inf, None))
                ev = np.linalg.eigvalsh(phi_vec)
                for threads in (None, 1):
                    with blas_context(threads):
                        t = C.interleaved({
                            "meta_kernel": lambda: O.meta_kernel(Th, G, layout, dyn_inner),
                            "meta_kernel_jit": lambda: meta_kernel_jit(jThm, jGm),
                            "loop_meta_kernel": lambda: loop_meta_kernel(Th, G, layout, cfg.inner_time),
                            "predict": lambda: P.predict_from_kernels(Th, K, tasks, cfg, (method,)),
                            "reference_gbml": lambda: ref.gbml(Th, G, tasks, (cfg.inner_time, None),
                                                               (cfg.finetune_time, None), (math.inf, None)),
                        }, reps[N], warmup=False)  # every function has run once above
                    med = {k: C.median(v) for k, v in t.items()}
                    loop_rows.append(dict(
                        N=N, method=method, n_support=5, n_query=10, n_test=20, meta_kernel_size=nq,
                        repeats=reps[N], blas_threads=nthreads if threads is None else threads,
                        loop_meta_kernel_s=med["loop_meta_kernel"], meta_kernel_s=med["meta_kernel"],
                        ratio_meta_kernel=med["loop_meta_kernel"] / med["meta_kernel"],
                        meta_kernel_jit_s=med["meta_kernel_jit"],
                        ratio_meta_kernel_jit=med["loop_meta_kernel"] / med["meta_kernel_jit"],
                        reference_gbml_s=med["reference_gbml"], predict_s=med["predict"],
                        ratio_predictor=med["reference_gbml"] / med["predict"],
                        predict_compile_events_s=compile_events,
                        maxrel_meta_kernel_vs_loop=C.max_rel(phi_vec, phi_loop),
                        maxrel_meta_kernel_jit_vs_eager=C.max_rel(phi_jit, phi_vec),
                        maxrel_meta_kernel_vs_reference=C.max_rel(phi_vec, phi_ref),
                        maxrel_prediction_vs_reference=C.max_rel(pred.values, pred_ref),
                        cond_meta_kernel=float(ev[-1] / ev[0]), predictor_status=status_of(pred.diagnostics),
                        spread_predict=C.spread(t["predict"]), spread_reference=C.spread(t["reference_gbml"])))
                    r = loop_rows[-1]
                    print(f"  {method}, BLAS threads {r['blas_threads']}: meta-kernel loop/vectorised "
                          f"{r['ratio_meta_kernel']:.2f}x (jitted: {r['ratio_meta_kernel_jit']:.1f}x), predictor "
                          f"reference/vectorised {r['ratio_predictor']:.1f}x, agreement "
                          f"{r['maxrel_meta_kernel_vs_loop']:.1e} / {r['maxrel_prediction_vs_reference']:.1e}",
                          flush=True)

            # -- item 3: predictor vs the floor of its dense linear algebra ------------------------
            if args.skip_floor:
                continue
            phi = O.meta_kernel(Th, G, layout, O.Dynamics(cfg.inner_time))
            m0 = np.linalg.eigvalsh(phi)
            fl = np.where(m0 > 1e-10 * m0[-1], 1.0 / np.maximum(m0, 1e-300), 0.0)  # any phi(m) will do

            def np_floor():
                m, U = np.linalg.eigh(phi)
                return (U * fl) @ U.T

            jphi = jnp.asarray(phi)

            @jax.jit
            def jax_floor(a):
                m, U = jnp.linalg.eigh(a)
                return (U * (1.0 / m)) @ U.T

            # the library's jitted function, called directly (no Python pre/post-processing)
            P_ = tasks.layout.n_points
            data = CF.Data(tasks.train_support_y, tasks.train_query_y, tasks.test_support_y,
                           *CF.split_f0(np.zeros((P_, tasks.n_outputs)), layout))
            times = np.asarray([[cfg.inner_time, cfg.finetune_time, cfg.outer_time]], np.float64)
            ThB, KB = np.asarray(Th)[None], np.asarray(K)[None]
            program = P._program(ThB, KB, data, times, layout, cfg, method)

            def raw_call():
                return program()

            raw_call()
            jax_floor(jphi)

            big = nq >= 1000  # default BLAS threads take minutes there on a shared machine: --full only
            settings = [1, None] if (args.full or not big) else [1]
            for threads in settings:
                fns = {
                    "predict": lambda: P.predict_from_kernels(Th, K, tasks, cfg, (method,)),
                    "raw_jit_call": raw_call,
                    "np_eigh": lambda: np.linalg.eigh(phi),
                    "np_floor": np_floor,
                    "jax_floor": lambda: jax_floor(jphi),
                }
                if threads is None and big:
                    fns.pop("raw_jit_call")
                with blas_context(threads):
                    t = C.interleaved(fns, reps[N], warmup=False)  # all compiled above
                med = {k: C.median(v) for k, v in t.items()}
                med.setdefault("raw_jit_call", float("nan"))
                floor_rows.append(dict(
                    N=N, method=method, meta_kernel_size=nq, repeats=reps[N],
                    blas_threads=nthreads if threads is None else threads,
                    predict_s=med["predict"], raw_jit_call_s=med["raw_jit_call"],
                    floor_np_eigh_plus_product_s=med["np_floor"], floor_jax_eigh_plus_product_s=med["jax_floor"],
                    np_eigh_only_s=med["np_eigh"],
                    ratio_predict_over_np_floor=med["predict"] / med["np_floor"],
                    ratio_predict_over_jax_floor=med["predict"] / med["jax_floor"],
                    ratio_of_minima_predict_over_np_floor=min(t["predict"]) / min(t["np_floor"]),
                    ratio_raw_jit_over_np_floor=med["raw_jit_call"] / med["np_floor"],
                    first_call_minus_warm_s=(t_cold - med["predict"]) if threads == 1 else float("nan"),
                    compile_events_s=compile_events,
                    spread_predict=C.spread(t["predict"]), spread_np_floor=C.spread(t["np_floor"])))
                r = floor_rows[-1]
                print(f"  {method}, BLAS threads {r['blas_threads']}: predictor / floor "
                      f"{r['ratio_predict_over_np_floor']:.2f} (numpy) {r['ratio_predict_over_jax_floor']:.2f} "
                      f"(jax); compile {r['compile_events_s']:.2f} s", flush=True)

            # -- sub-step profile (jitted pieces alone), one BLAS thread and default -------------------
            sl = layout.slices()
            Mt = layout.n_test
            dyn_in, dyn_ft, dyn_out = cfg.inner, cfg.finetune, cfg.outer
            jG = jnp.asarray(G)
            jTh = jnp.asarray(Th)
            adapt = jax.jit(lambda g: O.adapt_train(g, layout, dyn_in, None, cfg.rcond)[0])
            A = adapt(jG)
            adapt_test = jax.jit(lambda g: O.adapt_test(g, layout, dyn_ft, None, cfg.rcond)[0])
            Ahat = adapt_test(jG)
            blocks = jax.jit(lambda th, a: O.meta_kernel_blocks(th, a, layout))

            @jax.jit
            def cross(th, ah, a):
                N_ = layout.n_train
                return (O.block(th, sl["test_query"], sl["train_query"], Mt, N_)
                        - jnp.einsum("mab,mbjc->majc", ah, O.block(th, sl["test_support"], sl["train_query"], Mt, N_))
                        - jnp.einsum("majd,jcd->majc", O.block(th, sl["test_query"], sl["train_support"], Mt, N_), a)
                        + jnp.einsum("mab,mbjd,jcd->majc", ah,
                                     O.block(th, sl["test_support"], sl["train_support"], Mt, N_), a))

            outer = jax.jit(lambda g: O.eigh_apply(g, dyn_out, None, cfg.rcond)[0])
            eigh_only = jax.jit(jnp.linalg.eigh)
            pieces = {
                "adapt_train (batched eigh of supports)": lambda: adapt(jG),
                "adapt_test": lambda: adapt_test(jG),
                "meta-kernel blocks (einsum)": lambda: blocks(jTh, A),
                "cross block (einsum)": lambda: cross(jTh, Ahat, A),
                "outer _eigh_apply (eigh + U phi U^T)": lambda: outer(jphi),
                "  of which jnp eigh": lambda: eigh_only(jphi),
                "whole jitted call": raw_call,
                "predict_from_kernels (end to end)": lambda: P.predict_from_kernels(Th, K, tasks, cfg, (method,)),
            }
            for threads in settings:
                with blas_context(threads):
                    for f in pieces.values():  # compile (first) and warm
                        C.block(f())
                    t = C.interleaved(pieces, reps[N], warmup=False)
                whole = C.median(t["predict_from_kernels (end to end)"])
                for name, v in t.items():
                    prof_rows.append(dict(N=N, method=method, blas_threads=nthreads if threads is None else threads,
                                          piece=name, seconds=C.median(v), share_of_end_to_end=C.median(v) / whole))
                prof_rows.append(dict(N=N, method=method, blas_threads=nthreads if threads is None else threads,
                                      piece="Python wrapper (end to end - jitted call)",
                                      seconds=whole - C.median(t["whole jitted call"]),
                                      share_of_end_to_end=(whole - C.median(t["whole jitted call"])) / whole))

    # -- the sweep's call: N = 10, all four methods, one depth --------------------------------------
    if not args.skip_floor and 10 in Ns:
        tasks = subspace_tasks(seed=0, n_train=10, n_test=20, n_support=5, n_query=10, dim=16)
        Th, K = kernels_for(10, args.depth, tasks)
        allm = ("mtl", "baseline", "anil", "maml")
        with events, blas_context(1):
            t_cold, _ = C.timed(lambda: P.predict_from_kernels(Th, K, tasks, cfg, allm))
        ce = events.total
        phis = [O.meta_kernel(Th, G, tasks.layout, O.Dynamics(cfg.inner_time)) for G in (K, Th)]
        idx, task = O.mtl_index(tasks.layout, "all")
        mk = np.asarray(O.mtl_kernel(Th[np.ix_(idx, idx)], K[np.ix_(idx, idx)], task))

        def np_floor_all():
            out = []
            for a in phis + [mk]:
                m, U = np.linalg.eigh(a)
                out.append((U / m) @ U.T)
            return out

        for threads in (None, 1):
            with blas_context(threads):
                t = C.interleaved({"predict": lambda: P.predict_from_kernels(Th, K, tasks, cfg, allm),
                                   "np_floor": np_floor_all}, 15)
            med = {k: C.median(v) for k, v in t.items()}
            floor_rows.append(dict(
                N=10, method="mtl+baseline+anil+maml (the sweep's call)", meta_kernel_size="100,100,150",
                repeats=15, blas_threads=nthreads if threads is None else threads, predict_s=med["predict"],
                floor_np_eigh_plus_product_s=med["np_floor"],
                ratio_predict_over_np_floor=med["predict"] / med["np_floor"],
                ratio_of_minima_predict_over_np_floor=min(t["predict"]) / min(t["np_floor"]),
                first_call_minus_warm_s=(t_cold - med["predict"]) if threads == 1 else float("nan"),
                compile_events_s=ce))

    if loop_rows:
        C.print_table("item 2: vectorised vs per-task-pair loop (median seconds; ratio = loop / vectorised)",
                      loop_rows, ["N", "method", "meta_kernel_size", "blas_threads", "loop_meta_kernel_s",
                                  "meta_kernel_s", "ratio_meta_kernel", "ratio_meta_kernel_jit", "reference_gbml_s",
                                  "predict_s", "ratio_predictor", "maxrel_meta_kernel_vs_loop",
                                  "maxrel_prediction_vs_reference"])
        C.write_csv("predictors_vs_loop", loop_rows)
    if floor_rows:
        C.print_table("item 3: predictor vs floor (eigh + one product of the meta-kernel's size; goal < 2)",
                      floor_rows, ["N", "method", "meta_kernel_size", "blas_threads", "predict_s",
                                   "floor_np_eigh_plus_product_s", "ratio_predict_over_np_floor",
                                   "ratio_predict_over_jax_floor", "ratio_of_minima_predict_over_np_floor",
                                   "ratio_raw_jit_over_np_floor",
                                   "compile_events_s", "first_call_minus_warm_s"])
        C.write_csv("predictors_vs_floor", floor_rows)
    if prof_rows:
        C.print_table("predictor sub-steps (jitted pieces timed alone, median seconds)", prof_rows,
                      ["N", "method", "blas_threads", "piece", "seconds", "share_of_end_to_end"])
        C.write_csv("predictors_profile", prof_rows)


if __name__ == "__main__":
    main()
