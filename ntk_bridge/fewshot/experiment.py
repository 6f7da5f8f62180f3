"""The few-shot comparison: every method and shot setting under one time budget, on the same test episodes.

:func:`run_experiment` trains each method for each ``shots`` value (``ways``-way tasks), tests the
best-validation parameters on ``test_episodes`` fixed meta-test episodes (the same episodes for every
method and for the raw-pixel nearest-neighbour baseline, so differences are paired) and returns
tidy tables (:class:`ExperimentTables`).

Budget split (training time only; compilation, validation and testing are extra and reported):
the budget is divided equally between the shot settings; within one, the methods run in the
given order and each gets an equal share of what is left, ``remaining / methods still to run``.
A method that converges early (reduce-on-plateau exhausted, see :mod:`ntk_bridge.fewshot.train`)
leaves its unused time to the methods after it, and unused time of a shot setting passes to the
next one. With the default order (MTL first), MTL's early stop gives the meta-learners more time,
which can only favour them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.data import FewShotDataset
from ntk_bridge.fewshot.episodes import check_episode_shape, fixed_episodes
from ntk_bridge.fewshot.evaluate import BASELINE, mean_ci95, nearest_neighbour_accuracies
from ntk_bridge.fewshot.methods import METHODS
from ntk_bridge.fewshot.models import ModelConfig
from ntk_bridge.fewshot.train import TEST_STREAM, MethodConfig, TrainConfig, TrainResult, evaluate_split, train

#: Points of validation accuracy below its best at which a method counts as having "reached" it.
REACH_TOLERANCE = 0.01


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a comparison depends on (serialised to ``config.json``).

    Attributes:
      ways, shots: task shape; one training run per (method, shots).
      methods: resolved hyper-parameters, run in this order.
      model: the body shared by every method.
      budget_seconds: total training budget on ``clock`` (see the module docstring for the split).
      max_steps: optional cap on outer steps per run (quick runs, tests).
      test_episodes, test_queries: meta-test episodes and query images per class.
      val_episodes, checkpoints: validation episodes per checkpoint and checkpoints per run.
      seed: seeds initialisation, training episodes and validation / test episodes.
    """

    ways: int = 5
    shots: tuple[int, ...] = (1, 5)
    methods: tuple[MethodConfig, ...] = ()
    model: ModelConfig = ModelConfig()
    budget_seconds: float = 480.0
    clock: str = "wall"
    max_steps: int | None = None
    test_episodes: int = 1000
    test_queries: int = 15
    val_episodes: int = 100
    checkpoints: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.methods:
            raise UserError("choose at least one method")
        if not self.shots or min(self.shots) < 1:
            raise UserError(f"shots must be positive integers, got {self.shots}")
        if self.test_episodes < 2:
            raise UserError("need at least 2 test episodes for a confidence interval")
        if self.budget_seconds <= 0 and not self.max_steps:
            raise UserError("the budget must be positive (or give a step limit)")
        names = [m.method for m in self.methods]
        if len(set(names)) != len(names):
            raise UserError(f"methods listed twice: {names}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ExperimentTables:
    """Tidy outputs.

    Attributes:
      results: one row per (shots, method) including the ``nn-pixels`` baseline (columns in
        :data:`RESULT_COLUMNS`).
      curves: one row per validation checkpoint of every run.
      episodes: one row per (shots, method, test episode): per-episode accuracy, for paired tests.
      allocations: the training budget each run was given, in seconds on the run's clock.
    """

    results: pd.DataFrame
    curves: pd.DataFrame
    episodes: pd.DataFrame
    allocations: list[dict] = field(default_factory=list)


#: Columns of ``results.csv`` (accuracies in percent, times in seconds).
RESULT_COLUMNS = {
    "dataset": "dataset name",
    "method": "mtl, anil, maml, or nn-pixels (raw-pixel 1-nearest-neighbour baseline, no training)",
    "ways": "classes per task",
    "shots": "support images per class",
    "accuracy": "mean query accuracy over the test episodes, percent",
    "ci95": "half-width of the 95% normal interval of that mean, 1.96 sd / sqrt(episodes), percent",
    "test_episodes": "number of meta-test episodes (identical for every method of a shot setting)",
    "test_queries": "query images per class in each test episode",
    "clock": "clock of the budget and of the *_to_* columns: wall or cpu",
    "budget_seconds": "training budget this run was given (its share, see the budget split)",
    "train_seconds": "wall-clock training time: episode sampling and outer steps, no compilation or validation",
    "train_cpu_seconds": "the same interval in process CPU seconds (all threads)",
    "steps": "outer steps taken",
    "seconds_per_outer_step": "train_seconds / steps",
    "compile_seconds": "ahead-of-time compilation of the outer step",
    "stopped": "budget, max_steps, or converged (reduce-on-plateau exhausted)",
    "best_val_accuracy": "best validation accuracy over the checkpoints, percent (its parameters are tested)",
    "seconds_to_best": "training time (on clock) at that best checkpoint",
    "seconds_to_reach": "training time (on clock) at the first checkpoint within 1 point of best_val_accuracy",
    "reach_ratio_to_mtl": "seconds_to_reach / MTL's seconds_to_reach for the same shots (how many times longer "
                          "than MTL; empty when MTL's best was its untrained checkpoint)",
    "diff_vs_mtl": "accuracy minus MTL's, percent, paired over the same test episodes",
    "diff_vs_mtl_ci95": "95% half-width of that paired difference, percent",
    "test_seconds": "wall-clock seconds of the test evaluation",
}


def _run_row(dataset: str, ways: int, shots: int, config: MethodConfig, result: TrainResult, clock: str,
             budget: float, acc: np.ndarray, test_seconds: float, test_queries: int) -> dict:
    best = result.best
    key = "train_seconds" if clock == "wall" else "train_cpu_seconds"
    mean, ci = mean_ci95(acc)
    return {
        "dataset": dataset, "method": config.method, "ways": ways, "shots": shots,
        "accuracy": 100 * mean, "ci95": 100 * ci, "test_episodes": acc.size, "test_queries": test_queries,
        "clock": clock, "budget_seconds": budget,
        "train_seconds": result.train_seconds, "train_cpu_seconds": result.train_cpu_seconds,
        "steps": result.steps,
        "seconds_per_outer_step": result.train_seconds / max(result.steps, 1),
        "compile_seconds": result.compile_seconds, "stopped": result.stopped,
        "best_val_accuracy": 100 * best["val_accuracy"], "seconds_to_best": best[key],
        "seconds_to_reach": result.seconds_to(best["val_accuracy"] - REACH_TOLERANCE, clock),
        "test_seconds": test_seconds,
    }


def _paired_columns(results: pd.DataFrame, episodes: pd.DataFrame) -> pd.DataFrame:
    """Add ``reach_ratio_to_mtl``, ``diff_vs_mtl`` and ``diff_vs_mtl_ci95`` (NaN without an MTL run)."""
    results = results.assign(reach_ratio_to_mtl=np.nan, diff_vs_mtl=np.nan, diff_vs_mtl_ci95=np.nan)
    for shots in results["shots"].unique():
        mtl = results[(results.shots == shots) & (results.method == "mtl")]
        if mtl.empty:
            continue
        base = episodes[(episodes.shots == shots) & (episodes.method == "mtl")].sort_values("episode")["accuracy"].to_numpy()
        for i in results.index[results.shots == shots]:
            row = results.loc[i]
            mtl_reach = mtl["seconds_to_reach"].iloc[0]
            if row["method"] != BASELINE and mtl_reach > 0:
                results.loc[i, "reach_ratio_to_mtl"] = row["seconds_to_reach"] / mtl_reach
            other = episodes[(episodes.shots == shots) & (episodes.method == row["method"])].sort_values("episode")
            diff, ci = mean_ci95(other["accuracy"].to_numpy() - base)
            results.loc[i, ["diff_vs_mtl", "diff_vs_mtl_ci95"]] = [100 * diff, 100 * ci]
    return results


def run_experiment(
    config: ExperimentConfig,
    data: FewShotDataset,
    on_run_start: Callable[[str, int, float], None] | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
    on_run_end: Callable[[dict], None] | None = None,
) -> ExperimentTables:
    """Train and test every (shots, method) of ``config`` on ``data``.

    Callbacks (all optional, for progress displays): ``on_run_start(method, shots, budget)``,
    ``on_step`` / ``on_checkpoint`` as in :func:`~ntk_bridge.fewshot.train.train`, and
    ``on_run_end(result_row)``.
    """
    for split in ("train", "val", "test"):
        for shots in config.shots:
            queries = {"train": max(m.train_queries for m in config.methods), "val": 1, "test": config.test_queries}[split]
            check_episode_shape(data.splits[split], config.ways, shots, queries)
    rows, curves, per_episode, allocations = [], [], [], []
    carry = 0.0
    per_shot = config.budget_seconds / len(config.shots)
    for shots in config.shots:
        test = data.splits["test"]
        nn = np.concatenate([
            nearest_neighbour_accuracies(batch)
            for batch in fixed_episodes(test, config.ways, shots, config.test_queries, config.test_episodes, config.seed, TEST_STREAM)
        ])
        mean, ci = mean_ci95(nn)
        rows.append({"dataset": data.name, "method": BASELINE, "ways": config.ways, "shots": shots,
                     "accuracy": 100 * mean, "ci95": 100 * ci, "test_episodes": nn.size,
                     "test_queries": config.test_queries, "clock": config.clock, "budget_seconds": 0.0,
                     "train_seconds": 0.0, "train_cpu_seconds": 0.0, "steps": 0})
        per_episode.append(pd.DataFrame({"method": BASELINE, "shots": shots, "episode": np.arange(nn.size), "accuracy": nn}))
        remaining = per_shot + carry
        for position, method in enumerate(config.methods):
            budget = remaining / (len(config.methods) - position)
            allocations.append({"method": method.method, "shots": shots, "budget_seconds": budget})
            if on_run_start is not None:
                on_run_start(method.method, shots, budget)
            run = TrainConfig(budget_seconds=budget, max_steps=config.max_steps, checkpoints=config.checkpoints,
                              val_episodes=config.val_episodes, seed=config.seed, clock=config.clock)
            net, result = train(method, run, config.model, data, config.ways, shots, on_step, on_checkpoint)
            remaining -= result.train_seconds if config.clock == "wall" else result.train_cpu_seconds
            acc, test_seconds = evaluate_split(net, method, result.params, test, config.ways, shots,
                                               config.test_episodes, config.seed, config.test_queries)
            row = _run_row(data.name, config.ways, shots, method, result, config.clock, budget, acc, test_seconds, config.test_queries)
            rows.append(row)
            curves.append(pd.DataFrame(result.history).assign(dataset=data.name, method=method.method, ways=config.ways, shots=shots))
            per_episode.append(pd.DataFrame({"method": method.method, "shots": shots, "episode": np.arange(acc.size), "accuracy": acc}))
            if on_run_end is not None:
                on_run_end(row)
        carry = max(remaining, 0.0)
    episodes = pd.concat(per_episode, ignore_index=True).assign(dataset=data.name, ways=config.ways)
    results = _paired_columns(pd.DataFrame(rows), episodes)
    results = results.reindex(columns=list(RESULT_COLUMNS))
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()
    return ExperimentTables(results, curves_df, episodes[["dataset", "method", "ways", "shots", "episode", "accuracy"]], allocations)


def check_methods(names: list[str]) -> None:
    """Raise :class:`UserError` for unknown method names."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
