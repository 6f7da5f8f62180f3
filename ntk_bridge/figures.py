"""Figures, drawn only from stored tables.

Each figure has a ``*_table`` function that turns tidy results (``results.csv`` rows) into the small
table that is actually drawn (saved as the figure's CSV), and a ``plot_*`` function that draws from
that table alone. One fixed style (:data:`STYLE`), labelled axes, sized for a paper column. Rows
whose ``status`` is not ``ok`` never reach a table; the caller reports them.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from ntk_bridge.results import fit_power_law, ok_rows, width_exponents

__all__ = [
    "STYLE", "save", "table_csv", "depth_axis", "log_y", "summarise",
    "gap_vs_depth_table", "plot_gap_vs_depth", "plot_test_error_vs_depth",
    "gap_vs_inner_time_table", "plot_gap_vs_inner_time",
    "distance_vs_width_table", "plot_distance_vs_width",
    "finite_gap_vs_depth_table", "plot_finite_gap_vs_depth",
    "plot_kernel_degeneracy",
]

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
DATA_TITLES = {"query": "gap to MTL trained on the queries", "all": "gap to MTL trained on all points"}
LINESTYLES = ["-", "--", ":", "-."]


def _pyplot():
    """``matplotlib.pyplot`` on the Agg backend, imported when a figure is drawn (tables need none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def table_csv(table: pd.DataFrame) -> str:
    """A figure's table as the CSV text saved beside it."""
    return table.to_csv(index=False, float_format="%.6g")


def save(fig, path_prefix: str, table: pd.DataFrame | None = None) -> list[str]:
    """Save ``fig`` as PNG and PDF (and ``table`` as CSV) under ``path_prefix``, each file written
    atomically; returns the paths."""
    plt = _pyplot()
    import io

    from ntk_bridge.runs import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    paths = [f"{path_prefix}.png", f"{path_prefix}.pdf"]
    for p in paths:
        buf = io.BytesIO()
        fig.savefig(buf, format=p.rsplit(".", 1)[1], bbox_inches="tight",
                    metadata={"CreationDate": None} if p.endswith(".pdf") else None)
        atomic_write(p, buf.getvalue())
    plt.close(fig)
    if table is not None:
        atomic_write(f"{path_prefix}.csv", table_csv(table))
        paths.append(f"{path_prefix}.csv")
    return paths


def log_y(ax) -> None:
    """Log-scaled y axis with plain-number tick labels (``0.02``, not ``2 x 10^-2``): easier to read,
    and drawn without the mathtext parser, which is most of a figure's drawing time."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(plain)


def depth_axis(ax, values, label: str = "depth $L$ (hidden layers)") -> None:
    """Log-scaled axis with plain integer ticks at powers of two."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    values = sorted(set(float(v) for v in values))
    lo, hi = values[0], values[-1]
    if len(values) <= 8:  # few values: a tick at each (depths 1, 2, 3, 4)
        ticks = values
    else:
        ticks = [t for t in 2 ** np.arange(0, 16) if lo <= t <= hi] or [lo, hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def summarise(df: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Quartiles ``<col>_q25/_q50/_q75`` of ``columns`` over the rows of each ``by`` group, and ``n``."""
    g = df.groupby(by, dropna=False)
    parts = {}
    for c in columns:
        q = g[c].quantile([0.25, 0.5, 0.75]).unstack()
        q.columns = [f"{c}_q25", f"{c}_q50", f"{c}_q75"]
        parts[c] = q
    out = pd.concat(parts.values(), axis=1)
    out["n"] = g.size()
    return out.reset_index()


def _band(ax, t: pd.DataFrame, x: str, col: str, color, label, marker="o", linestyle="-"):
    t = t.sort_values(x)
    ax.plot(t[x], t[f"{col}_q50"], marker=marker, linestyle=linestyle, color=color, label=label)
    ax.fill_between(t[x], t[f"{col}_q25"], t[f"{col}_q75"], color=color, alpha=0.15, linewidth=0)


def _closed_form_rows(df: pd.DataFrame, width=math.inf) -> pd.DataFrame:
    d = ok_rows(df)
    return d[(d["width"] == width) & d["network"].astype(str).isin(["mean", "ensemble"])]


# -- gap and test error vs depth ---------------------------------------------------------------

def gap_vs_depth_table(df: pd.DataFrame, width=math.inf) -> pd.DataFrame:
    """Quartiles over test tasks of the gap to MTL and of the test MSE, per method, MTL training
    set, inner time and depth."""
    d = _closed_form_rows(df, width)
    return summarise(d, ["method", "mtl_data", "inner_time", "finetune_time", "outer_time", "depth"],
                     ["gap_to_mtl_rel", "test_mse"])


def _gap_panel(ax, t: pd.DataFrame, title: str):
    times = sorted(t["inner_time"].unique())
    for method in [m for m in ("anil", "maml", "fomaml") if m in set(t["method"])]:
        for i, s in enumerate(times):
            g = t[(t["method"] == method) & (t["inner_time"] == s)]
            if g.empty:
                continue
            slope, lo, hi, _ = fit_power_law(g["depth"], g["gap_to_mtl_rel_q50"])
            _band(ax, g, "depth", "gap_to_mtl_rel", COLORS[method],
                  f"{LABELS[method]}, $\\lambda\\tau$={s:g}: slope {slope:.2f} [{lo:.2f}, {hi:.2f}]",
                  linestyle=LINESTYLES[i % 4])
    ref = t[t["method"] != "mtl"].groupby("depth")["gap_to_mtl_rel_q50"].median()
    if len(ref):
        depths = np.array(ref.index, float)
        ax.plot(depths, float(ref.iloc[0] * ref.index[0]) / depths, color="k", linewidth=0.8,
                linestyle=(0, (1, 2)), label="$\\propto 1/L$")
    depth_axis(ax, t["depth"].unique())
    log_y(ax)
    ax.set_ylabel(r"$\|F_{\rm method}-F_{\rm MTL}\| / \|F_{\rm MTL}\|$")
    ax.set_title(title)
    ax.legend(loc="lower left", frameon=False)


def _test_error_panel(ax, t: pd.DataFrame):
    times = sorted(t["inner_time"].unique())
    datas = [m for m in ("query", "all") if m in set(t["mtl_data"])]
    if not times or t["test_mse_q50"].isna().all():
        ax.text(0.5, 0.5, "no test labels", ha="center", transform=ax.transAxes)
        return
    s0 = times[0]
    g0 = t[t["inner_time"] == s0]
    for method in ("anil", "maml", "fomaml"):
        g = g0[(g0["method"] == method) & (g0["mtl_data"] == datas[0])]
        if not g.empty:
            _band(ax, g, "depth", "test_mse", COLORS[method], LABELS[method])
    for i, m in enumerate(datas):
        g = g0[(g0["method"] == "mtl") & (g0["mtl_data"] == m)]
        if not g.empty:
            _band(ax, g, "depth", "test_mse", COLORS["mtl"], f"MTL ({m})", linestyle=["-", "-."][i % 2],
                  marker=["o", "s"][i % 2])
    g = g0[(g0["method"] == "baseline") & (g0["mtl_data"] == datas[0])]
    if not g.empty:
        _band(ax, g, "depth", "test_mse", COLORS["baseline"], LABELS["baseline"], linestyle="--")
    depth_axis(ax, t["depth"].unique())
    ax.set_ylabel("test MSE on query sets")
    ax.set_title(f"test error ($\\lambda\\tau$={s0:g}): real or trivial closeness?")
    ax.legend(frameon=False)


def plot_gap_vs_depth(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """One panel per MTL training set: log-log gap to MTL vs depth per method and inner time
    (median, band = interquartile range over test tasks), fitted slope and 95% CI in the legend,
    a 1/L guide; last panel: test MSE of every method and of the baseline (smallest inner time)."""
    plt = _pyplot()
    datas = [m for m in ("query", "all") if m in set(table["mtl_data"])]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(datas) + 1, figsize=(3.4 * (len(datas) + 1), 3.0), squeeze=False)
        for ax, m in zip(axes[0], datas):
            _gap_panel(ax, table[table["mtl_data"] == m], DATA_TITLES[m])
        _test_error_panel(axes[0][-1], table)
        fig.tight_layout()
        return save(fig, path_prefix, table)


def plot_test_error_vs_depth(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """Test MSE of every method and of the no-transfer baseline vs depth (a gap_vs_depth table)."""
    plt = _pyplot()
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.4, 2.8))
        _test_error_panel(ax, table)
        fig.tight_layout()
        return save(fig, path_prefix, table)


# -- gap vs inner time ---------------------------------------------------------------------------

def gap_vs_inner_time_table(df: pd.DataFrame) -> pd.DataFrame:
    d = _closed_form_rows(df)
    d = d[d["method"].isin(["anil", "maml"])]
    return summarise(d, ["method", "mtl_data", "depth", "inner_time"], ["gap_to_mtl_rel"])


def plot_gap_vs_inner_time(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """Gap to MTL vs inner time ``lambda*tau`` at a few depths (the ``lambda*tau`` term)."""
    plt = _pyplot()
    depths = sorted(table["depth"].unique())
    cmap = plt.get_cmap("viridis")
    with plt.rc_context(STYLE):
        methods = [m for m in ("anil", "maml") if m in set(table["method"])]
        fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 2.9), squeeze=False)
        for ax, method in zip(axes[0], methods):
            for i, L in enumerate(depths):
                for j, m in enumerate(sorted(table["mtl_data"].unique(), reverse=True)):
                    g = table[(table["method"] == method) & (table["depth"] == L) & (table["mtl_data"] == m)]
                    g = g[g["inner_time"] > 0]
                    if not g.empty:
                        _band(ax, g, "inner_time", "gap_to_mtl_rel", cmap(i / max(1, len(depths) - 1) * 0.85),
                              f"L={L}, MTL on {m}", linestyle=LINESTYLES[j % 4], marker="os"[j % 2])
            ax.set_xscale("log")
            log_y(ax)
            ax.set_xlabel(r"inner time $\lambda\tau$ (learning rate $\times$ steps)")
            ax.set_ylabel(r"$\|F-F_{\rm MTL}\| / \|F_{\rm MTL}\|$")
            ax.set_title(f"{LABELS[method]}: gap to MTL vs inner time")
            ax.legend(frameon=False, ncol=1)
        fig.tight_layout()
        return save(fig, path_prefix, table)


# -- finite width ----------------------------------------------------------------------------------

def distance_vs_width_table(df: pd.DataFrame) -> pd.DataFrame:
    """Quartiles over test tasks and networks of the distance to the infinite-width predictor, per
    method, depth and width (finite widths only; individual networks, not the ensemble mean), and
    of the ensemble mean's distance; with the fitted width exponent of individual networks
    (:func:`ntk_bridge.results.width_exponents`) and its 95% CI."""
    d = ok_rows(df)
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
    plt = _pyplot()
    depths = sorted(table["depth"].unique())
    with plt.rc_context(STYLE):
        cols = min(2, len(depths))
        rows = -(-len(depths) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.7 * cols + 0.4, 3.7 * rows), squeeze=False)
        for ax in axes.ravel()[len(depths):]:
            ax.set_visible(False)
        for ax, L in zip(axes.ravel(), depths):
            for method in [m for m in ("mtl", "anil", "maml", "fomaml") if m in set(table["method"])]:
                for kind, ls in (("network", "-"), ("ensemble", ":")):
                    g = table[(table["depth"] == L) & (table["method"] == method) & (table["kind"] == kind)]
                    if g.empty:
                        continue
                    if kind == "network":
                        slope, lo, hi = g[["exponent", "exponent_ci95_low", "exponent_ci95_high"]].iloc[0]
                        label = f"{LABELS[method]}: {slope:.2f} [{lo:.2f}, {hi:.2f}]"
                    else:
                        label = f"{LABELS[method]} ensemble"
                    _band(ax, g, "width", "dist_to_infinite_rel", COLORS[method], label, linestyle=ls)
            w = np.array(sorted(table["width"].unique()), float)
            ref = table[(table["depth"] == L) & (table["kind"] == "network")]
            if len(ref):
                c = float(ref.sort_values("width")["dist_to_infinite_rel_q50"].iloc[0]) * math.sqrt(w[0])
                ax.plot(w, c / np.sqrt(w), color="k", linewidth=0.8, linestyle=(0, (1, 2)), label=r"$\propto h^{-1/2}$")
            depth_axis(ax, w, "width $h$")
            log_y(ax)
            ax.set_ylabel(r"$\|F_h - F_\infty\| / \|F_\infty\|$")
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
    d = d[d["method"] != "mtl"]
    if d.empty:
        return pd.DataFrame()
    by = ["method", "mtl_data", "inner_time", "finetune_time", "outer_time", "depth"]
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
    plt = _pyplot()
    combos = table[["inner_time", "mtl_data"]].drop_duplicates().sort_values(["inner_time", "mtl_data"])
    methods = [m for m in ("anil", "maml", "fomaml") if m in set(table["method"])]
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
                        _band(ax, g, "depth", "gap_to_mtl_rel", shade, f"width {int(w)} (IQR)", marker="o")
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
                ax.set_ylabel(rf"$\|F_{{\rm {LABELS[method]}}}-F_{{\rm MTL}}\| / \|F_{{\rm MTL}}\|$")
                ax.set_title(f"{LABELS[method]}, $\\lambda\\tau$={combo['inner_time']:g}, "
                             f"MTL on {combo['mtl_data']}")
                ax.legend(frameon=False)
        fig.tight_layout()
        return save(fig, path_prefix, table)


# -- kernel degeneracy -----------------------------------------------------------------------------

def plot_kernel_degeneracy(table: pd.DataFrame, path_prefix: str) -> list[str]:
    """Four panels from :func:`ntk_bridge.diagnostics.kernel_degeneracy_table`: ``K/Theta`` on the
    diagonal vs ``1/(L+1)``; the normalised NTK off the diagonal vs its limit 1/4; ``1 - rho`` of
    the readout kernel times ``L^2`` (tends to a constant near ``9 pi^2 / 2``); condition numbers."""
    plt = _pyplot()
    t = table.sort_values("depth")
    L = t["depth"].to_numpy(float)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(1, 4, figsize=(10.0, 2.5))
        ax[0].plot(L, t["k_over_theta_diag"], "o", color=COLORS["anil"], label="$K(x,x)/\\Theta(x,x)$")
        ax[0].plot(L, 1 / (L + 1), "-", color="k", linewidth=0.8, label="$1/(L+1)$")
        log_y(ax[0])
        ax[0].set_title("readout share of the NTK")
        ax[1].plot(L, t["ntk_offdiag_normalised_mean"], "o-", color=COLORS["maml"], label="mean off-diagonal")
        ax[1].fill_between(L, t["ntk_offdiag_normalised_min"], t["ntk_offdiag_normalised_max"],
                           color=COLORS["maml"], alpha=0.15, linewidth=0, label="min..max")
        ax[1].axhline(0.25, color="k", linewidth=0.8, linestyle="--", label="1/4")
        ax[1].set_title(r"$\Theta(x,x')/\Theta(x,x)$")
        ax[2].plot(L, t["one_minus_rho_times_L2"], "o-", color=COLORS["mtl"], label=r"$(1-\rho_K) L^2$ (median)")
        ax[2].axhline(9 * math.pi ** 2 / 2, color="k", linewidth=0.8, linestyle="--", label=r"$9\pi^2/2$")
        ax[2].set_title("readout correlation $\\rho_K \\to 1$")
        ax[3].plot(L, t["cond_support_K_median"], "o-", color=COLORS["anil"], label="$K(X',X')$ (ANIL inner)")
        ax[3].plot(L, t["cond_support_theta_median"], "s-", color=COLORS["maml"], label="$\\Theta(X',X')$ (MAML inner)")
        ax[3].plot(L, L ** 2, color="k", linewidth=0.8, linestyle=":", label="$L^2$")
        log_y(ax[3])
        ax[3].set_title("condition number of support kernels")
        for a in ax:
            depth_axis(a, L)
            a.legend(frameon=False)
        fig.tight_layout()
        return save(fig, path_prefix, table)
