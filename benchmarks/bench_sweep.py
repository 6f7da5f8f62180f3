"""Benchmark: wall time of the default sweep, start-up included, and where it goes.

    /work/venv/bin/python benchmarks/bench_sweep.py            # --quick: 1 plain run + 1 instrumented
    /work/venv/bin/python benchmarks/bench_sweep.py --full     # 3 + 3, interleaved

Two kinds of runs of ``ntk-bridge sweep --depth 2..32 --out <fresh tmp dir>``, each in its own process:

* *plain*: the installed command under ``/usr/bin/time -v`` (wall time, max RSS), nothing patched;
* *instrumented*: the same command run in-process by this script (``--child``), with the imports done
  one by one first and the library's stages wrapped by timers: task plan, kernel pass, predictor calls
  (JAX compile time -- tracing, lowering, XLA -- separated from run time through
  ``jax.monitoring`` events), metric rows, cell files, read-back, results/config/summary, figures and
  the console report. Times are exclusive (a nested stage is not counted twice).

Goal: under 60 s on 2 cores, start-up included. Writes ``benchmarks/results/sweep_time.csv``
(one row per stage, plus the plain runs' totals).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

_T_START = time.perf_counter()  # before any heavy import (child mode measures from here)

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.dirname(sys.executable)
SWEEP_ARGS = ["sweep", "--depth", "2..32"]


# ---------------------------------------------------------------------------------------------
# Child: one instrumented sweep
# ---------------------------------------------------------------------------------------------

def child(out_dir: str, patches: list[str], instrument: bool = True) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, HERE)
    import proposed_fixes

    proposed_fixes.check_known(patches)
    for p in patches:  # benchmark-local versions of proposed library fixes
        if p in proposed_fixes.PRE_IMPORT:
            proposed_fixes.apply(p)
    if not instrument:
        for p in patches:
            if p in proposed_fixes.POST_IMPORT:
                proposed_fixes.apply(p)
        import ntk_bridge.cli as cli

        cli.app(SWEEP_ARGS + ["--out", out_dir], standalone_mode=False)
        return
    stages: dict[str, float] = {}
    compile_in: dict[str, float] = {}
    counts: dict[str, int] = {}
    stack: list[list] = []  # [name, start, child_time]

    def add(name, dt):
        stages[name] = stages.get(name, 0.0) + dt

    t = time.perf_counter()
    import numpy  # noqa: F401
    add("import numpy", time.perf_counter() - t)
    t = time.perf_counter()
    import jax
    add("import jax (+ jaxlib)", time.perf_counter() - t)
    t = time.perf_counter()
    if "defer_tf" not in patches:
        import tensorflow  # noqa: F401  (neural-tangents imports it)
    add("import tensorflow (via neural-tangents)", time.perf_counter() - t)
    t = time.perf_counter()
    import neural_tangents  # noqa: F401
    add("import neural_tangents (rest)", time.perf_counter() - t)
    t = time.perf_counter()
    import pandas  # noqa: F401
    import scipy.stats  # noqa: F401
    add("import pandas, scipy", time.perf_counter() - t)
    t = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    add("import matplotlib", time.perf_counter() - t)
    t = time.perf_counter()
    import sklearn  # noqa: F401  (imported by ntk_bridge.cli through ntk_bridge.fewshot)
    add("import scikit-learn (via ntk_bridge.fewshot)", time.perf_counter() - t)
    t = time.perf_counter()
    import ntk_bridge
    import ntk_bridge.cli as cli
    import ntk_bridge.figures as figures
    import ntk_bridge.results as results
    import ntk_bridge.sweep as sweep
    add("import ntk_bridge, typer, rich (rest)", time.perf_counter() - t)
    t_imports_done = time.perf_counter()

    t = time.perf_counter()
    for p in patches:
        if p in proposed_fixes.POST_IMPORT:
            proposed_fixes.apply(p)
    if patches:
        add("apply proposed fixes", time.perf_counter() - t)

    def listener(event, duration, **_):
        if event.startswith("/jax/core/compile/"):
            where = stack[-1][0] if stack else "(outside stages)"
            compile_in[where] = compile_in.get(where, 0.0) + duration

    jax.monitoring.register_event_duration_secs_listener(listener)

    def enter(name):
        stack.append([name, time.perf_counter(), 0.0])

    def leave():
        name, start, inner = stack.pop()
        dt = time.perf_counter() - start
        add(name, dt - inner)
        counts[name] = counts.get(name, 0) + 1
        if stack:
            stack[-1][2] += dt

    def wrap(module, attr, name):
        fn = getattr(module, attr)

        def wrapper(*a, **k):
            enter(name)
            try:
                return fn(*a, **k)
            finally:
                leave()

        setattr(module, attr, wrapper)

    def wrap_gen(module, attr, name):
        fn = getattr(module, attr)

        def wrapper(*a, **k):
            gen = fn(*a, **k)
            while True:
                enter(name)
                try:
                    item = next(gen)
                except StopIteration:
                    return
                finally:
                    leave()
                yield item

        setattr(module, attr, wrapper)

    wrap(sweep, "plan", "plan: tasks, fingerprint, cell keys")
    wrap_gen(sweep, "kernels_by_depth", "kernel pass (eager neural-tangents)")
    wrap(sweep, "predict_from_kernels", "predictors (predict_from_kernels, 1 jitted call per cell)")
    wrap(sweep, "metric_rows", "metric rows (Python)")
    wrap(sweep, "write_cell", "write cell files (fsync)")
    wrap(sweep, "read_cells", "read cells back + sort")
    wrap(sweep, "sort_results", "read cells back + sort")
    wrap(cli, "_provenance", "provenance (git subprocesses)")
    wrap(results, "summary_markdown", "summary.md (slopes, tables)")
    wrap(figures, "plot_gap_vs_depth", "figures (png + pdf)")
    wrap(cli, "print_report", "console report")
    wrap(cli, "write_outputs", "results.csv + config.json")

    t = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        old = sys.stdout
        sys.stdout = devnull
        try:
            cli.app(SWEEP_ARGS + ["--out", out_dir], standalone_mode=False)
        finally:
            sys.stdout = old
    t_cli = time.perf_counter() - t
    t_end = time.perf_counter()
    accounted = sum(v for k, v in stages.items() if not k.startswith("import"))
    add("CLI, progress bar, other", t_cli - accounted)
    # split compile time out of the stages it happened in
    rows = []
    for name, secs in stages.items():
        c = compile_in.get(name, 0.0)
        rows.append(dict(stage=name, seconds=secs - c if c else secs, calls=counts.get(name, 1)))
        if c:
            rows.append(dict(stage=f"  compile inside: {name}", seconds=c, calls=0))
    if compile_in.get("(outside stages)"):
        rows.append(dict(stage="compile outside the stages", seconds=compile_in["(outside stages)"], calls=0))
        for r in rows:
            if r["stage"] == "CLI, progress bar, other":
                r["seconds"] -= compile_in["(outside stages)"]
    print("BENCH_JSON " + json.dumps(dict(rows=rows, in_process_s=t_end - _T_START,
                                           imports_s=t_imports_done - _T_START)))


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------

def run_plain(tmp: str, patches: list[str]) -> dict:
    """The sweep under ``/usr/bin/time -v``: the installed command, or (with patches) the same CLI
    in a process that applies the fixes first, with no instrumentation."""
    out = os.path.join(tmp, "plain")
    if patches:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", out, "--no-instrument"]
        cmd += sum((["--patch", p] for p in patches), [])
    else:
        cmd = [os.path.join(VENV_BIN, "ntk-bridge")] + SWEEP_ARGS + ["--out", out]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"sweep failed ({p.returncode}):\n{p.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    user = re.search(r"User time \(seconds\): ([\d.]+)", p.stderr)
    system = re.search(r"System time \(seconds\): ([\d.]+)", p.stderr)
    return dict(wall_s=wall, max_rss_mib=int(rss.group(1)) / 1024 if rss else float("nan"),
                cpu_s=(float(user.group(1)) + float(system.group(1))) if user and system else float("nan"),
                results_csv=os.path.join(out, "results.csv"))


def run_child(tmp: str, patches: list[str]) -> dict:
    out = os.path.join(tmp, "instrumented")
    cmd = [sys.executable, os.path.abspath(__file__), "--child", out] + sum((["--patch", p] for p in patches), [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"instrumented sweep failed ({p.returncode}):\n{p.stderr[-3000:]}")
    data = json.loads(line[-1][len("BENCH_JSON "):])
    data["wall_s"] = wall
    return data


def same_results(path_a: str, path_b: str) -> float:
    """Largest relative difference between two results.csv files' numeric columns (0.0: identical)."""
    import numpy as np
    import pandas as pd

    a, b = pd.read_csv(path_a), pd.read_csv(path_b)
    if a.shape != b.shape:
        return float("inf")
    worst = 0.0
    for c in a.columns:
        if pd.api.types.is_numeric_dtype(a[c]):
            x, y = a[c].to_numpy(float), b[c].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            if not np.array_equal(np.isfinite(x), np.isfinite(y)):
                return float("inf")
            den = np.maximum(np.abs(y[ok]), 1e-300)
            if ok.any():
                worst = max(worst, float(np.max(np.abs(x[ok] - y[ok]) / den)))
        elif not (a[c].astype(str) == b[c].astype(str)).all() and c != "cell":
            return float("inf")
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="3 plain + 3 instrumented runs, interleaved")
    ap.add_argument("--quick", action="store_true", help="1 + 1 (default)")
    ap.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--no-instrument", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--patch", action="append", default=[],
                    help="apply a proposed fix from benchmarks/proposed_fixes.py (repeatable): "
                         "blas1, defer_tf, jax_cache, outer_matvec")
    ap.add_argument("--compare-unpatched", action="store_true",
                    help="also run the unpatched command (plain) in the same loop, and check that "
                         "the patched results.csv equals the unpatched one")
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child, args.patch, instrument=not args.no_instrument)

    import _common as C

    repeats = 3 if args.full else 1
    cache_tmp = None
    if "jax_cache" in args.patch:
        cache_tmp = tempfile.TemporaryDirectory(prefix="ntkb-bench-jaxcache-")
        os.environ["NTKB_BENCH_JAX_CACHE"] = cache_tmp.name
    plain, inst, unpatched, cold = [], [], [], []
    worst_diff = float("nan")
    with tempfile.TemporaryDirectory(prefix="ntkb-bench-sweep-") as keep:
        if cache_tmp is not None:  # first run fills the cache: reported separately as "cold"
            with tempfile.TemporaryDirectory(prefix="ntkb-bench-sweep-") as tmp:
                cold.append(run_plain(tmp, args.patch))
                print(f"cold-cache run: {cold[-1]['wall_s']:.1f} s wall", flush=True)
        for r in range(repeats):
            kinds = ["plain", "inst"] + (["unpatched"] if args.compare_unpatched and args.patch else [])
            kinds = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
            for kind in kinds:
                with tempfile.TemporaryDirectory(prefix="ntkb-bench-sweep-") as tmp:
                    if kind == "plain":
                        plain.append(run_plain(tmp, args.patch))
                        os.replace(plain[-1]["results_csv"], os.path.join(keep, "patched.csv"))
                        print(f"plain run {len(plain)}: {plain[-1]['wall_s']:.1f} s wall, "
                              f"{plain[-1]['max_rss_mib']:.0f} MiB max RSS", flush=True)
                    elif kind == "unpatched":
                        unpatched.append(run_plain(tmp, []))
                        os.replace(unpatched[-1]["results_csv"], os.path.join(keep, "unpatched.csv"))
                        print(f"unpatched run {len(unpatched)}: {unpatched[-1]['wall_s']:.1f} s wall", flush=True)
                    else:
                        inst.append(run_child(tmp, args.patch))
                        print(f"instrumented run {len(inst)}: {inst[-1]['wall_s']:.1f} s wall", flush=True)
        if unpatched:
            worst_diff = same_results(os.path.join(keep, "patched.csv"), os.path.join(keep, "unpatched.csv"))
            print(f"patched vs unpatched results.csv: max relative difference {worst_diff:.3g}")
    if cache_tmp is not None:
        cache_tmp.cleanup()

    # median per stage over the instrumented runs
    names = []
    for run in inst:
        for row in run["rows"]:
            if row["stage"] not in names:
                names.append(row["stage"])
    by = {n: [] for n in names}
    calls = {}
    for run in inst:
        for row in run["rows"]:
            by[row["stage"]].append(row["seconds"])
            calls[row["stage"]] = row["calls"]
    startup = [run["wall_s"] - run["in_process_s"] for run in inst]
    inst_wall = C.median([run["wall_s"] for run in inst])
    rows = [dict(stage="interpreter start-up + shut-down (outside the script)", seconds=C.median(startup))]
    for n in names:
        rows.append(dict(stage=n, seconds=C.median(by[n]), calls=calls[n]))
    for row in rows:
        row["share_of_instrumented_wall"] = row["seconds"] / inst_wall
    rows.append(dict(stage="TOTAL instrumented run (wall)", seconds=inst_wall, share_of_instrumented_wall=1.0))
    label = "patched: " + "+".join(args.patch) if args.patch else "plain `ntk-bridge sweep`"
    if cold:
        rows.append(dict(stage=f"TOTAL {label}, first run (cold compile cache)", seconds=cold[0]["wall_s"],
                         max_rss_mib=cold[0]["max_rss_mib"], cpu_s=cold[0]["cpu_s"]))
    rows.append(dict(stage=f"TOTAL {label} (wall, median)", seconds=C.median([p["wall_s"] for p in plain]),
                     max_rss_mib=C.median([p["max_rss_mib"] for p in plain]),
                     cpu_s=C.median([p["cpu_s"] for p in plain])))
    if unpatched:
        rows.append(dict(stage="TOTAL unpatched `ntk-bridge sweep` (wall, median, same loop)",
                         seconds=C.median([p["wall_s"] for p in unpatched]),
                         max_rss_mib=C.median([p["max_rss_mib"] for p in unpatched]),
                         cpu_s=C.median([p["cpu_s"] for p in unpatched])))
        rows.append(dict(stage="speed-up unpatched / patched (plain runs)",
                         seconds=C.median([p["wall_s"] for p in unpatched]) / C.median([p["wall_s"] for p in plain])))
        rows.append(dict(stage="results.csv patched vs unpatched: max relative difference", seconds=worst_diff))
    for row in rows:
        row.update(runs_plain=len(plain), runs_instrumented=len(inst), patches="+".join(args.patch) or "none",
                   command="ntk-bridge " + " ".join(SWEEP_ARGS) + " --out <tmp>")
    C.print_table(f"default sweep ({label}): where the wall time goes (median seconds, exclusive)", rows,
                  ["stage", "seconds", "share_of_instrumented_wall", "calls", "max_rss_mib", "cpu_s"])
    C.write_csv("sweep_time" + ("_" + "_".join(args.patch) if args.patch else ""), rows)
    return rows


if __name__ == "__main__":
    main()
