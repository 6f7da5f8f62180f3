"""The files of a finished sweep: ``results.csv``, ``config.json``, ``summary.md`` and the figures, each
written atomically into the run folder (:class:`ntk_bridge.runs.RunFolder`); the text they hold is rendered
by :mod:`ntk_bridge.report`.
"""
from __future__ import annotations

import math
import os
import time

import pandas as pd

from ntk_bridge.report import numeric_widths, summary_markdown

__all__ = ["write_run"]


def _draw(folder, name: str, table: pd.DataFrame, plot, drawer=None) -> bool:
    """Draw ``table`` with ``plot`` as ``<name>.png/.pdf/.csv`` unless those files exist and the
    CSV already holds exactly this table (a rerun with nothing new); by ``drawer``
    (:class:`ntk_bridge.figures.drawer.Drawer`) when given. Returns whether it drew (or handed it over)."""
    from ntk_bridge.figures import table_csv

    prefix = folder.file(name)
    paths = [f"{prefix}.{ext}" for ext in ("png", "pdf", "csv")]
    if all(os.path.exists(p) for p in paths):
        with open(paths[2], encoding="utf-8") as fh:
            if fh.read() == table_csv(table):
                return False
    if drawer is not None:
        drawer.draw(plot, table, prefix)
    else:
        plot(table, prefix)
    return True


def _figures(df: pd.DataFrame) -> list:
    """``[(name, table, plot)]``: the figures of a sweep's results table."""
    from ntk_bridge import figures as figs
    from ntk_bridge.results import ok_rows

    out = []
    ok = ok_rows(numeric_widths(df))
    infinite = ok[ok["width"] == math.inf]
    if infinite["depth"].nunique() > 1:
        table = figs.gap_vs_depth_table(infinite)
        if len(table):
            out.append(("gap_vs_depth", table, figs.plot_gap_vs_depth))
    finite = ok[ok["width"] < math.inf]
    if len(finite):
        table = figs.distance_vs_width_table(finite)
        if len(table) and table["width"].nunique() > 1:
            out.append(("distance_vs_width", table, figs.plot_distance_vs_width))
        gap = figs.finite_gap_vs_depth_table(finite)
        if len(gap) and gap["depth"].nunique() > 1:
            out.append(("finite_gap_vs_depth", gap, figs.plot_finite_gap_vs_depth))
    return out


def write_run(folder, df: pd.DataFrame, config, command: str | None = None, started: float | None = None,
              figures: bool = True, damaged: int = 0, tasks_fingerprint: str | None = None, drawer=None) -> list:
    """``results.csv``, ``config.json``, ``summary.md`` and (``figures``) the figures of a finished
    sweep into ``folder`` (:class:`ntk_bridge.runs.RunFolder`), each written atomically;
    ``tasks_fingerprint`` (the task set's) goes into ``config.json``; ``drawer``
    (:class:`ntk_bridge.figures.drawer.Drawer`): draw the figures there, while the other files are written.
    Returns the report tables of ``summary.md`` (:func:`ntk_bridge.report.sweep_tables`), built once, for
    whoever prints them."""
    from ntk_bridge.provenance import provenance
    from ntk_bridge.report import sweep_tables

    drawings = _figures(df) if figures and len(df) else []
    if drawer is not None:
        for name, table, plot in drawings:
            _draw(folder, name, table, plot, drawer)
    folder.write_table("results.csv", df)
    record = dict(config=config.to_dict(), command=command, **provenance(), damaged_cells_recomputed=damaged,
                  rows=len(df))
    if tasks_fingerprint is not None:
        record["tasks_fingerprint"] = tasks_fingerprint
    if started is not None:
        record["seconds"] = round(time.time() - started, 2)
    folder.write_json("config.json", record)
    tables = sweep_tables(df)
    folder.write_text("summary.md", summary_markdown(df, command, config.to_dict(), tables))
    if drawer is not None:
        drawer.wait()
    else:
        for name, table, plot in drawings:
            _draw(folder, name, table, plot)
    return tables
