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

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from typing import Iterator, Sequence

import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge import build, metrics, runtime, structured
from ntk_bridge.budget import MAX_CELLS, available_memory, check_feasible, estimate  # noqa: F401  (re-exported)
from ntk_bridge.errors import UserError, require
from ntk_bridge.provenance import CACHE_VERSION
from ntk_bridge.config import MUP_WIDTH, SweepConfig, finite_width, json_number
from ntk_bridge.results import results_table, sort_results
from ntk_bridge.runs import RunFolder
from ntk_bridge.tasks import TaskSet
from ntk_bridge.settings import LEARNED

__all__ = ["SweepConfig", "Cell", "Unit", "Progress", "plan", "make_units", "iter_unit", "run_sweep", "cell_context",
           "results_table", "sort_results", "estimate", "check_feasible", "MAX_CELLS", "METHODS"]

#: Methods a sweep can be asked for (the no-transfer baseline is always computed as well).
METHODS = registry.SWEEPABLE
#: The settings of a cell that methods can depend on (:data:`ntk_bridge.methods.SETTINGS` but width).
CELL_SETTINGS = ("inner_time", "finetune_time", "outer_time", "mtl_data", "test_head")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid point of a sweep."""

    task_seed: int
    width: float  # or the string 'mup' (the muP limit)
    depth: int
    inner_time: float
    finetune_time: float
    outer_time: float
    mtl_data: str
    test_head: str = LEARNED

    infinite = property(lambda self: self.width != MUP_WIDTH and math.isinf(self.width), doc="width inf: NTK limit")
    mup_limit = property(lambda self: self.width == MUP_WIDTH, doc="width 'mup': the muP limit")

    def predictor_config(self, rcond: float, steps: dict | None = None):
        """The cell's :class:`~ntk_bridge.predictors.PredictorConfig`."""
        from ntk_bridge.predictors import PredictorConfig

        return PredictorConfig(inner_time=self.inner_time, finetune_time=self.finetune_time,
                               outer_time=self.outer_time, mtl_data=self.mtl_data, test_head=self.test_head,
                               rcond=rcond,
                               **(steps or {}))

    def key(self, context: dict) -> str:
        payload = dict(dataclasses.asdict(self), **context)
        payload = {k: (json_number(v) if isinstance(v, float) else v) for k, v in payload.items()}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class Unit:
    """A unit of work: cells computed together (one kernel pass for every infinite-width cell, or
    every finite-width cell of one width and depth, which share their training runs); ``solvers``:
    the outer solvers the sweep resolved when it planned (:func:`ntk_bridge.structured.solver_plan`)."""

    config: SweepConfig
    cells: tuple[Cell, ...]
    keys: tuple[str, ...]
    solvers: tuple = ()

    @property
    def label(self) -> str:
        c = self.cells[0]
        if c.infinite or c.mup_limit:
            return f"width {'inf' if c.infinite else MUP_WIDTH}, {len(self.cells)} cells"
        return f"width {int(c.width)}, depth {c.depth}, {len(self.cells)} cells"


def cell_context(config: SweepConfig, tasks: TaskSet, finite: bool = False, solvers: tuple | None = None) -> dict:
    """What, besides the cell's own fields, determines its rows (part of the cache key): the task
    data, architecture, methods, ridge floor, the BLAS thread count and the versions of ntk_bridge
    and of the numerical packages (:func:`ntk_bridge.provenance.numerics_versions`); finite-width
    cells also depend on how their networks are trained."""
    from ntk_bridge.provenance import numerics_versions

    ctx = dict(cache_version=CACHE_VERSION, tasks=tasks.fingerprint(), methods=sorted(config.grid.methods),
               architecture=build.architecture(config, tasks).describe(), rcond=config.numerics.rcond,
               blas_threads=int(config.numerics.blas_threads), versions=dict(numerics_versions()))
    solvers = structured.grid_solvers(config.numerics.solver, tasks.layout, config.grid.outer_times, config.grid.mtl_data,
                                      solvers)
    if solvers != ["dense"]:  # the dense eigh is what every earlier key means
        ctx.update(outer_solver=solvers, cg_tol=structured.CG_TOL)
    if finite:
        # finite_rows 2: the rows carry kernel_movement and the sweep's architecture trains them (cells
        # cached before lack the one and may have trained another network: their keys differ)
        ctx.update(seeds=config.finite.seeds, finite_mode=config.finite.finite_mode, training=build.training(config).to_dict(),
                   finite_rows=2)
    return ctx


def plan(config: SweepConfig, tasks: TaskSet | None = None, solvers: tuple | None = None
         ) -> tuple[TaskSet, list[Cell], list[str]]:
    """The task set, every cell of the grid and their cache keys (``solvers``: the resolved outer solvers)."""
    tasks = build.task_set(config) if tasks is None else tasks
    g = config.grid
    cells = [Cell(config.tasks.task_seed, w if w == MUP_WIDTH else float(w), int(d), float(s), float(f), float(o), m, h)
             for w in g.widths for s in g.inner_times for f in g.finetune_times
             for o in g.outer_times for m in g.mtl_data for h in g.test_heads for d in g.depths]
    ctx = {finite: cell_context(config, tasks, finite=finite, solvers=solvers)
           for finite in {not c.infinite for c in cells}}
    return tasks, cells, [c.key(ctx[not c.infinite]) for c in cells]


def make_units(config: SweepConfig, cells: Sequence[Cell], keys: Sequence[str], solvers: tuple = ()) -> list[Unit]:
    """Group pending cells into units: all infinite-width cells together (all muP-limit ones too); the
    finite-width cells of each (task set, width, depth) together: they share kernels and training runs."""
    units = []
    for group in ([(c, k) for c, k in zip(cells, keys) if getattr(c, limit)] for limit in ("infinite", "mup_limit")):
        units += [Unit(config, tuple(c for c, _ in group), tuple(k for _, k in group), tuple(solvers))] if group else []
    groups: dict[tuple, list] = {}
    for c, k in zip(cells, keys):
        if not c.infinite and not c.mup_limit:
            groups.setdefault((c.task_seed, c.width, c.depth), []).append((c, k))
    units.extend(Unit(config, tuple(c for c, _ in g), tuple(k for _, k in g)) for g in groups.values())
    return units


# ---------------------------------------------------------------------------------------------
# Computing units
# ---------------------------------------------------------------------------------------------

def _infinite_rows(unit: Unit, tasks: TaskSet) -> Iterator[tuple[str, pd.DataFrame]]:
    """Stream ``(key, rows)`` for the infinite-width cells of ``unit``: one kernel pass over the layers gives every
    depth; each depth's cells are computed as soon as its kernels exist.

    Each method is one jitted call per (depth, settings) (compiled once per task layout and method): XLA's batched
    kernels round differently for different batch sizes, and a cell's numbers must not depend on which other cells
    happened to be pending (resume, Dask). On CPU this is also no slower than vmapping over depths (``benchmarks/``).
    A method is computed once for all the cells of a depth that agree on the settings it depends on
    (:mod:`ntk_bridge.methods`: ANIL not on MTL's training set, MTL not on the inner time or the test-head protocol,
    the baseline on neither); its numbers are the same bits as when computed per cell. The outer solver is the one
    the unit carries (resolved when the sweep planned).
    """
    from ntk_bridge.kernels import kernels_by_depth
    from ntk_bridge.predictors import predict_from_kernels

    cfg = unit.config
    reported = registry.ordered((registry.MTL.name, registry.BASELINE.name) + tuple(cfg.grid.methods))
    by_depth: dict[int, list[tuple[Cell, str]]] = {}
    for c, k in zip(unit.cells, unit.keys):
        by_depth.setdefault(c.depth, []).append((c, k))
    solvers = dict(unit.solvers)  # resolved at planning; an explicit solver where the unit carries none
    for kern in kernels_by_depth(tasks.all_points(), depths=sorted(by_depth), architecture=build.architecture(cfg, tasks)):
        computed: dict[tuple, object] = {}
        for cell, key in by_depth[kern.depth]:
            res = {}
            for m in reported:
                memo = (m,) + tuple(getattr(cell, setting) for setting in CELL_SETTINGS if registry.get(m).depends(setting))
                if memo not in computed:
                    computed[memo] = predict_from_kernels(kern.ntk, kern.readout, tasks,
                                                          cell.predictor_config(cfg.numerics.rcond), (m,),
                                                          solver=solvers.get((cell.outer_time, cell.mtl_data),
                                                                             cfg.numerics.solver))[m]
                res[m] = computed[memo]
            constants = dict(depth=cell.depth, width=math.inf, inner_time=cell.inner_time,
                             finetune_time=cell.finetune_time, outer_time=cell.outer_time, mtl_data=cell.mtl_data,
                             test_head=cell.test_head, seed=0, dist_to_infinite_rel=0.0,
                             dist_to_linearized_rel=float("nan"), tasks=tasks.name, task_seed=cell.task_seed,
                             mode="mean", cell=key)
            yield key, metrics.prediction_rows(
                {m: res[m].values[None] for m in reported},
                {m: [metrics.status_of(res[m].diagnostics)] for m in reported},
                tasks.test_query_y, ["mean"], constants, diagnostics={m: res[m].diagnostics for m in reported})


def _finite_rows(unit: Unit, tasks: TaskSet) -> Iterator[tuple[str, pd.DataFrame]]:
    from ntk_bridge import finite
    from ntk_bridge.kernels import kernels_by_depth

    cfg = unit.config
    methods = registry.ordered((registry.MTL.name,) + tuple(cfg.grid.methods))
    first = unit.cells[0]
    require(all((c.width, c.depth) == (first.width, first.depth) for c in unit.cells),
            "a finite-width unit holds cells of one width and depth")
    arch = dataclasses.replace(build.architecture(cfg, tasks), width=int(first.width), n_outputs=tasks.n_outputs)
    kernels = next(kernels_by_depth(tasks.all_points(), depths=[first.depth], architecture=arch))
    shared: dict = {}  # training runs shared by the cells of this unit (finite.finite_cell's cache)
    for cell, key in zip(unit.cells, unit.keys):
        df = finite.finite_cell(tasks, cell.depth, int(cell.width), cell.predictor_config(cfg.numerics.rcond),
                                methods=methods, seed=0, n_networks=cfg.finite.seeds, mode=cfg.finite.finite_mode,
                                architecture=arch, training=build.training(cfg), kernels=kernels, cache=shared)
        yield key, df.assign(tasks=tasks.name, task_seed=cell.task_seed, cell=key)


def iter_unit(unit: Unit, tasks: TaskSet | None = None) -> Iterator[tuple[str, pd.DataFrame]]:
    """Compute a unit, yielding ``(cell key, rows)`` as each cell finishes, with the BLAS libraries
    at the sweep's thread count (:func:`ntk_bridge.runtime.blas_threads`)."""
    tasks = tasks if tasks is not None else build.task_set(unit.config)
    from ntk_bridge.finite.mup_limit import limit_rows  # the muP limit's cells (width 'mup')
    rows = _infinite_rows if unit.cells[0].infinite else _finite_rows
    with runtime.blas_threads(unit.config.numerics.blas_threads):
        yield from (limit_rows(unit.config, unit.cells, unit.keys, tasks, build.architecture(unit.config, tasks),
                               build.training(unit.config)) if unit.cells[0].mup_limit else rows(unit, tasks))


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
              figures: bool = True, command: str | None = None, release_memory: bool = False) -> pd.DataFrame:
    """Run every pending cell of ``config`` into ``run_dir`` and return the full results table.

    Writes ``cells/`` (one verified file per cell, as each is computed), then ``results.csv``, ``config.json``,
    ``summary.md`` and, with ``figures``, the figures of the run (:func:`ntk_bridge.report.write_run`) -- the same
    folder ``ntk-bridge sweep`` writes. ``--solver auto`` is resolved once, here (:func:`structured.solver_plan`).

    Args:
      executor: ``None`` for in-process, else an object with ``map_units(units) -> iterator of
        (key, rows)`` (see :mod:`ntk_bridge.distributed`).
      progress: a :class:`Progress` to report to.
      command: the command line to record (``config.json``, ``summary.md``).
      release_memory: drop JAX's compiled programs (``jax.clear_caches()``, every program of the process; they
        reload from the persistent compilation cache) once the cells are computed and before the figures are
        drawn: the command line does this, which keeps the default sweep's peak memory about 60 MB lower
        (``benchmarks/README.md``).
    """
    from ntk_bridge.report import write_run

    started = time.time()
    progress = progress or Progress()
    folder = RunFolder(run_dir)
    tasks = build.task_set(config)
    est = check_feasible(config, tasks)  # before anything is planned, allocated or written
    solvers = structured.solver_plan(config.numerics.solver, tasks.layout, config.grid.outer_times,
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
