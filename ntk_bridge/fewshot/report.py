"""Stored tables -> files, the accuracy-vs-training-time figure and the printed comparison.

Files of a run directory: ``results.csv`` (columns documented in
:data:`ntk_bridge.fewshot.experiment.RESULT_COLUMNS`), ``curves.csv`` (validation checkpoints),
``episodes.csv`` (per-episode test accuracies), ``config.json`` (resolved configuration and
provenance) and ``accuracy_vs_time.{png,pdf}``. The figure is drawn from the CSV files alone.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ntk_bridge.fewshot.evaluate import BASELINE  # noqa: E402
from ntk_bridge.fewshot.experiment import ExperimentTables  # noqa: E402

COLORS = {"mtl": "tab:red", "anil": "tab:blue", "maml": "tab:green"}


def write_tables(tables: ExperimentTables, config: dict, out: Path) -> None:
    """Write ``results.csv``, ``curves.csv``, ``episodes.csv`` and ``config.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tables.results.to_csv(out / "results.csv", index=False)
    tables.curves.to_csv(out / "curves.csv", index=False)
    tables.episodes.to_csv(out / "episodes.csv", index=False)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")


def plot_accuracy_vs_time(out: Path) -> list[Path]:
    """Validation accuracy at each checkpoint against training time, one panel per shot setting.

    Lines: validation accuracy of each method over its training clock (the clock recorded in
    ``results.csv``). Markers with error bars: the test accuracy (95% CI) of the tested checkpoint,
    placed at the training time it was reached. Dashed grey: the raw-pixel nearest-neighbour
    baseline; dotted: chance. Reads ``curves.csv`` and ``results.csv`` from ``out``; writes
    ``accuracy_vs_time.png`` and ``.pdf``.
    """
    results = pd.read_csv(out / "results.csv")
    curves = pd.read_csv(out / "curves.csv")
    clock = results["clock"].iloc[0]
    time_key = "train_seconds" if clock == "wall" else "train_cpu_seconds"
    shot_values = sorted(results["shots"].unique())
    fig, axes = plt.subplots(1, len(shot_values), figsize=(5.2 * len(shot_values), 4.0), squeeze=False)
    for ax, shots in zip(axes[0], shot_values):
        ways = int(results["ways"].iloc[0])
        for method, group in curves[curves.shots == shots].groupby("method", sort=False):
            color = COLORS.get(method)
            ax.plot(group[time_key], 100 * group["val_accuracy"], "-o", ms=3, color=color, label=f"{method.upper()} (val)")
            row = results[(results.shots == shots) & (results.method == method)].iloc[0]
            ax.errorbar(row["seconds_to_best"], row["accuracy"], yerr=row["ci95"], fmt="*", ms=11, color=color,
                        capsize=3, label=f"{method.upper()} test {row['accuracy']:.1f}±{row['ci95']:.1f}")
        nn = results[(results.shots == shots) & (results.method == BASELINE)]
        if not nn.empty:
            ax.axhline(nn["accuracy"].iloc[0], ls="--", color="grey", label=f"NN pixels {nn['accuracy'].iloc[0]:.1f}")
        ax.axhline(100 / ways, ls=":", color="black", lw=0.8, label="chance")
        ax.set_title(f"{results['dataset'].iloc[0]}: {ways}-way {shots}-shot")
        ax.set_xlabel(f"training time ({'wall-clock' if clock == 'wall' else 'CPU'} seconds)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    paths = [out / "accuracy_vs_time.png", out / "accuracy_vs_time.pdf"]
    for path in paths:
        fig.savefig(path, dpi=150)
    plt.close(fig)
    return paths


def comparison_table(results: pd.DataFrame) -> pd.DataFrame:
    """The printed summary: one row per (shots, method), formatted strings.

    ``vs MTL``: paired accuracy difference to MTL on the same episodes (95% half-width); ``train s``:
    wall-clock training seconds; ``reach s``:
    training time (on the run's clock) to the first checkpoint within 1 point of the run's best
    validation accuracy;
    ``×MTL``: that time over MTL's.
    """
    def fmt(value: float, spec: str) -> str:
        return "" if pd.isna(value) else format(value, spec)

    rows = []
    for _, r in results.iterrows():
        trained = r["method"] != BASELINE
        paired = r["method"] != "mtl" and not pd.isna(r["diff_vs_mtl"])
        rows.append({
            "shots": int(r["shots"]),
            "method": r["method"],
            "acc % (95%)": f"{r['accuracy']:.2f}±{r['ci95']:.2f}",
            "vs MTL": f"{r['diff_vs_mtl']:+.2f}±{r['diff_vs_mtl_ci95']:.2f}" if paired else "",
            "train s": fmt(r["train_seconds"], ".0f") if trained else "",
            "steps": fmt(r["steps"], ".0f") if trained else "",
            "reach s": fmt(r["seconds_to_reach"], ".0f") if trained else "",
            "×MTL": fmt(r["reach_ratio_to_mtl"], ".1f") if trained else "",
            "stop": r["stopped"] if trained else "",
        })
    return pd.DataFrame(rows)
