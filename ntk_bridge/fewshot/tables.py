"""Tidy tables of a few-shot comparison: per-run rows, time-to-accuracy, and the summary over seeds.

Time-to-accuracy is read from each run's validation curve (``curves.csv``): the training CPU-seconds
(and outer steps) at the first checkpoint whose validation accuracy reaches

* ``95pct``: 95% of the run's own final accuracy (the validation accuracy of its best checkpoint,
  whose parameters are tested);
* ``target``: the common target of its shot setting, the lowest final accuracy among all runs of
  that setting (every method and seed; runs that are not ``ok`` excluded), which every run reaches.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ntk_bridge.fewshot.evaluate import BASELINE, mean_ci95

#: Columns of ``results.csv``, one row per (shots, seed, method) and the ``nn-pixels`` baseline
#: (accuracies in percent, times in seconds).
RESULT_COLUMNS = {
    "dataset": "dataset name",
    "method": "a name of ntk_bridge.fewshot.methods.METHODS, or nn-pixels (raw-pixel 1-NN, no training)",
    "ways": "classes per task",
    "shots": "support images per class",
    "seed": "training seed: initialisation, training episodes, and this row's validation and test episodes",
    "status": "ok, diverged (training loss non-finite or exploding; best checkpoint tested) or nonfinite "
              "(NaN/inf outputs at test)",
    "accuracy": "mean query accuracy over the test episodes, percent",
    "ci95": "half-width of the normal 95% interval of that mean over episodes, 1.96 sd / sqrt(episodes)",
    "cpu_s_to_95pct": "training CPU-seconds at the first checkpoint reaching 95% of final_val_accuracy",
    "cpu_s_to_target": "training CPU-seconds at the first checkpoint reaching target_accuracy",
    "outer_steps": "outer steps taken",
    "steps_to_95pct": "outer steps at that checkpoint",
    "steps_to_target": "outer steps at that checkpoint",
    "target_accuracy": "the shot setting's common target: the lowest final_val_accuracy of its ok runs",
    "final_val_accuracy": "best validation accuracy over the checkpoints, percent (its parameters are tested)",
    "cpu_s_to_best": "training CPU-seconds at that best checkpoint",
    "stopped": "converged (plateau rule), max_steps, budget (time cap) or diverged",
    "train_cpu_seconds": "process CPU-seconds of training: episode sampling and outer steps, all threads",
    "train_seconds": "the same interval in wall-clock seconds",
    "cpu_s_per_step": "train_cpu_seconds / outer_steps",
    "compile_seconds": "ahead-of-time compilation of the outer step (wall)",
    "eval_seconds": "validation at the checkpoints (wall)",
    "test_seconds": "the test evaluation (wall)",
    "diff_vs_mtl": "accuracy minus MTL's, paired over the same test episodes (same shots and seed)",
    "diff_vs_mtl_ci95": "95% half-width of that paired difference",
    "test_episodes": "meta-test episodes (identical for every method of a shot setting and seed)",
    "test_queries": "query images per class in each test episode",
    "clock": "clock of the time cap: wall or cpu",
    "budget_seconds": "time cap per run on that clock (0: none)",
    "max_steps": "outer-step cap per run (empty: none)",
}

#: Columns of ``summary.csv``, one row per (shots, method): means over training seeds, and 95%
#: t-intervals over seeds (so they include training noise; each seed has its own test episodes).
SUMMARY_COLUMNS = ("dataset", "method", "ways", "shots", "seeds", "statuses", "accuracy", "accuracy_ci95",
                   "episode_ci95", "cpu_s_to_95pct", "cpu_s_to_95pct_ci95", "cpu_s_to_target", "cpu_s_to_target_ci95",
                   "target_accuracy", "outer_steps", "train_cpu_seconds", "cpu_s_per_step", "step_cost_vs_mtl",
                   "diff_vs_mtl", "diff_vs_mtl_ci95")


def _first_reaching(curve: pd.DataFrame, target: float) -> tuple[float, float]:
    """``(cpu seconds, steps)`` at the first checkpoint of ``curve`` with ``val_accuracy >= target``."""
    hit = curve[curve["val_accuracy"] >= target - 1e-12]
    if hit.empty:
        return float("nan"), float("nan")
    first = hit.iloc[0]
    return float(first["train_cpu_seconds"]), float(first["step"])


def add_reach_columns(results: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Fill ``target_accuracy`` and the ``*_to_95pct`` / ``*_to_target`` columns from the curves
    (``curves.val_accuracy`` in [0, 1], ``results`` in percent)."""
    results = results.copy()
    trained = results["method"] != BASELINE
    for shots in results.loc[trained, "shots"].unique():
        rows = results.index[trained & (results["shots"] == shots)]
        ok = results.loc[rows][results.loc[rows, "status"] == "ok"]
        target = ok["final_val_accuracy"].min() if len(ok) else float("nan")
        for i in rows:
            row = results.loc[i]
            curve = curves[(curves["shots"] == shots) & (curves["seed"] == row["seed"]) & (curves["method"] == row["method"])]
            curve = curve.sort_values("step")
            own = _first_reaching(curve, 0.95 * row["final_val_accuracy"] / 100)
            common = _first_reaching(curve, target / 100) if np.isfinite(target) else (float("nan"),) * 2
            results.loc[i, ["target_accuracy", "cpu_s_to_95pct", "steps_to_95pct", "cpu_s_to_target", "steps_to_target"]] = [
                target, *own, *common]
    return results


def add_paired_columns(results: pd.DataFrame, episodes: pd.DataFrame) -> pd.DataFrame:
    """``diff_vs_mtl`` and its 95% half-width, paired over the episodes of the same shots and seed
    (NaN without an MTL run)."""
    results = results.copy()
    for (shots, seed), group in results.groupby(["shots", "seed"]):
        base = episodes[(episodes.shots == shots) & (episodes.seed == seed) & (episodes.method == "mtl")]
        if base.empty:
            continue
        base = base.sort_values("episode")["accuracy"].to_numpy()
        for i in group.index:
            other = episodes[(episodes.shots == shots) & (episodes.seed == seed) & (episodes.method == results.loc[i, "method"])]
            diff, ci = mean_ci95(other.sort_values("episode")["accuracy"].to_numpy() - base)
            results.loc[i, ["diff_vs_mtl", "diff_vs_mtl_ci95"]] = [100 * diff, 100 * ci]
    return results


def mean_t95(values) -> tuple[float, float]:
    """``(mean, t_{0.975, n-1} sd / sqrt(n))`` of the finite values (NaN half-width for n < 2)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (shots, method), in :data:`SUMMARY_COLUMNS` (means and t-intervals over seeds)."""
    rows = []
    for (shots, method), group in results.groupby(["shots", "method"], sort=False):
        acc, acc_ci = mean_t95(group["accuracy"])
        row = {"dataset": group["dataset"].iloc[0], "method": method, "ways": group["ways"].iloc[0], "shots": shots,
               "seeds": len(group), "statuses": ",".join(sorted(set(group["status"]))),
               "accuracy": acc, "accuracy_ci95": acc_ci, "episode_ci95": float(group["ci95"].mean())}
        for column in ("cpu_s_to_95pct", "cpu_s_to_target", "diff_vs_mtl"):
            row[column], row[f"{column}_ci95"] = mean_t95(group[column])
        for column in ("target_accuracy", "outer_steps", "train_cpu_seconds", "cpu_s_per_step"):
            row[column] = float(group[column].mean())
        rows.append(row)
    summary = pd.DataFrame(rows)
    for shots in summary["shots"].unique():
        here = summary["shots"] == shots
        mtl = summary[here & (summary["method"] == "mtl")]
        if len(mtl):
            summary.loc[here, "step_cost_vs_mtl"] = summary.loc[here, "cpu_s_per_step"] / mtl["cpu_s_per_step"].iloc[0]
    return summary.reindex(columns=list(SUMMARY_COLUMNS))
