"""Sweeps over depth, width and times: the grid, the resumable cell cache and the executors.

A *cell* is one grid point: ``(task_seed, width, depth, inner_time, finetune_time, outer_time,
mtl_data)``. Its rows (one per method x test task, and per network for finite widths) are written
atomically to ``<run>/cells/<key>.csv`` the moment they are computed, where ``key`` is a SHA-256 of
the cell's full configuration (task data fingerprint, architecture, methods, package cache version).
A rerun skips cells whose file exists, so an interrupted run resumes and never duplicates rows;
``results.csv`` is rebuilt from the cell files of the current grid.

Work is grouped into *units* that an executor runs: all infinite-width cells of one task set form one
unit (one kernel pass gives every depth, streamed one depth at a time), each finite-width cell
is its own unit. Units are pure functions of their description, so they can run in-process or on
Dask workers (:mod:`ntk_bridge.distributed`); only the client writes files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from ntk_bridge.errors import UserError, require
from ntk_bridge.kernels import Architecture, kernels_by_depth
from ntk_bridge.predictors import METHODS, PredictorConfig, predict_from_kernels, status_of
from ntk_bridge.tasks import GENERATORS, TaskSet, load_tasks

__all__ = ["SweepConfig", "Cell", "Unit", "plan", "compute_unit", "run_sweep", "COLUMNS", "CACHE_VERSION"]

CACHE_VERSION = 2

#: Columns of ``results.csv`` (documented in the README, "Results").
COLUMNS = [
    "method", "depth", "width", "inner_time", "finetune_time", "outer_time", "mtl_data", "seed",
    "network", "test_task", "pred_rms", "gap_to_mtl_rel", "gap_to_mtl_abs", "gap_to_baseline_rel",
    "test_mse", "dist_to_infinite_rel", "dist_to_linearized_rel", "status", "ridge_rel",
    "min_eig_rel", "cond", "tasks", "task_seed", "mode", "cell",
    # finite widths only: the discrete schedule followed and training diagnostics
    "inner_steps", "finetune_steps", "outer_steps", "outer_time_used", "linearized_to_infinite_rel",
    "infinite_gap_to_mtl_rel", "train_loss_rel", "dtype",
]


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: the grid and everything that defines its cells.

    ``tasks`` is a generator name (``subspace``, ``linear``, ``sinusoid``) or a ``.npz`` path;
    the sizes apply to generators only. ``seeds`` is the number of independently initialised
    networks per finite-width cell (infinite-width cells are the mean predictor: no seed);
    ``outer_steps`` (when the outer time is infinite), ``finite_dtype`` and ``linearized`` (also
    train every network's linearised twin) set how finite networks are trained
    (:class:`ntk_bridge.finite.TrainingConfig`).
    """

    depths: tuple[int, ...] = tuple(range(2, 33))
    widths: tuple[float, ...] = (math.inf,)
    inner_times: tuple[float, ...] = (0.01, 0.1, 1.0)
    finetune_times: tuple[float, ...] = (1.0,)
    outer_times: tuple[float, ...] = (math.inf,)
    methods: tuple[str, ...] = ("mtl", "anil", "maml")
    mtl_data: tuple[str, ...] = ("all", "query")
    tasks: str = "subspace"
    train_tasks: int = 10
    support: int = 5
    query: int = 10
    test_tasks: int = 20
    dim: int = 16
    task_seed: int = 0
    seeds: int = 1
    finite_mode: str = "centred"
    outer_steps: int = 300
    finite_dtype: str = "float64"
    linearized: bool = True
    rcond: float = 1e-10

    def __post_init__(self):
        require(len(self.depths) > 0 and min(self.depths) >= 1, "--depth: depths must be >= 1")
        require(len(self.widths) > 0 and all(w >= 1 for w in self.widths), "--width: widths must be >= 1")
        bad = [m for m in self.methods if m not in METHODS]
        require(not bad, f"--methods: unknown method(s) {', '.join(bad)}")
        for name in ("train_tasks", "support", "query", "test_tasks", "dim", "seeds"):
            require(int(getattr(self, name)) >= 1, f"--{name.replace('_', '-')} must be >= 1")
        require(self.finite_mode in ("centred", "raw"), "--finite-mode must be 'centred' or 'raw'")
        require(int(self.outer_steps) >= 1, "--outer-steps must be >= 1")
        require(self.finite_dtype in ("float64", "float32"), "--finite-dtype must be 'float64' or 'float32'")

    def training(self):
        """How finite networks are trained (:class:`ntk_bridge.finite.TrainingConfig`)."""
        from ntk_bridge.finite import TrainingConfig

        return TrainingConfig(outer_steps=int(self.outer_steps), dtype=self.finite_dtype,
                              linearized=bool(self.linearized))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("widths", "inner_times", "finetune_times", "outer_times"):
            d[k] = [_num(v) for v in d[k]]
        return d

    def load_tasks(self, seed: int | None = None) -> TaskSet:
        """The task set of this sweep (generated with ``task_seed`` or read from the file)."""
        if self.tasks in GENERATORS:
            sizes = dict(n_train=self.train_tasks, n_test=self.test_tasks, n_support=self.support,
                         n_query=self.query, dim=max(self.dim, 2) if self.tasks == "sinusoid" else self.dim)
            return GENERATORS[self.tasks](seed=self.task_seed if seed is None else seed, **sizes)
        return load_tasks(self.tasks)


def _num(v: float):
    """JSON-friendly number: ``inf`` as the string ``"inf"``."""
    return "inf" if math.isinf(v) else v


@dataclasses.dataclass(frozen=True)
class Cell:
    """One grid point of a sweep."""

    task_seed: int
    width: float
    depth: int
    inner_time: float
    finetune_time: float
    outer_time: float
    mtl_data: str

    @property
    def infinite(self) -> bool:
        return math.isinf(self.width)

    def predictor_config(self, rcond: float, steps: dict | None = None) -> PredictorConfig:
        return PredictorConfig(inner_time=self.inner_time, finetune_time=self.finetune_time,
                               outer_time=self.outer_time, mtl_data=self.mtl_data, rcond=rcond,
                               **(steps or {}))

    def key(self, context: dict) -> str:
        payload = dict(dataclasses.asdict(self), **context)
        payload = {k: (_num(v) if isinstance(v, float) else v) for k, v in payload.items()}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class Unit:
    """A unit of work: cells computed together (one kernel pass for every infinite-width cell, or
    every finite-width cell of one width and depth, which share their training runs)."""

    config: SweepConfig
    cells: tuple[Cell, ...]
    keys: tuple[str, ...]

    @property
    def label(self) -> str:
        c = self.cells[0]
        if c.infinite:
            return f"width inf, {len(self.cells)} cells"
        return f"width {int(c.width)}, depth {c.depth}, {len(self.cells)} cells"


def cell_context(config: SweepConfig, tasks: TaskSet, finite: bool = False) -> dict:
    """What, besides the cell's own fields, determines its rows (part of the cache key); finite-width
    cells also depend on how their networks are trained."""
    ctx = dict(cache_version=CACHE_VERSION, tasks=tasks.fingerprint(), methods=sorted(config.methods),
               architecture=Architecture().describe(), rcond=config.rcond)
    if finite:
        ctx.update(seeds=config.seeds, finite_mode=config.finite_mode, training=config.training().to_dict())
    return ctx


def plan(config: SweepConfig) -> tuple[TaskSet, list[Cell], list[str]]:
    """The task set, every cell of the grid and their cache keys."""
    tasks = config.load_tasks()
    cells = [Cell(config.task_seed, float(w), int(d), float(s), float(f), float(o), m)
             for w in config.widths for s in config.inner_times for f in config.finetune_times
             for o in config.outer_times for m in config.mtl_data for d in config.depths]
    ctx = {False: cell_context(config, tasks), True: cell_context(config, tasks, finite=True)}
    return tasks, cells, [c.key(ctx[not c.infinite]) for c in cells]


def make_units(config: SweepConfig, cells: Sequence[Cell], keys: Sequence[str]) -> list[Unit]:
    """Group pending cells into units: all infinite-width cells together; the finite-width cells of
    each (task set, width, depth) together, so that they share kernels and training runs."""
    inf = [(c, k) for c, k in zip(cells, keys) if c.infinite]
    units = []
    if inf:
        units.append(Unit(config, tuple(c for c, _ in inf), tuple(k for _, k in inf)))
    groups: dict[tuple, list] = {}
    for c, k in zip(cells, keys):
        if not c.infinite:
            groups.setdefault((c.task_seed, c.width, c.depth), []).append((c, k))
    units.extend(Unit(config, tuple(c for c, _ in g), tuple(k for _, k in g)) for g in groups.values())
    return units


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def _rel(a, b):
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float("nan")


def metric_rows(preds: dict[str, np.ndarray], statuses: dict[str, str], tasks: TaskSet,
                base: dict, diagnostics: dict | None = None) -> list[dict]:
    """Tidy rows for one grid point: one per method x test task.

    ``preds[method]`` is ``[M, m_q, k]``; ``preds`` must contain ``'mtl'`` and ``'baseline'``.
    """
    rows = []
    mtl, basel = preds["mtl"], preds["baseline"]
    y = tasks.test_query_y
    for method, values in preds.items():
        status = statuses[method]
        if status == "ok" and statuses["mtl"] != "ok":  # the gap inherits MTL's trouble
            status = f"mtl_{statuses['mtl']}"
        diag = (diagnostics or {}).get(method)
        for m in range(values.shape[0]):
            v = values[m]
            n = v.size
            row = dict(base, method=method, test_task=m,
                       pred_rms=float(np.linalg.norm(v) / math.sqrt(n)),
                       gap_to_mtl_rel=_rel(v, mtl[m]),
                       gap_to_mtl_abs=float(np.linalg.norm(v - mtl[m]) / math.sqrt(n)),
                       gap_to_baseline_rel=_rel(v, basel[m]),
                       test_mse=float(np.mean((v - y[m]) ** 2)) if y is not None else float("nan"),
                       status=status)
            if diag is not None:
                row.update(ridge_rel=diag.ridge_rel, min_eig_rel=diag.min_eig_rel, cond=diag.cond)
            if status == "nonfinite":
                for col in ("pred_rms", "gap_to_mtl_rel", "gap_to_mtl_abs", "gap_to_baseline_rel", "test_mse"):
                    row[col] = float("nan")
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Computing units
# ---------------------------------------------------------------------------------------------

def _infinite_rows(unit: Unit, tasks: TaskSet) -> Iterator[tuple[str, list[dict]]]:
    """Stream ``(key, rows)`` for the infinite-width cells of ``unit``: one kernel pass over the
    layers gives every depth; each depth's cells are computed as soon as its kernels exist.

    Each (depth, times) cell is one jitted call (compiled once per task layout): XLA's batched
    kernels round differently for different batch sizes, and a cell's numbers must not depend on
    which other cells happened to be pending (resume, Dask). On CPU this is also no slower than
    vmapping over depths (``benchmarks/``).
    """
    cfg = unit.config
    methods = tuple(dict.fromkeys(("mtl", "baseline") + tuple(cfg.methods)))
    by_depth: dict[int, list[tuple[Cell, str]]] = {}
    for c, k in zip(unit.cells, unit.keys):
        by_depth.setdefault(c.depth, []).append((c, k))
    for kern in kernels_by_depth(tasks.all_points(), depths=sorted(by_depth)):
        for cell, key in by_depth[kern.depth]:
            res = predict_from_kernels(kern.ntk, kern.readout, tasks, cell.predictor_config(cfg.rcond), methods)
            base = dict(depth=cell.depth, width=math.inf, inner_time=cell.inner_time,
                        finetune_time=cell.finetune_time, outer_time=cell.outer_time,
                        mtl_data=cell.mtl_data, seed=0, network="mean", dist_to_infinite_rel=0.0,
                        dist_to_linearized_rel=float("nan"), tasks=tasks.name, task_seed=cell.task_seed,
                        mode="mean", cell=key)
            yield key, metric_rows({m: p.values for m, p in res.items()},
                                   {m: status_of(p.diagnostics) for m, p in res.items()}, tasks, base,
                                   {m: p.diagnostics for m, p in res.items()})


def _finite_rows(unit: Unit, tasks: TaskSet) -> Iterator[tuple[str, list[dict]]]:
    from ntk_bridge import finite

    cfg = unit.config
    methods = tuple(m for m in cfg.methods if m != "baseline")
    if "mtl" not in methods:
        methods = ("mtl",) + methods
    first = unit.cells[0]
    require(all((c.width, c.depth) == (first.width, first.depth) for c in unit.cells),
            "a finite-width unit holds cells of one width and depth")
    arch = Architecture(width=int(first.width), n_outputs=tasks.n_outputs)
    kernels = next(kernels_by_depth(tasks.all_points(), depths=[first.depth], architecture=arch))
    shared: dict = {}  # training runs shared by the cells of this unit (finite.finite_cell's cache)
    for cell, key in zip(unit.cells, unit.keys):
        df = finite.finite_cell(tasks, cell.depth, int(cell.width), cell.predictor_config(cfg.rcond),
                                methods=methods, seed=0, n_networks=cfg.seeds, mode=cfg.finite_mode,
                                training=cfg.training(), kernels=kernels, cache=shared)
        # finite networks train for finite steps: an infinite outer time becomes a fixed number of
        # steps (ntk_bridge.finite.discretise). Keep the cell's nominal times so rows group with their
        # grid point.
        df = df.assign(outer_time_used=df["outer_time"], outer_time=cell.outer_time, inner_time=cell.inner_time,
                       finetune_time=cell.finetune_time, tasks=tasks.name, task_seed=cell.task_seed, cell=key)
        yield key, df.to_dict("records")


def iter_unit(unit: Unit, tasks: TaskSet | None = None) -> Iterator[tuple[str, list[dict]]]:
    """Compute a unit, yielding ``(cell key, rows)`` as each cell finishes."""
    tasks = tasks if tasks is not None else unit.config.load_tasks()
    if unit.cells[0].infinite:
        yield from _infinite_rows(unit, tasks)
    else:
        yield from _finite_rows(unit, tasks)


def compute_unit(unit: Unit) -> list[tuple[str, list[dict]]]:
    """A unit's results as a list (what a remote worker returns)."""
    return list(iter_unit(unit))


# ---------------------------------------------------------------------------------------------
# The cache on disk
# ---------------------------------------------------------------------------------------------

def cell_path(run_dir: str, key: str) -> str:
    return os.path.join(run_dir, "cells", f"{key}.csv")


def write_cell(run_dir: str, key: str, rows: list[dict]) -> None:
    """Write a cell's rows atomically (temporary file in the same folder, then ``os.replace``)."""
    folder = os.path.join(run_dir, "cells")
    os.makedirs(folder, exist_ok=True)
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            df.to_csv(fh, index=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, cell_path(run_dir, key))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_cells(run_dir: str, keys: Iterable[str]) -> pd.DataFrame:
    frames = [pd.read_csv(cell_path(run_dir, k), keep_default_na=True) for k in keys
              if os.path.exists(cell_path(run_dir, k))]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)


def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(("mtl", "anil", "maml", "fomaml", "baseline"))}
    df = df.assign(_m=df["method"].map(order).fillna(99), _n=df["network"].astype(str))
    df = df.sort_values(["width", "inner_time", "finetune_time", "outer_time", "mtl_data", "depth",
                         "_m", "_n", "test_task"], kind="stable")
    return df.drop(columns=["_m", "_n"]).reset_index(drop=True)


def check_writable(run_dir: str, cells: bool = True) -> None:
    """Create ``run_dir`` (and, for a run folder, ``cells/``) and prove it is writable, or raise
    ``UserError``."""
    try:
        os.makedirs(os.path.join(run_dir, "cells") if cells else run_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise UserError(f"--out: cannot write to {run_dir} ({exc.strerror or exc})") from None


def run_sweep(config: SweepConfig, run_dir: str, executor=None,
              on_start: Callable[[int, int], None] | None = None,
              on_cell: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run every pending cell of ``config`` into ``run_dir`` and return the full results table.

    Args:
      executor: ``None`` for in-process, else an object with ``map_units(units) -> iterator of
        (key, rows)`` (see :mod:`ntk_bridge.distributed`).
      on_start: called with ``(total cells, already done)`` before work starts.
      on_cell: called with each finished cell's key (progress).
    """
    tasks, cells, keys = plan(config)
    check_writable(run_dir)
    done = {k for k in keys if os.path.exists(cell_path(run_dir, k))}
    pending = [(c, k) for c, k in zip(cells, keys) if k not in done]
    if on_start:
        on_start(len(cells), len(done))
    units = make_units(config, [c for c, _ in pending], [k for _, k in pending])
    if executor is None:
        stream = (item for u in units for item in iter_unit(u, tasks))
    else:
        stream = executor.map_units(units)
    wanted = set(keys)
    # closing() ends the stream at once on an exception (Ctrl-C): remote units are cancelled.
    with contextlib.closing(stream):
        for key, rows in stream:
            if key in wanted and not os.path.exists(cell_path(run_dir, key)):
                write_cell(run_dir, key, rows)
            if on_cell:
                on_cell(key)
    df = sort_results(read_cells(run_dir, dict.fromkeys(keys)))
    return df
