"""Benchmark of :func:`ntk_bridge.runtime.steady_heap`: few-shot training steps on one core, with glibc's
default heap and with the heap that keeps what it frees (one arena, no ``mmap``, no trimming).

Each side is a whole process pinned to one core (as the figure workers are, and as ``taskset -c 1
ntk-bridge fewshot`` is), since the heap must be set before JAX starts its threads. A process compiles the
method's outer step, runs ``--warmup`` steps, then times ``--steps`` steps (process CPU clock and wall clock)
and counts the page faults they take. The two sides alternate (plain, steady, steady, plain, ...) for
``--repeats`` rounds and each side's median is reported; the ratio is the result. Both sides must end with the
same losses, bit for bit (the heap changes no number), or the benchmark fails.

Usage::

    python benchmarks/bench_heap.py                       # kanji, the figure's Conv-4, MTL and MAML
    python benchmarks/bench_heap.py --methods mtl --steps 100 --repeats 5

Prints a table and writes ``benchmarks/results/bench_heap.csv``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, machine, median, print_table, smoke, write_csv  # noqa: E402

_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    from ntk_bridge import runtime
    mode, method, dataset, ways, width, warmup, steps = sys.argv[1:8]
    took = runtime.steady_heap() if mode == "steady" else False
    import jax
    import numpy as np
    from ntk_bridge.datasets.loaders import load_dataset
    from ntk_bridge.fewshot.methods import default_method_config
    from ntk_bridge.fewshot.models import ModelConfig
    from ntk_bridge.fewshot.optim import make_optimizer
    from ntk_bridge.fewshot.train import make_net, make_outer_step
    ways, width, warmup, steps = int(ways), int(width), int(warmup), int(steps)
    data = load_dataset(dataset)
    images = data.splits["train"]
    config = default_method_config(method)
    net = make_net(ModelConfig(width=width), config, ways, images.shape[0], data.image_shape)
    params = config.spec.init_params(net, jax.random.PRNGKey(0))
    optimizer = make_optimizer(config, 1000)
    state = optimizer.init(params)
    rng = np.random.default_rng([0, 1])
    batch = config.spec.training_batch(config, images, ways, 1, rng)
    step = jax.jit(make_outer_step(config, net, optimizer, ways)).lower(params, state, batch).compile()
    losses = []
    def run(n):
        global params, state
        for _ in range(n):
            batch = config.spec.training_batch(config, images, ways, 1, rng)
            params, state, loss, _ = step(params, state, batch)
            losses.append(float(loss))
    run(warmup)
    faults, cpu, wall = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
    run(steps)
    print(json.dumps(dict(cpu=time.process_time() - cpu, wall=time.perf_counter() - wall, took=took,
                          faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, losses=losses)))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="kanji")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--methods", default="mtl,maml")
    parser.add_argument("--warmup", type=int, default=5, help="steps before the timed ones")
    parser.add_argument("--steps", type=int, default=60, help="timed outer steps per process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per side and method")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a "
                        "temporary folder")
    args = parser.parse_args()
    if smoke(["--smoke"] if args.smoke else []):
        args.dataset, args.ways, args.width, args.methods, args.warmup, args.steps, args.repeats = \
            "digits", 3, 4, "mtl", 1, 2, 1
    if not hasattr(os, "sched_setaffinity"):
        sys.exit("bench_heap.py pins its processes to one core: Linux only")
    rows = []
    for method in args.methods.split(","):
        got = {"plain": [], "steady": []}
        for r in range(args.repeats):
            for mode in (("plain", "steady") if r % 2 == 0 else ("steady", "plain")):
                p = subprocess.run([sys.executable, "-c", _CHILD, mode, method, args.dataset, str(args.ways),
                                    str(args.width), str(args.warmup), str(args.steps)],
                                   capture_output=True, text=True, cwd=REPO)
                if p.returncode:
                    sys.exit(f"{mode} {method} failed:\n{p.stderr[-3000:]}")
                got[mode].append(json.loads(p.stdout.strip().splitlines()[-1]))
        runs = got["plain"] + got["steady"]
        if any(run["losses"] != runs[0]["losses"] for run in runs):
            sys.exit(f"{method}: the losses differ between processes (the heap must change no number)")
        row = dict(method=method, dataset=args.dataset, width=args.width, steps=args.steps, repeats=args.repeats,
                   steady_heap_took=all(run["took"] for run in got["steady"]))
        for mode in got:
            row[f"{mode}_cpu_ms_per_step"] = 1e3 * median([run["cpu"] for run in got[mode]]) / args.steps
            row[f"{mode}_wall_ms_per_step"] = 1e3 * median([run["wall"] for run in got[mode]]) / args.steps
            row[f"{mode}_faults_per_step"] = median([run["faults"] for run in got[mode]]) / args.steps
        row["steady_vs_plain_cpu"] = row["steady_cpu_ms_per_step"] / row["plain_cpu_ms_per_step"]
        row["steady_vs_plain_wall"] = row["steady_wall_ms_per_step"] / row["plain_wall_ms_per_step"]
        row["load_average"] = os.getloadavg()[0]
        rows.append(row)
    print_table(f"few-shot training steps on one core, glibc's heap against steady_heap ({args.dataset}, Conv-4 width "
                f"{args.width}; medians of {args.repeats} processes x {args.steps} steps; equal losses checked)", rows,
                ["method", "plain_cpu_ms_per_step", "steady_cpu_ms_per_step", "steady_vs_plain_cpu",
                 "steady_vs_plain_wall", "plain_faults_per_step", "steady_faults_per_step"])
    write_csv("bench_heap", rows, machine())


if __name__ == "__main__":
    main()
