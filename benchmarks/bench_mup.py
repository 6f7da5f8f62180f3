"""The muP-limit predictor (``ntk_bridge.finite.mup_limit``, docs/theory.md §8) on the default regression
grid: cold (compilation included) and warm times per method, and the finite muP networks it is the
limit of at one width, for scale.

    python benchmarks/bench_mup.py            # subspace tasks of the default sweep, N = 10
    python benchmarks/bench_mup.py --train-tasks 50

Tasks ``subspace_tasks(seed=0, n_train=N, n_test=20, n_support=5, n_query=10, dim=16)`` (the default
sweep's family and sizes); one-hidden-layer linear network; inner time 0.1, fine-tuning time 1,
outer time inf = 300 steps of size 1 / lambda_max (the sweep's discrete schedule). The limit is a
width-17 network (d + k). Writes ``benchmarks/results/mup_limit.csv``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-tasks", type=int, default=10)
    parser.add_argument("--width", type=int, default=1024, help="finite muP width timed beside the limit")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a "
                        "temporary folder")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as C

    if C.smoke(["--smoke"] if args.smoke else []):
        args.train_tasks, args.width = 2, 8

    from ntk_bridge import methods as registry
    from ntk_bridge.families import subspace_tasks
    from ntk_bridge.finite import TrainingConfig, discretise, train_networks
    from ntk_bridge.finite.mup_limit import mup_limit_run
    from ntk_bridge.kernels import Architecture, kernels_by_depth
    from ntk_bridge.predictors import PredictorConfig

    n_test, dim = (2, 4) if args.smoke else (20, 16)
    tasks = subspace_tasks(seed=0, n_train=args.train_tasks, n_test=n_test, n_support=5, n_query=10, dim=dim)
    arch = Architecture(activation="linear", hidden_w_std=1.0)
    training = TrainingConfig(linearized=False, outer_steps=3) if args.smoke else TrainingConfig(linearized=False)
    ntk = next(kernels_by_depth(tasks.all_points(), depths=[1], architecture=arch)).ntk
    cfg = discretise(PredictorConfig(inner_time=0.1), ntk, tasks, training)
    rows = []
    for method in (registry.MTL.name, registry.ANIL.name, registry.MAML.name, registry.FOMAML.name):
        times = []
        for _ in range(2 if args.smoke else 3):
            t = time.perf_counter()
            mup_limit_run(tasks, cfg, (method,), arch, training)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        train_networks(tasks, 1, args.width, cfg, (method,), n_networks=1,
                       architecture=Architecture(activation="linear", hidden_w_std=1.0, param="mup"), training=training)
        finite_cold = time.perf_counter() - t
        rows.append(dict(method=method, train_tasks=args.train_tasks, outer_steps=cfg.outer_steps,
                         limit_cold_s=round(times[0], 3), limit_warm_s=round(min(times[1:]), 3),
                         finite_width=args.width, finite_cold_s=round(finite_cold, 3)))
        print(rows[-1], flush=True)
    os.makedirs(C.RESULTS, exist_ok=True)
    out = os.path.join(C.RESULTS, "mup_limit.csv")
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
