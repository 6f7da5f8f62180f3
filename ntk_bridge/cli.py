"""The ``ntk-bridge`` command line: a thin layer over the library.

User errors (bad ranges, missing files, malformed task files, unwritable folders) print one line
``error: ...`` and exit with code 2.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shlex
import sys
import tempfile
import time
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ntk_bridge.errors import UserError
from ntk_bridge.provenance import provenance

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Check, by computation, that MTL and gradient-based meta-learning (ANIL, MAML) "
                       "predict alike for wide, deep ReLU networks.")
console = Console(stderr=False)
err_console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """ntk-bridge: closed-form NTK predictors of MTL, ANIL and MAML, finite networks, sweeps,
    few-shot training and figures."""


def user_errors(fn):
    """Turn ``UserError`` into one line on stderr and exit code 2; Ctrl-C into a resume hint."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: finished cells are saved; rerun the same command to resume.")
            raise typer.Exit(130) from None

    return wrapper


def write_json_atomic(path: str, payload: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if math.isinf(v):
            return "inf"
        return f"{v:.3g}"
    return str(v)


def print_report(df, run_dir: str) -> None:
    """Console report: slopes with CIs, standing against the baseline, flagged rows."""
    from ntk_bridge.results import baseline_table, depth_slopes, finite_width_fits, flagged

    slopes = depth_slopes(df)
    slopes = slopes[slopes["method"] != "baseline"] if len(slopes) else slopes
    if len(slopes):
        t = Table(title="gap to MTL vs depth: log-log slope of the median over test tasks (95% CI)")
        for col in ("method", "width", "inner time", "slope", "95% CI", "depths", "gap first", "gap last"):
            t.add_column(col, justify="right" if col not in ("method",) else "left")
        for _, r in slopes.iterrows():
            t.add_row(r["method"], _fmt(r["width"]), _fmt(r["inner_time"]), _fmt(r["slope"]),
                      f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]",
                      f"{r['depth_min']}..{r['depth_max']} ({r['n_depths']})", _fmt(r["first"]), _fmt(r["last"]))
        console.print(t)
    base = baseline_table(df)
    if len(base):
        t = Table(title="median test MSE against the no-transfer baseline (head fine-tuned on an untrained body)")
        for col in ("method", "width", "inner time", "shallowest", "MSE / baseline", "deepest", "MSE / baseline",
                    "beats baseline up to depth"):
            t.add_column(col, justify="right" if col != "method" else "left")
        for _, r in base.iterrows():
            t.add_row(r["method"], _fmt(r["width"]), _fmt(r["inner_time"]), str(r["depth_min"]),
                      f"{_fmt(r['mse_min_depth'])} / {_fmt(r['baseline_min_depth'])}", str(r["depth_max"]),
                      f"{_fmt(r['mse_max_depth'])} / {_fmt(r['baseline_max_depth'])}",
                      "all" if r["beats_baseline_everywhere"] else _fmt(r["deepest_beating_baseline"]))
        console.print(t)
    fits = finite_width_fits(df)
    if len(fits):
        t = Table(title="distance to the infinite-width predictor vs width: fitted exponent (95% CI; theory about -1/2)")
        for col in ("method", "depth", "inner time", "MTL data", "exponent", "95% CI", "points"):
            t.add_column(col, justify="right" if col != "method" else "left")
        for _, r in fits.iterrows():
            t.add_row(r["method"], str(r["depth"]), _fmt(r["inner_time"]), str(r["mtl_data"]), _fmt(r["exponent"]),
                      f"[{_fmt(r['ci95_low'])}, {_fmt(r['ci95_high'])}]", str(r["n"]))
        console.print(t)
    bad = flagged(df)
    if len(bad):
        console.print("[yellow]flagged rows (excluded from fits and figures):[/] "
                      + ", ".join(f"{k}: {v}" for k, v in bad.items()))
    console.print(f"results: {os.path.join(run_dir, 'results.csv')}  summary: {os.path.join(run_dir, 'summary.md')}")


@app.command()
@user_errors
def sweep(
    depth: str = typer.Option("2..32", help="Depths (hidden layers): '2..32', '1..128:x2' (geometric), "
                                            "'1..10:3' (step), or '1,2,4,8'."),
    width: str = typer.Option("inf", help="Widths: 'inf' (closed-form infinite-width predictors) and/or "
                                          "finite widths trained by gradient descent, e.g. '64..1024:x2'."),
    inner_time: str = typer.Option("0.01,0.1,1", help="Inner-loop time lambda*tau of ANIL/MAML "
                                                      "meta-training (comma list)."),
    finetune_time: str = typer.Option("1", help="Test-time fine-tuning time s_hat (comma list)."),
    outer_time: str = typer.Option("auto", help="Outer (meta-)training time eta*t; 'inf' (= 'auto') trains "
                                                "to convergence: closed forms at t = inf, finite networks "
                                                "for a fixed number of steps of size 1/lambda_max "
                                                "(ntk_bridge.finite.TrainingConfig)."),
    methods: str = typer.Option("mtl,anil,maml", help="Methods among mtl, anil, maml (the no-transfer "
                                                      "baseline is always computed)."),
    mtl_data: str = typer.Option("all,query", help="MTL training data: 'all' (support+query merged, the "
                                                   "paper's MTL), 'query' (the same data as ANIL's outer "
                                                   "loss), or both."),
    tasks: str = typer.Option("subspace", help="Task family: subspace (shared low-rank teachers), linear "
                                               "(independent teachers), sinusoid, or a .npz task file."),
    train_tasks: int = typer.Option(10, help="Number of training tasks N (generated tasks)."),
    support: int = typer.Option(5, help="Support points per task."),
    query: int = typer.Option(10, help="Query points per task."),
    test_tasks: int = typer.Option(20, help="Number of unseen test tasks."),
    dim: int = typer.Option(16, help="Input dimension d (inputs on the sphere ||x||^2 = d)."),
    task_seed: int = typer.Option(0, help="Seed of the generated task set."),
    seeds: int = typer.Option(1, help="Networks per finite-width cell (independent initialisations; an "
                                      "ensemble-mean row is added)."),
    finite_mode: str = typer.Option("centred", help="Finite networks: 'centred' (f - f0 vs the mean "
                                                    "predictor) or 'raw' (f vs the full-f0 closed form)."),
    outer_steps: int = typer.Option(300, help="Finite networks with an infinite outer time: outer gradient "
                                              "steps of size 1/lambda_max(Theta) (the closed forms they are "
                                              "compared with take the same steps)."),
    finite_dtype: str = typer.Option("float64", help="Finite networks: 'float64' (exact comparisons) or "
                                                     "'float32' (faster matrix products; the closed forms "
                                                     "stay float64)."),
    linearized: bool = typer.Option(True, help="Finite networks: also train each network's linearised twin "
                                               "(dist_to_linearized_rel, linearized_to_infinite_rel; about "
                                               "doubles the cost)."),
    out: str = typer.Option("runs/sweep", help="Run folder (results.csv, config.json, summary.md, figures, "
                                               "cells/ cache). Rerunning resumes."),
    scheduler: Optional[str] = typer.Option(None, help="Address of a Dask scheduler (tcp://HOST:PORT) to "
                                                       "run grid cells on."),
    workers: int = typer.Option(0, help="Start a local Dask cluster with this many workers (0: in-process)."),
    figures: bool = typer.Option(True, help="Draw gap_vs_depth.png/.pdf (finite widths: distance_vs_width and "
                                                "finite_gap_vs_depth)."),
):
    """Sweep depth / width / inner time; write tidy results, fitted rates, figures and a summary."""
    from ntk_bridge.ranges import parse_choices, parse_floats, parse_int_range, parse_widths
    from ntk_bridge.sweep import SweepConfig, check_writable, run_sweep

    started = time.time()
    depths = parse_int_range(depth, "--depth")
    widths = parse_widths(width)
    has_finite = any(math.isfinite(w) for w in widths)
    if outer_time == "auto":
        outer_times = [math.inf]
    else:
        outer_times = parse_floats(outer_time, "--outer-time", positive=True)
    method_list = parse_choices(methods, "--methods", ("mtl", "anil", "maml", "fomaml"))
    if "fomaml" in method_list and not has_finite:
        raise UserError("--methods: fomaml exists for finite widths only (its infinite-width kernel is not MAML's)")
    if tasks not in ("subspace", "linear", "sinusoid") and not os.path.isfile(tasks):
        if tasks.endswith(".npz") or os.sep in tasks:
            raise UserError(f"--tasks: file not found: {tasks}")
        raise UserError(f"--tasks: unknown task family {tasks!r}; use subspace, linear, sinusoid or a .npz file")
    if workers < 0:
        raise UserError("--workers must be >= 0")
    if scheduler and workers:
        raise UserError("give either --scheduler or --workers, not both")
    config = SweepConfig(
        depths=tuple(depths), widths=tuple(widths),
        inner_times=tuple(parse_floats(inner_time, "--inner-time")),
        finetune_times=tuple(parse_floats(finetune_time, "--finetune-time")),
        outer_times=tuple(outer_times), methods=tuple(method_list),
        mtl_data=tuple(parse_choices(mtl_data, "--mtl-data", ("all", "query"))),
        tasks=tasks, train_tasks=train_tasks, support=support, query=query, test_tasks=test_tasks,
        dim=dim, task_seed=task_seed, seeds=seeds, finite_mode=finite_mode, outer_steps=outer_steps,
        finite_dtype=finite_dtype, linearized=linearized)
    # validate the tasks (a malformed file fails here, before anything is written), then the folder
    config.load_tasks()
    check_writable(out)

    executor = None
    if scheduler or workers:
        from ntk_bridge.distributed import DaskExecutor
        executor = DaskExecutor(address=scheduler, n_workers=workers)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    command = "ntk-bridge " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task_id = progress.add_task("cells", total=None)

        def on_start(total, done):
            progress.update(task_id, total=total, completed=done)

        def on_cell(_key):
            progress.advance(task_id)

        try:
            df = run_sweep(config, out, executor=executor, on_start=on_start, on_cell=on_cell)
        finally:
            if executor is not None:
                executor.close()

    write_outputs(df, config, out, command, started, figures)
    print_report(df, out)


def write_outputs(df, config, run_dir: str, command: str, started: float, figures: bool = True) -> None:
    """results.csv, config.json, summary.md and figures of a finished sweep."""
    from ntk_bridge.results import summary_markdown

    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".tmp-results-", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as fh:
        df.to_csv(fh, index=False)
    os.replace(tmp, os.path.join(run_dir, "results.csv"))
    write_json_atomic(os.path.join(run_dir, "config.json"),
                      dict(config=config.to_dict(), command=command, **provenance(),
                           seconds=round(time.time() - started, 2), rows=len(df)))
    write_text_atomic(os.path.join(run_dir, "summary.md"), summary_markdown(df, command, config.to_dict()))
    if figures:
        from ntk_bridge import figures as figs

        infinite = df[df["width"] == math.inf]
        if infinite["depth"].nunique() > 1:
            figs.plot_gap_vs_depth(figs.gap_vs_depth_table(infinite), os.path.join(run_dir, "gap_vs_depth"))
        finite = df[df["width"] < math.inf]
        if len(finite):
            table = figs.distance_vs_width_table(finite)
            if len(table) and table["width"].nunique() > 1:
                figs.plot_distance_vs_width(table, os.path.join(run_dir, "distance_vs_width"))
            gap = figs.finite_gap_vs_depth_table(finite)
            if len(gap) and gap["depth"].nunique() > 1:
                figs.plot_finite_gap_vs_depth(gap, os.path.join(run_dir, "finite_gap_vs_depth"))


@app.command("figures")
@user_errors
def figures_command(
    quick: bool = typer.Option(False, "--quick", help="Small grids (about 3 minutes on 2 cores) instead of the "
                                                      "full ones (within 30 minutes)."),
    out: str = typer.Option("figures", help="Folder for the PNG/PDF figures and the CSV tables behind them."),
    only: Optional[str] = typer.Option(None, help="Comma list of figures to make (default: all)."),
    runs: Optional[str] = typer.Option(None, help="Cache folder of the underlying sweeps "
                                                  "(default runs/figures/quick or runs/figures/full)."),
):
    """Regenerate every figure in figures/ (PNG, PDF and the CSV each is drawn from)."""
    from ntk_bridge.paper_figures import FIGURES, make_figures
    from ntk_bridge.ranges import parse_choices
    from ntk_bridge.sweep import check_writable

    names = parse_choices(only, "--only", tuple(FIGURES)) if only else None
    check_writable(out, cells=False)
    started = time.time()
    written = make_figures(out=out, quick=quick, only=names, run_root=runs,
                           log=lambda m: console.print(f"[bold]{m}[/]"))
    for name, paths in written.items():
        console.print(f"{name}: " + ", ".join(os.path.basename(p) for p in paths))
    console.print(f"done in {time.time() - started:.0f} s")


def _register_optional_commands() -> None:
    """Commands that live in their own subpackages."""
    try:
        from ntk_bridge.fewshot.command import fewshot_command
    except ModuleNotFoundError as exc:  # the subpackage is optional; a broken one is not hidden
        if not (exc.name or "").startswith("ntk_bridge.fewshot"):
            raise
        return
    app.command("fewshot")(user_errors(fewshot_command))


_register_optional_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
