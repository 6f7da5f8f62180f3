"""Results tables: rate fits with confidence intervals, baseline comparisons, the run summary.

Only rows whose ``status`` is ``ok`` enter fits and figures; the others are counted and reported.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ntk_bridge.errors import require

__all__ = ["fit_power_law", "width_exponents", "finite_width_fits", "depth_slopes", "baseline_table", "flagged", "summary_markdown"]


def fit_power_law(x, y) -> tuple[float, float, float, int]:
    """Fit ``y = c x^p`` by least squares on ``log y`` vs ``log x`` (``scipy.stats.linregress``).

    Non-finite and non-positive points are dropped. Returns ``(p, ci95_low, ci95_high, n)`` with the
    t-based 95% interval ``p +- t_{0.975, n-2} stderr`` (NaN bounds for ``n < 3``; all NaN for
    ``n < 2`` or a single distinct ``x``).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    require(x.shape == y.shape, f"x and y must have the same size, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = np.log(x[keep]), np.log(y[keep])
    n = int(x.size)
    if n < 2 or np.unique(x).size < 2:
        return math.nan, math.nan, math.nan, n
    fit = stats.linregress(x, y)
    if n < 3:
        return float(fit.slope), math.nan, math.nan, n
    half = stats.t.ppf(0.975, n - 2) * fit.stderr
    return float(fit.slope), float(fit.slope - half), float(fit.slope + half), n


GROUP = ["method", "width", "inner_time", "finetune_time", "outer_time", "mtl_data"]


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
    d = d[~d["method"].isin(["mtl"])]
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


def baseline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Median test MSE of each method vs the no-transfer baseline, at the shallowest and the deepest
    depth, and the deepest depth at which the method still beats the baseline."""
    d = ok_rows(df)
    if "network" in d:
        d = d[d["network"].astype(str).isin(["mean", "ensemble"])]
    if d["test_mse"].isna().all():
        return pd.DataFrame()
    keys = ["width", "inner_time", "finetune_time", "outer_time", "mtl_data"]
    med = d.groupby(keys + ["method", "depth"], dropna=False)["test_mse"].median().reset_index()
    rows = []
    for key, g in med.groupby(keys, dropna=False):
        base = g[g["method"] == "baseline"].set_index("depth")["test_mse"]
        for method, gm in g[g["method"] != "baseline"].groupby("method"):
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
                             beats_baseline_everywhere=len(beats) == len(common)))
    return pd.DataFrame(rows)


def _fmt(v, digits=3):
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    if isinstance(v, (int, np.integer)):
        return str(v)
    return f"{v:.{digits}g}"


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in columns) + " |")
    return "\n".join(lines)


def summary_markdown(df: pd.DataFrame, command: str, config: dict) -> str:
    """The run's ``summary.md``: slopes with CIs, baseline comparison, flagged rows."""
    parts = ["# ntk-bridge sweep summary", "", f"Command: `{command}`", ""]
    parts.append(f"Rows: {len(df)} ({df['status'].eq('ok').sum()} ok). Tasks: {config.get('tasks')}.")
    bad = flagged(df)
    if len(bad):
        parts.append("Flagged rows (excluded from fits and figures): "
                     + ", ".join(f"{k}: {v}" for k, v in bad.items()) + ".")
    parts += ["", "## Gap to MTL vs depth: fitted log-log slopes (median over test tasks)", "",
              "`gap_to_mtl_rel = ||F_method - F_MTL|| / ||F_MTL||` on each test task's query set. "
              "The theory predicts O(lambda*tau + 1/L): a slope near -1 where the 1/L term dominates.", ""]
    slopes = depth_slopes(df)
    if len(slopes):
        slopes = slopes[slopes["method"] != "baseline"]
        parts.append(markdown_table(slopes, ["method", "width", "inner_time", "finetune_time", "outer_time",
                                             "mtl_data", "slope", "ci95_low", "ci95_high", "n_depths",
                                             "first", "last"]))
    parts += ["", "## Against the no-transfer baseline (median test MSE)", "",
              "Closeness is only interesting while the methods still beat a head fine-tuned on an "
              "untrained body.", ""]
    base = baseline_table(df)
    if len(base):
        parts.append(markdown_table(base, ["method", "width", "inner_time", "depth_min", "mse_min_depth",
                                           "baseline_min_depth", "depth_max", "mse_max_depth",
                                           "baseline_max_depth", "deepest_beating_baseline"]))
    else:
        parts.append("No test labels: test errors unavailable.")
    fits = finite_width_fits(df)
    if len(fits):
        parts += ["", "## Finite widths: distance to the infinite-width predictor vs width", "",
                  "`dist_to_infinite_rel ~ width^p`, one point per network and width (its mean over test "
                  "tasks); NTK theory: p about -1/2.", ""]
        parts.append(markdown_table(fits, ["method", "depth", "inner_time", "mtl_data", "exponent", "ci95_low",
                                           "ci95_high", "n"]))
    parts.append("")
    return "\n".join(parts)


def finite_width_fits(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`width_exponents` of ``dist_to_infinite_rel`` per method, depth, inner time and MTL data
    for the finite widths of a sweep (empty unless there are at least two finite widths)."""
    finite = df[np.isfinite(df["width"].astype(float))]
    if finite["width"].nunique() < 2:
        return pd.DataFrame()
    finite = finite[finite["method"] != "baseline"]
    return width_exponents(finite, by=("method", "depth", "inner_time", "mtl_data"))
