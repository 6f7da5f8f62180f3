"""Running a sweep: the run folder, resume, the executor and what it reports (:class:`Progress`).

:func:`run_sweep` owns the run folder: besides ``cells/`` (one verified file per cell, written atomically
the moment it is computed; a rerun skips the cells whose file exists and verifies, so an interrupted run
resumes and never duplicates rows) it writes ``results.csv``, ``config.json``, ``summary.md`` and the
figures (:func:`ntk_bridge.sweep.write.write_run`), exactly as ``ntk-bridge sweep`` does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

import pandas as pd

from ntk_bridge import build, metrics, runtime
from ntk_bridge import solvers as outer_solvers
from ntk_bridge.budget import check_feasible
from ntk_bridge.config import SweepConfig
from ntk_bridge.errors import UserError
from ntk_bridge.results import results_table
from ntk_bridge.runs import RunFolder
from ntk_bridge.sweep.compute import iter_unit
from ntk_bridge.sweep.plan import make_units, plan
from ntk_bridge.sweep.write import write_run
from ntk_bridge.tasks import TaskSet

__all__ = ["Progress", "run_sweep"]


class Progress:
    """What a sweep reports while it runs (override any method; the defaults do nothing).

    ``start(total, cached, damaged)``: cells in the grid, cells found in the cache, damaged cell files that will be
    recomputed; ``cell(key)``: a cell was computed and written; ``note(message)``: one line worth telling (a damaged
    cache, a wait for another sweep, a long estimate).
    """

    def start(self, total: int, cached: int, damaged: int) -> None:
        pass

    def cell(self, key: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def run_sweep(config: SweepConfig, run_dir: str, executor=None, progress: Progress | None = None,
              figures: bool = True, command: str | None = None, release_memory: bool = False,
              tasks: TaskSet | None = None) -> pd.DataFrame:
    """Run every pending cell of ``config`` into ``run_dir`` and return the full results table.

    Writes ``cells/`` (one verified file per cell, as each is computed), then ``results.csv``, ``config.json``,
    ``summary.md`` and, with ``figures``, the figures of the run (:func:`ntk_bridge.sweep.write.write_run`) -- the same
    folder ``ntk-bridge sweep`` writes. ``--solver auto`` is resolved once, here (:func:`ntk_bridge.solvers.solver_plan`).

    Args:
      executor: ``None`` for in-process, else an object with ``map_units(units) -> iterator of
        (key, rows)`` (see :mod:`ntk_bridge.distributed`).
      progress: a :class:`Progress` to report to.
      command: the command line to record (``config.json``, ``summary.md``).
      release_memory: drop JAX's compiled programs (``jax.clear_caches()``, every program of the process; they
        reload from the persistent compilation cache) once the cells are computed and before the figures are
        drawn: the command line does this, which keeps the default sweep's peak memory about 60 MB lower
        (``benchmarks/README.md``).
      tasks: the task set of ``config`` when the caller has built it already
        (:func:`ntk_bridge.build.task_set`), else it is built here.
    """
    started = time.time()
    progress = progress or Progress()
    folder = RunFolder(run_dir)
    tasks = build.task_set(config) if tasks is None else tasks
    est = check_feasible(config, tasks)  # before anything is planned, allocated or written
    solvers = outer_solvers.solver_plan(config.numerics.solver, tasks.layout, config.grid.outer_times,
                                     config.grid.mtl_data)
    tasks, cells, keys = plan(config, tasks, solvers)
    if est["seconds"] > 600:
        progress.note(f"estimated time: about {est['seconds'] / 60:.0f} minutes ({est['cells']:,} cells over "
                      f"{est['points']:,} points)")
    folder.check_writable()
    with folder.lock(on_wait=lambda: progress.note(f"another sweep is writing to {run_dir}; waiting for it")):
        done, damaged = folder.read_cells(dict.fromkeys(keys), {k: dataclasses.asdict(c) for c, k in zip(cells, keys)})
        if damaged:
            progress.note(f"{len(damaged)} damaged cell file(s) in {folder.cells} failed verification and are "
                          "computed again")
        pending = [(c, k) for c, k in zip(cells, keys) if k not in done]
        progress.start(len(set(keys)), len(done), len(damaged))
        if pending:
            _compute(config, folder, tasks, pending, executor, progress, solvers)
            done.update(folder.read_cells(k for _, k in pending)[0])
            if release_memory:
                import jax

                jax.clear_caches()
        df = results_table([done[k] for k in dict.fromkeys(keys) if k in done])
        try:
            write_run(folder, df, config, command, started, figures, len(damaged), tasks.fingerprint())
        except OSError as exc:
            raise UserError(f"cannot write the results into {run_dir} ({exc.strerror or exc}); every cell is saved "
                            "in cells/: free some space and rerun the same command") from None
    return df


def _compute(config: SweepConfig, folder: RunFolder, tasks: TaskSet, pending, executor, progress: Progress,
             solvers: tuple = ()) -> None:
    """Compute the pending cells and write each the moment it arrives."""
    runtime.enable_compilation_cache()
    units = make_units(config, [c for c, _ in pending], [k for _, k in pending], solvers)
    stream = (item for u in units for item in iter_unit(u, tasks)) if executor is None else executor.map_units(units)
    wanted = {k for _, k in pending}
    written = 0
    # closing() ends the stream at once on an exception (Ctrl-C): remote units are cancelled.
    with contextlib.closing(stream):
        for key, rows in stream:
            if key not in wanted:
                continue
            try:
                folder.write_cell(key, pd.DataFrame(rows).reindex(columns=metrics.NAMES))
            except OSError as exc:
                raise UserError(f"cannot write a cell into {folder.cells} ({exc.strerror or exc}); {written} new "
                                "cell(s) are saved: free some space and rerun the same command to resume") from None
            written += 1
            wanted.discard(key)
            progress.cell(key)
