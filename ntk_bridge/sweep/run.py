"""Running a sweep: the run folder, resume, the executor and what it reports (:class:`Progress`).

:func:`run_sweep` owns the run folder: besides ``cells/`` (one verified file per cell, written atomically
the moment it is computed; a rerun skips the cells whose file exists and verifies, so an interrupted run
resumes and never duplicates rows) it writes ``results.csv``, ``config.json``, ``summary.md`` and the
figures (:func:`ntk_bridge.sweep.write.write_run`), exactly as ``ntk-bridge sweep`` does.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Sequence

import pandas as pd

from ntk_bridge import build, metrics, runtime
from ntk_bridge import solvers as outer_solvers
from ntk_bridge.budget import check_feasible
from ntk_bridge.config import SweepConfig
from ntk_bridge.csvtext import Rows
from ntk_bridge.errors import UserError
from ntk_bridge.figures import drawer as drawing
from ntk_bridge.results import results_table
from ntk_bridge.runs import RunFolder
from ntk_bridge.sweep.compute import iter_unit
from ntk_bridge.sweep.plan import make_units, plan
from ntk_bridge.sweep.write import write_run
from ntk_bridge.tasks import TaskSet

__all__ = ["Progress", "run_sweep", "run_sweeps", "SweepJob"]


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
              tasks: TaskSet | None = None, report=None, draw_aside: bool = False, drawer=None) -> pd.DataFrame:
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
      report: called once with the report tables of ``summary.md`` (:func:`ntk_bridge.report.sweep_tables`)
        when they are written: the command line prints them without building them again.
      draw_aside: draw the figures in a second process started before the cells are computed
        (:class:`ntk_bridge.figures.drawer.Drawer`) when they are estimated to take at least
        :data:`ntk_bridge.figures.drawer.ASIDE_SECONDS`; the files are the same.
      drawer: a :class:`~ntk_bridge.figures.drawer.Drawer` the caller started (and closes) to draw the figures
        in, when cells are computed: the command line starts it before its own imports, which it then
        overlaps.
    """
    job = SweepJob(config, run_dir, figures=figures, command=command, tasks=tasks)
    sweep = _run_together([job], executor, progress or Progress(), release_memory, draw_aside, drawer)[0]
    if report is not None:
        report(sweep.tables)
    return sweep.results


@dataclasses.dataclass(frozen=True)
class SweepJob:
    """One sweep of :func:`run_sweeps`: its config, its run folder and what :func:`run_sweep` takes besides."""

    config: SweepConfig
    run_dir: str
    figures: bool = True
    command: str | None = None
    tasks: TaskSet | None = None


def run_sweeps(jobs: Sequence[SweepJob], executor=None, progress: Progress | None = None) -> list[pd.DataFrame]:
    """Run several sweeps (each into its own run folder, exactly as :func:`run_sweep` would) and return
    their results tables, in order.

    In-process (``executor=None``) they run one after another, each written before the next starts. With an
    executor, every pending unit of every sweep is submitted in one ``map_units`` call, so the workers share
    the whole panel instead of one sweep at a time; each cell is still written to its own folder the moment it
    arrives, and each folder's tables once all cells are in. ``progress`` then reports on all of them together
    (one ``start`` with the totals). The same cells give the same rows either way.
    """
    progress = progress or Progress()
    dirs = [os.path.abspath(j.run_dir) for j in jobs]
    if len(set(dirs)) != len(dirs):
        raise UserError("two sweeps of one run cannot share a run folder")
    if executor is None:
        return [_run_together([job], None, progress)[0].results for job in jobs]
    return [s.results for s in _run_together(list(jobs), executor, progress)]


@dataclasses.dataclass
class _Sweep:
    """A sweep being run: its job, folder, task set, planned cells and what its folder already holds."""

    job: SweepJob
    folder: RunFolder
    tasks: TaskSet
    solvers: tuple
    cells: list
    keys: list
    started: float
    seconds: float = 0.0  # the estimated time of its cells (:func:`ntk_bridge.budget.check_feasible`)
    done: dict = dataclasses.field(default_factory=dict)
    damaged: list = dataclasses.field(default_factory=list)
    results: pd.DataFrame | None = None  # once written: the results table and its report tables
    tables: list | None = None

    @property
    def pending(self) -> list:
        return [(c, k) for c, k in zip(self.cells, self.keys) if k not in self.done]


def _prepare(job: SweepJob, progress: Progress) -> _Sweep:
    """Build, check and plan one sweep (nothing written but the check that its folder is writable)."""
    started = time.time()
    config = job.config
    tasks = build.task_set(config) if job.tasks is None else job.tasks
    est = check_feasible(config, tasks)  # before anything is planned, allocated or written
    solvers = outer_solvers.solver_plan(config.numerics.solver, tasks.layout, config.grid.outer_times,
                                     config.grid.mtl_data)
    tasks, cells, keys = plan(config, tasks, solvers)
    if est["seconds"] > 600:
        progress.note(f"estimated time: about {est['seconds'] / 60:.0f} minutes ({est['cells']:,} cells over "
                      f"{est['points']:,} points)")
    folder = RunFolder(job.run_dir)
    folder.check_writable()
    return _Sweep(job, folder, tasks, solvers, cells, keys, started, est["seconds"])


def _run_together(jobs: list[SweepJob], executor, progress: Progress, release_memory: bool = False,
                  draw_aside: bool = False, given=None) -> list[_Sweep]:
    """Plan every sweep of ``jobs``, hold their folders' locks, compute their pending cells in one stream
    and write each folder: :func:`run_sweep` for one job, :func:`run_sweeps` for several. ``given``: a
    drawer the caller started (:func:`run_sweep`'s ``drawer``)."""
    sweeps = [_prepare(job, progress) for job in jobs]
    drawer = None
    with contextlib.ExitStack() as stack:
        for s in sweeps:
            stack.enter_context(s.folder.lock(
                on_wait=lambda d=s.job.run_dir: progress.note(f"another sweep is writing to {d}; waiting for it")))
        for s in sweeps:
            s.folder.remove_leftovers()  # a killed run's temporary files; every writer holds the lock
            s.done, s.damaged = s.folder.read_cells(dict.fromkeys(s.keys),
                                                    {k: dataclasses.asdict(c) for c, k in zip(s.cells, s.keys)})
            if s.damaged:
                progress.note(f"{len(s.damaged)} damaged cell file(s) in {s.folder.cells} failed verification and "
                              "are computed again")
        progress.start(sum(len(set(s.keys)) for s in sweeps), sum(len(s.done) for s in sweeps),
                       sum(len(s.damaged) for s in sweeps))
        if any(s.pending for s in sweeps):
            if given is not None:
                drawer = given
            elif draw_aside and any(s.job.figures for s in sweeps) and \
                    sum(s.seconds for s in sweeps) >= drawing.ASIDE_SECONDS:
                drawer = stack.enter_context(drawing.Drawer())
            _compute(sweeps, executor, progress)
            for s in sweeps:
                s.done.update(s.folder.read_cells(k for _, k in s.pending)[0])
            if release_memory:
                import jax

                jax.clear_caches()
        for s in sweeps:
            _write(s, drawer)
        return sweeps


def _write(s: _Sweep, drawer=None) -> None:
    s.results = df = results_table([s.done[k] for k in dict.fromkeys(s.keys) if k in s.done])
    try:
        s.tables = write_run(s.folder, df, s.job.config, s.job.command, s.started, s.job.figures, len(s.damaged),
                             s.tasks.fingerprint(), drawer)
    except OSError as exc:
        raise UserError(f"cannot write the results into {s.job.run_dir} ({exc.strerror or exc}); every cell is saved "
                        "in cells/: free some space and rerun the same command") from None


def _compute(sweeps: list[_Sweep], executor, progress: Progress) -> None:
    """Compute the pending cells of every sweep in one stream and write each the moment it arrives, into the
    folder of the sweep it belongs to."""
    runtime.enable_compilation_cache()
    units, tasks_of, wanted = [], {}, {}
    for s in sweeps:
        pending = s.pending
        for unit in make_units(s.job.config, [c for c, _ in pending], [k for _, k in pending], s.solvers):
            units.append(unit)
            tasks_of[id(unit)] = s.tasks
        for _, k in pending:
            wanted.setdefault(k, []).append(s)
    stream = (item for u in units for item in iter_unit(u, tasks_of[id(u)], frames=False)) if executor is None \
        else executor.map_units(units)
    written = 0
    # closing() ends the stream at once on an exception (Ctrl-C): remote units are cancelled.
    with contextlib.closing(stream):
        for key, rows in stream:
            for s in wanted.pop(key, ()):
                try:
                    s.folder.write_cell(key, rows if isinstance(rows, Rows) else
                                        pd.DataFrame(rows).reindex(columns=metrics.NAMES))
                except OSError as exc:
                    raise UserError(f"cannot write a cell into {s.folder.cells} ({exc.strerror or exc}); {written} "
                                    "new cell(s) are saved: free some space and rerun the same command to resume"
                                    ) from None
                written += 1
                progress.cell(key)
