"""The grid of a sweep: its cells, their cache keys and the units an executor runs.

A *cell* is one grid point: the task seed and one value of every axis of the grid
(:data:`ntk_bridge.axes.AXES`), ``(task_seed, width, depth, inner_time, finetune_time, outer_time, mtl_data,
test_head)``; its key is a SHA-256 of everything that determines its rows (:func:`cell_context`). A *unit* is
cells computed together (:func:`make_units`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from typing import Sequence

from ntk_bridge import methods as registry
from ntk_bridge import build
from ntk_bridge.axes import AXES
from ntk_bridge import solvers as outer_solvers
from ntk_bridge.provenance import CACHE_VERSION
from ntk_bridge.config import MUP_WIDTH, SweepConfig, json_number
from ntk_bridge.settings import LEARNED
from ntk_bridge.tasks import TaskSet

__all__ = ["Cell", "Unit", "plan", "make_units", "cell_context", "METHODS", "CELL_SETTINGS"]

#: Methods a sweep can be asked for (the no-transfer baseline is always computed as well).
METHODS = registry.SWEEPABLE
#: The settings of a cell that its predictors take, the columns of the axes that set a
#: :class:`~ntk_bridge.predictors.PredictorConfig` field (:data:`ntk_bridge.methods.SETTINGS` but width,
#: which a unit holds constant).
CELL_SETTINGS = tuple(axis.column for axis in AXES if axis.predictor is not None)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid point of a sweep: the task seed and one value of every axis (field: the axis's
    ``column``). The fields, their order and their values are part of every cache key (:meth:`key`)."""

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

        settings = {axis.predictor: getattr(self, axis.column) for axis in AXES if axis.predictor is not None}
        return PredictorConfig(**settings, rcond=rcond, **(steps or {}))

    def key(self, context: dict) -> str:
        payload = dict(dataclasses.asdict(self), **context)
        payload = {k: (json_number(v) if isinstance(v, float) else v) for k, v in payload.items()}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class Unit:
    """A unit of work: cells computed together (one kernel pass for every infinite-width cell, or
    every finite-width cell of one width and depth, which share their training runs); ``solvers``:
    the outer solvers the sweep resolved when it planned (:func:`ntk_bridge.solvers.solver_plan`)."""

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
    solvers = outer_solvers.grid_solvers(config.numerics.solver, tasks.layout, config.grid.outer_times,
                                         config.grid.mtl_data, solvers)
    if solvers != ["dense"]:  # the dense eigh is what every earlier key means
        ctx.update(outer_solver=solvers, cg_tol=outer_solvers.CG_TOL)
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
    # one cell per combination, the first axis outermost and depth innermost
    cells = [Cell(task_seed=config.tasks.task_seed, **{axis.column: axis.cell(v) for axis, v in zip(AXES, point)})
             for point in itertools.product(*(axis.of(g) for axis in AXES))]
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


