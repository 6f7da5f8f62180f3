"""Stored tables -> the accuracy-vs-cost figure and the printed tables.

The figure is drawn from a run folder's CSV files alone (``results.csv``, ``summary.csv``,
``curves.csv``; :func:`ntk_bridge.fewshot.experiment.run_fewshot` writes them). Method labels and
colours come from :data:`ntk_bridge.fewshot.methods.METHODS`; the figure is saved as every figure of
the house is (:func:`ntk_bridge.figures.style.save`: PNG and PDF, each written atomically).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ntk_bridge.fewshot.evaluate import BASELINE
from ntk_bridge.fewshot.methods import METHODS
from ntk_bridge.figures.style import pyplot, save

#: File name (without suffix) of the figure in a run folder.
FIGURE = "accuracy_vs_time"


def _style(method: str) -> tuple[str, str | None]:
    spec = METHODS.get(method)
    return (spec.label, spec.color) if spec else (method, None)


def plot_accuracy_vs_cost(out: Path | str, name: str = FIGURE) -> list[Path]:
    """Validation accuracy at each checkpoint against training CPU-seconds (top row) and against
    outer steps (bottom row), one column per shot setting.

    Thin lines: one per training seed. Stars with error bars (top row): mean test accuracy over
    seeds with its 95% t-interval over seeds, at the mean CPU-seconds to reach 95% of the final
    accuracy. Dash-dotted: the common target (lowest final accuracy of the shot setting); dashed grey:
    the raw-pixel nearest-neighbour baseline; dotted: chance. Writes ``name.png`` and ``name.pdf``.
    """
    out = Path(out)
    results = pd.read_csv(out / "results.csv")
    summary = pd.read_csv(out / "summary.csv")
    curves = pd.read_csv(out / "curves.csv")
    shot_values = sorted(summary["shots"].unique())
    ways = int(results["ways"].iloc[0])
    plt = pyplot()
    fig, axes = plt.subplots(2, len(shot_values), figsize=(5.6 * len(shot_values), 7.6), squeeze=False)
    for col, shots in enumerate(shot_values):
        top, bottom = axes[0, col], axes[1, col]
        for method, group in curves[curves.shots == shots].groupby("method", sort=False):
            label, color = _style(method)
            for i, (_, run) in enumerate(group.groupby("seed")):
                run = run.sort_values("step")
                kw = dict(color=color, lw=1.0, alpha=0.8)
                top.plot(run["train_cpu_seconds"], 100 * run["val_accuracy"], "-", **kw)
                bottom.plot(run["step"], 100 * run["val_accuracy"], "-", label=label if i == 0 else None, **kw)
            row = summary[(summary.shots == shots) & (summary.method == method)].iloc[0]
            over_seeds = not pd.isna(row["accuracy_ci95"])
            err = row["accuracy_ci95"] if over_seeds else row["episode_ci95"]
            top.errorbar(row["cpu_s_to_95pct"], row["accuracy"], yerr=err, fmt="*", ms=11, color=color, capsize=3,
                         label=f"{label} test {row['accuracy']:.1f}±{err:.1f}")
        target = summary.loc[summary.shots == shots, "target_accuracy"].iloc[0]
        nn = results[(results.shots == shots) & (results.method == BASELINE)]
        for ax in (top, bottom):
            ax.axhline(target, ls="-.", color="black", lw=0.8, label=f"target {target:.1f}" if ax is bottom else None)
            if not nn.empty:
                ax.axhline(nn["accuracy"].mean(), ls="--", color="grey",
                           label=f"NN pixels {nn['accuracy'].mean():.1f}" if ax is bottom else None)
            ax.axhline(100 / ways, ls=":", color="black", lw=0.8, label="chance" if ax is bottom else None)
            ax.set_ylabel("validation accuracy (%)")
            ax.grid(alpha=0.3)
        seeds = results.loc[results.method != BASELINE, "seed"].nunique()
        interval = "95% interval over seeds" if seeds > 1 else "95% interval over episodes"
        top.set_title(f"{results['dataset'].iloc[0]}: {ways}-way {shots}-shot, {seeds} seed{'s' * (seeds > 1)}\n"
                      f"stars: test accuracy ({interval}) at the CPU-s to 95% of it", fontsize=9)
        top.set_xlabel("training CPU-seconds")
        bottom.set_xlabel("outer steps")
        top.legend(fontsize=7, loc="lower right")
        bottom.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return [Path(p) for p in save(fig, str(out / name), dpi=130)]


def _fmt(value: float, spec: str, ci: float | None = None) -> str:
    if pd.isna(value):
        return ""
    text = format(value, spec)
    return text if ci is None or pd.isna(ci) else f"{text}±{format(ci, spec.lstrip('+'))}"


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The printed summary: one row per (shots, method), formatted strings (intervals over seeds)."""
    rows = []
    for _, r in summary.iterrows():
        rows.append({
            "shots": int(r["shots"]), "method": _style(r["method"])[0], "seeds": int(r["seeds"]),
            "acc %": _fmt(r["accuracy"], ".2f", r["accuracy_ci95"]),
            "vs MTL": "" if r["method"] == "mtl" else _fmt(r["diff_vs_mtl"], "+.2f", r["diff_vs_mtl_ci95"]),
            "CPU-s to 95%": _fmt(r["cpu_s_to_95pct"], ".0f", r["cpu_s_to_95pct_ci95"]),
            "CPU-s to target": _fmt(r["cpu_s_to_target"], ".0f", r["cpu_s_to_target_ci95"]),
            "steps": _fmt(r["outer_steps"], ".0f"),
            "CPU-s/step": _fmt(r["cpu_s_per_step"], ".3f"),
            "×MTL/step": _fmt(r["step_cost_vs_mtl"], ".2f"),
            "status": r["statuses"],
        })
    return pd.DataFrame(rows)
