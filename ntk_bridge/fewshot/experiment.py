"""The few-shot comparison: every method x shot setting x training seed under the same rules.

:func:`run_experiment` trains each method for each ``shots`` value (``ways``-way tasks) and each
training seed, tests the best-validation parameters on ``test_episodes`` fixed meta-test episodes
(per shot setting and seed, the same episodes for every method and for the raw-pixel
nearest-neighbour baseline, so differences are paired; each seed has its own episodes, so the spread
over seeds includes episode sampling as well as training) and returns tidy tables
(:class:`ExperimentTables`, columns in :mod:`ntk_bridge.fewshot.tables`).

Budget rules, the same for every method: each run trains until its plateau rule stops it, or until
the caps ``max_steps`` (outer steps) and ``budget_seconds`` (seconds of training on ``clock``, 0 for
none), whichever comes first (:mod:`ntk_bridge.fewshot.train`). With a step cap alone a run is
reproducible (the committed figures use that). Validation, testing and compilation are extra and
reported.

:func:`run_fewshot` is the library entry point: it checks everything (options, the data source,
the output folder) before rendering or loading data, runs the comparison and writes the run folder
(``results.csv``, ``summary.csv``, ``curves.csv``, ``episodes.csv``, ``config.json``,
``accuracy_vs_time.png`` / ``.pdf``). Each training run is saved in the folder as it finishes
(``trained/``, :mod:`ntk_bridge.fewshot.store`), so a rerun into the same folder trains only the
runs that had not finished and writes the same tables.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ntk_bridge.datasets.episodes import check_episode_shape, fixed_episodes
from ntk_bridge.datasets.loaders import DataSpec, FewShotDataset
from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.evaluate import BASELINE, accuracies, episode_scorer, mean_ci95, nearest_neighbour_accuracies
from ntk_bridge.fewshot.methods import METHODS, MethodConfig
from ntk_bridge.fewshot.models import ModelConfig
from ntk_bridge.fewshot.tables import RESULT_COLUMNS, add_paired_columns, add_reach_columns, summarize
from ntk_bridge.fewshot.on_tasks import TaskEpisodes, write_closed_forms
from ntk_bridge.fewshot.train import TEST_STREAM, FixedSource, TrainConfig, TrainResult, chunks, train


@dataclass(frozen=True)
class FewShotConfig:
    """Everything a comparison depends on (serialised to ``config.json``).

    Attributes:
      ways, shots: task shape; one training run per (shots, seed, method).
      methods: resolved hyper-parameters, run in this order.
      model: the body shared by every method.
      seeds: training seeds.
      max_steps, budget_seconds, clock: caps of every run (see the module docstring).
      test_episodes, test_queries: meta-test episodes per (shots, seed) and query images per class.
      val_episodes, checkpoints: validation episodes per checkpoint, checkpoints per run (at every
        ``1/checkpoints`` of the caps).
      plateau_patience, plateau_factor, max_lr_drops: the plateau rule.
    """

    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    methods: tuple[MethodConfig, ...] = ()
    model: ModelConfig = ModelConfig()
    seeds: tuple[int, ...] = (0,)
    max_steps: int | None = 3000
    budget_seconds: float = 0.0
    clock: str = "cpu"
    test_episodes: int = 1000
    test_queries: int = 15
    val_episodes: int = 50
    checkpoints: int = 60
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    max_lr_drops: int = 1

    def __post_init__(self) -> None:
        if not self.methods:
            raise UserError("choose at least one method")
        names = [m.method for m in self.methods]
        if len(set(names)) != len(names):
            raise UserError(f"methods listed twice: {', '.join(names)}")
        if self.ways < 2:
            raise UserError(f"--ways must be at least 2, got {self.ways}")
        if not self.shots or min(self.shots) < 1 or len(set(self.shots)) != len(self.shots):
            raise UserError(f"shots must be distinct positive integers, got {self.shots}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise UserError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if self.test_episodes < 2:
            raise UserError("need at least 2 test episodes for a confidence interval")
        if self.test_queries < 1:
            raise UserError("need at least 1 query image per class in test episodes")
        if any(m.schedule == "cosine" for m in self.methods) and not self.max_steps:
            raise UserError("schedule=cosine needs a step cap (--max-steps)")
        self.train_config(self.seeds[0])  # validates caps, checkpoints and the plateau rule

    def train_config(self, seed: int) -> TrainConfig:
        """The :class:`~ntk_bridge.fewshot.train.TrainConfig` of a run with this training seed."""
        return TrainConfig(budget_seconds=self.budget_seconds, max_steps=self.max_steps, checkpoints=self.checkpoints,
                           val_episodes=self.val_episodes, plateau_patience=self.plateau_patience,
                           plateau_factor=self.plateau_factor, max_lr_drops=self.max_lr_drops, seed=seed,
                           clock=self.clock)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ExperimentTables:
    """Tidy outputs.

    Attributes:
      results: one row per (shots, seed, method) and the ``nn-pixels`` baseline (:data:`RESULT_COLUMNS`).
      summary: one row per (shots, method) over seeds (:data:`~ntk_bridge.fewshot.tables.SUMMARY_COLUMNS`).
      curves: one row per validation checkpoint of every run.
      episodes: one row per (shots, seed, method, test episode): per-episode accuracy, for paired tests.
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame
    episodes: pd.DataFrame


class Progress:
    """Hooks a display may override (all optional; the default does nothing)."""

    def rendering(self, done: int, total: int) -> None: ...

    def loaded(self, data: FewShotDataset) -> None: ...

    def run_start(self, method: str, shots: int, seed: int) -> None: ...

    def step(self, steps: int, spent: float, loss: float) -> None: ...

    def checkpoint(self, record: dict) -> None: ...

    def run_end(self, row: dict) -> None: ...

    def reused(self, row: dict) -> None:
        """A finished run found in the run folder (saved by an earlier, interrupted run) and reused."""
        self.run_end(row)

    def damaged(self, name: str) -> None:
        """A saved run that failed verification (it is trained again)."""


def check_shapes(config: FewShotConfig, data: FewShotDataset | TaskEpisodes) -> None:
    """Raise :class:`UserError` unless every episode shape of ``config`` fits ``data``'s splits (or is
    the shape of a task set's episodes)."""
    if isinstance(data, TaskEpisodes):
        if (config.ways, config.shots, config.test_episodes, config.test_queries) != (
                data.ways, (data.shots,), data.test.n_episodes, data.queries):
            raise UserError(f"the task set's episodes are {data.ways}-way {data.shots}-shot with {data.queries} "
                            f"queries per class and {data.test.n_episodes} test episodes; the configuration says "
                            f"{config.ways}-way {config.shots}-shot, {config.test_queries} and {config.test_episodes}")
        return
    for shots in config.shots:
        check_episode_shape(data.splits["train"], config.ways, shots, max(m.train_queries for m in config.methods))
        check_episode_shape(data.splits["val"], config.ways, shots, 1)
        check_episode_shape(data.splits["test"], config.ways, shots, config.test_queries)


def _run_row(data: FewShotDataset, config: FewShotConfig, shots: int, seed: int, method: MethodConfig,
             result: TrainResult, acc: np.ndarray, test_seconds: float) -> dict:
    best = result.best
    finite = bool(np.all(np.isfinite(acc)))
    mean, ci = mean_ci95(acc) if finite else (float("nan"), float("nan"))
    status = result.status if result.status != "ok" else ("ok" if finite else "nonfinite")
    return {
        "dataset": data.name, "method": method.method, "ways": config.ways, "shots": shots, "seed": seed,
        "status": status, "accuracy": 100 * mean, "ci95": 100 * ci, "outer_steps": result.steps,
        "final_val_accuracy": 100 * best["val_accuracy"], "cpu_s_to_best": best["train_cpu_seconds"],
        "stopped": result.stopped, "train_cpu_seconds": result.train_cpu_seconds, "train_seconds": result.train_seconds,
        "cpu_s_per_step": result.train_cpu_seconds / max(result.steps, 1), "compile_seconds": result.compile_seconds,
        "eval_seconds": result.eval_seconds, "test_seconds": test_seconds, "test_episodes": acc.size,
        "test_queries": config.test_queries, "clock": config.clock, "budget_seconds": config.budget_seconds,
        "max_steps": config.max_steps,
    }


def run_key(config: FewShotConfig, method: MethodConfig, shots: int, seed: int, data_digest: str) -> str:
    """The key of one training run (:func:`ntk_bridge.fewshot.store.run_key`): everything that
    determines its row, curve and test accuracies."""
    from ntk_bridge.fewshot import store

    return store.run_key(method=dataclasses.asdict(method), model=dataclasses.asdict(config.model),
                         train=dataclasses.asdict(config.train_config(seed)), ways=config.ways, shots=int(shots),
                         test_episodes=config.test_episodes, test_queries=config.test_queries, data=data_digest)


def run_experiment(config: FewShotConfig, data: FewShotDataset | TaskEpisodes, progress: Progress | None = None,
                   saved=None) -> ExperimentTables:
    """Train and test every (shots, seed, method) of ``config`` on ``data`` (see the module docstring):
    a dataset's splits, or a task set's episodes (:mod:`ntk_bridge.fewshot.on_tasks`: trained on
    its training episodes, tested on its test episodes, the same for every seed).

    ``saved``: a :class:`~ntk_bridge.fewshot.store.TrainedRuns` of the run folder; each run found
    there (and verified) is reused instead of trained, each run trained is saved there as it ends."""
    progress = progress or Progress()
    check_shapes(config, data)
    digest = None
    if saved is not None:
        from ntk_bridge.fewshot.store import data_digest

        digest = data_digest(data)
    rows, curves, per_episode = [], [], []
    on_tasks = isinstance(data, TaskEpisodes)
    test = None if on_tasks else data.splits["test"]
    source = FixedSource(data.train, data.val, data.image_shape) if on_tasks else data

    def test_episodes(shots, seed):
        if on_tasks:  # the task set's own test episodes, the same for every seed
            return chunks(data.test)
        return fixed_episodes(test, config.ways, shots, config.test_queries, config.test_episodes, seed, TEST_STREAM)

    for shots in config.shots:
        for seed in config.seeds:
            nn = np.concatenate([nearest_neighbour_accuracies(batch) for batch in test_episodes(shots, seed)])
            mean, ci = mean_ci95(nn)
            rows.append({"dataset": data.name, "method": BASELINE, "ways": config.ways, "shots": shots, "seed": seed,
                         "status": "ok", "accuracy": 100 * mean, "ci95": 100 * ci, "test_episodes": nn.size,
                         "test_queries": config.test_queries, "clock": config.clock})
            per_episode.append(pd.DataFrame({"method": BASELINE, "shots": shots, "seed": seed,
                                             "episode": np.arange(nn.size), "accuracy": nn}))
            for method in config.methods:
                progress.run_start(method.method, shots, seed)
                key = None if saved is None else run_key(config, method, shots, seed, digest)
                damaged = len(saved.damaged) if saved is not None else 0
                found = None if saved is None else saved.load(method.method, shots, seed, key)
                if saved is not None and len(saved.damaged) > damaged:
                    progress.damaged(saved.damaged[-1])
                if found is not None:
                    row, history, acc = found
                    progress.reused(row)
                else:
                    net, result = train(method, config.train_config(seed), config.model, source, config.ways, shots,
                                        progress.step, progress.checkpoint)
                    tic = time.perf_counter()
                    acc = accuracies(episode_scorer(net, method), result.params, test_episodes(shots, seed))
                    test_seconds = time.perf_counter() - tic
                    row = _run_row(data, config, shots, seed, method, result, acc, test_seconds)
                    history = result.history
                    if saved is not None:
                        saved.save(method.method, shots, seed, key, row, history, acc)
                rows.append(row)
                curves.append(pd.DataFrame(history).assign(
                    dataset=data.name, method=method.method, ways=config.ways, shots=shots, seed=seed))
                per_episode.append(pd.DataFrame({"method": method.method, "shots": shots, "seed": seed,
                                                 "episode": np.arange(acc.size), "accuracy": acc}))
                progress.run_end(row)
    episodes = pd.concat(per_episode, ignore_index=True).assign(dataset=data.name, ways=config.ways)
    episodes = episodes[["dataset", "method", "ways", "shots", "seed", "episode", "accuracy"]]
    curves_df = pd.concat(curves, ignore_index=True)
    results = pd.DataFrame(rows).reindex(columns=list(RESULT_COLUMNS))
    results = add_paired_columns(add_reach_columns(results, curves_df), episodes)
    trained = results[results["method"] != BASELINE]
    return ExperimentTables(results, summarize(trained), curves_df, episodes)


def check_out(out: Path | str) -> Path:
    """Create ``out`` and prove it writable, or raise :class:`UserError` naming ``--out``."""
    from ntk_bridge.runs import RunFolder

    RunFolder(out).check_writable("--out")
    return Path(out)


def write_tables(tables: ExperimentTables, record: dict, out: Path) -> None:
    """Write ``results.csv``, ``summary.csv``, ``curves.csv``, ``episodes.csv`` and ``config.json``, each
    atomically (:func:`ntk_bridge.runs.atomic_write`)."""
    from ntk_bridge.runs import RunFolder

    out.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(out)
    for name, table in (("results.csv", tables.results), ("summary.csv", tables.summary),
                        ("curves.csv", tables.curves), ("episodes.csv", tables.episodes)):
        folder.write_table(name, table)  # atomically: a reader sees the old file or the new one
    folder.write_json("config.json", record)


def run_fewshot(config: FewShotConfig, data: DataSpec | FewShotDataset | TaskEpisodes, out: Path | str,
                progress: Progress | None = None, record: dict | None = None, figure: bool = True) -> ExperimentTables:
    """Run the comparison and write its folder ``out`` (see the module docstring); returns the tables.

    ``data`` is a :class:`~ntk_bridge.datasets.loaders.DataSpec` (checked, then rendered or read), a
    loaded dataset, or a task set's episodes (:class:`~ntk_bridge.fewshot.on_tasks.TaskEpisodes`).
    ``record`` adds entries to ``config.json`` (e.g. the command line). Options, the data source and
    ``out`` are checked before any data is rendered or any step is taken.
    """
    from ntk_bridge.provenance import provenance

    started = time.perf_counter()
    progress = progress or Progress()
    out = check_out(out)
    if isinstance(data, DataSpec):
        data.check()
        spec, dataset = data, data.load(progress.rendering)
    else:
        spec, dataset = None, data
    check_shapes(config, dataset)
    progress.loaded(dataset)
    start_info = provenance()
    from ntk_bridge.fewshot.store import TrainedRuns
    from ntk_bridge.runs import RunFolder

    saved = TrainedRuns(out)
    with RunFolder(out).writing("a finished training run"):  # a full disk: one line; the runs saved are whole
        tables = run_experiment(config, dataset, progress, saved=saved)
    info = {
        "experiment": config.to_dict(),
        "dataset": ({"name": dataset.name, "tasks_fingerprint": dataset.fingerprint, "validation": dataset.validation,
                     "splits": {s: {"episodes": e, "images_per_episode": n} for s, (e, n) in dataset.summary().items()}}
                    if isinstance(dataset, TaskEpisodes) else
                    {"name": dataset.name, **(dataclasses.asdict(spec) if spec else {}),
                     "splits": {s: {"classes": c, "samples_per_class": n} for s, (c, n) in dataset.summary().items()},
                     "credit": dataset.credit}),
        "methods": {m.method: METHODS[m.method].import_path for m in config.methods},
        "provenance": start_info,
        "load_average_end": os.getloadavg(),
        "wall_seconds": time.perf_counter() - started,
        **({"reused_runs": len(saved.reused)} if saved.reused else {}),  # only when a rerun resumed
        **({"damaged_runs": len(saved.damaged)} if saved.damaged else {}),
        "finished_at": _dt.datetime.now().isoformat(timespec="seconds"),
        **(record or {}),
    }
    from ntk_bridge.runs import RunFolder

    with RunFolder(out).writing("the few-shot tables"):  # a full disk or a file in the way: one line
        write_tables(tables, info, out)
        if figure:
            from ntk_bridge.fewshot.report import plot_accuracy_vs_cost

            plot_accuracy_vs_cost(out)
    return tables


def config_for(episodes: TaskEpisodes, **settings) -> FewShotConfig:
    """The :class:`FewShotConfig` of a run on a task set's ``episodes`` (:mod:`ntk_bridge.fewshot.on_tasks`):
    their ways, shots, test episodes, queries and validation episodes, and ``settings`` (methods,
    model, seeds, caps, checkpoints, plateau rule)."""
    return FewShotConfig(ways=episodes.ways, shots=(episodes.shots,), test_episodes=episodes.test.n_episodes,
                         test_queries=episodes.queries, val_episodes=episodes.val.n_episodes, **settings)


def train_one(config: FewShotConfig, data: DataSpec | TaskEpisodes, out: Path | str, shots: int, seed: int,
              method: str) -> dict:
    """Train and test the ``(method, shots, seed)`` run of ``config`` on ``data`` and save it in the run folder
    ``out`` (a run saved there already is reused); returns its ``results.csv`` row. The run :func:`run_experiment`
    would train for ``config``, under the same key, so that :func:`run_fewshot` of ``config`` into ``out`` finds
    it: one worker's share of ``ntk-bridge fewshot --jobs N``."""
    from ntk_bridge.fewshot.store import TrainedRuns
    from ntk_bridge.runs import RunFolder

    chosen = tuple(m for m in config.methods if m.method == method)
    if not chosen or seed not in config.seeds or shots not in config.shots:
        raise ValueError(f"the configuration has no run {method!r} {shots}-shot seed {seed}")
    one = dataclasses.replace(config, methods=chosen, seeds=(seed,), shots=(shots,))
    loaded = data.load() if isinstance(data, DataSpec) else data
    with RunFolder(out).writing("a finished training run"):
        results = run_experiment(one, loaded, saved=TrainedRuns(check_out(out))).results
    return results[results["method"] == method].iloc[0].to_dict()


def run_on_tasks(config, episodes: TaskEpisodes, sweep: pd.DataFrame | None, sweep_record: dict, out: Path | str,
                 progress=None, record: dict | None = None, figure: bool = True, run: str | None = None):
    """Train and test ``config``'s methods on a task set's ``episodes``
    (:func:`~ntk_bridge.bridge.load_run_tasks`) into the run folder ``out``
    (:func:`run_fewshot`'s files) and write ``closed_forms.csv`` beside them; returns ``(tables,
    comparison or None)``."""
    info = {"tasks_of": {"run": run, "sweep_command": sweep_record.get("command"),
                         "sweep_config": sweep_record.get("config")}, **(record or {})}
    from ntk_bridge.runs import RunFolder

    tables = run_fewshot(config, episodes, out, progress, record=info, figure=figure)
    with RunFolder(out).writing("closed_forms.csv"):
        return tables, write_closed_forms(out, sweep, tables.episodes, sweep_record)


__all__ = ["FewShotConfig", "ExperimentTables", "Progress", "run_experiment", "run_fewshot",
           "config_for", "run_on_tasks", "train_one",
           "check_shapes", "check_out", "write_tables", "RESULT_COLUMNS"]
