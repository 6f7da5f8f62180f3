"""``ntk-bridge fewshot``: MTL against GBML (ANIL, MAML, R2D2) and ProtoNet, each trained to its plateau.

A thin layer over :func:`ntk_bridge.fewshot.experiment.run_fewshot`: parse and check options, show
progress, print the tables. Register it with ``app.command("fewshot")(fewshot_command)``. Only
typer and constants are imported at module level (``ntk-bridge --help`` imports this module).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import List, Literal, Optional

import typer

from ntk_bridge.datasets import DATASETS
from ntk_bridge.errors import UserError
from ntk_bridge.fewshot import METHOD_NAMES
from ntk_bridge.fewshot.options import QUICK, fewshot_option



def parse_int_list(text: str, name: str) -> tuple[int, ...]:
    """``"1,5"`` -> ``(1, 5)``; :class:`UserError` for anything else."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--{name} must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise UserError(f"--{name} must be distinct positive integers, got {text!r}")
    return values


def parse_methods(text: str) -> list[str]:
    """``"mtl,anil"`` -> ``["mtl", "anil"]``, checked against the registry's names."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [n for n in names if n not in METHOD_NAMES]
    if not names or unknown:
        raise UserError(f"--methods: unknown method(s) {', '.join(unknown) or repr(text)}; choose from "
                        f"{', '.join(METHOD_NAMES)}")
    if len(set(names)) != len(names):
        raise UserError(f"--methods: a method is listed twice in {text!r}")
    return names


def apply_overrides(configs: list, settings: list[str]) -> list:
    """Apply ``--set METHOD.FIELD=VALUE`` overrides (``METHOD`` may be ``all``) to
    :class:`~ntk_bridge.fewshot.methods.MethodConfig` objects."""
    from ntk_bridge.fewshot.methods import MethodConfig

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


#: ``(classes, images per class, channels)`` of each dataset at most (kanji: every rendered character).
_DATASET_SIZES = {"kanji": (1458, 20, 1), "omniglot": (1623, 20, 1), "mini-imagenet": (100, 600, 3),
                  "digits": (10, 180, 1)}


def dataset_bytes(dataset: str, size: int, max_classes: int | None = None) -> int:
    """Memory to load ``dataset`` at ``size x size`` pixels, before any image is read: its uint8
    images about three times over (the loaded arrays, the split copies, the images being resized), and
    for kanji the float canvas a character is drawn on."""
    classes, samples, channels = _DATASET_SIZES[dataset]
    if max_classes is not None:
        classes = min(classes, int(max_classes))
    render = 8 * (4 * int(size)) ** 2 if dataset == "kanji" else 0  # one character drawn at 4x oversampling
    return 3 * classes * samples * channels * int(size) ** 2 + render


def _positive(value, name: str, minimum: float = 1) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= minimum):
        raise UserError(f"--{name} must be a finite number >= {minimum:g}, got {value}")


def fewshot_command(
    methods: str = fewshot_option("methods"),
    shots: str = fewshot_option("shots"),
    train_seeds: int = fewshot_option("train_seeds"),
    seed: int = fewshot_option("seed"),
    dataset: Literal[DATASETS] = fewshot_option("dataset"),
    data_dir: Optional[Path] = fewshot_option("data_dir"),
    ways: int = fewshot_option("ways"),
    data_seed: int = fewshot_option("data_seed"),
    test_episodes: int = fewshot_option("test_episodes"),
    test_queries: int = fewshot_option("test_queries"),
    val_episodes: int = fewshot_option("val_episodes"),
    train_queries: Optional[int] = fewshot_option("train_queries"),
    image_size: Optional[int] = fewshot_option("image_size"),
    max_classes: Optional[int] = fewshot_option("max_classes"),
    tasks_of: Optional[Path] = fewshot_option("tasks_of"),
    val_tasks: Optional[int] = fewshot_option("val_tasks"),
    body: Literal["conv4", "mlp"] = fewshot_option("body"),
    channels: int = fewshot_option("channels"),
    blocks: int = fewshot_option("blocks"),
    layer_norm: bool = fewshot_option("layer_norm"),
    parameterization: Literal["standard", "ntk"] = fewshot_option("parameterization"),
    max_steps: Optional[int] = fewshot_option("max_steps"),
    budget_minutes: float = fewshot_option("budget_minutes"),
    clock: Literal["cpu", "wall"] = fewshot_option("clock"),
    checkpoints: int = fewshot_option("checkpoints"),
    patience: int = fewshot_option("patience"),
    meta_batch: Optional[int] = fewshot_option("meta_batch"),
    set_: List[str] = fewshot_option("set_"),
    quick: bool = fewshot_option("quick"),
    jobs: Optional[int] = fewshot_option("jobs"),
    yes: bool = fewshot_option("yes"),
    out: Optional[Path] = fewshot_option("out"),
) -> None:
    """Train MTL, ANIL, MAML, R2D2 and ProtoNet to their plateaus; accuracy against training cost.

    Writes results.csv (one row per method, shots and seed; status ok, diverged or nonfinite),
    summary.csv (over seeds), curves.csv, episodes.csv, config.json and accuracy_vs_time.png/.pdf.
    """
    import datetime as _dt

    if tasks_of is not None and not tasks_of.is_dir():
        raise UserError(f"--tasks-of: {tasks_of} is not a folder (give a sweep's run folder)")
    if val_tasks is not None and tasks_of is None:
        raise UserError("--val-tasks applies to --tasks-of only")
    if quick:
        shots, max_steps, budget_minutes = QUICK["shots"], QUICK["max_steps"], QUICK["budget_minutes"]
        train_seeds = QUICK["train_seeds"]
        test_episodes, val_episodes, checkpoints = QUICK["test_episodes"], QUICK["val_episodes"], QUICK["checkpoints"]
        max_classes = QUICK["max_classes"] if dataset == "kanji" else max_classes
    # every check that needs no data, before anything is loaded or rendered
    _positive(ways, "ways", 2)
    _positive(train_seeds, "train-seeds")
    _positive(seed, "seed", 0)
    _positive(max_steps, "max-steps")
    _positive(budget_minutes, "budget-minutes", 0)
    for value, name in ((test_episodes, "test-episodes"), (test_queries, "test-queries"), (val_episodes, "val-episodes"),
                        (checkpoints, "checkpoints"), (patience, "patience"), (channels, "channels"), (blocks, "blocks"),
                        (meta_batch, "meta-batch"), (jobs, "jobs")):
        _positive(value, name)
    _positive(train_queries, "train-queries", 0)
    _positive(test_episodes, "test-episodes", 2)
    if not max_steps and budget_minutes == 0:
        raise UserError("give a step cap (--max-steps) or a time cap (--budget-minutes)")
    shot_values = parse_int_list(shots, "shots")
    names = parse_methods(methods)
    from ntk_bridge import runtime

    if jobs is None and len(runtime.usable_cores()) == 1:  # under taskset -c N, as documented
        runtime.steady_heap()  # a quarter off each training step on one core (none measured with two threads)

    from ntk_bridge.datasets.loaders import DataSpec
    from ntk_bridge.fewshot.experiment import FewShotConfig, check_out
    from ntk_bridge.fewshot.methods import default_method_config
    from ntk_bridge.fewshot.models import ModelConfig

    shared = {k: v for k, v in (("meta_batch", meta_batch), ("train_queries", train_queries)) if v is not None}
    method_configs = apply_overrides([default_method_config(n, **shared) for n in names], list(set_))
    if tasks_of is not None:
        _positive(val_tasks, "val-tasks")
        from ntk_bridge.fewshot.experiment import config_for
        from ntk_bridge.bridge import load_run_tasks

        from ntk_bridge.record import read_sweep_record

        read_sweep_record(tasks_of)  # an edited or foreign config.json: one line, before anything is written
        out = out or Path("ntk_bridge_runs") / f"fewshot-tasks-{_dt.datetime.now():%Y%m%d-%H%M%S}"
        check_out(out)
        episodes, sweep, record = load_run_tasks(tasks_of, val_episodes, val_tasks or 0)
        config = config_for(
            episodes, methods=tuple(method_configs), model=ModelConfig(body, channels, blocks, layer_norm, parameterization),
            seeds=tuple(range(seed, seed + train_seeds)), max_steps=max_steps, budget_seconds=60.0 * budget_minutes,
            clock=clock, checkpoints=checkpoints, plateau_patience=patience)
        from ntk_bridge.fewshot.cost import episodes_estimate

        said = _check_long(config, episodes_estimate(config, episodes), yes)
        _run(config, episodes, out, tasks_of=(tasks_of, sweep, record), estimate=said, jobs=jobs)
        return
    config = FewShotConfig(
        ways=ways, shots=shot_values, methods=tuple(method_configs),
        model=ModelConfig(body, channels, blocks, layer_norm, parameterization),
        seeds=tuple(range(seed, seed + train_seeds)), max_steps=max_steps, budget_seconds=60.0 * budget_minutes, clock=clock,
        test_episodes=test_episodes, test_queries=test_queries, val_episodes=val_episodes, checkpoints=checkpoints,
        plateau_patience=patience)
    spec = DataSpec(dataset, str(data_dir) if data_dir else None, data_seed, image_size, max_classes)
    spec.check()
    from ntk_bridge import budget
    from ntk_bridge.datasets import NATIVE_SIZE

    size = image_size or NATIVE_SIZE[dataset]
    budget.check_memory(dataset_bytes(dataset, size, max_classes), f"--dataset {dataset} at {size} x {size} pixels")
    from ntk_bridge.fewshot.cost import dataset_estimate

    _, samples, image_channels = _DATASET_SIZES[dataset]
    said = _check_long(config, dataset_estimate(config, (size, size, image_channels), samples), yes)
    out = out or Path("ntk_bridge_runs") / f"fewshot-{dataset}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    check_out(out)
    _run(config, spec, out, estimate=said, jobs=jobs)


def _in_workers(config, spec, out: Path, jobs: int, final, bar, display):
    """``--jobs N``: every training run in N worker processes of one core each
    (:func:`ntk_bridge.runtime.one_core_pool`), each saved as it ends, then ``final`` (the tables, which find every
    run saved) in a worker too: a run's key includes the BLAS threads, which the workers share."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from ntk_bridge.datasets.loaders import DataSpec
    from ntk_bridge.fewshot import experiment
    from ntk_bridge.runtime import one_core_pool

    data = spec
    if isinstance(spec, DataSpec):  # rendered once here, and every error about the data before a worker starts
        spec.check()
        data = spec.load(display.rendering)
    experiment.check_shapes(config, data)
    display.loaded(data)
    runs = [(shots, seed, m.method) for shots in config.shots for seed in config.seeds for m in config.methods]
    jobs = min(jobs, len(runs))
    task = bar.add_task(f"{len(runs)} training runs in {jobs} process{'es' if jobs > 1 else ''} of one core each",
                        total=len(runs), loss="-", val="-")
    with one_core_pool(jobs) as pool:
        pending = {pool.submit(experiment.train_one, config, spec, out, *run) for run in runs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    row = future.result()
                    bar.advance(task)
                    bar.console.print(f"{row['method']:8s} {config.ways}-way {row['shots']}-shot seed {row['seed']}: "
                                      f"val {row['final_val_accuracy']:.1f}%, test {row['accuracy']:.1f}% "
                                      f"({row['stopped']}, {row['status']})")
            return pool.submit(final).result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _check_long(config, est: dict, yes: bool) -> str:
    """Refuse (one line) a run estimated (:mod:`ntk_bridge.fewshot.cost`) over an hour without
    ``--yes``; else the line that says the estimate (printed once the data are loaded and checked)."""
    from ntk_bridge import budget

    caps = " and ".join(c for c in (config.max_steps and f"{config.max_steps:,} steps",
                                    config.budget_seconds and f"{config.budget_seconds / 60:g} minutes") if c)
    runs = f"{est['runs']} training run{'s' if est['runs'] != 1 else ''}"
    budget.check_long(est["seconds"], f"this few-shot run ({runs} of up to {caps} each)", yes)
    whose = "its" if est["runs"] == 1 else "their"
    return (f"estimate: at most about {budget.duration(est['seconds'])} for {runs} to {whose} caps "
            "(the plateau rule usually stops a run sooner)")


def _run(config, spec, out: Path, tasks_of: tuple | None = None, estimate: str | None = None,
         jobs: int | None = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from ntk_bridge.fewshot import experiment
    from ntk_bridge.fewshot.report import summary_table
    from ntk_bridge.runtime import current_blas_threads, device_line

    console, err = Console(), Console(stderr=True)
    if not console.is_terminal:  # logs and pipes: no reason to squeeze the tables into 80 columns
        console.width = max(console.width, 130)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                   TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"), TimeElapsedColumn(),
                   console=err, transient=False)
    caps = [c for c in (config.max_steps and f"{config.max_steps} steps",
                        config.budget_seconds and f"{config.budget_seconds:.0f} {config.clock}-s") if c]

    class Display(experiment.Progress):
        task = render_task = None
        last = 0.0

        def rendering(self, done, total):
            if self.render_task is None:
                self.render_task = bar.add_task("rendering kanji (cached after)", total=total, loss="-", val="-")
            bar.update(self.render_task, completed=done)

        def loaded(self, data):
            # the data are read and match the options: every user error is behind us, training begins
            if jobs is None:  # with --jobs the workers train, one core each (the progress bar says so)
                print(device_line(current_blas_threads()), file=sys.stderr, flush=True)
            if estimate:
                print(estimate, file=sys.stderr, flush=True)
            if tasks_of is not None:
                err.print(f"[bold]{data.name}[/] tasks of {tasks_of[0]}: " + ", ".join(
                    f"{s} {e} episodes x {n} images" for s, (e, n) in data.summary().items())
                    + f", images {data.image_shape}; validation: {data.validation}")
                return
            err.print(f"[bold]{data.name}[/]: " + ", ".join(f"{s} {c} classes x {n}" for s, (c, n) in data.summary().items())
                      + f", images {data.image_shape}")

        def run_start(self, method, shots, seed):
            self.task = bar.add_task(f"{method:8s} {config.ways}-way {shots}-shot seed {seed} (cap {', '.join(caps)})",
                                     total=1.0, loss="-", val="-")

        def step(self, steps, spent, loss):
            now = time.perf_counter()
            if now - self.last > 0.25:
                fractions = [spent / config.budget_seconds] if config.budget_seconds else []
                fractions += [steps / config.max_steps] if config.max_steps else []
                bar.update(self.task, completed=min(max(fractions), 1.0), loss=f"{loss:.3f}")
                self.last = now

        def checkpoint(self, record):
            bar.update(self.task, val=f"{100 * record['val_accuracy']:.1f}%")

        def reused(self, row):
            bar.update(self.task, completed=1.0, val=f"{row['final_val_accuracy']:.1f}%, test {row['accuracy']:.1f}% "
                       "(finished before: reused)")

        def damaged(self, name):
            err.print(f"[yellow]{out / 'trained' / name} is damaged: trained again[/]")

        def run_end(self, row):
            bar.update(self.task, completed=1.0, val=f"{row['final_val_accuracy']:.1f}%, test {row['accuracy']:.1f}% "
                       f"({row['stopped']}, {row['status']})")

    name = spec.name
    if tasks_of is None:
        final = functools.partial(experiment.run_fewshot, config, spec, out, record={"command": sys.argv})
    else:
        from ntk_bridge.fewshot.on_tasks import closed_form_table

        final = functools.partial(experiment.run_on_tasks, config, spec, tasks_of[1], tasks_of[2], out,
                                  record={"command": sys.argv}, run=str(tasks_of[0]))
        name = f"{spec.name} tasks of {tasks_of[0]}"
    with bar:
        done = final(Display()) if jobs is None else _in_workers(config, spec, out, jobs, final, bar, Display())
    tables, comparison = (done, None) if tasks_of is None else done
    summary = summary_table(tables.summary)
    for shot, group in summary.groupby("shots", sort=False):
        table = Table(title=f"{name} {config.ways}-way {shot}-shot: {config.test_episodes} test episodes per seed; "
                            "± = 95% interval over seeds", box=box.SIMPLE, pad_edge=False)
        for column in group.columns.drop("shots"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for _, r in group.drop(columns="shots").iterrows():
            table.add_row(*[str(v) for v in r])
        console.print(table)
    if tasks_of is not None and comparison is not None and len(comparison):
        pivot, title = closed_form_table(comparison)
        table = Table(title=title, box=box.SIMPLE, pad_edge=False)
        for column in pivot.columns:
            table.add_column(str(column), justify="right")
        for r in pivot.itertuples(index=False):
            table.add_row(*[str(v) for v in r])
        console.print(table)
        console.print(f"closed forms beside the networks: {out / 'closed_forms.csv'}")
    elif tasks_of is not None:
        console.print(f"[yellow]{tasks_of[0]} holds no infinite-width closed-form accuracies (no results.csv, or no "
                      "ok rows at width inf): nothing to compare[/]")
    from ntk_bridge.metrics import STATUSES

    bad = tables.results[~tables.results["status"].isin(["ok"])]
    if len(bad):
        meanings = "; ".join(f"{s}: {STATUSES.get(s, '?')}" for s in sorted(set(bad["status"])))
        console.print(f"[yellow]{len(bad)} run(s) not ok ({meanings})[/]")
    console.print(f"results: {out / 'results.csv'}; summary: {out / 'summary.csv'}; figure: {out / 'accuracy_vs_time.png'}")
