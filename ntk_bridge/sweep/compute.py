"""A unit's rows: the cells of a :class:`~ntk_bridge.sweep.plan.Unit` computed, streamed ``(key, rows)`` as
each cell finishes. Units are pure functions of their description, so they can run in-process or on Dask
workers (:mod:`ntk_bridge.distributed`); only the client writes files.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge import build, metrics, runtime
from ntk_bridge.axes import AXES
from ntk_bridge.errors import require
from ntk_bridge.sweep.plan import CELL_SETTINGS, Cell, Unit
from ntk_bridge.tasks import TaskSet

__all__ = ["iter_unit"]


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
            constants = dict({axis.column: getattr(cell, axis.column) for axis in AXES}, seed=0,
                             dist_to_infinite_rel=0.0, dist_to_linearized_rel=float("nan"), tasks=tasks.name,
                             task_seed=cell.task_seed, mode="mean", cell=key)
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
