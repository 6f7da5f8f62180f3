"""The ``ntk-bridge`` command line: it parses options, calls the library and prints.

User errors (bad ranges, bad choices, missing files, malformed task files, unwritable folders) print
one line ``error: ...`` on stderr and exit with code 2. Progress goes to stderr, the report to
stdout. Commands import what they compute with only when they run, so ``ntk-bridge --help`` and a
bad option answer without loading JAX.
"""
from __future__ import annotations

import contextlib
import functools
import os
import shlex
import sys
from typing import Literal, Optional

import typer

import ntk_bridge
from ntk_bridge import build
from ntk_bridge.clihelp import epilog, plain_flags, renamed_flag, yes_option
from ntk_bridge.config import FiniteConfig, GridConfig, ModelConfig, NumericsConfig, SweepConfig, TaskConfig, cli_option
from ntk_bridge.errors import UserError, require
from ntk_bridge.fewshot.options import RENAMED as FEWSHOT_RENAMED
from ntk_bridge.leave import leave

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Check, by computation, that MTL and gradient-based meta-learning (ANIL, MAML) "
                       "predict alike for wide, deep ReLU networks.")

#: Flags renamed in a command so that a flag means one thing in every command: command -> {old: new}.
RENAMED = {"fewshot": FEWSHOT_RENAMED}


def _consoles():
    from rich.console import Console

    out = Console(stderr=False)
    if not out.is_terminal:  # logs and pipes: no reason to squeeze the tables into 80 columns
        out.width = max(out.width, 130)
    return out, Console(stderr=True)


def _print_error(message: str) -> None:
    print(f"error: {message.replace('Value error, ', '')}", file=sys.stderr, flush=True)


def _version(value: bool) -> None:
    if value:
        print(f"ntk-bridge {ntk_bridge.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the version and exit.")) -> None:
    """ntk-bridge: closed-form NTK predictors of MTL, ANIL and MAML, finite networks, sweeps,
    few-shot training and figures."""


def user_errors(fn, saved: str = "finished cells are saved"):
    """Turn ``UserError`` into one line on stderr and exit code 2; Ctrl-C into a resume hint saying what
    is ``saved``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            _print_error(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print(f"interrupted: {saved}; rerun the same command to resume.", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def print_tables(console, tables) -> None:
    """Render :class:`ntk_bridge.report.ReportTable` s with rich."""
    from rich.table import Table

    from ntk_bridge.report import fmt

    for t in tables:
        table = Table(title=t.title, caption=t.note or None, caption_justify="left")
        for col, head in t.columns.items():
            table.add_column(head, justify="left" if col == "method" else "right")
        for _, r in t.frame.iterrows():
            table.add_row(*(fmt(r[c]) for c in t.columns))
        console.print(table)


class _SweepProgress:
    """A rich progress bar on stderr: computed / cached cells and an ETA."""

    def __init__(self, console, label: str = "sweep", before_start=None):
        from rich.markup import escape
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn(f"[bold]{escape(label)}[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"),
                            TextColumn("{task.fields[note]}"), TextColumn("ETA"), TimeRemainingColumn(),
                            TimeElapsedColumn(), console=console, transient=False)
        self.task = None
        self.before_start = before_start

    def start(self, total: int, cached: int, damaged: int) -> None:
        if self.before_start is not None and cached < total:  # options checked, grid planned, cells to compute:
            self.before_start()                                 # say where they run (a cached rerun runs nothing)
        note = f"({cached} cached" + (f", {damaged} damaged files recomputed" if damaged else "") + ")"
        self.task = self.bar.add_task("sweep", total=total, completed=cached, note=note)
        self.bar.start()

    def cell(self, key: str) -> None:
        self.bar.advance(self.task)

    def note(self, message: str) -> None:
        self.bar.console.print(f"note: {message}", markup=False, highlight=False)

    def stop(self) -> None:
        if self.task is not None:
            self.bar.stop()


def _command_line(ctx: typer.Context) -> str:
    """The command as the user typed it (recorded in ``config.json`` and ``summary.md``)."""
    argv = (ctx.obj or {}).get("argv")
    return "ntk-bridge " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


@app.command(epilog=epilog("sweep"))
@user_errors
def sweep(
    ctx: typer.Context,
    depth: str = cli_option("grid", "depths"),
    width: str = cli_option("grid", "widths"),
    inner_time: str = cli_option("grid", "inner_times"),
    finetune_time: str = cli_option("grid", "finetune_times"),
    outer_time: str = cli_option("grid", "outer_times"),
    methods: str = cli_option("grid", "methods"),
    mtl_data: str = cli_option("grid", "mtl_data"),
    test_head: str = cli_option("grid", "test_heads"),
    tasks: str = cli_option("tasks", "family"),
    train_tasks: int = cli_option("tasks", "train_tasks"),
    support: int = cli_option("tasks", "support"),
    query: int = cli_option("tasks", "query"),
    test_tasks: int = cli_option("tasks", "test_tasks"),
    dim: int = cli_option("tasks", "dim"),
    task_seed: int = cli_option("tasks", "task_seed"),
    data_dir: Optional[str] = cli_option("tasks", "data_dir"),
    arch: Literal["fc", "conv", "resnet"] = cli_option("model", "arch"),
    readout: Literal["flatten", "gap"] = cli_option("model", "readout"),
    param: Literal["ntk", "mup"] = cli_option("model", "param"),
    activation: Literal["relu", "linear"] = cli_option("model", "activation"),
    seeds: int = cli_option("finite", "seeds"),
    finite_mode: Literal["centred", "raw"] = cli_option("finite", "finite_mode"),
    outer_steps: int = cli_option("finite", "outer_steps"),
    finite_dtype: Literal["float64", "float32"] = cli_option("finite", "finite_dtype"),
    linearized: bool = cli_option("finite", "linearized"),
    blas_threads: int = cli_option("numerics", "blas_threads"),
    solver: Literal["auto", "dense", "cholesky", "cg"] = cli_option("numerics", "solver"),
    out: str = typer.Option("runs/sweep", help="Run folder (results.csv, config.json, summary.md, figures, "
                                               "cells/ cache). Rerunning resumes.", rich_help_panel="Output"),
    scheduler: Optional[str] = typer.Option(None, help="Address of a Dask scheduler (tcp://HOST:PORT) to "
                                                       "run grid cells on.", rich_help_panel="Execution"),
    workers: int = typer.Option(0, help="Start a local Dask cluster with this many workers (0: in-process).",
                                rich_help_panel="Execution"),
    figures: bool = typer.Option(True, help="Draw gap_vs_depth.png/.pdf (finite widths: distance_vs_width and "
                                            "finite_gap_vs_depth).", rich_help_panel="Output"),
    yes: bool = yes_option("sweep"),
):
    """Sweep depth / width / inner time; write tidy results, fitted rates, figures and a summary."""
    require(workers >= 0, "--workers must be >= 0")
    require(not (scheduler and workers), "give either --scheduler or --workers, not both")
    config = SweepConfig(  # each option to its field (tests/test_config.py sets every one)
        grid=GridConfig.from_text(depths=depth, widths=width, inner_times=inner_time, finetune_times=finetune_time,
                                  outer_times=outer_time, methods=methods, mtl_data=mtl_data, test_heads=test_head),
        tasks=TaskConfig(family=tasks, train_tasks=train_tasks, support=support, query=query, test_tasks=test_tasks,
                         dim=dim, task_seed=task_seed, data_dir=data_dir),
        model=ModelConfig(arch=arch, readout=readout, param=param, activation=activation),
        finite=FiniteConfig(seeds=seeds, finite_mode=finite_mode, outer_steps=outer_steps, finite_dtype=finite_dtype,
                            linearized=linearized),
        numerics=NumericsConfig(blas_threads=blas_threads, solver=solver))
    from ntk_bridge import budget, runtime
    from ntk_bridge.figures.drawer import ASIDE_SECONDS, Drawer

    est = budget.check_feasible(config, yes=yes)  # from the sizes alone, before any task is built or read
    with contextlib.ExitStack() as stack:  # left in reverse: the progress bar, the executor, the drawer
        # the figures' drawing process, started before the imports and the task set below, which its start overlaps
        drawer = stack.enter_context(Drawer()) if figures and est["seconds"] >= ASIDE_SECONDS else None
        runtime.check_blas_threads(config.numerics.blas_threads)
        from ntk_bridge.sweep import run_sweep

        task_set = build.task_set(config)  # a malformed task file fails here, before anything is written
        executor = None
        if scheduler or workers:
            from ntk_bridge.distributed import DaskExecutor
            executor = stack.enter_context(contextlib.closing(DaskExecutor(address=scheduler, n_workers=workers)))
        out_console, err_console = _consoles()
        progress = _SweepProgress(err_console, before_start=_device_once(config.numerics.blas_threads))
        stack.callback(progress.stop)
        tables: list = []
        df = run_sweep(config, out, executor, progress, figures, _command_line(ctx), release_memory=True,
                       tasks=task_set, report=tables.extend, drawer=drawer)

    from ntk_bridge.report import flagged_line

    print_tables(out_console, tables)  # summary.md's, built once
    line = flagged_line(df)
    if line:
        out_console.print(f"[yellow]{line}[/]")
    out_console.print(f"results: {os.path.join(out, 'results.csv')}  summary: {os.path.join(out, 'summary.md')}")


@app.command("figures", epilog=epilog("figures"))
@user_errors
def figures_command(
    quick: bool = typer.Option(False, "--quick", help="Small grids (a few minutes on 2 cores) instead of the full ones "
                               "(about 30 minutes with --jobs 2 on 2 cores, an hour in one process).",
                               rich_help_panel="Grid"),
    out: str = typer.Option("figures", help="Folder for the PNG/PDF figures and the CSV tables behind them.",
                            rich_help_panel="Output"),
    only: Optional[str] = typer.Option(None, help="Comma list of figures to make (default: all): gap_vs_depth, "
                                       "gap_vs_inner_time, kernel_degeneracy, distance_vs_width, "
                                       "finite_gap_vs_depth, fewshot, conv_gap_vs_depth, feature_learning_vs_width, "
                                       "finite_regimes_vs_width.", rich_help_panel="Grid"),
    runs: Optional[str] = typer.Option(None, help="Cache folder of the underlying sweeps (default runs/figures/quick "
                                       "or runs/figures/full).", rich_help_panel="Output"),
    jobs: int = typer.Option(1, help="Processes making figures and training runs side by side.", rich_help_panel="Execution"),
):
    """Regenerate every figure in figures/ (PNG, PDF and the CSV each is drawn from)."""
    import time

    from ntk_bridge.paper_figures import FIGURES, make_figures
    from ntk_bridge.ranges import parse_choices
    from ntk_bridge.runs import RunFolder

    names = parse_choices(only, "--only", tuple(FIGURES)) if only else None
    require(jobs >= 1, "--jobs must be >= 1")
    RunFolder(out).check_writable()
    _device_once(None)()
    out_console, err_console = _consoles()
    started = time.time()
    with RunFolder(out).writing("the figures"):  # the sweeps behind them are cached: the rerun resumes
        written = make_figures(out=out, quick=quick, only=names, run_root=runs,
                               log=lambda m: err_console.print(f"[bold]{m}[/]"), jobs=jobs)
    for name, paths in written.items():
        out_console.print(f"{name}: " + ", ".join(os.path.basename(p) for p in paths))
    out_console.print(f"done in {time.time() - started:.0f} s")


@app.command(epilog=epilog("verify"))
@user_errors
def verify(
    ctx: typer.Context,
    quick: bool = typer.Option(False, "--quick", help="The reduced panel (3 families, 3 task seeds, 6 depths, 2 "
                                                      "inner times; under a minute) instead of the full one (5 "
                                                      "families, 5 seeds, 12 depths, 3 inner times).",
                               rich_help_panel="Grid"),
    tasks: Optional[str] = typer.Option(None, help="A .npz task file (the whole report on your tasks; statistics "
                                                   "over its test tasks), or a comma list of task families (subspace, "
                                                   "linear, sinusoid, common, kanji; default: the panel's).",
                                   rich_help_panel="Tasks"),
    finite: bool = typer.Option(True, help="Include the finite-width panel (claim C4).", rich_help_panel="Grid"),
    arch: str = typer.Option("fc", help="Comma list of architectures: fc (the theorem's network), conv, resnet; conv "
                                        "and resnet run on the panel's image families (kanji), each reported as a "
                                        "family of its own (kanji/conv).", rich_help_panel="Model"),
    scheduler: Optional[str] = typer.Option(None, help="Address of a Dask scheduler (tcp://HOST:PORT) to run "
                                                       "grid cells on.", rich_help_panel="Execution"),
    workers: int = typer.Option(0, help="Start a local Dask cluster with this many workers (0: in-process).",
                                rich_help_panel="Execution"),
    out: str = typer.Option("runs/verify", help="Output folder (claims.csv, verdicts.csv, report.md, report.html, "
                                                "figures; runs/ holds one cached sweep per family and seed). "
                                                "Rerunning resumes.", rich_help_panel="Output"),
    yes: bool = yes_option("panel"),
):
    """Check the theorem's claims (C1-C7) over a panel of task families, seeds and protocols; write
    claims.csv and a one-page report.html."""
    import dataclasses

    from ntk_bridge.verify.panel import FULL, QUICK, select

    require(workers >= 0, "--workers must be >= 0")
    require(not (scheduler and workers), "give either --scheduler or --workers, not both")
    panel = QUICK if quick else FULL
    if tasks is not None:
        panel = select(panel, tasks)
    if not finite:
        panel = dataclasses.replace(panel, finite=())
    if arch != "fc":
        from ntk_bridge.verify.panel import with_archs

        panel = with_archs(panel, arch)
    from ntk_bridge import budget
    from ntk_bridge.verify import run_verify
    from ntk_bridge.verify.panel import panel_estimate

    est = panel_estimate(panel)  # from the sizes alone, before any task is built or any sweep starts
    what = f"this panel ({est['sweeps']} sweeps, {est['cells']:,} cells, kernels over up to {est['points']:,} points)"
    budget.check_memory(est["memory_bytes"], what)
    budget.check_long(est["seconds"], what, yes)
    say_device = _device_once(None)
    executor = None
    if scheduler or workers:
        from ntk_bridge.distributed import DaskExecutor
        executor = DaskExecutor(address=scheduler, n_workers=workers)
    out_console, err_console = _consoles()
    try:
        result = run_verify(panel, out, executor=executor, command=_command_line(ctx),
                            progress_factory=lambda label: _SweepProgress(err_console, label, say_device))
    finally:
        if executor is not None:
            executor.close()
    from ntk_bridge.verify.report import verdict_table

    print_tables(out_console, [verdict_table(result.verdicts)])
    from ntk_bridge.verify.claims import NO_USABLE_ROWS

    empty = sorted(set(result.claims.loc[result.claims["detail"] == NO_USABLE_ROWS, "claim"]))
    if empty:
        out_console.print(f"[yellow]no usable rows for {', '.join(empty)} in some or all conditions (claims.csv says "
                          "which); the other claims and the report are written[/]")
    out_console.print(f"claims: {result.file('claims.csv')}  report: {result.file('report.html')} "
                      f"({result.seconds:.0f} s)")


def _device_once(blas: int | None):
    """A function that prints, the first time it is called, one line on stderr: the device JAX
    computes on and the BLAS threads of the dense solves (called once every option is checked)."""
    said = []

    def say() -> None:
        if not said:
            from ntk_bridge.runtime import device_line

            print(device_line(blas), file=sys.stderr, flush=True)
            said.append(True)

    return say


def _register_fewshot() -> None:
    """The few-shot command; its module imports the few-shot stack only when the command runs."""
    from ntk_bridge.fewshot.command import fewshot_command

    app.command("fewshot", epilog=epilog("fewshot"))(
        user_errors(fewshot_command, saved="finished training runs are saved (with the same --out)"))


_register_fewshot()


def _click_exceptions():
    """The exception module of the click that typer runs on (recent typer vendors its own)."""
    try:
        from typer._click import exceptions
    except ImportError:  # typer on the click package
        from click import exceptions
    return exceptions


def main(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code. Usage errors
    (unknown options, bad choices) become one ``error:`` line and code 2, as ``UserError`` does in the commands.
    """
    exceptions = _click_exceptions()
    hint = renamed_flag(sys.argv[1:] if argv is None else list(argv), RENAMED)
    if hint:
        _print_error(hint)
        return 2
    command = typer.main.get_command(app)
    plain_flags(command)
    try:
        code = command.main(args=argv, prog_name="ntk-bridge", standalone_mode=False,
                            obj={"argv": sys.argv[1:] if argv is None else list(argv)})
    except exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx is not None else "ntk-bridge --help")
        return 0
    except exceptions.UsageError as exc:
        _print_error(" ".join(exc.format_message().split()))
        return 2
    except exceptions.ClickException as exc:
        _print_error(" ".join(exc.format_message().split()))
        return exc.exit_code
    except UserError as exc:  # raised while parsing (an option callback)
        _print_error(str(exc))
        return 2
    return code if isinstance(code, int) else 0


def entry() -> None:
    """The console script ``ntk-bridge`` (ends without the interpreter's teardown: :mod:`ntk_bridge.leave`)."""
    leave(main())


if __name__ == "__main__":
    entry()
