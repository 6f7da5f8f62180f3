"""Figures of finite networks: distance to the infinite-width predictor against width, and the
finite-width gap to MTL against depth over the infinite-width gap."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_bridge.figures.style import (COLORS, GBML, LABELS, MTL, STYLE, band, depth_axis, log_y, one_protocol, pyplot,
                                      save, summarise)
from ntk_bridge.results import ok_rows, width_exponents

__all__ = ["distance_vs_width_table", "plot_distance_vs_width", "finite_gap_vs_depth_table",
           "plot_finite_gap_vs_depth"]


# -- finite width ----------------------------------------------------------------------------------

def distance_vs_width_table(df: pd.DataFrame) -> pd.DataFrame:
    """Quartiles over test tasks and networks of the distance to the infinite-width predictor, per
    method, depth and width (finite widths only; individual networks, not the ensemble mean), and
    of the ensemble mean's distance; with the fitted width exponent of individual networks
    (:func:`ntk_bridge.results.width_exponents`) and its 95% CI (one test-head protocol)."""
    d = one_protocol(ok_rows(df))
    d = d[np.isfinite(d["width"].astype(float))]
    single = d[~d["network"].astype(str).isin(["ensemble", "mean"])].assign(kind="network")
    ens = d[d["network"].astype(str) == "ensemble"].assign(kind="ensemble")
    parts = [summarise(x, ["kind", "method", "depth", "width"], ["dist_to_infinite_rel", "dist_to_linearized_rel"])
             for x in (single, ens) if len(x)]
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    # the exponent over individual networks (one point per network and width: its mean over test
    # tasks), as results.width_exponents fits it; repeated on the group's rows, NaN for ensembles
    fits = width_exponents(single, by=("method", "depth")).rename(columns={
        "exponent": "exponent", "ci95_low": "exponent_ci95_low", "ci95_high": "exponent_ci95_high",
        "n": "exponent_n"}).assign(kind="network")
    return table.merge(fits, on=["kind", "method", "depth"], how="left")


def plot_distance_vs_width(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """Log-log distance to the infinite-width predictor vs width per method (one panel per depth),
    with the fitted exponent over individual networks and its 95% CI (theory: about -1/2)."""
    plt = pyplot()
    depths = sorted(table["depth"].unique())
    with plt.rc_context(STYLE):
        cols = min(2, len(depths))
        rows = -(-len(depths) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.7 * cols + 0.4, 3.7 * rows), squeeze=False)
        for ax in axes.ravel()[len(depths):]:
            ax.set_visible(False)
        for ax, L in zip(axes.ravel(), depths):
            for method in [m for m in (MTL,) + GBML if m in set(table["method"])]:
                for kind, ls in (("network", "-"), ("ensemble", ":")):
                    g = table[(table["depth"] == L) & (table["method"] == method) & (table["kind"] == kind)]
                    if g.empty:
                        continue
                    if kind == "network":
                        slope, lo, hi = g[["exponent", "exponent_ci95_low", "exponent_ci95_high"]].iloc[0]
                        label = f"{LABELS[method]}: {slope:.2f} [{lo:.2f}, {hi:.2f}]"
                    else:
                        label = f"{LABELS[method]} ensemble"
                    band(ax, g, "width", "dist_to_infinite_rel", COLORS[method], label, linestyle=ls)
            w = np.array(sorted(table["width"].unique()), float)
            ref = table[(table["depth"] == L) & (table["kind"] == "network")]
            if len(ref):
                c = float(ref.sort_values("width")["dist_to_infinite_rel_q50"].iloc[0]) * math.sqrt(w[0])
                ax.plot(w, c / np.sqrt(w), color="k", linewidth=0.8, linestyle=(0, (1, 2)), label="∝ h^(−1/2)")
            depth_axis(ax, w, "width h")
            log_y(ax)
            ax.set_ylabel("‖F(h) − F(∞)‖ / ‖F(∞)‖")
            ax.set_title(f"depth {L}: finite vs infinite width")
            ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=2)
        fig.tight_layout()
        return save(fig, path_prefix, table)


def finite_gap_vs_depth_table(df: pd.DataFrame) -> pd.DataFrame:
    """The finite-width gap to MTL against depth, per width, beside the infinite-width gap under the
    same discrete schedule (``infinite_gap_to_mtl_rel``).

    Quartiles over networks (not the ensemble) and test tasks, per method, MTL training set, inner
    time, width and depth; the infinite-width quartiles are over test tasks (and, for raw networks,
    whose closed forms use each network's own ``f0``, over networks).
    """
    d = ok_rows(df)
    d = d[np.isfinite(d["width"].astype(float)) & ~d["network"].astype(str).isin(["ensemble", "mean"])]
    d = d[d["method"] != MTL]
    if d.empty:
        return pd.DataFrame()
    by = ["method", "mtl_data", "test_head", "inner_time", "finetune_time", "outer_time", "depth"]
    finite = summarise(d, by + ["width"], ["gap_to_mtl_rel"])
    # centred networks share one closed form (the mean predictor): one value per test task; raw
    # networks each have their own (full-f0 form with the network's f0): every network counts
    centred = d["mode"].astype(str) == "centred"
    inf = pd.concat([d[centred].drop_duplicates(by + ["test_task"]), d[~centred]])
    inf = summarise(inf, by, ["infinite_gap_to_mtl_rel"])
    return finite.merge(inf.drop(columns="n"), on=by, how="left")


def plot_finite_gap_vs_depth(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """Finite-width gap to MTL vs depth, one line per width (median over networks and test tasks),
    drawn over the infinite-width closed forms' gap under the same discrete schedule (black): one
    panel per method and (inner time, MTL training set)."""
    table = one_protocol(table)
    plt = pyplot()
    combos = table[["inner_time", "mtl_data"]].drop_duplicates().sort_values(["inner_time", "mtl_data"])
    methods = [m for m in GBML if m in set(table["method"])]
    widths = sorted(table["width"].unique())
    shades = plt.get_cmap("viridis")(np.linspace(0.15, 0.85, max(len(widths), 1)))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(combos), len(methods), squeeze=False,
                                 figsize=(2.9 * len(methods) + 0.4, 2.5 * len(combos) + 0.2))
        for row, (_, combo) in enumerate(combos.iterrows()):
            for col, method in enumerate(methods):
                ax = axes[row][col]
                t = table[(table["method"] == method) & (table["inner_time"] == combo["inner_time"])
                          & (table["mtl_data"] == combo["mtl_data"])]
                for w, shade in zip(widths, shades):
                    g = t[t["width"] == w].sort_values("depth")
                    if g.empty:
                        continue
                    if w == widths[-1]:  # quartile band for the widest networks only (readability)
                        band(ax, g, "depth", "gap_to_mtl_rel", shade, f"width {int(w)} (IQR)", marker="o")
                    else:
                        ax.plot(g["depth"], g["gap_to_mtl_rel_q50"], marker="o", color=shade, linewidth=0.9,
                                label=f"width {int(w)}")
                inf = t.drop_duplicates("depth").sort_values("depth")
                if len(inf):
                    ax.plot(inf["depth"], inf["infinite_gap_to_mtl_rel_q50"], color="k", marker="s",
                            linewidth=1.4, label="infinite width, same steps (IQR)")
                    ax.fill_between(inf["depth"], inf["infinite_gap_to_mtl_rel_q25"],
                                    inf["infinite_gap_to_mtl_rel_q75"], color="k", alpha=0.1, linewidth=0)
                depth_axis(ax, t["depth"].unique() if len(t) else [1, 2])
                log_y(ax)
                ax.set_ylabel(f"‖F({LABELS[method]}) − F(MTL)‖ / ‖F(MTL)‖")
                ax.set_title(f"{LABELS[method]}, λτ={combo['inner_time']:g}, "
                             f"MTL on {combo['mtl_data']}")
                ax.legend(frameon=False)
        fig.tight_layout()
        return save(fig, path_prefix, table)


