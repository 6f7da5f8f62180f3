"""The Python API against the command line on the main job's grid: a user who loops over the six
configurations of ``ntk-bridge sweep --depth 2..32`` (inner times 0.01, 0.1, 1 x MTL data all, query)
with :func:`ntk_bridge.predictors.predict` should not pay more than the command does.

    python benchmarks/bench_api.py                # 3 repeats, interleaved
    python benchmarks/bench_api.py --repeats 5
    python benchmarks/bench_api.py --smoke        # depths 2..3, one repeat (seconds)

Each side is one fresh process (imports, kernels, compilation from the persistent compilation cache,
the linear algebra), timed whole, the two sides alternating in order from repeat to repeat; a first
untimed run of each fills the compilation cache, so both sides are *warm* (compiled programs on disk).

* ``cli``: ``ntk-bridge sweep --depth 2..32 --no-figures --out TMP`` into a fresh folder (every cell
  computed; writing the cells and tables included, the figure not).
* ``api``: a script calling ``predict(tasks, depth=range(2, 33), config=PredictorConfig(inner_time=s,
  mtl_data=m))`` for the six ``(s, m)``, on the sweep's own task set (family ``subspace``, seed 0,
  10 training and 20 test tasks, 5 + 10 points, dim 16), methods MTL, ANIL, MAML and the baseline.

Reports the medians and ``api / cli`` (goal: at most 1.5). Writes ``benchmarks/results/api_vs_cli.csv``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

API_SCRIPT = """
import sys
from ntk_bridge.families import subspace_tasks
from ntk_bridge.predictors import PredictorConfig, predict

last = int(sys.argv[1])
tasks = subspace_tasks(seed=0, n_train=10, n_test=20, n_support=5, n_query=10, dim=16)
for inner in (0.01, 0.1, 1.0):
    for data in ("all", "query"):
        out = predict(tasks, depth=range(2, last + 1), config=PredictorConfig(inner_time=inner, mtl_data=data),
                      methods=("mtl", "anil", "maml", "baseline"))
        assert len(out) == last - 1
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="depths 2..3, one repeat; CSV to a temporary folder")
    args = parser.parse_args()
    sys.path.insert(0, HERE)
    import _common as C

    last = 32
    if C.smoke(["--smoke"] if args.smoke else []):
        last, args.repeats = 3, 1
    bin_dir = os.path.dirname(sys.executable)
    cli = os.path.join(bin_dir, "ntk-bridge")
    cache = tempfile.mkdtemp(prefix="ntkb-bench-api-cache-")
    env = dict(os.environ, NTK_BRIDGE_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="3")

    def run(argv) -> None:
        subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cli_run() -> None:
        with tempfile.TemporaryDirectory(prefix="ntkb-bench-api-") as out:
            run([cli, "sweep", "--depth", f"2..{last}", "--no-figures", "--out", out])

    def api_run() -> None:
        run([sys.executable, "-c", API_SCRIPT, str(last)])

    # the warm-up run of each fills the persistent compilation cache for both
    times = C.interleaved({"cli": cli_run, "api": api_run}, args.repeats)
    med = {k: C.median(v) for k, v in times.items()}
    rows = [dict(side=k, median_s=round(med[k], 3), spread=round(C.spread(v), 3), repeats=len(v),
                 depths=f"2..{last}") for k, v in times.items()]
    rows.append(dict(side="api / cli", median_s=round(med["api"] / med["cli"], 3), spread="", repeats=args.repeats,
                     depths=f"2..{last}"))
    C.print_table("The API's six predict calls against the command line (warm, whole processes)", rows)
    print(f"csv: {C.write_csv('api_vs_cli', rows)}")


if __name__ == "__main__":
    main()
