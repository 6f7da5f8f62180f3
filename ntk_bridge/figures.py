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

__all__ = ["STYLE", "plot_gap_vs_depth", "save", "depth_axis"]

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


def depth_axis(ax, depths) -> None:
    """Log-scaled depth axis with plain integer ticks at powers of two."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    lo, hi = min(depths), max(depths)
    ticks = [t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if lo <= t <= hi] or [lo, hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _band(ax, g, x, column, color, label, marker="o", linestyle="-"):
    q = g.groupby(x)[column].quantile([0.25, 0.5, 0.75]).unstack()
    ax.plot(q.index, q[0.5], marker=marker, linestyle=linestyle, color=color, label=label)
    ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, linewidth=0)


def _gap_panel(ax, d, title):
    styles = ["-", "--", ":", "-."]
    times = sorted(d["inner_time"].unique())
    for method in [m for m in ("anil", "maml", "fomaml") if m in set(d["method"])]:
        for i, s in enumerate(times):
            g = d[(d["method"] == method) & (d["inner_time"] == s)]
            if g.empty:
                continue
            med = g.groupby("depth")["gap_to_mtl_rel"].median()
            slope, lo, hi, _ = fit_power_law(med.index, med.values)
            _band(ax, g, "depth", "gap_to_mtl_rel", COLORS[method],
                  f"{LABELS[method]}, $\\lambda\\tau$={s:g}: slope {slope:.2f} [{lo:.2f}, {hi:.2f}]",
                  linestyle=styles[i % 4])
    ref = d[d["method"] != "mtl"].groupby("depth")["gap_to_mtl_rel"].median()
    if len(ref):
        depths = np.array(sorted(d["depth"].unique()), float)
        c = float(ref.iloc[0] * ref.index[0])
        ax.plot(depths, c / depths, color="k", linewidth=0.8, linestyle=(0, (1, 2)), label="$\\propto 1/L$")
    depth_axis(ax, d["depth"].unique())
    ax.set_yscale("log")
    ax.set_xlabel("depth $L$ (hidden layers)")
    ax.set_ylabel(r"$\|F_{\rm method}-F_{\rm MTL}\| / \|F_{\rm MTL}\|$")
    ax.set_title(title)
    ax.legend(loc="lower left", frameon=False)


DATA_TITLES = {"query": "gap to MTL trained on the queries", "all": "gap to MTL trained on all points"}


def plot_gap_vs_depth(df: pd.DataFrame, path_prefix: str, width=math.inf) -> list[str]:
    """One panel per MTL training set (``mtl_data``): log-log gap to MTL vs depth per method and
    inner time (median, band = interquartile range over test tasks), fitted slope and 95% CI in the
    legend, a 1/L guide. Last panel: test MSE of every method and of the no-transfer baseline vs
    depth, at the smallest inner time."""
    d = ok_rows(df)
    d = d[(d["width"] == width) & d["network"].astype(str).isin(["mean", "ensemble"])]
    datas = [m for m in ("query", "all") if m in set(d["mtl_data"])]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(datas) + 1, figsize=(3.4 * (len(datas) + 1), 3.0), squeeze=False)
        axes = axes[0]
        for ax, m in zip(axes, datas):
            _gap_panel(ax, d[d["mtl_data"] == m], DATA_TITLES[m])
        ax2 = axes[-1]
        times = sorted(d["inner_time"].unique())
        if d["test_mse"].notna().any() and times:
            s0 = times[0]
            g0 = d[d["inner_time"] == s0]
            for method in ("anil", "maml", "fomaml"):
                g = g0[(g0["method"] == method) & (g0["mtl_data"] == datas[0])]
                if not g.empty:
                    _band(ax2, g, "depth", "test_mse", COLORS[method], LABELS[method])
            for i, m in enumerate(datas):
                g = g0[(g0["method"] == "mtl") & (g0["mtl_data"] == m)]
                if not g.empty:
                    _band(ax2, g, "depth", "test_mse", COLORS["mtl"], f"MTL ({m})",
                          linestyle=["-", "-."][i % 2], marker=["o", "s"][i % 2])
            g = g0[(g0["method"] == "baseline") & (g0["mtl_data"] == datas[0])]
            if not g.empty:
                _band(ax2, g, "depth", "test_mse", COLORS["baseline"], LABELS["baseline"], linestyle="--")
            depth_axis(ax2, d["depth"].unique())
            ax2.set_xlabel("depth $L$ (hidden layers)")
            ax2.set_ylabel("test MSE on query sets")
            ax2.set_title(f"test error ($\\lambda\\tau$={s0:g}): real or trivial closeness?")
            ax2.legend(frameon=False)
        else:
            ax2.text(0.5, 0.5, "no test labels", ha="center", transform=ax2.transAxes)
        fig.tight_layout()
        return save(fig, path_prefix)
