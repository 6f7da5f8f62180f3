"""Benchmark of finite-network training (ntk_bridge.finite): the paper's efficiency claim at CPU scale.

Part 1 (default): time per outer step of MTL, ANIL, MAML (and first-order MAML) at equal width and
depth, their ratios to MTL, and the time each takes to bring its own training loss (MTL: all
training data; ANIL/MAML: the meta-loss on the queries after adaptation) to a fixed fraction of its
initial value, read from a ``--history-steps`` run (step size ``outer_step / lambda_max``, the
default rule of :func:`ntk_bridge.finite.discretise`). Per-step times are differences of two compiled runs of different
lengths (compile time and the test-time evaluation cancel).

Part 2 (``--grid``): wall time of ``finite_cell`` per (width, depth) cell, cold (compilation
included, as in a sweep) and warm, with an estimate for the sweep's target (``--target-steps``
outer steps, ``--target-networks`` networks) from a shorter measured run (see :func:`grid`).

Usage::

    python benchmarks/bench_finite.py                       # part 1, defaults below
    python benchmarks/bench_finite.py --width 512 --depth 3 --dtype float32
    python benchmarks/bench_finite.py --grid --widths 64,128,256,512,1024 --depths 1,2,3,4 \\
        --networks 1 --short 4 --long 12 --target-steps 300 --target-networks 4
    python benchmarks/bench_finite.py --grid --widths 64,128 --depths 2 --networks 4 --short 0 --long 300

Prints a table and writes a CSV under ``benchmarks/results/``. Timings on a shared machine are
noisy: the script reports the median of ``--repeats`` runs and the machine's load average.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import ntk_bridge  # noqa: E402,F401  (float64)
from ntk_bridge import finite  # noqa: E402
from ntk_bridge.kernels import kernels_by_depth  # noqa: E402
from ntk_bridge.predictors import PredictorConfig  # noqa: E402
from ntk_bridge.families import subspace_tasks  # noqa: E402

RESULTS = os.environ.get("NTK_BRIDGE_BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _tasks(args):
    return subspace_tasks(seed=0, n_train=args.n_train, n_test=args.n_test, n_support=args.n_support,
                          n_query=args.n_query, dim=args.dim)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def per_step(args) -> pd.DataFrame:
    tasks = _tasks(args)
    kern = next(kernels_by_depth(tasks.all_points(), depths=[args.depth]))
    base = PredictorConfig(inner_time=args.inner_time, finetune_time=args.finetune_time, mtl_data=args.mtl_data)
    rows = []
    for method in args.methods.split(","):
        times = {}
        for steps in (args.short, args.long):
            training = finite.TrainingConfig(outer_steps=steps, dtype=args.dtype, linearized=False)
            cfg = finite.discretise(base, kern.ntk, tasks, training)

            def call():
                return finite.train_networks(tasks, args.depth, args.width, cfg, (method,), seed=0,
                                             n_networks=args.networks, mode="centred", training=training)

            _, compile_and_run = _timed(call)  # compiles
            samples = [_timed(call)[1] for _ in range(args.repeats)]
            times[steps] = (float(np.median(samples)), compile_and_run)
        step_s = (times[args.long][0] - times[args.short][0]) / (args.long - args.short)
        # time to a fixed training loss: each method's own objective, from the long run's history
        training = finite.TrainingConfig(outer_steps=args.history_steps, dtype=args.dtype, linearized=False)
        cfg = finite.discretise(base, kern.ntk, tasks, training)
        run = finite.train_networks(tasks, args.depth, args.width, cfg, (method,), n_networks=args.networks,
                                    training=training)
        hist = run.history[method][0]
        reached = np.nonzero(hist <= args.target * hist[0])[0]
        steps_to = int(reached[0]) if reached.size else np.nan
        rows.append(dict(method=method, depth=args.depth, width=args.width, networks=args.networks,
                         dtype=args.dtype, inner_steps=cfg.inner_steps, history_steps=cfg.outer_steps,
                         step_ms=1e3 * step_s, first_call_s=times[args.short][1],
                         steps_to_target=steps_to, time_to_target_s=steps_to * step_s,
                         final_loss_rel=float(hist[-1] / hist[0])))
    df = pd.DataFrame(rows)
    mtl = df.loc[df["method"] == "mtl", "step_ms"]
    if len(mtl):
        df["step_vs_mtl"] = df["step_ms"] / float(mtl.iloc[0])
    return df


def grid(args) -> pd.DataFrame:
    """``finite_cell`` per (width, depth), as a sweep calls it (cold: compilation included).

    Measured with ``--networks`` networks at ``--short`` and ``--long`` outer steps, each cold then
    warm: ``compile_s = cold - warm`` (at ``--long``), ``step_s`` = (warm_long - warm_short) /
    (long - short) for all methods of the cell together, ``fixed_s`` = the rest of a warm call
    (kernels, closed forms, test-time adaptation). The estimate for ``--target-steps`` steps and
    ``--target-networks`` networks is ``compile_s + (fixed_s + target_steps x step_s) x
    target_networks / networks``: with ``lax.map`` batching training is linear in the number of
    networks and compilation does not depend on it (scaling ``fixed_s`` too makes it an upper bound).
    When ``--short 0`` the cell is measured once at ``--long`` and reported as is.
    """
    tasks = _tasks(args)
    widths = [int(w) for w in args.widths.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    config = PredictorConfig(inner_time=args.inner_time, finetune_time=args.finetune_time, mtl_data=args.mtl_data)
    methods = tuple(args.methods.split(","))
    ratio = args.target_networks / args.networks
    rows = []
    for depth in depths:
        for width in widths:
            timings = {}
            for steps in ([args.short] if args.short else []) + [args.long]:
                training = finite.TrainingConfig(outer_steps=steps, dtype=args.dtype,
                                                 linearized=not args.no_linearized)

                def call():
                    return finite.finite_cell(tasks, depth, width, config, methods, seed=0,
                                              n_networks=args.networks, training=training)

                out, cold = _timed(call)
                _, warm = _timed(call)
                timings[steps] = (cold, warm)
            cold, warm = timings[args.long]
            compile_s = max(cold - warm, 0.0)
            if args.short:
                step_s = (warm - timings[args.short][1]) / (args.long - args.short)
                fixed_s = max(warm - args.long * step_s, 0.0)
                estimate = compile_s + (fixed_s + args.target_steps * step_s) * ratio
            else:
                step_s = fixed_s = float("nan")
                estimate = cold
            ok = out[out["network"] != "ensemble"]
            rows.append(dict(depth=depth, width=width, networks=args.networks, outer_steps=args.long,
                             dtype=args.dtype, linearized=not args.no_linearized, cold_s=cold, warm_s=warm,
                             compile_s=compile_s, step_s=step_s, fixed_s=fixed_s, estimate_s=estimate,
                             statuses=",".join(sorted(set(out["status"]))),
                             dist_to_infinite_rel=float(ok["dist_to_infinite_rel"].mean())))
            print(f"  depth {depth} width {width}: cold {cold:.1f} s, warm {warm:.2f} s, "
                  f"estimate {estimate:.1f} s", flush=True)
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--networks", type=int, default=1)
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--methods", default="mtl,anil,maml,fomaml")
    parser.add_argument("--short", type=int, default=10, help="outer steps of the short timed run (grid: 0 = "
                        "measure only --long)")
    parser.add_argument("--long", type=int, default=60, help="outer steps of the long timed run (and grid cells)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.05, help="training loss / initial loss to reach")
    parser.add_argument("--history-steps", type=int, default=300,
                        help="outer steps of the run whose loss history gives the time to target")
    parser.add_argument("--inner-time", type=float, default=0.1)
    parser.add_argument("--finetune-time", type=float, default=1.0)
    parser.add_argument("--mtl-data", default="all", choices=("all", "query"))
    parser.add_argument("--n-train", type=int, default=10)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--n-support", type=int, default=5)
    parser.add_argument("--n-query", type=int, default=10)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--grid", action="store_true", help="time finite_cell over a (width, depth) grid")
    parser.add_argument("--widths", default="64,128,256,512,1024")
    parser.add_argument("--depths", default="1,2,3,4")
    parser.add_argument("--no-linearized", action="store_true", help="grid: skip the linearised twins")
    parser.add_argument("--target-steps", type=int, default=300, help="grid: outer steps of the estimate")
    parser.add_argument("--target-networks", type=int, default=4, help="grid: networks of the estimate")
    parser.add_argument("--out", default=None, help="CSV path (default: benchmarks/results/...)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a "
                        "temporary folder")
    args = parser.parse_args()
    if args.smoke:
        import tempfile

        for k, v in dict(width=16, depth=1, short=1, long=2, repeats=1, history_steps=3, n_train=2, n_test=2,
                         n_support=2, n_query=2, dim=4, widths="16", depths="1", target_steps=3,
                         target_networks=1).items():
            setattr(args, k, v)
        folder = os.environ.get("NTK_BRIDGE_BENCH_RESULTS") or tempfile.mkdtemp(prefix="ntkb-bench-smoke-")
        args.out = args.out or os.path.join(folder, "finite.csv")

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# jax {jax.__version__} on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load:.1f}")
    df = grid(args) if args.grid else per_step(args)
    df["load_average"] = load
    pd.set_option("display.width", 200)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.grid:
        print(f"# grid total {df['cold_s'].sum():.1f} s cold ({df['compile_s'].sum():.1f} s compiling); "
              f"estimate for {args.target_steps} steps x {args.target_networks} networks: "
              f"{df['estimate_s'].sum():.1f} s")
    os.makedirs(RESULTS, exist_ok=True)
    name = "bench_finite_grid" if args.grid else f"bench_finite_w{args.width}_d{args.depth}_{args.dtype}"
    path = args.out or os.path.join(RESULTS, f"{name}.csv")
    df.to_csv(path, index=False)
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
