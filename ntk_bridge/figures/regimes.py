"""Finite ReLU networks in the NTK and the muP parameterisation against width (docs/feature-learning.md):
the GBML-MTL gap of the trained networks, their kernel movement, their distance to the NTK closed form and
their test error, beside the NTK closed form's (``width inf`` rows of the same sweeps)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_bridge.figures.style import STYLE, log_y, pyplot, save, summarise
from ntk_bridge.results import ok_rows, width_exponents

__all__ = ["finite_regimes_table", "plot_finite_regimes_vs_width"]

#: ``(column, panel title)`` of the figure's panels, left to right.
PANELS = (("gap_to_mtl_rel", "gap to MTL"), ("kernel_movement", "kernel movement"),
          ("dist_to_infinite_rel", "distance to the NTK closed form"), ("test_mse", "test MSE"))
#: ``param -> (line style, marker)``.
PARAMS = {"ntk": ("-", "o"), "mup": ("--", "s")}


def finite_regimes_table(frames: dict[str, pd.DataFrame], method: str = "anil") -> pd.DataFrame:
    """``{param: results rows}`` -> quartiles over networks and test tasks (individual networks, not the
    ensemble) of every :data:`PANELS` column for ``method``, per parameterisation, depth and finite width
    (``source = 'finite'``), and the NTK closed form's (``source = 'ntk_limit'``, the sweep's ``width inf``
    rows, width recorded as ``inf``); with the fitted width exponents of kernel movement and of the distance to
    the NTK closed form over individual networks (:func:`ntk_bridge.results.width_exponents`) on the finite
    rows. muP networks have no NTK closed form of their own here (their initial tangent kernel is not the NTK
    limit's): their ``dist_to_infinite_rel`` is empty."""
    cols = [c for c, _ in PANELS]
    parts = []
    for param, df in frames.items():
        d = ok_rows(df)
        d = d[d["method"] == method].assign(w=d["width"].astype(float))
        fin = d[np.isfinite(d["w"]) & ~d["network"].astype(str).isin(["ensemble", "mean"])]
        lim = d[~np.isfinite(d["w"])]
        t = summarise(fin, ["depth", "w"], cols).assign(source="finite")
        for metric in ("kernel_movement", "dist_to_infinite_rel"):
            if fin[metric].notna().any():
                fit = width_exponents(fin, metric=metric, by=("depth",))
                t = t.merge(fit[["depth", "exponent", "ci95_low", "ci95_high"]].rename(columns={
                    "exponent": f"{metric}_exponent", "ci95_low": f"{metric}_ci95_low",
                    "ci95_high": f"{metric}_ci95_high"}), on="depth", how="left")
        parts += [t, summarise(lim, ["depth", "w"], cols).assign(source="ntk_limit")]
        parts[-2:] = [p.assign(param=param, method=method) for p in parts[-2:]]
    table = pd.concat(parts, ignore_index=True).rename(columns={"w": "width"})
    first = ["param", "source", "method", "depth", "width"]
    return table[first + [c for c in table.columns if c not in first]]


def plot_finite_regimes_vs_width(table: pd.DataFrame, path_prefix: str, title: str = "") -> list[str]:
    """One panel per :data:`PANELS` column against width (log-log except the gap): a colour per depth, NTK
    parameterisation solid with circles, muP dashed with squares (median over networks and test tasks,
    interquartile band), the NTK closed form of each depth as a dotted horizontal line."""
    plt = pyplot()
    from matplotlib import colormaps

    depths = sorted(table["depth"].unique())
    cmap = colormaps["viridis"]
    colour = {L: cmap(i / max(1, len(depths) - 1) * 0.85) for i, L in enumerate(depths)}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(PANELS), figsize=(2.9 * len(PANELS), 3.0))
        for ax, (col, name) in zip(axes, PANELS):
            for L in depths:
                for param, (ls, marker) in PARAMS.items():
                    g = table[(table["param"] == param) & (table["depth"] == L) & (table["source"] == "finite")]
                    g = g[np.isfinite(g[f"{col}_q50"].astype(float))].sort_values("width")
                    if g.empty:
                        continue
                    ax.plot(g["width"], g[f"{col}_q50"], linestyle=ls, marker=marker, markersize=3,
                            color=colour[L], label=f"L={L}, {param}")
                    ax.fill_between(g["width"].astype(float), g[f"{col}_q25"].astype(float),
                                    g[f"{col}_q75"].astype(float), color=colour[L], alpha=0.1, linewidth=0)
                lim = table[(table["depth"] == L) & (table["source"] == "ntk_limit")][f"{col}_q50"].astype(float)
                if col != "dist_to_infinite_rel" and len(lim) and np.isfinite(lim.iloc[0]):
                    ax.axhline(lim.iloc[0], color=colour[L], linestyle=":", linewidth=1.0)
            ax.set_xscale("log", base=2)
            if col != "gap_to_mtl_rel":
                log_y(ax)
            ax.set_xlabel("width")
            ax.set_title(name)
        axes[0].set_ylabel(f"{title}: median over networks and test tasks" if title else "median")
        axes[1].legend(loc="best", ncol=2, fontsize="x-small")
        fig.tight_layout()
    return save(fig, path_prefix, table)
