"""``ntk-bridge verify``: the theorem's verdict over a panel of task families, task seeds, inner
times, MTL data and test-head protocols (and a small finite-width panel), each claim decided by a
stated rule from fitted numbers.

The output folder holds ``runs/`` (one ordinary, cached and resumable sweep folder per family and
seed, and ``runs/finite``, each with its ``results.csv``), then ``gaps.csv`` and ``benefit.csv`` (the
per-replicate gaps and transfer benefits the claims and figures are computed from), ``claims.csv`` (one row per
claim and condition), ``verdicts.csv`` (one row per claim), ``report.md`` with its figures as PNG
files, and ``report.html`` (one self-contained page, the figures embedded). Rerunning the same
command recomputes nothing and rewrites the report.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import pandas as pd

from ntk_bridge.runs import RunFolder, atomic_write
from ntk_bridge.verify.panel import FULL, QUICK, Family, Panel, panel_for_file, run_panel

__all__ = ["Family", "Panel", "FULL", "QUICK", "panel_for_file", "run_panel", "run_verify", "VerifyResult"]


class VerifyResult:
    """What :func:`run_verify` returns: the tables it wrote and where."""

    def __init__(self, out: str, rows: pd.DataFrame, finite: pd.DataFrame, claims: pd.DataFrame,
                 verdicts: pd.DataFrame, seconds: float):
        self.out, self.rows, self.finite, self.claims, self.verdicts, self.seconds = (out, rows, finite, claims,
                                                                                        verdicts, seconds)

    def file(self, name: str) -> str:
        return os.path.join(self.out, name)


def run_verify(panel: Panel, out: str, executor=None, progress_factory: Callable[[str], object] | None = None,
               command: str | None = None) -> VerifyResult:
    """Run ``panel`` into ``out`` and write the claims and the report (see the module docstring)."""
    from ntk_bridge.provenance import provenance
    from ntk_bridge import methods as registry
    from ntk_bridge.verify.claims import benefit_table, claims_table, gap_medians, overall
    from ntk_bridge.verify.report import figures, html_report, markdown_report

    started = time.time()
    folder = RunFolder(out)
    folder.check_writable()
    with folder.lock():  # a file in the way of the lock is one line before any sweep starts
        pass
    rows, finite = run_panel(panel, out, executor=executor, progress_factory=progress_factory)
    claims = claims_table(rows, finite)
    from ntk_bridge.verify.beyond import beyond_claims  # C7: the muP limit against the NTK limit

    claims = pd.concat([claims, beyond_claims(panel, out, progress_factory, executor).reindex(columns=claims.columns)],
                       ignore_index=True)
    verdicts = overall(claims)
    seconds = time.time() - started
    images = figures(rows, finite)
    described = panel.describe()
    with folder.writing("the report"):  # every sweep is cached under runs/: the rerun only rewrites these
        folder.write_table("gaps.csv", pd.concat([gap_medians(rows, m).assign(method=m)
                                                  for m in (registry.ANIL.name, registry.MAML.name)], ignore_index=True))
        folder.write_table("benefit.csv", benefit_table(rows))
        folder.write_table("claims.csv", claims)
        folder.write_table("verdicts.csv", verdicts)
        for name, data in images.items():
            atomic_write(folder.file(name), data)
        folder.write_text("report.md", markdown_report(claims, verdicts, described, command, seconds, images))
        folder.write_text("report.html", html_report(claims, verdicts, described, images, command, seconds))
        folder.write_text("panel.json", json.dumps(dict(panel=described, command=command, seconds=round(seconds, 2),
                                                        **provenance()), indent=2, default=str) + "\n")
    return VerifyResult(out, rows, finite, claims, verdicts, seconds)
