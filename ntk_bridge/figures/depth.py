"""Figures of the closed forms against depth and inner time, and of the kernels' degeneracy."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge.figures.style import (BASELINE, COLORS, DATA_TITLES, GBML, GBML_FLOW, LABELS, LINESTYLES, MTL,
                                      STYLE, band, depth_axis, log_y, one_protocol, pyplot, save, summarise)
from ntk_bridge.results import fit_power_law, ok_rows
from ntk_bridge.settings import ALL, QUERY

__all__ = ["gap_vs_depth_table", "plot_gap_vs_depth", "plot_test_error_vs_depth", "gap_vs_inner_time_table",
           "plot_gap_vs_inner_time", "plot_kernel_degeneracy"]


def _closed_form_rows(df: pd.DataFrame, width=math.inf) -> pd.DataFrame:
    d = ok_rows(df)
    return d[(d["width"] == width) & d["network"].astype(str).isin(["mean", "ensemble"])]


# -- gap and test error vs depth ---------------------------------------------------------------

def gap_vs_depth_table(df: pd.DataFrame, width=math.inf) -> pd.DataFrame:
    """Quartiles over test tasks of the gap to MTL and of the test MSE, per method, MTL training
    set, inner time and depth."""
    d = _closed_form_rows(df, width)
    return summarise(d, ["method", "mtl_data", "test_head", "inner_time", "finetune_time", "outer_time", "depth"],
                     ["gap_to_mtl_rel", "test_mse"])


def _gap_panel(ax, t: pd.DataFrame, title: str):
    times = sorted(t["inner_time"].unique())
    for method in [m for m in GBML if m in set(t["method"])]:
        for i, s in enumerate(times):
            g = t[(t["method"] == method) & (t["inner_time"] == s)]
            if g.empty:
                continue
            slope, lo, hi, _ = fit_power_law(g["depth"], g["gap_to_mtl_rel_q50"])
            band(ax, g, "depth", "gap_to_mtl_rel", COLORS[method],
                  f"{LABELS[method]}, λτ={s:g}: slope {slope:.2f} [{lo:.2f}, {hi:.2f}]",
                  linestyle=LINESTYLES[i % 4])
    ref = t[t["method"] != MTL].groupby("depth")["gap_to_mtl_rel_q50"].median()
    if len(ref):
        depths = np.array(ref.index, float)
        ax.plot(depths, float(ref.iloc[0] * ref.index[0]) / depths, color="k", linewidth=0.8,
                linestyle=(0, (1, 2)), label="∝ 1/L")
    depth_axis(ax, t["depth"].unique())
    log_y(ax)
    ax.set_ylabel("‖F(method) − F(MTL)‖ / ‖F(MTL)‖")
    ax.set_title(title)
    ax.legend(loc="lower left", frameon=False)


def _test_error_panel(ax, t: pd.DataFrame):
    times = sorted(t["inner_time"].unique())
    datas = [m for m in (QUERY, ALL) if m in set(t["mtl_data"])]
    if not times or t["test_mse_q50"].isna().all():
        ax.text(0.5, 0.5, "no test labels", ha="center", transform=ax.transAxes)
        return
    s0 = times[0]
    g0 = t[t["inner_time"] == s0]
    for method in GBML:
        g = g0[(g0["method"] == method) & (g0["mtl_data"] == datas[0])]
        if not g.empty:
            band(ax, g, "depth", "test_mse", COLORS[method], LABELS[method])
    for i, m in enumerate(datas):
        g = g0[(g0["method"] == MTL) & (g0["mtl_data"] == m)]
        if not g.empty:
            band(ax, g, "depth", "test_mse", COLORS[MTL], f"{LABELS[MTL]} ({m})", linestyle=["-", "-."][i % 2],
                  marker=["o", "s"][i % 2])
    g = g0[(g0["method"] == BASELINE) & (g0["mtl_data"] == datas[0])]
    if not g.empty:
        band(ax, g, "depth", "test_mse", COLORS[BASELINE], LABELS[BASELINE], linestyle="--")
    depth_axis(ax, t["depth"].unique())
    ax.set_ylabel("test MSE on query sets")
    ax.set_title(f"test error (λτ={s0:g}): real or trivial closeness?")
    ax.legend(frameon=False)


def plot_gap_vs_depth(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """One panel per MTL training set: log-log gap to MTL vs depth per method and inner time
    (median, band = interquartile range over test tasks), fitted slope and 95% CI in the legend,
    a 1/L guide; last panel: test MSE of every method and of the baseline (smallest inner time)."""
    table = one_protocol(table)
    plt = pyplot()
    datas = [m for m in (QUERY, ALL) if m in set(table["mtl_data"])]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(datas) + 1, figsize=(3.4 * (len(datas) + 1), 3.0), squeeze=False)
        for ax, m in zip(axes[0], datas):
            _gap_panel(ax, table[table["mtl_data"] == m], DATA_TITLES[m])
        _test_error_panel(axes[0][-1], table)
        fig.tight_layout()
        return save(fig, path_prefix, table)


def plot_test_error_vs_depth(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """Test MSE of every method and of the no-transfer baseline vs depth (a gap_vs_depth table)."""
    table = one_protocol(table)
    plt = pyplot()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.4, 2.8))
        _test_error_panel(ax, table)
        fig.tight_layout()
        return save(fig, path_prefix, table)


# -- gap vs inner time ---------------------------------------------------------------------------

def gap_vs_inner_time_table(df: pd.DataFrame) -> pd.DataFrame:
    d = _closed_form_rows(df)
    d = d[d["method"].isin(GBML_FLOW)]
    return summarise(d, ["method", "mtl_data", "test_head", "depth", "inner_time"], ["gap_to_mtl_rel"])


def plot_gap_vs_inner_time(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """Gap to MTL vs inner time ``lambda*tau`` at a few depths (the ``lambda*tau`` term)."""
    table = one_protocol(table)
    plt = pyplot()
    depths = sorted(table["depth"].unique())
    cmap = plt.get_cmap("viridis")
    with plt.rc_context(STYLE):
        methods = [m for m in GBML_FLOW if m in set(table["method"])]
        fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 2.9), squeeze=False)
        for ax, method in zip(axes[0], methods):
            for i, L in enumerate(depths):
                for j, m in enumerate(sorted(table["mtl_data"].unique(), reverse=True)):
                    g = table[(table["method"] == method) & (table["depth"] == L) & (table["mtl_data"] == m)]
                    g = g[g["inner_time"] > 0]
                    if not g.empty:
                        band(ax, g, "inner_time", "gap_to_mtl_rel", cmap(i / max(1, len(depths) - 1) * 0.85),
                              f"L={L}, MTL on {m}", linestyle=LINESTYLES[j % 4], marker="os"[j % 2])
            ax.set_xscale("log")
            log_y(ax)
            ax.set_xlabel("inner time λτ (learning rate × steps)")
            ax.set_ylabel("‖F − F(MTL)‖ / ‖F(MTL)‖")
            ax.set_title(f"{LABELS[method]}: gap to MTL vs inner time")
            ax.legend(frameon=False, ncol=1)
        fig.tight_layout()
        return save(fig, path_prefix, table)




# -- kernel degeneracy -----------------------------------------------------------------------------

def plot_kernel_degeneracy(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """Four panels from :func:`ntk_bridge.diagnostics.kernel_degeneracy_table`: ``K/Theta`` on the
    diagonal vs ``1/(L+1)``; the normalised NTK off the diagonal vs its limit 1/4; ``1 - rho`` of
    the readout kernel times ``L^2`` (tends to a constant near ``9 pi^2 / 2``); condition numbers."""
    plt = pyplot()
    t = table.sort_values("depth")
    L = t["depth"].to_numpy(float)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(1, 4, figsize=(10.0, 2.5))
        ax[0].plot(L, t["k_over_theta_diag"], "o", color=COLORS[registry.ANIL.name], label="K(x,x) / Θ(x,x)")
        ax[0].plot(L, 1 / (L + 1), "-", color="k", linewidth=0.8, label="1/(L+1)")
        log_y(ax[0])
        ax[0].set_title("readout share of the NTK")
        ax[1].plot(L, t["ntk_offdiag_normalised_mean"], "o-", color=COLORS[registry.MAML.name], label="mean off-diagonal")
        ax[1].fill_between(L, t["ntk_offdiag_normalised_min"], t["ntk_offdiag_normalised_max"],
                           color=COLORS[registry.MAML.name], alpha=0.15, linewidth=0, label="min..max")
        ax[1].axhline(0.25, color="k", linewidth=0.8, linestyle="--", label="1/4")
        ax[1].set_title("Θ(x,x′) / Θ(x,x)")
        ax[2].plot(L, t["one_minus_rho_times_L2"], "o-", color=COLORS[MTL], label="(1 − ρ_K) L² (median)")
        ax[2].axhline(9 * math.pi ** 2 / 2, color="k", linewidth=0.8, linestyle="--", label="9π²/2")
        ax[2].set_title("readout correlation ρ_K → 1")
        ax[3].plot(L, t["cond_support_K_median"], "o-", color=COLORS[registry.ANIL.name], label="K(X′,X′) (ANIL inner)")
        ax[3].plot(L, t["cond_support_theta_median"], "s-", color=COLORS[registry.MAML.name], label="Θ(X′,X′) (MAML inner)")
        ax[3].plot(L, L ** 2, color="k", linewidth=0.8, linestyle=":", label="L²")
        log_y(ax[3])
        ax[3].set_title("condition number of support kernels")
        for a in ax:
            depth_axis(a, L)
            a.legend(frameon=False)
        fig.tight_layout()
        return save(fig, path_prefix, table)

