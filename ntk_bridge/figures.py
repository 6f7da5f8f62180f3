"""Figures, drawn only from stored results tables (``results.csv`` and the CSVs in ``figures/``).

One fixed style (:data:`STYLE`), labelled axes, sized for a paper column. Rows whose ``status`` is
not ``ok`` are never plotted; the caller reports them.
"""
from __future__ import annotations

import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ntk_bridge.results import fit_power_law, ok_rows  # noqa: E402

__all__ = ["STYLE", "plot_gap_vs_depth", "save"]

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
COLORS = {"mtl": "#1b9e77", "anil": "#d95f02", "maml": "#7570b3", "fomaml": "#e7298a", "baseline": "#444444"}
LABELS = {"mtl": "MTL", "anil": "ANIL", "maml": "MAML", "fomaml": "FO-MAML", "baseline": "no-transfer baseline"}


def save(fig, path_prefix: str) -> list[str]:
    """Save ``fig`` as PNG and PDF next to each other; returns the paths."""
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    paths = [f"{path_prefix}.png", f"{path_prefix}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", metadata={"CreationDate": None} if p.endswith(".pdf") else None)
    plt.close(fig)
    return paths


def _band(ax, g, x, column, color, label, marker="o", linestyle="-"):
    q = g.groupby(x)[column].quantile([0.25, 0.5, 0.75]).unstack()
    ax.plot(q.index, q[0.5], marker=marker, linestyle=linestyle, color=color, label=label)
    ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, linewidth=0)


def plot_gap_vs_depth(df: pd.DataFrame, path_prefix: str, width=math.inf) -> list[str]:
    """Left: log-log gap to MTL vs depth per method and inner time (median, band = interquartile
    range over test tasks), fitted slope in the legend, a 1/L guide. Right: test MSE of every
    method and of the no-transfer baseline vs depth (first inner time per line style)."""
    d = ok_rows(df)
    d = d[(d["width"] == width) & d["network"].astype(str).isin(["mean", "ensemble"])]
    with plt.rc_context(STYLE):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.0, 2.8))
        styles = ["-", "--", ":", "-."]
        times = sorted(d["inner_time"].unique())
        for method in [m for m in ("anil", "maml", "fomaml") if m in set(d["method"])]:
            for i, s in enumerate(times):
                g = d[(d["method"] == method) & (d["inner_time"] == s)]
                if g.empty:
                    continue
                med = g.groupby("depth")["gap_to_mtl_rel"].median()
                slope, lo, hi, _ = fit_power_law(med.index, med.values)
                _band(ax1, g, "depth", "gap_to_mtl_rel", COLORS[method],
                      f"{LABELS[method]}, $\\lambda\\tau$={s:g} (slope {slope:.2f} [{lo:.2f}, {hi:.2f}])",
                      linestyle=styles[i % 4])
        if len(d):
            depths = np.array(sorted(d["depth"].unique()), float)
            ref = d[d["method"] != "mtl"].groupby("depth")["gap_to_mtl_rel"].median()
            if len(ref):
                c = float(ref.iloc[0] * ref.index[0])
                ax1.plot(depths, c / depths, color="k", linewidth=0.8, linestyle=(0, (1, 2)), label="$\\propto 1/L$")
        ax1.set_xscale("log")
        ax1.set_yscale("log")
        ax1.set_xlabel("depth $L$ (hidden layers)")
        ax1.set_ylabel(r"$\|F_{\rm method}-F_{\rm MTL}\| / \|F_{\rm MTL}\|$")
        ax1.set_title("prediction gap to MTL on unseen tasks")
        ax1.legend(loc="lower left", frameon=False)
        if d["test_mse"].notna().any():
            s0 = times[0] if times else None
            for method in [m for m in ("mtl", "anil", "maml", "fomaml", "baseline") if m in set(d["method"])]:
                g = d[(d["method"] == method) & ((d["inner_time"] == s0) | (method in ("mtl", "baseline")))]
                g = g[g["inner_time"] == s0]
                if not g.empty:
                    _band(ax2, g, "depth", "test_mse", COLORS[method], LABELS[method],
                          linestyle="--" if method == "baseline" else "-")
            ax2.set_xscale("log")
            ax2.set_xlabel("depth $L$ (hidden layers)")
            ax2.set_ylabel("test MSE on query sets")
            ax2.set_title(f"test error ($\\lambda\\tau$={s0:g}); is closeness trivial?")
            ax2.legend(frameon=False)
        else:
            ax2.text(0.5, 0.5, "no test labels", ha="center", transform=ax2.transAxes)
        fig.tight_layout()
        return save(fig, path_prefix)
