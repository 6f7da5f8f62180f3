"""``ntk-bridge fewshot``: MTL vs ANIL vs MAML on few-shot classification under one time budget.

A thin layer over :func:`ntk_bridge.fewshot.experiment.run_experiment`: parse options, load the data,
show progress, write the tables, the figure and ``config.json``, print the comparison. Register it
with ``app.command("fewshot")(fewshot_command)``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import sys
import time
from pathlib import Path
from typing import List, Literal, Optional

import typer

from ntk_bridge.errors import UserError
from ntk_bridge.fewshot import DATASETS, NATIVE_SIZE

#: What ``--quick`` changes (a smoke run in about a minute of training).
QUICK = {"budget_minutes": 1.0, "test_episodes": 100, "val_episodes": 30, "checkpoints": 6, "max_classes": 300}


def parse_int_list(text: str, name: str) -> tuple[int, ...]:
    """``"1,5"`` -> ``(1, 5)``; :class:`UserError` for anything else."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--{name} must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise UserError(f"--{name} must be distinct positive integers, got {text!r}")
    return values


def apply_overrides(configs: list, settings: list[str]) -> list:
    """Apply ``--set METHOD.FIELD=VALUE`` overrides (``METHOD`` may be ``all``) to
    :class:`~ntk_bridge.fewshot.train.MethodConfig` objects."""
    from ntk_bridge.fewshot.train import MethodConfig

    fields = {f.name: f for f in dataclasses.fields(MethodConfig) if f.name != "method"}
    for setting in settings:
        target, _, value = setting.partition("=")
        method, _, name = target.partition(".")
        if not value or name not in fields:
            raise UserError(f"--set expects METHOD.FIELD=VALUE with FIELD one of {', '.join(fields)}; got {setting!r}")
        kind = {"int": int, "float": float, "str": str}[str(fields[name].type)]
        try:
            cast = kind(value)
        except ValueError:
            raise UserError(f"--set {setting!r}: {name} must be {kind.__name__}") from None
        hits = [i for i, c in enumerate(configs) if method in ("all", c.method)]
        if not hits:
            raise UserError(f"--set {setting!r}: {method!r} is not among the chosen methods")
        for i in hits:
            configs[i] = dataclasses.replace(configs[i], **{name: cast})
    return configs


def fewshot_command(
    dataset: Literal[DATASETS] = typer.Option("kanji", help="Dataset (nothing is downloaded; omniglot and "
                                             "mini-imagenet need --data-dir)."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder of an omniglot or mini-imagenet copy you already have."),
    ways: int = typer.Option(5, help="Classes per task."),
    shots: str = typer.Option("1,5", help="Comma-separated support images per class; one run per value."),
    methods: str = typer.Option("mtl,anil,maml", help="Comma-separated methods, run in this order."),
    budget_minutes: float = typer.Option(
        8.0, help="Total training time, split equally across shot settings, then equally across the methods "
        "still to run (time a method leaves by converging early passes on). Validation and testing are extra."),
    clock: Literal["wall", "cpu"] = typer.Option(
        "wall", help="Budget clock: wall, or cpu (process CPU seconds; fairer on a shared machine)."),
    max_steps: Optional[int] = typer.Option(None, help="Also stop each run after this many outer steps."),
    seed: int = typer.Option(0, help="Seed of initialisation and of training, validation and test episodes."),
    data_seed: int = typer.Option(0, help="Seed of the kanji rendering and of the class splits."),
    test_episodes: int = typer.Option(1000, help="Meta-test episodes (the same for every method)."),
    test_queries: int = typer.Option(15, help="Query images per class in test episodes."),
    val_episodes: int = typer.Option(100, help="Validation episodes per checkpoint."),
    checkpoints: int = typer.Option(20, help="Validation checkpoints per run (also the curve's points)."),
    arch: Literal["conv4", "mlp"] = typer.Option("conv4", help="Body: conv4 or mlp."),
    width: int = typer.Option(32, help="Channels per conv block (or MLP hidden units)."),
    depth: int = typer.Option(4, help="Conv blocks (or MLP hidden layers)."),
    layer_norm: bool = typer.Option(True, help="LayerNorm over each example's feature map before each ReLU."),
    parameterization: Literal["standard", "ntk"] = typer.Option(
        "standard", help="standard or ntk (neural-tangents' meaning)."),
    meta_batch: Optional[int] = typer.Option(None, help="Episodes per outer step for every method "
                                             "(default: MTL 16, ANIL and MAML 4)."),
    train_queries: Optional[int] = typer.Option(None, help="Query images per class in training episodes for every "
                                                "method (default: MTL 3, merged with the support; ANIL and MAML 15)."),
    set_: List[str] = typer.Option(
        [], "--set", help="Override a method setting, e.g. --set maml.inner_lr=0.1 --set anil.test_inner_steps=20 "
        "(fields: optimizer, lr, meta_batch, train_queries, inner_lr, inner_steps, test_inner_steps, logistic_c; "
        "METHOD may be 'all')."),
    image_size: Optional[int] = typer.Option(None, help="Resize images to this side (default: the dataset's own)."),
    max_classes: Optional[int] = typer.Option(None, help="kanji only: render a seeded subset of this many characters."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default ntk_bridge_runs/fewshot-DATASET-TIMESTAMP)."),
    quick: bool = typer.Option(False, help=f"Smoke run: sets {', '.join(f'{k}={v}' for k, v in QUICK.items())}."),
) -> None:
    """Compare first-order MTL with ANIL and MAML on N-way K-shot classification (accuracy vs training time)."""
    from rich import box
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ntk_bridge.fewshot.data import load_dataset
    from ntk_bridge.fewshot.experiment import ExperimentConfig, check_methods, run_experiment
    from ntk_bridge.fewshot.models import ModelConfig
    from ntk_bridge.fewshot.report import comparison_table, plot_accuracy_vs_time, write_tables
    from ntk_bridge.fewshot.train import default_method_config
    from ntk_bridge.provenance import provenance

    started = time.perf_counter()
    console = Console()
    if not console.is_terminal:  # logs and pipes: no reason to squeeze the tables into 80 columns
        console.width = max(console.width, 110)
    if quick:
        budget_minutes, test_episodes, val_episodes, checkpoints = (
            QUICK["budget_minutes"], QUICK["test_episodes"], QUICK["val_episodes"], QUICK["checkpoints"])
        max_classes = QUICK["max_classes"] if dataset == "kanji" else max_classes
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if max_classes is not None and dataset != "kanji":
        raise UserError("--max-classes applies to the kanji dataset only")
    if clock not in ("wall", "cpu"):
        raise UserError(f"--clock must be wall or cpu, got {clock!r}")
    shot_values = parse_int_list(shots, "shots")
    names = [m.strip() for m in methods.split(",") if m.strip()]
    check_methods(names)
    shared = {k: v for k, v in (("meta_batch", meta_batch), ("train_queries", train_queries)) if v is not None}
    method_configs = apply_overrides([default_method_config(n, **shared) for n in names], list(set_))
    config = ExperimentConfig(
        ways=ways, shots=shot_values, methods=tuple(method_configs),
        model=ModelConfig(arch, width, depth, layer_norm, parameterization),
        budget_seconds=60.0 * budget_minutes, clock=clock, max_steps=max_steps, test_episodes=test_episodes,
        test_queries=test_queries, val_episodes=val_episodes, checkpoints=checkpoints, seed=seed)
    out = out or Path("ntk_bridge_runs") / f"fewshot-{dataset}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    start_info = provenance()

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        render_task = None

        def rendered(done: int, total: int) -> None:
            nonlocal render_task
            if render_task is None:
                render_task = progress.add_task("rendering kanji (cached after)", total=total, loss="-", val="-")
            progress.update(render_task, completed=done)

        data = load_dataset(dataset, data_dir, data_seed, image_size, max_classes, rendered)
        console.print(f"[bold]{dataset}[/]: " + ", ".join(f"{s} {c} classes x {n}" for s, (c, n) in data.summary().items())
                      + f", images {data.image_shape}")
        state: dict = {}

        def run_start(method: str, shot: int, budget: float) -> None:
            state.update(budget=budget, last=0.0, task=progress.add_task(
                f"{method.upper():4s} {ways}-way {shot}-shot ({budget:.0f} s)", total=1.0, loss="-", val="-"))

        def step(steps: int, spent: float, loss: float) -> None:
            now = time.perf_counter()
            if now - state["last"] > 0.25:
                fractions = [spent / state["budget"]] if state["budget"] > 0 else []
                if max_steps:
                    fractions.append(steps / max_steps)
                progress.update(state["task"], completed=min(max(fractions), 1.0), loss=f"{loss:.3f}")
                state["last"] = now

        def checkpoint(record: dict) -> None:
            progress.update(state["task"], val=f"{100 * record['val_accuracy']:.1f}%")

        def run_end(row: dict) -> None:
            progress.update(state["task"], completed=1.0, val=f"{row['best_val_accuracy']:.1f}%, test {row['accuracy']:.1f}%")

        tables = run_experiment(config, data, run_start, step, checkpoint, run_end)

    record = {
        "command": sys.argv,
        "experiment": config.to_dict(),
        "dataset": {"name": data.name, "data_dir": str(data_dir) if data_dir else None, "data_seed": data_seed,
                    "image_size": image_size or NATIVE_SIZE[dataset], "max_classes": max_classes,
                    "splits": {s: {"classes": c, "samples_per_class": n} for s, (c, n) in data.summary().items()},
                    "credit": data.credit},
        "allocations": tables.allocations,
        "provenance": start_info,
        "load_average_end": os.getloadavg(),
        "wall_seconds": time.perf_counter() - started,
        "finished_at": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    write_tables(tables, record, out)
    plot_accuracy_vs_time(out)

    summary = comparison_table(tables.results)
    for shot, group in summary.groupby("shots", sort=False):
        table = Table(title=f"{data.name} {ways}-way {shot}-shot, {test_episodes} test episodes "
                            f"(reach: {clock}-clock seconds)", box=box.SIMPLE, pad_edge=False)
        for column in group.columns.drop("shots"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for _, r in group.drop(columns="shots").iterrows():
            table.add_row(*[str(v) for v in r])
        console.print(table)
    console.print(f"results: {out / 'results.csv'}; figure: {out / 'accuracy_vs_time.png'}")
