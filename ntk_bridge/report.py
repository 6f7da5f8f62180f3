"""The report of a sweep: its tables built once, rendered to the console and to ``summary.md`` (the
run's files are written by :mod:`ntk_bridge.sweep.write`).

Every grid dimension that varies in a table's rows is a column of that table; the dimensions that
are constant are stated once in the table's note, so no two rows look alike. A method's rows are
shown once for the settings it does not depend on (ANIL's test error does not depend on MTL's
training set, the baseline's on neither the inner time nor ``mtl_data``).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge.axes import AXES

__all__ = ["ReportTable", "sweep_tables", "markdown", "summary_markdown", "DIMENSIONS", "fmt",
           "flagged_line"]

#: Grid dimensions a table row can be keyed by (:data:`ntk_bridge.methods.SETTINGS`: the axes a method
#: can depend on), with their column headers.
DIMENSIONS = {axis.column: axis.header for axis in AXES if axis.method_setting}

_DATA_NOTE = "MTL data: `all` = MTL trained on support and query of every training task (the paper's MTL), " \
             "`query` = on the queries only (ANIL's outer data)."


@dataclasses.dataclass(frozen=True)
class ReportTable:
    """A titled table of raw values; ``columns`` maps frame columns to headers, in order."""

    title: str
    frame: pd.DataFrame
    columns: dict
    note: str = ""


def fmt(v) -> str:
    """A cell as text: 3 significant digits, ``inf``, ``-`` for missing."""
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isinf(v):
            return "inf"
        if float(v).is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.3g}"
    return str(v)


def _varying(frame: pd.DataFrame, dims) -> tuple[list[str], dict]:
    """Split ``dims`` into those with several values in ``frame`` and the constant ones (with value)."""
    varying, constant = [], {}
    for d in dims:
        if d not in frame:
            continue
        values = frame[d].dropna().unique() if frame[d].dtype != object else \
            frame[d][frame[d].astype(str) != "-"].unique()
        if len(values) > 1:
            varying.append(d)
        elif len(values) == 1:
            constant[d] = values[0]
    return varying, constant


def _constant_note(constant: dict) -> str:
    if not constant:
        return ""
    return "All rows: " + ", ".join(f"{DIMENSIONS[d]} {fmt(v)}" for d, v in constant.items()) + "."


def _only_what_it_depends_on(frame: pd.DataFrame, dims, keys=("method",)) -> pd.DataFrame:
    """Blank (``-``) the dimensions ``dims`` a row's method does not depend on, then drop the rows
    that repeat another on ``keys + dims``."""
    frame = frame.copy()
    for d in dims:
        if d in frame:
            frame[d] = frame[d].astype(object)
            blank = ~frame["method"].map(lambda m: m not in registry.METHODS or registry.get(m).depends(d))
            frame.loc[blank, d] = "-"
    frame = frame.drop_duplicates(list(keys) + [d for d in dims if d in frame])
    order = {m: i for i, m in enumerate(registry.METHODS)}
    frame = frame.assign(_order=frame["method"].map(order).fillna(len(order)))
    frame = frame.sort_values(["_order"] + [k for k in keys if k != "method"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def numeric_widths(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of numeric width (finite networks and the NTK limit ``inf``), width as float: the muP
    limit's rows (width ``'mup'``) are left to the tables and figures that know them."""
    keep = df["width"].astype(str) != "mup"
    if keep.all():
        return df
    return df[keep].assign(width=df.loc[keep, "width"].astype(float))


def sweep_tables(df: pd.DataFrame) -> list[ReportTable]:
    """The report's tables: gap-to-MTL slopes vs depth, test error against the no-transfer baseline,
    and (finite widths) the fitted width exponents (rows of numeric width: :func:`numeric_widths`)."""
    from ntk_bridge.results import baseline_table, depth_slopes, finite_width_fits

    df = numeric_widths(df)

    dims = [d for d in DIMENSIONS if d in df]
    tables = []
    slopes = depth_slopes(df)
    if len(slopes):
        slopes = slopes[slopes["method"] != registry.BASELINE.name].reset_index(drop=True)
        slopes["ci"] = [f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in zip(slopes["ci95_low"], slopes["ci95_high"])]
        slopes["depths"] = [f"{a}..{b} ({n})" for a, b, n in
                            zip(slopes["depth_min"], slopes["depth_max"], slopes["n_depths"])]
        varying, constant = _varying(slopes, dims)
        cols = {"method": "method", **{d: DIMENSIONS[d] for d in varying}, "slope": "slope", "ci": "95% CI",
                "depths": "depths", "first": "gap first", "last": "gap last"}
        notes = ["`gap = ||F_method - F_MTL|| / ||F_MTL||` on each test task's query set; slope of the median "
                 "over test tasks on log-log axes (the theorem's 1/L term: a slope near -1)."]
        if "mtl_data" in varying or "mtl_data" in constant:
            notes.append(_DATA_NOTE)
        notes.append(_constant_note(constant))
        tables.append(ReportTable("gap to MTL vs depth: log-log slope (95% CI)", slopes, cols,
                                  " ".join(n for n in notes if n)))
    base = baseline_table(df)
    if len(base):
        base = _only_what_it_depends_on(base, dims)
        base["mse_first"] = [f"{fmt(a)} / {fmt(b)}" for a, b in zip(base["mse_min_depth"], base["baseline_min_depth"])]
        base["mse_last"] = [f"{fmt(a)} / {fmt(b)}" for a, b in zip(base["mse_max_depth"], base["baseline_max_depth"])]
        varying, constant = _varying(base, dims)
        first, last = int(base["depth_min"].min()), int(base["depth_max"].max())
        cols = {"method": "method", **{d: DIMENSIONS[d] for d in varying},
                "mse_first": f"MSE / baseline at L={first}", "mse_last": f"MSE / baseline at L={last}",
                "depths_beating_baseline": "beats baseline at depths"}
        notes = ["Median test MSE over test tasks; the baseline is a head fine-tuned on an untrained body "
                 "(closeness is only interesting while the methods beat it). `-`: the method does not depend "
                 "on that setting."]
        if "mtl_data" in varying:
            notes.append(_DATA_NOTE)
        notes.append(_constant_note(constant))
        tables.append(ReportTable("test error against the no-transfer baseline", base, cols,
                                  " ".join(n for n in notes if n)))
    fits = finite_width_fits(df)
    if len(fits):
        fits = _only_what_it_depends_on(fits, [d for d in ("inner_time", "mtl_data") if d in fits],
                                        keys=("method", "depth"))
        fits["ci"] = [f"[{fmt(lo)}, {fmt(hi)}]" for lo, hi in zip(fits["ci95_low"], fits["ci95_high"])]
        varying, constant = _varying(fits, ["inner_time", "mtl_data"])
        cols = {"method": "method", "depth": "depth", **{d: DIMENSIONS[d] for d in varying},
                "exponent": "exponent", "ci": "95% CI", "n": "points"}
        tables.append(ReportTable(
            "distance to the infinite-width predictor vs width: fitted exponent (95% CI)", fits, cols,
            "`dist_to_infinite_rel ~ width^p`, one point per network and width (its mean over test tasks); "
            "NTK theory: p about -1/2. " + _constant_note(constant)))
    return tables


def flagged_line(df: pd.DataFrame) -> str:
    """``''`` or one sentence counting the rows that are not ``ok``, by status."""
    from ntk_bridge.results import flagged

    bad = flagged(df)
    if not len(bad):
        return ""
    flagged_rows = df[df["status"] != "ok"]
    parts = []
    for status, count in bad.items():
        by_method = flagged_rows[flagged_rows["status"] == status]["method"].value_counts()
        parts.append(f"{status}: {count} (" + ", ".join(f"{m} {n}" for m, n in by_method.items()) + ")")
    return "Flagged rows (excluded from fits and figures): " + "; ".join(parts) + "."


def markdown(table: ReportTable) -> str:
    """A table as Markdown: title, note, then the rows."""
    heads = list(table.columns.values())
    lines = [f"## {table.title[0].upper()}{table.title[1:]}", ""]
    if table.note:
        lines += [table.note, ""]
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, r in table.frame.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in table.columns) + " |")
    return "\n".join(lines)


def summary_markdown(df: pd.DataFrame, command: str | None, config: dict, tables: list | None = None) -> str:
    """The run's ``summary.md``: every report table (``tables``, else :func:`sweep_tables` of ``df``), and
    the flagged rows."""
    parts = ["# ntk-bridge sweep summary", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    parts.append(f"Rows: {len(df)} ({int(df['status'].eq('ok').sum())} ok). Tasks: {config.get('tasks', {}).get('family')}.")
    line = flagged_line(df)
    if line:
        parts.append(line)
    for t in sweep_tables(df) if tables is None else tables:
        parts += ["", markdown(t)]
    if not len(df):
        parts += ["", "No rows."]
    elif df["test_mse"].isna().all():
        parts += ["", "No test labels: test errors unavailable."]
    parts.append("")
    return "\n".join(parts)
