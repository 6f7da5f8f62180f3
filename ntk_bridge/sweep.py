"""Sweeps over depth, width and times: the grid, the resumable cell cache and the executors.

A *cell* is one grid point: ``(task_seed, width, depth, inner_time, finetune_time, outer_time,
mtl_data)``. Its rows (one per method x test task, and per network for finite widths) are written
atomically to ``<run>/cells/<key>.csv`` the moment they are computed, where ``key`` is a SHA-256 of
everything that determines them (:func:`cell_context`: task data fingerprint, architecture, methods,
the BLAS thread count, the versions of ntk_bridge and of the numerical packages). A rerun skips
cells whose file exists and verifies (:class:`ntk_bridge.runs.RunFolder`), so an interrupted run
resumes and never duplicates rows; ``results.csv`` is rebuilt from the cell files of the current
grid.

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

import numpy as np
import pandas as pd

from ntk_bridge import runtime
from ntk_bridge.errors import require
from ntk_bridge.runs import RunFolder
from ntk_bridge.tasks import GENERATORS, TaskSet, load_tasks

__all__ = ["SweepConfig", "Cell", "Unit", "plan", "make_units", "iter_unit", "run_sweep", "cell_context",
           "COLUMNS", "CACHE_VERSION", "METHODS"]

#: Bumped when a change of ntk_bridge's code changes the numbers a cell holds (part of every key).
CACHE_VERSION = 3
#: Methods a sweep can compute (the no-transfer baseline is always computed as well).
METHODS = ("mtl", "anil", "maml", "fomaml")

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
    blas_threads: int = runtime.DEFAULT_BLAS_THREADS

    def __post_init__(self):
        require(len(self.depths) > 0 and min(self.depths) >= 1, "--depth: depths must be >= 1")
        require(len(self.widths) > 0 and all(w >= 1 for w in self.widths), "--width: widths must be >= 1")
        bad = [m for m in self.methods if m not in METHODS]
        require(not bad, f"--methods: unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
        require("fomaml" not in self.methods or any(math.isfinite(w) for w in self.widths),
                "--methods: fomaml exists for finite widths only (its infinite-width kernel is not MAML's)")
        for name in ("train_tasks", "support", "query", "test_tasks", "dim", "seeds"):
            require(int(getattr(self, name)) >= 1, f"--{name.replace('_', '-')} must be >= 1")
        require(self.finite_mode in ("centred", "raw"), "--finite-mode must be 'centred' or 'raw'")
        require(int(self.outer_steps) >= 1, "--outer-steps must be >= 1")
        require(self.finite_dtype in ("float64", "float32"), "--finite-dtype must be 'float64' or 'float32'")
        require(int(self.blas_threads) >= 1, "--blas-threads must be >= 1")

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

    def predictor_config(self, rcond: float, steps: dict | None = None):
        """The cell's :class:`~ntk_bridge.predictors.PredictorConfig`."""
        from ntk_bridge.predictors import PredictorConfig

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
    """What, besides the cell's own fields, determines its rows (part of the cache key): the task
    data, architecture, methods, ridge floor, the BLAS thread count and the versions of ntk_bridge
    and of the numerical packages (:func:`ntk_bridge.provenance.numerics_versions`); finite-width
    cells also depend on how their networks are trained."""
    from ntk_bridge.kernels import Architecture
    from ntk_bridge.provenance import numerics_versions

    ctx = dict(cache_version=CACHE_VERSION, tasks=tasks.fingerprint(), methods=sorted(config.methods),
               architecture=Architecture().describe(), rcond=config.rcond,
               blas_threads=int(config.blas_threads), versions=dict(numerics_versions()))
    if finite:
        ctx.update(seeds=config.seeds, finite_mode=config.finite_mode, training=config.training().to_dict())
    return ctx


def plan(config: SweepConfig) -> tuple[TaskSet, list[Cell], list[str]]:
    """The task set, every cell of the grid and their cache keys."""
    tasks = config.load_tasks()
    cells = [Cell(config.task_seed, float(w), int(d), float(s), float(f), float(o), m)
             for w in config.widths for s in config.inner_times for f in config.finetune_times
             for o in config.outer_times for m in config.mtl_data for d in config.depths]
    ctx = {finite: cell_context(config, tasks, finite=finite)
           for finite in {not c.infinite for c in cells}}
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

    Each method is one jitted call per (depth, times) (compiled once per task layout and method):
    XLA's batched kernels round differently for different batch sizes, and a cell's numbers must not
    depend on which other cells happened to be pending (resume, Dask). On CPU this is also no slower
    than vmapping over depths (``benchmarks/``). The methods that do not depend on MTL's training
    set (ANIL, MAML, the baseline) are computed once for all the ``mtl_data`` cells of a depth and
    time combination; their numbers are the same bits as when computed per cell.
    """
    from ntk_bridge.kernels import kernels_by_depth
    from ntk_bridge.predictors import predict_from_kernels, status_of

    cfg = unit.config
    others = tuple(dict.fromkeys(("baseline",) + tuple(m for m in cfg.methods if m != "mtl")))
    by_depth: dict[int, dict[tuple, list[tuple[Cell, str]]]] = {}
    for c, k in zip(unit.cells, unit.keys):
        times = (c.inner_time, c.finetune_time, c.outer_time)
        by_depth.setdefault(c.depth, {}).setdefault(times, []).append((c, k))
    for kern in kernels_by_depth(tasks.all_points(), depths=sorted(by_depth)):
        for group in by_depth[kern.depth].values():
            shared = predict_from_kernels(kern.ntk, kern.readout, tasks, group[0][0].predictor_config(cfg.rcond),
                                          others)
            for cell, key in group:
                res = dict(predict_from_kernels(kern.ntk, kern.readout, tasks, cell.predictor_config(cfg.rcond),
                                                ("mtl",)), **shared)
                res = {m: res[m] for m in dict.fromkeys(("mtl", "baseline") + tuple(cfg.methods))}
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
    from ntk_bridge.kernels import Architecture, kernels_by_depth

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
    """Compute a unit, yielding ``(cell key, rows)`` as each cell finishes, with the BLAS libraries
    at the sweep's thread count (:func:`ntk_bridge.runtime.blas_threads`)."""
    tasks = tasks if tasks is not None else unit.config.load_tasks()
    rows = _infinite_rows if unit.cells[0].infinite else _finite_rows
    with runtime.blas_threads(unit.config.blas_threads):
        yield from rows(unit, tasks)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

def sort_results(df: pd.DataFrame) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(("mtl", "anil", "maml", "fomaml", "baseline"))}
    df = df.assign(_m=df["method"].map(order).fillna(99), _n=df["network"].astype(str))
    df = df.sort_values(["width", "inner_time", "finetune_time", "outer_time", "mtl_data", "depth",
                         "_m", "_n", "test_task"], kind="stable")
    return df.drop(columns=["_m", "_n"]).reset_index(drop=True)


def results_table(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The cells' rows as one sorted table in the :data:`COLUMNS` schema."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return sort_results(pd.concat(frames, ignore_index=True))


class Progress:
    """What a sweep reports while it runs (override any method; the defaults do nothing).

    ``start(total, cached, damaged)``: cells in the grid, cells found in the cache, damaged cell
    files that will be recomputed; ``cell(key)``: a cell was computed and written.
    """

    def start(self, total: int, cached: int, damaged: int) -> None:
        pass

    def cell(self, key: str) -> None:
        pass


def run_sweep(config: SweepConfig, run_dir: str, executor=None, progress: Progress | None = None,
              figures: bool = True, command: str | None = None, release_memory: bool = False) -> pd.DataFrame:
    """Run every pending cell of ``config`` into ``run_dir`` and return the full results table.

    Writes ``cells/`` (one verified file per cell, as each is computed), then ``results.csv``,
    ``config.json``, ``summary.md`` and, with ``figures``, the figures of the run
    (:func:`ntk_bridge.report.write_run`) -- the same folder ``ntk-bridge sweep`` writes.

    Args:
      executor: ``None`` for in-process, else an object with ``map_units(units) -> iterator of
        (key, rows)`` (see :mod:`ntk_bridge.distributed`).
      progress: a :class:`Progress` to report to.
      command: the command line to record (``config.json``, ``summary.md``).
      release_memory: drop JAX's compiled programs (``jax.clear_caches()``, every program of the
        process; they reload from the persistent compilation cache) once the cells are computed and
        before the figures are drawn: the command line does this, which keeps the default sweep's
        peak memory about 60 MB lower (``benchmarks/README.md``).
    """
    from ntk_bridge.report import write_run

    started = time.time()
    progress = progress or Progress()
    folder = RunFolder(run_dir)
    tasks, cells, keys = plan(config)
    folder.check_writable()
    done, damaged = folder.read_cells(dict.fromkeys(keys))
    pending = [(c, k) for c, k in zip(cells, keys) if k not in done]
    progress.start(len(set(keys)), len(done), len(damaged))
    if pending:
        runtime.enable_compilation_cache()
        units = make_units(config, [c for c, _ in pending], [k for _, k in pending])
        if executor is None:
            stream = (item for u in units for item in iter_unit(u, tasks))
        else:
            stream = executor.map_units(units)
        wanted = {k for _, k in pending}
        # closing() ends the stream at once on an exception (Ctrl-C): remote units are cancelled.
        with contextlib.closing(stream):
            for key, rows in stream:
                if key in wanted:
                    folder.write_cell(key, pd.DataFrame(rows).reindex(columns=COLUMNS))
                    wanted.discard(key)
                    progress.cell(key)
        done.update(folder.read_cells(k for _, k in pending)[0])
        if release_memory:
            import jax

            jax.clear_caches()
    df = results_table([done[k] for k in dict.fromkeys(keys) if k in done])
    write_run(folder, df, config, command=command, started=started, figures=figures, damaged=len(damaged))
    return df
