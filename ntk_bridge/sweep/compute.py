"""A unit's rows: the cells of a :class:`~ntk_bridge.sweep.plan.Unit` computed, streamed ``(key, rows)`` as
each cell finishes. Units are pure functions of their description, so they can run in-process or on Dask
workers (:mod:`ntk_bridge.distributed`); only the client writes files.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge import build, metrics, runtime
from ntk_bridge.axes import AXES
from ntk_bridge.csvtext import Rows
from ntk_bridge.errors import require
from ntk_bridge.sweep.plan import CELL_SETTINGS, Cell, Unit
from ntk_bridge.tasks import TaskSet

__all__ = ["iter_unit", "infinite_rows", "finite_rows"]


#: Up to this many points, :func:`infinite_rows` compiles the first depth's programs on stand-in kernels while
#: the kernel pass runs (two ``points x points`` identities; above it, their memory and their computation would
#: cost more than the compilations' overlap saves).
STAND_IN_POINTS = 1024


def infinite_rows(cells: Sequence[Cell], keys: Sequence[str], tasks: TaskSet, architecture, methods: Sequence[str],
                  rcond: float, solvers: dict, solver: str, warm_up: bool = True) -> Iterator[tuple[str, Rows]]:
    """Stream ``(key, rows)`` for infinite-width ``cells`` (their cache ``keys``): one kernel pass of
    ``architecture`` over the layers gives every depth; each depth's cells are computed as soon as its kernels
    exist, and its rows are made while the next depth's calls compute. ``methods``: those asked for (MTL and the
    baseline are always reported); ``rcond``: the ridge floor; ``solvers``: ``{(outer_time, mtl_data): solver}``
    as resolved when the sweep planned, else ``solver``.

    Each method is one jitted call per (depth, settings) (compiled once per task layout and method): XLA's batched
    kernels round differently for different batch sizes, and a cell's numbers must not depend on which other cells
    happened to be pending (resume, Dask). On CPU this is also no slower than vmapping over depths (``benchmarks/``).
    A method is computed once for all the cells of a depth that agree on the settings it depends on
    (:mod:`ntk_bridge.methods`: ANIL not on MTL's training set, MTL not on the inner time or the test-head protocol,
    the baseline on neither); its numbers are the same bits as when computed per cell. A depth's calls are made
    side by side (:func:`ntk_bridge.runtime.concurrently`). With ``warm_up`` (and at most :data:`STAND_IN_POINTS`
    points), the first depth's calls are first made on stand-in kernels of the same shapes, started before the
    kernel pass: their programs compile (or load) on the other cores while the kernels are computed, and the
    real calls find them ready (the same programs, so the same bits); the stand-ins' results are dropped.
    """
    from ntk_bridge.kernels import kernels_by_depth
    from ntk_bridge.predictors import predict_from_kernels

    reported = registry.ordered((registry.MTL.name, registry.BASELINE.name) + tuple(methods))
    by_depth: dict[int, list[tuple[Cell, str]]] = {}
    for c, k in zip(cells, keys):
        by_depth.setdefault(c.depth, []).append((c, k))

    def depth_calls(depth, ntk, readout):
        calls, uses = {}, []  # {memo: the call computing it}, [(cell, key, {method: memo})]
        for cell, key in by_depth[depth]:
            memos = {m: (m,) + tuple(getattr(cell, setting) for setting in CELL_SETTINGS
                                     if registry.get(m).depends(setting)) for m in reported}
            for m, memo in memos.items():
                calls.setdefault(memo, functools.partial(
                    predict_from_kernels, ntk, readout, tasks, cell.predictor_config(rcond), (m,),
                    solver=solvers.get((cell.outer_time, cell.mtl_data), solver)))
            uses.append((cell, key, memos))
        return calls, uses

    points = tasks.all_points()
    if warm_up and len(points) <= STAND_IN_POINTS and runtime.side_by_side():
        stand_in = np.eye(len(points))
        runtime.started(depth_calls(min(by_depth), stand_in, stand_in)[0])  # results dropped
    pending = None  # the depth whose calls are computing: its cells, and the wait for its calls
    for kern in kernels_by_depth(points, depths=sorted(by_depth), architecture=architecture):
        calls, uses = depth_calls(kern.depth, kern.ntk, kern.readout)
        waiting = runtime.started(calls)
        if pending is not None:  # the previous depth's rows are made while this depth's calls compute
            yield from _depth_rows(*pending, tasks, reported)
        pending = (uses, waiting)
    if pending is not None:
        yield from _depth_rows(*pending, tasks, reported)


def _depth_rows(uses, waiting, tasks: TaskSet, reported) -> Iterator[tuple[str, Rows]]:
    """``(key, rows)`` of the cells of one depth (``uses``: ``[(cell, key, {method: memo})]``) once its calls
    (``waiting``: :func:`ntk_bridge.runtime.started`) are computed."""
    computed = waiting()
    for cell, key, memos in uses:
        res = {m: computed[memo][m] for m, memo in memos.items()}
        constants = dict({axis.column: getattr(cell, axis.column) for axis in AXES}, seed=0,
                         dist_to_infinite_rel=0.0, dist_to_linearized_rel=float("nan"), tasks=tasks.name,
                         task_seed=cell.task_seed, mode="mean", cell=key)
        yield key, metrics.prediction_columns(
            {m: res[m].values[None] for m in reported},
            {m: [metrics.status_of(res[m].diagnostics)] for m in reported},
            tasks.test_query_y, ["mean"], constants, diagnostics={m: res[m].diagnostics for m in reported})


def finite_rows(cells: Sequence[Cell], keys: Sequence[str], tasks: TaskSet, architecture, methods: Sequence[str],
                rcond: float, seeds: int, mode: str, training) -> Iterator[tuple[str, pd.DataFrame]]:
    """Stream ``(key, rows)`` for finite-width ``cells`` of one width and depth: ``seeds`` networks of
    ``architecture`` at that width, trained under ``training`` (:class:`ntk_bridge.finite.TrainingConfig`) for
    MTL and ``methods`` in ``mode`` (``'centred'`` or ``'raw'``), the cells sharing their training runs."""
    from ntk_bridge import finite
    from ntk_bridge.kernels import kernels_by_depth

    methods = registry.ordered((registry.MTL.name,) + tuple(methods))
    first = cells[0]
    require(all((c.width, c.depth) == (first.width, first.depth) for c in cells),
            "a finite-width unit holds cells of one width and depth")
    arch = dataclasses.replace(architecture, width=int(first.width), n_outputs=tasks.n_outputs)
    kernels = next(kernels_by_depth(tasks.all_points(), depths=[first.depth], architecture=arch))
    shared: dict = {}  # training runs shared by the cells of this unit (finite.finite_cell's cache)
    for cell, key in zip(cells, keys):
        df = finite.finite_cell(tasks, cell.depth, int(cell.width), cell.predictor_config(rcond),
                                methods=methods, seed=0, n_networks=seeds, mode=mode,
                                architecture=arch, training=training, kernels=kernels, cache=shared)
        yield key, df.assign(tasks=tasks.name, task_seed=cell.task_seed, cell=key)
    # this width and depth's compiled trainers and kernel functions are not used again: kept, they added about
    # 0.1 GB per unit (a sweep of 20 units of ReLU networks to width 1024 peaked at 2.2 GB)
    finite.release_programs()


def iter_unit(unit: Unit, tasks: TaskSet | None = None, frames: bool = True
              ) -> Iterator[tuple[str, pd.DataFrame | Rows]]:
    """Compute a unit, yielding ``(cell key, rows)`` as each cell finishes, with the BLAS libraries
    at the sweep's thread count (:func:`ntk_bridge.runtime.blas_threads`). The unit's config is read here,
    once: the compute functions take what they use as arguments. ``rows`` is a DataFrame in the
    :data:`ntk_bridge.metrics.NAMES` schema; with ``frames=False``, an infinite-width cell's rows are
    :class:`~ntk_bridge.csvtext.Rows` instead (what a sweep writes, without the DataFrame)."""
    from ntk_bridge.finite.mup_limit import limit_rows  # the muP limit's cells (width 'mup')

    config = unit.config
    tasks = tasks if tasks is not None else build.task_set(config)
    arch, methods, rcond = build.architecture(config, tasks), config.grid.methods, config.numerics.rcond
    cells, keys = unit.cells, unit.keys
    if cells[0].mup_limit:
        rows = limit_rows(cells, keys, tasks, arch, build.training(config), methods, rcond)
    elif cells[0].infinite:
        # the outer solvers resolved at planning; the configured one where the unit carries none
        rows = infinite_rows(cells, keys, tasks, arch, methods, rcond, dict(unit.solvers), config.numerics.solver)
    else:
        rows = finite_rows(cells, keys, tasks, arch, methods, rcond, config.finite.seeds, config.finite.finite_mode,
                           build.training(config))
    with runtime.blas_threads(config.numerics.blas_threads):
        for key, got in rows:
            yield key, got.frame() if frames and isinstance(got, Rows) else got
