r"""Predictions from kernels: the configuration of the closed forms and the call that runs them
(docs/theory.md §3).

:func:`predict_from_kernels` runs each method's closed form (:mod:`ntk_bridge.closed_forms`, named by
:mod:`ntk_bridge.methods`) as one jitted program, vmapped over a batch of kernels (every depth, say);
:func:`predict` computes the kernels too. Predictions are on the test queries, ``[M, m_q, k]``.

Every closed form is affine in the initial outputs ``f0``: ``f0 = None`` gives the mean predictor
over initialisations; one network's ``f0`` gives what that network follows (exactly, for its
linearisation). Numerical trouble (a ridge, a kernel that is not PSD, NaN) is reported in each
prediction's :class:`Diagnostics`, never hidden (:func:`ntk_bridge.metrics.status_of`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
from typing import NamedTuple, Sequence

import jax
import numpy as np

from ntk_bridge import methods as registry
from ntk_bridge import programs, solvers
from ntk_bridge.errors import require
from ntk_bridge.closed_forms import CLOSED_FORMS, Data, Times, split_f0
from ntk_bridge.operators import Dynamics, Solve
from ntk_bridge.outer import GBMLOuter, MTLOuter
from ntk_bridge.runtime import DEFAULT_BLAS_THREADS, concurrently
from ntk_bridge.tasks import Layout, TaskSet
from ntk_bridge.settings import ALL, LEARNED, MTL_DATA_VALUES, TEST_HEADS

__all__ = ["CLOSED_FORM_METHODS", "SETTING_FIELDS", "PredictorConfig", "Diagnostics", "Prediction", "predict",
           "predict_from_kernels"]

programs.register(Data, Solve)  # the closed-form programs' input and output types, kept on disk (:mod:`ntk_bridge.programs`)

#: Methods with an infinite-width closed form for every config (FO-MAML's needs discrete steps: it
#: is computed when asked for by name).
CLOSED_FORM_METHODS = tuple(m for m in registry.names(closed_form=True) if not registry.get(m).closed_form_needs_steps)
#: The :class:`PredictorConfig` fields behind each grid setting a method can depend on
#: (:data:`ntk_bridge.methods.SETTINGS`).
SETTING_FIELDS = {"inner_time": ("inner_time", "inner_steps", "inner_l2"),
                  "finetune_time": ("finetune_time", "finetune_steps"), "outer_time": ("outer_time", "outer_steps"),
                  "mtl_data": ("mtl_data", "mtl_heads"), "test_head": ("test_head",)}


# ---------------------------------------------------------------------------------------------
# Configuration and data
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PredictorConfig:
    """Everything that defines the closed forms, apart from kernels and data.

    Attributes:
      inner_time: ``s = lambda * tau`` of the meta-training inner loop (ANIL, MAML).
      finetune_time: ``s_hat``, the test-time adaptation time (all methods and the baseline).
      outer_time: ``eta * t`` of (meta-)training; ``inf`` = trained to convergence.
      inner_steps, finetune_steps, outer_steps: ``None`` = gradient flow, else discrete steps.
      inner_l2: MetaOptNet/R2D2-like l2 inner problem at optimum, ``T = (G' + mu I)^-1``.
      mtl_data: ``'all'`` (support and query of each training task merged, the paper's MTL) or
        ``'query'`` (queries only, ANIL's outer data).
      test_head: how GBML's test-time adaptation starts (docs/theory.md §3.5): ``'learned'`` (from
        the meta-learned network, the standard protocol) or ``'reset'`` (the head reset to its
        initial ``w0``, from the trained body, as MTL's always is).
      mtl_heads: ``'shared'`` (every head initialised to the same ``w0``, docs/theory.md §3.3) or
        ``'independent'`` (independent heads: at infinite width no transfer, MTL = baseline).
      rcond: relative ridge floor for infinite-time solves (reported whenever used).
    """

    inner_time: float = 0.1
    finetune_time: float = 1.0
    outer_time: float = math.inf
    inner_steps: int | None = None
    finetune_steps: int | None = None
    outer_steps: int | None = None
    inner_l2: float | None = None
    mtl_data: str = ALL
    mtl_heads: str = "shared"
    test_head: str = LEARNED
    rcond: float = 1e-10

    def __post_init__(self):
        self.inner.validate("inner_time")
        self.finetune.validate("finetune_time")
        self.outer.validate("outer_time")
        require(self.mtl_data in MTL_DATA_VALUES,
                f"mtl_data must be one of {', '.join(map(repr, MTL_DATA_VALUES))}, got {self.mtl_data!r}")
        require(self.test_head in TEST_HEADS, f"test_head must be 'learned' or 'reset', got {self.test_head!r}")
        require(self.mtl_heads in ("shared", "independent"),
                f"mtl_heads must be 'shared' or 'independent', got {self.mtl_heads!r}")
        require(0 < self.rcond < 1, f"rcond must be in (0, 1), got {self.rcond!r}")

    @property
    def inner(self) -> Dynamics:
        return Dynamics(float(self.inner_time), self.inner_steps, self.inner_l2)

    @property
    def finetune(self) -> Dynamics:
        return Dynamics(float(self.finetune_time), self.finetune_steps)

    @property
    def outer(self) -> Dynamics:
        return Dynamics(float(self.outer_time), self.outer_steps)

    @property
    def discrete(self) -> bool:
        """Every loop in discrete steps with a finite outer time (what finite networks follow)."""
        return (self.inner_steps is not None and self.finetune_steps is not None and self.outer_steps is not None
                and math.isfinite(self.outer_time) and self.inner_l2 is None)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class Diagnostics(NamedTuple):
    """Numerical health of one method's prediction (floats; :func:`ntk_bridge.metrics.status_of`).

    ``residual`` and ``tolerance``: the relative residual of an iterative outer solve and the
    tolerance it was asked for (NaN and inf for dense solves)."""

    min_eig_rel: float
    ridge_rel: float
    cond: float
    finite: bool
    residual: float = math.nan
    tolerance: float = math.inf


class Prediction(NamedTuple):
    values: np.ndarray  # [M, m_q, k] predictions on the test queries
    diagnostics: Diagnostics


# ---------------------------------------------------------------------------------------------
# Predictions from kernels
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("layout", "cfg", "method"))
def _predict_batched(Theta, K, G, d: Data, times, layout: Layout, cfg: PredictorConfig, method: str | None):
    """One method's closed form vmapped over a leading batch axis of ``Theta``, ``K`` (depths) and ``times``
    ``[B, 3]``: one program per method and static config (a setting the method does not depend on is not in
    it). ANIL and MAML share one (``method=None``: :class:`GBMLOuter`'s dense form, inner kernel ``G``)."""
    def one(th, k, g, t):
        t = Times(t[0], t[1], t[2])
        return (GBMLOuter(th, k, g, d, layout, cfg, t).dense() if method is None
                else CLOSED_FORMS[method](th, k, d, layout=layout, cfg=cfg, times=t))
    return jax.vmap(one, in_axes=(0, 0, None if G is None else 0, 0))(Theta, K, G, times)


def _program(Theta, K, data: Data, times, layout: Layout, cfg: PredictorConfig, method: str):
    """The call of :func:`_predict_batched` computing ``method`` (GBML's inner kernel chosen here)."""
    inner = registry.get(method).inner_kernel if registry.get(method).role == "gbml" else None
    G = None if inner is None else (K if inner == "K" else Theta)
    static = dict(layout=layout, cfg=_static_config(cfg, method), method=method if G is None else None)
    return functools.partial(programs.call, _predict_batched, (Theta, K, G, data, times), static)


def _static_config(cfg: PredictorConfig, method: str) -> PredictorConfig:
    """The static part of a config for one method: the times are traced (one compilation serves them all),
    the settings the method does not read at their defaults (one serves every value of them)."""
    return dataclasses.replace(_relevant(cfg, method), inner_time=0.0, finetune_time=0.0, outer_time=0.0)


def _check_methods(methods: Sequence[str]) -> tuple:
    methods = tuple(methods)
    require(len(methods) > 0, "methods must name at least one method")
    for name in methods:
        require(registry.get(name).closed_form, f"method {name!r} has no closed form")
    return methods


def predict_from_kernels(
    Theta,
    K,
    tasks: TaskSet,
    config: PredictorConfig | Sequence[PredictorConfig] = PredictorConfig(),
    methods: Sequence[str] = CLOSED_FORM_METHODS,
    f0=None,
    solver: str | solvers.Solver = "dense",
) -> dict[str, Prediction] | list[dict[str, Prediction]]:
    """Closed-form predictions on the test queries from given kernels.

    Args:
      Theta, K: ``[P, P]`` kernels over ``tasks.all_points()``, or ``[B, P, P]`` for a batch (for
        example every depth); a batch is computed in one vmapped, jitted call per method.
      tasks: the :class:`TaskSet` (labels; its layout fixes the point order).
      config: one :class:`PredictorConfig`, or a list of ``B`` configs differing only in their times
        (one per batch entry; a single config is broadcast).
      methods: names of methods with a closed form (:mod:`ntk_bridge.methods`); FO-MAML's needs a
        discrete config.
      f0: ``[P, k]`` initial outputs of one network, or ``None`` for the mean predictor.
      solver: outer solves of MTL and GBML: ``'dense'`` (``eigh``), the structured ``'cholesky'``
        (direct) or ``'cg'`` (conjugate gradients), both from the per-task blocks at an infinite
        outer time only, or ``'auto'`` (:func:`ntk_bridge.solvers.choose`), or a solver object
        (:mod:`ntk_bridge.solvers`); the baseline and FO-MAML have no outer solve.

    Returns ``{method: Prediction(values [M, m_q, k], diagnostics)}``, or a list of those for a batch.
    Inputs are prepared in numpy (the jitted calls take numpy arrays without a copy on CPU).
    """
    methods = _check_methods(methods)
    layout = tasks.layout
    Theta = np.asarray(Theta, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    batched = Theta.ndim == 3
    if not batched:
        Theta, K = Theta[None], K[None]
    P = layout.n_points
    require(Theta.ndim == 3 and Theta.shape[1:] == (P, P),
            f"Theta must be [P, P] or [B, P, P] with P={P} points, got {tuple(Theta.shape)}")
    require(K.shape == Theta.shape, f"K has shape {tuple(K.shape)}, Theta has {tuple(Theta.shape)}")
    configs = list(config) if isinstance(config, (list, tuple)) else [config] * Theta.shape[0]
    require(len(configs) == Theta.shape[0], f"got {len(configs)} configs for {Theta.shape[0]} kernels")
    static = _static_config(configs[0], registry.MTL.name)
    require(all(_static_config(c, registry.MTL.name) == static for c in configs),
            "a batch of configs may differ only in inner_time, finetune_time and outer_time")
    k = tasks.n_outputs
    if f0 is None:
        f0 = np.zeros((P, k))
    else:
        f0 = np.asarray(f0, dtype=np.float64)
        require(f0.shape[0] == P and f0.size == P * k, f"f0 must have shape [{P}, {k}], got {f0.shape}")
        require(bool(np.all(np.isfinite(f0))), "f0 contains NaN or inf")
        require(configs[0].mtl_heads == "shared" or registry.MTL.name not in methods,
                "f0 (a single network's outputs) is defined for shared MTL heads only")
    data = Data(tasks.train_support_y, tasks.train_query_y, tasks.test_support_y,
                 *split_f0(f0.reshape(P, -1), layout))
    times = np.asarray([[c.inner_time, c.finetune_time, c.outer_time] for c in configs], np.float64)
    outer = solvers.choose(solver, layout, configs)
    by_structure = [m for m in methods if outer.structured and _has_structured_form(registry.get(m), configs[0])]
    jitted = [m for m in methods if not registry.get(m).closed_form_needs_steps and m not in by_structure]
    raw = jax.device_get(concurrently({m: _program(Theta, K, data, times, layout, configs[0], m) for m in jitted}))
    residuals = {}
    for m in by_structure:
        raw[m], residuals[m] = _predict_structured(Theta, K, data, times, layout, configs, registry.get(m), outer)
    for m in methods:
        if m not in raw:  # a numpy closed form (FO-MAML), batch entry by batch entry
            out = [CLOSED_FORMS[m](Theta[b], K[b], data, layout, configs[b], Times(*times[b]))
                   for b in range(Theta.shape[0])]
            raw[m] = (np.stack([v for v, _ in out]),
                      Solve(*(np.array([float(getattr(i, f)) for _, i in out]) for f in Solve._fields)))
    results = []
    for b in range(Theta.shape[0]):
        entry = {}
        for method in methods:
            values, info = raw[method]
            v = np.asarray(values[b])
            residual = float(residuals[method][b]) if method in residuals else math.nan
            extra = (residual, outer.tolerance) if np.isfinite(residual) else ()
            entry[method] = Prediction(v, Diagnostics(float(info.min_eig_rel[b]), float(info.ridge_rel[b]),
                                                      float(info.cond[b]), bool(np.all(np.isfinite(v))), *extra))
        results.append(entry)
    return results if batched else results[0]


def _has_structured_form(method, cfg: PredictorConfig) -> bool:
    """MTL with shared heads and the GBML methods with a gradient-flow closed form have an outer solve
    (:mod:`ntk_bridge.outer`) that a structured solver can do through the per-task blocks."""
    if method.closed_form_needs_steps:
        return False
    return (method.role == "mtl" and cfg.mtl_heads == "shared") or (method.role == "gbml" and
                                                                      method.inner_kernel is not None)


def _predict_structured(Theta, K, data: Data, times, layout: Layout, configs, method, solver: solvers.Solver):
    """One batch entry after the other: the method's outer problem (:mod:`ntk_bridge.outer`, the one
    the jitted closed form forms) held in numpy and solved by ``solver`` (a structured
    :class:`ntk_bridge.solvers.Solver`); ``((values, Solve), residuals)`` shaped like the jitted path's output."""
    values, infos, residuals = [], [], []
    for b in range(Theta.shape[0]):
        t = Times(*times[b])
        if method.role == "mtl":
            problem = MTLOuter(Theta[b], K[b], data, layout, configs[b], t, numpy=True)
        else:
            G = K[b] if method.inner_kernel == "K" else Theta[b]
            problem = GBMLOuter(Theta[b], K[b], G, data, layout, configs[b], t, numpy=True)
        v, info, res = problem.solve(solver)
        values.append(v)
        infos.append(info)
        residuals.append(res)
    info = Solve(*(np.array([float(getattr(i, f)) for i in infos]) for f in Solve._fields))
    return (np.stack(values), info), np.array(residuals)


def predict(
    tasks: TaskSet,
    depth: int | Sequence[int],
    config: PredictorConfig = PredictorConfig(),
    methods: Sequence[str] = CLOSED_FORM_METHODS,
    architecture=None,
    f0=None,
    solver: str = "dense",
    blas_threads: int | None = DEFAULT_BLAS_THREADS,
) -> dict[str, Prediction] | dict[int, dict[str, Prediction]]:
    """Infinite-width predictions for one depth, or ``{depth: ...}`` for several depths, with the
    kernels of every depth computed in one pass (:func:`ntk_bridge.kernels.kernels_by_depth`).

    Each depth is one :func:`predict_from_kernels` call, as in ``ntk-bridge sweep``, so the numbers are
    the sweep's, bit for bit (a batch of depths in one vmapped call rounds differently, and on a CPU is
    no faster). Calls on the same points and labels reuse the kernel pass and every prediction already
    made for the part of ``config`` a method depends on; the persistent compilation cache is on
    (``NTK_BRIDGE_JAX_CACHE=0`` turns it off). ``blas_threads``: the BLAS threads of the linear algebra,
    by default the sweep's (:data:`ntk_bridge.runtime.DEFAULT_BLAS_THREADS`; results are exact for one
    count), ``None`` to leave the libraries as they are.

    ``architecture`` (:class:`ntk_bridge.kernels.Architecture`) defaults to the fully connected network;
    a convolutional one needs ``tasks.image_shape`` (:meth:`ntk_bridge.kernels.Architecture.for_tasks`).

    Example::

        import ntk_bridge
        from ntk_bridge.families import subspace_tasks
        from ntk_bridge.predictors import PredictorConfig, predict

        tasks = subspace_tasks(seed=0, n_train=10, n_test=20)
        out = predict(tasks, depth=[2, 32], config=PredictorConfig(inner_time=0.1, mtl_data="query"))
        gap = out[32]["anil"].values - out[32]["mtl"].values       # [test tasks, queries, outputs]
    """
    from ntk_bridge import runtime

    runtime.enable_compilation_cache()  # as the command line: programs compiled once per machine, not per process
    depths = [int(depth)] if np.ndim(depth) == 0 else [int(x) for x in depth]
    methods = _check_methods(methods)
    kkey, (ks, Theta, K) = _kernels(tasks.all_points(), architecture, depths)
    threads = contextlib.nullcontext() if blas_threads is None else runtime.blas_threads(blas_threads)
    if kkey is None or f0 is not None:
        with threads:
            out = [predict_from_kernels(Theta[b], K[b], tasks, config, methods, f0, solver) for b in range(len(ks))]
    else:
        labels = _labels_key(tasks)
        memo = {m: (kkey, labels, m, _relevant(config, m), str(solver), blas_threads) for m in methods}
        todo = [m for m in methods if memo[m] not in _LAST_PREDICTIONS]
        if todo:
            with threads:
                fresh = [predict_from_kernels(Theta[b], K[b], tasks, config, todo, None, solver)
                         for b in range(len(ks))]
            for m in todo:
                _LAST_PREDICTIONS[memo[m]] = [entry[m] for entry in fresh]
        out = [{m: _LAST_PREDICTIONS[memo[m]][b] for m in methods} for b in range(len(ks))]
    by_depth = {k.depth: o for k, o in zip(ks, out)}
    return by_depth[int(depth)] if np.ndim(depth) == 0 else {d: by_depth[d] for d in depths}


def _labels_key(tasks: TaskSet) -> tuple:
    """What, besides the kernels, the predictions read of a task set: its layout and its labels (by content)."""
    digest = hashlib.sha256()
    for y in (tasks.train_support_y, tasks.train_query_y, tasks.test_support_y):
        y = np.ascontiguousarray(y)
        digest.update(str((y.shape, y.dtype)).encode())
        digest.update(y.tobytes())
    return tasks.layout, digest.hexdigest()


def _relevant(config: PredictorConfig, method: str) -> PredictorConfig:
    """``config`` with every setting ``method`` does not depend on (:mod:`ntk_bridge.methods`) at its
    default: two configs with the same relevant part give the method the same predictions, bit for bit
    (``tests/test_methods.py`` holds ``depends_on`` to that)."""
    m, defaults = registry.get(method), PredictorConfig()
    for setting, fields in SETTING_FIELDS.items():
        if not m.depends(setting):
            config = dataclasses.replace(config, **{f: getattr(defaults, f) for f in fields})
    return config


#: The kernels of the last :func:`predict` call: a user looping over configurations of one task set
#: (inner times, MTL data, methods) pays the kernel pass once. One entry (the default grid's kernels
#: of 31 depths take about 100 MB).
_LAST_KERNELS: dict = {}
#: The predictions made on those kernels, by ``(kernels, labels, method, the part of the config it depends
#: on, solver, threads)``: the main job's six configurations compute MTL twice, the baseline once.
_LAST_PREDICTIONS: dict = {}


def _kernels(points: np.ndarray, architecture, depths: list[int]):
    """``(key, (kernels, Theta [B, P, P], K [B, P, P]))`` of ``depths`` over ``points``, reused when the
    points (by content), the architecture (by value; custom layers by identity) and the depths are
    those of the previous call; ``key`` is ``None`` when they cannot be keyed (nothing is then reused)."""
    from ntk_bridge.kernels import kernels_by_depth

    points = np.ascontiguousarray(points)
    try:
        key = (hashlib.sha256(points.tobytes()).hexdigest(), points.shape, str(points.dtype), architecture,
               tuple(depths))
        hash(key)
    except TypeError:  # an architecture with unhashable fields: no reuse
        key = None
    if key is not None and key in _LAST_KERNELS:
        return key, _LAST_KERNELS[key]
    ks = list(kernels_by_depth(points, None, architecture=architecture, depths=depths))
    entry = (ks, np.stack([k.ntk for k in ks]), np.stack([k.readout for k in ks]))
    for a in entry[1:]:
        a.flags.writeable = False  # shared between calls: nobody may change them in place
    _LAST_KERNELS.clear()
    _LAST_PREDICTIONS.clear()
    if key is not None:
        _LAST_KERNELS[key] = entry
    return key, entry
