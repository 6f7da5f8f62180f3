"""Benchmark: the default sweep end to end (wall time, peak memory), start-up, and where the time goes.

    python benchmarks/bench_sweep.py                          # 5 repeats of every scenario
    python benchmarks/bench_sweep.py --baseline 97783ce       # interleaved with an earlier commit
    python benchmarks/bench_sweep.py --repeats 7 --no-stages

Scenarios, each a fresh process under ``/usr/bin/time`` (wall seconds, max RSS):

* ``help``: ``ntk-bridge --help``;
* ``bad input``: ``ntk-bridge sweep --depth 32..2`` (one error line, exit 2);
* ``cold``: ``ntk-bridge sweep --depth 2..32`` into a fresh ``--out`` with an empty JAX compilation
  cache (``XDG_CACHE_HOME`` pointed at a fresh folder): a new user's first run;
* ``warm``: the same into a fresh ``--out`` with the compilation cache of the cold run;
* ``cached``: the same command again into the ``warm`` run's folder (every cell cached);
* ``floor`` (current code only): ``floor.py``, what the main job cannot avoid (Python and JAX's start, the
  kernels of every depth in one pass, the closed forms' dense linear algebra), with the warm compilation
  cache; the main job's cold and warm times are reported over it.

With ``--baseline REV`` the same scenarios run on the code of commit ``REV`` (a ``git worktree`` in a
temporary folder, run with this interpreter and ``PYTHONPATH``), interleaved with the current code
(the order alternates between repeats), and the two ``results.csv`` are compared. The stage
breakdown comes from one extra instrumented run per repeat (the current code, in-process, with the
library's stages wrapped by timers and JAX's compile events split out; warm compilation cache).

Medians over repeats are reported. Writes ``benchmarks/results/sweep_time.csv``.
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

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SWEEP = ["sweep", "--depth", os.environ.get("NTK_BRIDGE_BENCH_SWEEP", "2..32")]
LAUNCH = ("import sys, ntk_bridge.cli as c; sys.argv[0] = 'ntk-bridge'; "
          "f = getattr(c, 'entry', None) or c.main; f()")


# ---------------------------------------------------------------------------------------------
# One instrumented run (child process)
# ---------------------------------------------------------------------------------------------

def child(out_dir: str) -> None:
    t_start = time.perf_counter()
    stages: dict[str, float] = {}
    compile_in: dict[str, float] = {}
    stack: list[list] = []

    def add(name, dt):
        stages[name] = stages.get(name, 0.0) + dt

    t = time.perf_counter()
    import ntk_bridge.cli as cli  # noqa: F401  (typer, rich)
    add("import ntk_bridge.cli (typer, rich)", time.perf_counter() - t)
    t = time.perf_counter()
    import jax
    import neural_tangents  # noqa: F401
    add("import jax, neural_tangents", time.perf_counter() - t)
    t = time.perf_counter()
    import pandas  # noqa: F401
    import scipy.linalg  # noqa: F401
    add("import pandas, scipy.linalg", time.perf_counter() - t)
    t = time.perf_counter()
    import ntk_bridge.figures  # noqa: F401  (the figure tables; matplotlib itself loads only to draw)
    import ntk_bridge.kernels as kernels
    import ntk_bridge.metrics as metrics
    import ntk_bridge.predictors as predictors  # noqa: F401
    import ntk_bridge.runtime as runtime
    import ntk_bridge.runs as runs
    import ntk_bridge.sweep.run as sweep_run
    import ntk_bridge.sweep.write as sweep_write
    add("import ntk_bridge modules", time.perf_counter() - t)
    # matplotlib is not imported here: the command draws its figure in a second process (figures.drawer)

    def listener(event, duration, **_):
        if event.startswith("/jax/core/compile/"):
            where = stack[-1][0] if stack else "(outside the stages)"
            compile_in[where] = compile_in.get(where, 0.0) + duration

    jax.monitoring.register_event_duration_secs_listener(listener)

    def enter(name):
        stack.append([name, time.perf_counter(), 0.0])

    def leave():
        name, start, inner = stack.pop()
        dt = time.perf_counter() - start
        add(name, dt - inner)
        if stack:
            stack[-1][2] += dt

    def timed(fn, name):
        def wrapper(*a, **k):
            enter(name)
            try:
                return fn(*a, **k)
            finally:
                leave()

        return wrapper

    def wrap(owner, attr, name):
        setattr(owner, attr, timed(getattr(owner, attr), name))

    def wrap_gen(owner, attr, name):
        fn = getattr(owner, attr)

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

        setattr(owner, attr, wrapper)

    wrap(sweep_run, "plan", "plan: tasks, fingerprint, cell keys")
    wrap_gen(kernels, "kernels_by_depth", "kernel pass (eager neural-tangents)")
    # the closed forms of a depth are computed on a few threads while the main thread makes the previous depth's
    # rows and cell files (runtime.started): what is timed is the main thread's wait for them
    real_started = runtime.started
    runtime.started = lambda calls: timed(real_started(calls),
                                          "wait for the closed forms (computed on threads beside the rows)")
    from ntk_bridge.figures import drawer as figure_drawer

    wrap(figure_drawer.Drawer, "wait", "wait for the figure (drawn in a second process)")
    wrap(metrics, "prediction_rows", "metric rows")
    wrap(runs.RunFolder, "write_cell", "write cell files")
    wrap(runs.RunFolder, "read_cells", "read and verify cell files")
    wrap(sweep_run, "results_table", "results table (concat, sort)")
    wrap(runs.RunFolder, "write_table", "write results.csv")
    wrap(sweep_write, "summary_markdown", "summary.md (fits, tables)")
    wrap(sweep_write, "_draw", "figure gap_vs_depth (table, png, pdf)")
    wrap(cli, "print_tables", "console report")
    t = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        old = sys.stdout
        sys.stdout = devnull
        try:
            code = cli.main(SWEEP + ["--out", out_dir])
        finally:
            sys.stdout = old
    assert code == 0, code
    total = time.perf_counter() - t
    accounted = sum(v for k, v in stages.items() if not k.startswith("import"))
    add("rest (CLI, progress, provenance, config.json, releasing compiled programs)", total - accounted)
    rows = []
    for name, secs in stages.items():
        c = compile_in.get(name, 0.0)
        rows.append(dict(stage=name, seconds=secs - c))
        if c:
            rows.append(dict(stage=f"  compilation inside: {name}", seconds=c))
    if compile_in.get("(outside the stages)"):
        rows.append(dict(stage="compilation outside the stages", seconds=compile_in["(outside the stages)"]))
    print("BENCH_JSON " + json.dumps(dict(rows=rows, in_process_s=time.perf_counter() - t_start)))


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------

def timed(cmd: list[str], env: dict, expect: int = 0) -> dict:
    """Run ``cmd`` under ``/usr/bin/time`` in a neutral folder (``python -c`` puts the working
    folder first on ``sys.path``): wall seconds and max RSS (MiB)."""
    p = subprocess.run(["/usr/bin/time", "-f", "BENCH_TIME %e %M"] + cmd, capture_output=True, text=True, env=env,
                       cwd=tempfile.gettempdir())
    if p.returncode != expect:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr[-3000:]}")
    wall, rss = re.findall(r"BENCH_TIME ([\d.]+) (\d+)", p.stderr)[-1]
    tf = "oneDNN" in p.stderr or "cuda drivers" in p.stderr
    return dict(wall_s=float(wall), max_rss_mib=int(rss) / 1024, tensorflow_lines=tf)


def scenarios(version: str, pythonpath: str | None, tmp: str, r: int) -> list[dict]:
    """Every scenario once for one version of the code; returns rows."""
    env = dict(os.environ)
    env.pop("NTK_BRIDGE_CACHE", None)
    env["XDG_CACHE_HOME"] = os.path.join(tmp, f"{version}-cache-{r}")  # empty: a cold compilation cache
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    base = [sys.executable, "-c", LAUNCH + f"  # {version}"]
    out = os.path.join(tmp, f"{version}-out-{r}")
    rows = []
    for name, args, expect, run_dir in (
            ("help", ["--help"], 0, None),
            ("bad input", SWEEP[:1] + ["--depth", "32..2"], 2, None),
            ("cold", SWEEP, 0, out + "-cold"),
            ("warm", SWEEP, 0, out),
            ("cached", SWEEP, 0, out)):
        res = timed(base + args + (["--out", run_dir] if run_dir else []), env, expect)
        rows.append(dict(version=version, scenario=name, repeat=r, **res))
        print(f"  {version:9s} {name:10s} {res['wall_s']:6.2f} s  {res['max_rss_mib']:6.0f} MiB"
              + ("  (TensorFlow log lines)" if res["tensorflow_lines"] else ""), flush=True)
    rows[-1]["results_csv"] = os.path.join(out, "results.csv")
    if version == "current":  # the floor (floor.py), with the warm compilation cache of this repeat
        res = timed([sys.executable, os.path.join(HERE, "floor.py"), "--depth", SWEEP[-1]], env)
        rows.append(dict(version=version, scenario="floor", repeat=r, **res))
        print(f"  {version:9s} {'floor':10s} {res['wall_s']:6.2f} s  {res['max_rss_mib']:6.0f} MiB", flush=True)
    return rows


def instrumented(tmp: str, r: int) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(tmp, f"current-cache-{r}"))
    env.pop("NTK_BRIDGE_CACHE", None)
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", os.path.join(tmp, f"inst-{r}")],
                       capture_output=True, text=True, env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("BENCH_JSON ")]
    if p.returncode != 0 or not line:
        raise RuntimeError(f"instrumented run failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(line[-1][len("BENCH_JSON "):])


def compare(a: str, b: str) -> str:
    """``'identical'`` when two results.csv agree byte for byte outside the ``cell`` (cache key)
    column, else the number of differing rows. Columns that only one of them has (added by later code) are
    named, and must be empty on every row for the two to count as identical."""
    import pandas as pd

    x, y = pd.read_csv(a, dtype=str, keep_default_na=False), pd.read_csv(b, dtype=str, keep_default_na=False)
    if len(x) != len(y):
        return f"different row counts {len(x)} vs {len(y)}"
    shared = [c for c in x.columns if c in y.columns]
    extra = [c for c in list(x.columns) + list(y.columns) if c not in shared]
    if list(x[shared].columns) != list(y[shared].columns):
        return "the shared columns come in a different order"
    filled = [c for c in extra if ((x[c] if c in x else y[c]) != "").any()]
    if filled:
        return f"columns of one version only, not empty: {', '.join(filled)}"
    cols = [c for c in shared if c != "cell"]
    diff = int((x[cols] != y[cols]).any(axis=1).sum())
    note = f" (columns of one version only, empty on every row: {', '.join(extra)})" if extra else ""
    return ("identical" if diff == 0 else f"{diff} of {len(x)} rows differ") + note


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", metavar="REV", help="also run commit REV, interleaved")
    ap.add_argument("--no-stages", action="store_true", help="skip the instrumented runs")
    ap.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, same code path (seconds); CSV to a temporary folder")
    args = ap.parse_args(argv)
    if args.smoke:  # depths 2..3, one repeat: the same scenarios in seconds
        global SWEEP
        SWEEP = SWEEP[:2] + ["2..3"]
        os.environ["NTK_BRIDGE_BENCH_SWEEP"] = "2..3"
        args.repeats = 1
    if args.child:
        return child(args.child)
    sys.path.insert(0, HERE)
    import _common as C

    C.smoke(["--smoke"] if args.smoke else [])

    rows, stage_runs, checks = [], [], []
    with tempfile.TemporaryDirectory(prefix="ntkb-bench-sweep-") as tmp:
        versions = [("current", REPO)]
        if args.baseline:
            tree = os.path.join(tmp, "baseline-tree")
            subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", tree, args.baseline],
                           check=True, capture_output=True)
            versions.append((f"baseline {args.baseline}", tree))
        try:
            for r in range(args.repeats):
                print(f"repeat {r + 1}/{args.repeats}", flush=True)
                order = versions if r % 2 == 0 else versions[::-1]
                results = {}
                for version, path in order:
                    got = scenarios(version.split()[0], path, tmp, r)
                    results[version] = next(g["results_csv"] for g in got if "results_csv" in g)
                    rows.extend(dict(g, version=version) for g in got)
                if len(results) == 2:
                    checks.append(compare(*results.values()))
                if not args.no_stages:
                    stage_runs.append(instrumented(tmp, r))
            if args.baseline:
                # the same numbers for the same BLAS thread count: the baseline with one OpenBLAS thread
                # (the current code's default) against the current code's last results.csv
                env = dict(os.environ, PYTHONPATH=versions[1][1], OPENBLAS_NUM_THREADS="1")
                one = os.path.join(tmp, "baseline-one-thread")
                timed([sys.executable, "-c", LAUNCH] + SWEEP + ["--out", one], env)
                bits = compare(os.path.join(one, "results.csv"), results["current"])
        finally:
            if args.baseline:
                subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], capture_output=True)
    summary = []
    for version, _ in versions:
        for scenario in ("help", "bad input", "cold", "warm", "cached", "floor"):
            sel = [x for x in rows if x["version"] == version and x["scenario"] == scenario]
            if not sel:
                continue
            summary.append(dict(version=version, scenario=scenario, runs=len(sel),
                                wall_s_median=C.median([x["wall_s"] for x in sel]),
                                wall_s_min=min(x["wall_s"] for x in sel), wall_s_max=max(x["wall_s"] for x in sel),
                                max_rss_mib_median=C.median([x["max_rss_mib"] for x in sel]),
                                tensorflow_lines=any(x["tensorflow_lines"] for x in sel)))
    floor = [x for x in summary if x["version"] == "current" and x["scenario"] == "floor"][0]["wall_s_median"]
    for scenario in ("cold", "warm"):
        main = [x for x in summary if x["version"] == "current" and x["scenario"] == scenario][0]["wall_s_median"]
        summary.append(dict(version=f"ratio current / floor", scenario=scenario, wall_s_median=main / floor))
    if len(versions) == 2:
        for scenario in ("help", "bad input", "cold", "warm", "cached"):
            a, b = [s for s in summary if s["scenario"] == scenario and s["version"] in dict(versions)]
            summary.append(dict(version="ratio baseline / current", scenario=scenario,
                                wall_s_median=b["wall_s_median"] / a["wall_s_median"],
                                max_rss_mib_median=b["max_rss_mib_median"] / a["max_rss_mib_median"]))
        summary.append(dict(version="results.csv, current vs baseline (outside the cell key column)",
                            scenario="; ".join(sorted(set(checks)))))
        summary.append(dict(version="results.csv, current vs baseline with OPENBLAS_NUM_THREADS=1",
                            scenario=bits))
    C.print_table("ntk-bridge: wall time and peak memory (median over repeats)", summary,
                  ["version", "scenario", "runs", "wall_s_median", "wall_s_min", "wall_s_max",
                   "max_rss_mib_median", "tensorflow_lines"])
    out = list(summary)
    if stage_runs:
        names = list(dict.fromkeys(row["stage"] for run in stage_runs for row in run["rows"]))
        stages = []
        for name in names:
            secs = [sum(row["seconds"] for row in run["rows"] if row["stage"] == name) for run in stage_runs]
            stages.append(dict(stage=name, seconds_median=C.median(secs)))
        stages.append(dict(stage="TOTAL in-process (instrumented, warm compilation cache)",
                           seconds_median=C.median([run["in_process_s"] for run in stage_runs])))
        C.print_table("default sweep, current code: where the time goes (median seconds, exclusive)", stages,
                      ["stage", "seconds_median"])
        out += [dict(version="current", scenario="stage", **s) for s in stages]
    C.write_csv("sweep_time", out)
    return out


if __name__ == "__main__":
    main()
