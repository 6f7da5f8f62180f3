"""Results tables: rate fits with confidence intervals and baseline comparisons (numbers; the report
that renders them is :mod:`ntk_bridge.report`).

Only rows whose ``status`` is ``ok`` enter fits and figures; the others are counted and reported.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import special

from ntk_bridge import metrics
from ntk_bridge import methods as registry
from ntk_bridge.errors import require

__all__ = ["fit_power_law", "width_exponents", "finite_width_fits", "depth_slopes", "baseline_table", "flagged",
           "ok_rows", "sort_results", "results_table", "mean_ci95"]


def fit_power_law(x, y) -> tuple[float, float, float, int]:
    """Fit ``y = c x^p`` by least squares on ``log y`` vs ``log x``.

    Non-finite and non-positive points are dropped. Returns ``(p, ci95_low, ci95_high, n)`` with the
    t-based 95% interval ``p +- t_{0.975, n-2} stderr`` (NaN bounds for ``n < 3``; all NaN for
    ``n < 2`` or a single distinct ``x``): the numbers of ``scipy.stats.linregress`` (tested against
    it), computed here without importing ``scipy.stats``, which would add half a second to every
    command's start-up.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    require(x.shape == y.shape, f"x and y must have the same size, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log(x[keep]), np.log(y[keep])
    n = int(x.size)
    if n < 2 or np.unique(x).size < 2:
        return math.nan, math.nan, math.nan, n
    dx, dy = x - x.mean(), y - y.mean()
    sxx = float(dx @ dx)
    slope = float(dx @ dy) / sxx
    if n < 3:
        return slope, math.nan, math.nan, n
    residual = dy - slope * dx
    stderr = math.sqrt(float(residual @ residual) / (n - 2) / sxx)
    half = float(special.stdtrit(n - 2, 0.975)) * stderr
    return slope, slope - half, slope + half, n


#: The keys of a depth fit: the method and the settings a method can depend on (every axis but depth).
GROUP = ["method", *registry.SETTINGS]


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def flagged(df: pd.DataFrame) -> pd.Series:
    """Counts of rows by non-ok status."""
    bad = df[df["status"] != "ok"]
    return bad["status"].value_counts()


def width_exponents(rows: pd.DataFrame, metric: str = "dist_to_infinite_rel",
                    by: Sequence[str] = ("method", "depth", "mode")) -> pd.DataFrame:
    """Fit ``metric ~ width^p`` per group from finite-width rows (:func:`ntk_bridge.finite.finite_cell`
    or a sweep's ``results.csv``; rows whose status is not ``ok`` are left out).

    Each network (not the ensemble) contributes one point per width: its mean of ``metric`` over
    test tasks (test tasks of one network are not independent samples). Returns columns
    ``by + [exponent, ci95_low, ci95_high, n]``.
    """
    keep = ok_rows(rows)
    keep = keep[~keep["network"].astype(str).isin(["ensemble", "mean"])]
    per_net = (keep.groupby(list(by) + ["width", "seed", "network"], dropna=False)[metric]
               .mean().reset_index())
    out = []
    for key, group in per_net.groupby(list(by), dropna=False):
        p, lo, hi, n = fit_power_law(group["width"], group[metric])
        out.append(dict(zip(by, key if isinstance(key, tuple) else (key,)),
                        exponent=p, ci95_low=lo, ci95_high=hi, n=n))
    return pd.DataFrame(out, columns=list(by) + ["exponent", "ci95_low", "ci95_high", "n"])


def depth_slopes(df: pd.DataFrame, column: str = "gap_to_mtl_rel") -> pd.DataFrame:
    """Log-log slope of the per-depth median of ``column`` (over test tasks and networks) vs depth,
    with its 95% CI, for every method but MTL and the baseline and every time setting."""
    d = ok_rows(df)
    d = d[d["method"] != registry.MTL.name]
    if "network" in d:
        d = d[d["network"].astype(str) != "ensemble"]
    med = d.groupby(GROUP + ["depth"], dropna=False)[column].median().reset_index()
    rows = []
    for key, g in med.groupby(GROUP, dropna=False):
        slope, lo, hi, n = fit_power_law(g["depth"], g[column])
        rows.append(dict(zip(GROUP, key), slope=slope, ci95_low=lo, ci95_high=hi, n_depths=n,
                         first=float(g.sort_values("depth")[column].iloc[0]),
                         last=float(g.sort_values("depth")[column].iloc[-1]),
                         depth_min=int(g["depth"].min()), depth_max=int(g["depth"].max())))
    return pd.DataFrame(rows)


def depth_ranges(depths) -> str:
    """Sorted integers as contiguous ranges: ``[2, 3, 4, 8, 9]`` -> ``'2..4, 8..9'``; ``'none'``."""
    depths = sorted(int(d) for d in depths)
    if not depths:
        return "none"
    spans, start, prev = [], depths[0], depths[0]
    for d in depths[1:] + [None]:
        if d is not None and d == prev + 1:
            prev = d
            continue
        spans.append(str(start) if start == prev else f"{start}..{prev}")
        if d is not None:
            start = prev = d
    return ", ".join(spans)


def baseline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Median test MSE of each method vs the no-transfer baseline, at the shallowest and the deepest
    depth; the depths at which the method beats the baseline (``depths_beating_baseline``, as
    ranges) and the deepest of them."""
    d = ok_rows(df)
    if "network" in d:
        d = d[d["network"].astype(str).isin(["mean", "ensemble"])]
    if d["test_mse"].isna().all():
        return pd.DataFrame()
    keys = list(registry.SETTINGS)
    med = d.groupby(keys + ["method", "depth"], dropna=False)["test_mse"].median().reset_index()
    rows = []
    for key, g in med.groupby(keys, dropna=False):
        base = g[g["method"] == registry.BASELINE.name].set_index("depth")["test_mse"]
        for method, gm in g[g["method"] != registry.BASELINE.name].groupby("method"):
            s = gm.set_index("depth")["test_mse"]
            common = s.index.intersection(base.index)
            if len(common) == 0:
                continue
            beats = [dep for dep in common if s[dep] < base[dep]]
            lo, hi = min(common), max(common)
            rows.append(dict(zip(keys, key), method=method, depth_min=lo, mse_min_depth=s[lo],
                             baseline_min_depth=base[lo], depth_max=hi, mse_max_depth=s[hi],
                             baseline_max_depth=base[hi],
                             deepest_beating_baseline=max(beats) if beats else float("nan"),
                             depths_beating_baseline="all" if len(beats) == len(common) else depth_ranges(beats),
                             beats_baseline_everywhere=len(beats) == len(common)))
    return pd.DataFrame(rows)


def finite_width_fits(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`width_exponents` of ``dist_to_infinite_rel`` per method, depth, inner time and MTL data
    for the finite widths of a sweep (empty unless there are at least two finite widths)."""
    finite = df[np.isfinite(df["width"].astype(float))]
    if finite["width"].nunique() < 2:
        return pd.DataFrame()
    finite = finite[finite["method"] != registry.BASELINE.name]
    return width_exponents(finite, by=("method", "depth", "inner_time", "mtl_data"))


def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    """A sweep's rows in ``results.csv`` order: by width (the muP limit, width ``mup``, after every
    numeric width), times, MTL data, test head, depth, method (registry order), network and test task."""
    from ntk_bridge.axes import AXES, MUP_WIDTH, WIDTH

    order = {m: i for i, m in enumerate(registry.METHODS)}
    limit = df["width"].astype(str) == MUP_WIDTH
    df = df.assign(_m=df["method"].map(order).fillna(99), _n=df["network"].astype(str), _l=limit,
                   _w=df["width"].where(~limit, math.inf).astype(float))
    by_axes = [axis.column for axis in AXES if axis is not WIDTH]  # the grid's loop order, depth last
    df = df.sort_values(["_w", "_l", *by_axes, "_m", "_n", "test_task"], kind="stable")
    return df.drop(columns=["_m", "_n", "_w", "_l"]).reset_index(drop=True)


def results_table(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The cells' rows as one sorted table in the :data:`ntk_bridge.metrics.COLUMNS` schema."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return metrics.empty_table()
    return sort_results(pd.concat(frames, ignore_index=True))


def mean_ci95(accuracies: np.ndarray) -> tuple[float, float]:
    """``(mean, 1.96 * sample std / sqrt(E))`` of per-episode accuracies ``[E]``."""
    acc = np.asarray(accuracies, np.float64)
    half = 1.96 * acc.std(ddof=1) / np.sqrt(acc.size) if acc.size > 1 else float("nan")
    return float(acc.mean()), float(half)
