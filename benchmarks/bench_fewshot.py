"""Benchmark of the few-shot methods' costs (ntk_bridge.fewshot): CPU-seconds per outer step and per
test episode, and their ratios to MTL, at the settings of ``ntk-bridge fewshot``.

Each method's outer step is compiled ahead of time (as in training), then ``--steps`` steps are timed
per repeat, the methods interleaved (the order rotates between repeats, ``_common.interleaved``'s
rule), and the median over ``--repeats`` is reported, on the process CPU clock and the wall clock.
The test-time cost is the time to score ``--episodes`` fixed test episodes with the method's own
adaptation (MTL: features + a scikit-learn logistic regression per episode; ANIL: 10 head steps; MAML:
one step on all weights, one episode at a time; R2D2: one ridge solve; ProtoNet: prototypes).

Usage::

    taskset -c 1 python benchmarks/bench_fewshot.py                 # kanji, Conv-4 width 32, 5-way 1-shot
    taskset -c 1 python benchmarks/bench_fewshot.py --shots 5 --width 64

Prints a table and writes ``benchmarks/results/bench_fewshot_<dataset>_w<width>_<shots>shot.csv``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median, print_table, smoke, write_csv  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import ntk_bridge  # noqa: E402,F401  (float64 on; the few-shot networks run in float32)
from ntk_bridge.datasets.episodes import fixed_episodes  # noqa: E402
from ntk_bridge.datasets.loaders import load_dataset  # noqa: E402
from ntk_bridge.fewshot import METHOD_NAMES  # noqa: E402
from ntk_bridge.fewshot.evaluate import accuracies, episode_scorer  # noqa: E402
from ntk_bridge.fewshot.methods import default_method_config  # noqa: E402
from ntk_bridge.fewshot.models import ModelConfig  # noqa: E402
from ntk_bridge.fewshot.optim import make_optimizer  # noqa: E402
from ntk_bridge.fewshot.train import make_net, make_outer_step  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="kanji")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--steps", type=int, default=20, help="outer steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=100, help="test episodes per timed repeat")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a "
                        "temporary folder")
    args = parser.parse_args()
    if smoke(["--smoke"] if args.smoke else []):
        # the digits images ship with scikit-learn: no rendering
        args.steps, args.repeats, args.episodes, args.width, args.dataset, args.ways = 1, 1, 2, 4, "digits", 3
        if args.methods == parser.get_default("methods"):  # the two cheapest to compile
            args.methods = "mtl,protonet"

    data = load_dataset(args.dataset)
    model = ModelConfig(width=args.width)
    images = data.splits["train"]
    setups = {}
    for name in args.methods.split(","):
        config = default_method_config(name)
        net = make_net(model, config, args.ways, images.shape[0], data.image_shape)
        params = config.spec.init_params(net, jax.random.PRNGKey(0))
        optimizer = make_optimizer(config, 1000)
        state = optimizer.init(params)
        rng = np.random.default_rng([0, 1])
        batch = config.spec.training_batch(config, images, args.ways, args.shots, rng)
        tic = time.perf_counter()
        step = jax.jit(make_outer_step(config, net, optimizer, args.ways)).lower(params, state, batch).compile()
        episodes = list(fixed_episodes(data.splits["test"], args.ways, args.shots, 15, args.episodes, 0, 2))
        score = episode_scorer(net, config)
        accuracies(score, params, episodes[:1])  # compiles the scorer
        setups[name] = dict(config=config, step=step, params=params, state=state, rng=rng, score=score,
                            episodes=episodes, compile_s=time.perf_counter() - tic,
                            images=int(np.prod([batch[0].shape[0], batch[0].shape[1]]) +
                                       (np.prod(batch[2].shape[:2]) if len(batch) == 4 else 0)))

    def train_steps(s):
        for _ in range(args.steps):
            batch = s["config"].spec.training_batch(s["config"], images, args.ways, args.shots, s["rng"])
            s["params"], s["state"], loss, _ = s["step"](s["params"], s["state"], batch)
            float(loss)

    def test_episodes(s):
        accuracies(s["score"], s["params"], s["episodes"])

    names = list(setups)
    timings = {n: {"step_cpu": [], "step_wall": [], "test_cpu": [], "test_wall": []} for n in names}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in (order[::-1] if r % 2 else order):
            for kind, fn in (("step", train_steps), ("test", test_episodes)):
                cpu, wall = time.process_time(), time.perf_counter()
                fn(setups[n])
                timings[n][f"{kind}_cpu"].append(time.process_time() - cpu)
                timings[n][f"{kind}_wall"].append(time.perf_counter() - wall)
    rows = []
    for n in names:
        t = {k: median(v) for k, v in timings[n].items()}
        rows.append(dict(method=n, dataset=args.dataset, ways=args.ways, shots=args.shots, width=args.width,
                         images_per_step=setups[n]["images"], meta_batch=setups[n]["config"].meta_batch,
                         cpu_ms_per_step=1e3 * t["step_cpu"] / args.steps, wall_ms_per_step=1e3 * t["step_wall"] / args.steps,
                         cpu_ms_per_test_episode=1e3 * t["test_cpu"] / args.episodes,
                         compile_s=setups[n]["compile_s"], repeats=args.repeats, steps=args.steps))
    mtl = next((r for r in rows if r["method"] == "mtl"), None)
    for r in rows:
        if mtl:
            r["step_vs_mtl"] = r["cpu_ms_per_step"] / mtl["cpu_ms_per_step"]
            r["test_episode_vs_mtl"] = r["cpu_ms_per_test_episode"] / mtl["cpu_ms_per_test_episode"]
        r["load_average"] = os.getloadavg()[0]
    print_table(f"few-shot costs: {args.dataset} {args.ways}-way {args.shots}-shot, Conv-4 width {args.width} "
                f"(median of {args.repeats} x {args.steps} steps, {args.episodes} test episodes)", rows,
                ["method", "images_per_step", "cpu_ms_per_step", "wall_ms_per_step", "step_vs_mtl",
                 "cpu_ms_per_test_episode", "test_episode_vs_mtl", "compile_s"])
    write_csv(f"bench_fewshot_{args.dataset}_w{args.width}_{args.shots}shot", rows, machine())


if __name__ == "__main__":
    main()
