"""Sweeps over depth, width and times: the grid, the resumable cell cache and the executors.

A *cell* is one grid point: ``(task_seed, width, depth, inner_time, finetune_time, outer_time, mtl_data,
test_head)``. Its rows (one per method x test task, and per network for finite widths) are written atomically to
``<run>/cells/<key>.csv`` the moment they are computed, where ``key`` is a SHA-256 of everything that determines
them (:func:`cell_context`: task data fingerprint, architecture, methods, the outer solver resolved once when the
sweep plans, the BLAS thread count, the versions of ntk_bridge and of the numerical packages). A rerun skips cells
whose file exists and verifies (:class:`ntk_bridge.runs.RunFolder`), so an interrupted run resumes and never
duplicates rows; ``results.csv`` is rebuilt from the cell files of the current grid.

Work is grouped into *units* that an executor runs: all infinite-width cells of one task set form one
unit (one kernel pass gives every depth, streamed one depth at a time), the finite-width cells of one
width and depth form one unit (they share training runs). Units are pure functions of their
description, so they can run in-process or on Dask workers (:mod:`ntk_bridge.distributed`); only
the client writes files.

:func:`run_sweep` owns the run folder: besides ``cells/`` it writes ``results.csv``,
``config.json``, ``summary.md`` and the figures, exactly as ``ntk-bridge sweep`` does.
"""
from __future__ import annotations

from ntk_bridge.budget import MAX_CELLS, available_memory, check_feasible, estimate  # noqa: F401  (re-exported)
from ntk_bridge.config import SweepConfig
from ntk_bridge.results import results_table, sort_results
from ntk_bridge.sweep.plan import CELL_SETTINGS, METHODS, Cell, Unit, cell_context, make_units, plan  # noqa: F401
from ntk_bridge.sweep.compute import iter_unit
from ntk_bridge.sweep.run import Progress, SweepJob, run_sweep, run_sweeps
from ntk_bridge.sweep.write import write_run

__all__ = ["SweepConfig", "Cell", "Unit", "Progress", "plan", "make_units", "iter_unit", "run_sweep", "run_sweeps", "SweepJob", "cell_context",
           "results_table", "sort_results", "estimate", "check_feasible", "MAX_CELLS", "METHODS"]
