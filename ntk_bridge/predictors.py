r"""Closed-form predictors of MTL, ANIL, MAML, FO-MAML and the no-transfer baseline
(docs/theory.md §3), each a pure function of kernels and data.

All functions take kernels over the stacked points of a :class:`~ntk_bridge.tasks.TaskSet` in its
:class:`~ntk_bridge.tasks.Layout` order and return predictions on the test queries, shape
``[M, m_q, k]``. Kernels are scalar (``[P, P]``; the infinite-width kernels are proportional to
``I_k``); labels may have ``k`` columns. The operators they are built from (dynamics, inner-loop
operator, meta-kernel, MTL kernel) are in :mod:`ntk_bridge.operators`:

* GBML (§3.2), inner kernel ``G = K`` (ANIL) or ``Theta`` (MAML):
  ``F(X) = F0(X) + Phi(X, 𝒳) phi_outer(Phi) (𝒴 - F0(𝒳))``, ``F0`` the initial network adapted to
  each task; FO-MAML in discrete time only (:func:`fomaml`);
* MTL (§3.3): the body trained with ``Theta_MTL = Theta - K + blockdiag_i(K)`` on 𝒟 (all points or
  the queries of each training task), the head reset to ``w0`` and fine-tuned with ``K``;
* the baseline (§3.4): ``f0(X) + K(X, X') T_hat_K (Y' - f0(X'))``.

Every closed form is affine in the initial outputs ``f0``: ``f0 = None`` gives the mean predictor
over initialisations; one network's ``f0`` gives what that network follows (exactly, for its
linearisation). Numerical trouble (a ridge, a kernel that is not PSD, NaN) is reported in each
prediction's :class:`Diagnostics`, never hidden (:func:`ntk_bridge.metrics.status_of`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntk_bridge import methods as registry
from ntk_bridge.errors import require
from ntk_bridge.operators import (Dynamics, Solve, adapt_test, adapt_train, block, eigh_apply, inner_operator,
                                  merge, meta_kernel_blocks, mtl_index, mtl_kernel, own)
from ntk_bridge.tasks import Layout, TaskSet

__all__ = ["CLOSED_FORM_METHODS", "SETTING_FIELDS", "PredictorConfig", "Diagnostics", "Prediction", "mtl", "anil", "maml",
           "baseline", "fomaml", "predict", "predict_from_kernels"]

#: Methods with an infinite-width closed form for every config (FO-MAML's needs discrete steps: it
#: is computed when asked for by name).
CLOSED_FORM_METHODS = tuple(m for m in registry.names(closed_form=True) if not registry.get(m).closed_form_needs_steps)
#: The :class:`PredictorConfig` fields behind each grid setting a method can depend on
#: (:data:`ntk_bridge.methods.SETTINGS`).
SETTING_FIELDS = {
    "inner_time": ("inner_time", "inner_steps", "inner_l2"),
    "finetune_time": ("finetune_time", "finetune_steps"),
    "outer_time": ("outer_time", "outer_steps"),
    "mtl_data": ("mtl_data", "mtl_heads"),
}


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
    mtl_data: str = "all"
    mtl_heads: str = "shared"
    rcond: float = 1e-10

    def __post_init__(self):
        self.inner.validate("inner_time")
        self.finetune.validate("finetune_time")
        self.outer.validate("outer_time")
        require(self.mtl_data in ("all", "query"), f"mtl_data must be 'all' or 'query', got {self.mtl_data!r}")
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


class _Data(NamedTuple):
    """Labels and initial outputs, split by point group (all ``[tasks, points, k]``)."""

    ys: jax.Array
    yq: jax.Array
    yts: jax.Array
    f0s: jax.Array
    f0q: jax.Array
    f0ts: jax.Array
    f0tq: jax.Array


def _split_f0(f0: np.ndarray, layout: Layout) -> tuple[np.ndarray, ...]:
    """``f0 [P, k]`` split into the four point groups, each ``[tasks, points, k]`` (numpy)."""
    sl = layout.slices()
    return (f0[sl["train_support"]].reshape(layout.n_train, layout.n_support, -1),
            f0[sl["train_query"]].reshape(layout.n_train, layout.n_query, -1),
            f0[sl["test_support"]].reshape(layout.n_test, layout.m_support, -1),
            f0[sl["test_query"]].reshape(layout.n_test, layout.m_query, -1))


class Diagnostics(NamedTuple):
    """Numerical health of one method's prediction (floats; :func:`ntk_bridge.metrics.status_of`)."""

    min_eig_rel: float
    ridge_rel: float
    cond: float
    finite: bool


class Prediction(NamedTuple):
    values: np.ndarray  # [M, m_q, k] predictions on the test queries
    diagnostics: Diagnostics


# ---------------------------------------------------------------------------------------------
# The closed forms (``methods.Method.closed_form`` names them)
# ---------------------------------------------------------------------------------------------

def _gbml(Theta, G, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    """docs/theory.md §3.2: ``F0(X) + Phi(X, 𝒳) phi_outer(Phi) (𝒴 - F0(𝒳))``, ``G`` the inner kernel."""
    sl, N, M = layout.slices(), layout.n_train, layout.n_test
    A, i1 = adapt_train(G, layout, cfg.inner, times[0], cfg.rcond)
    Ahat, i2 = adapt_test(G, layout, cfg.finetune, times[1], cfg.rcond)
    nq = N * layout.n_query
    phi = meta_kernel_blocks(Theta, A, layout).reshape(nq, nq)
    F0_train = d.f0q + A @ (d.ys - d.f0s)
    F0_test = d.f0tq + Ahat @ (d.yts - d.f0ts)
    cross = (block(Theta, sl["test_query"], sl["train_query"], M, N)
             - jnp.einsum("mab,mbjc->majc", Ahat, block(Theta, sl["test_support"], sl["train_query"], M, N))
             - jnp.einsum("majd,jcd->majc", block(Theta, sl["test_query"], sl["train_support"], M, N), A)
             + jnp.einsum("mab,mbjd,jcd->majc", Ahat,
                          block(Theta, sl["test_support"], sl["train_support"], M, N), A))
    solve, i3 = eigh_apply(phi, cfg.outer, times[2], cfg.rcond)
    coef = solve @ (d.yq - F0_train).reshape(nq, -1)
    out = F0_test + cross.reshape(M, layout.m_query, nq) @ coef
    return out, merge(i1, i2, i3)


def _finetune_head(K, g_ts, g_tq, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    """``g(X) + K(X, X') T_hat_K (Y' - g(X'))`` per test task."""
    Ahat, info = adapt_test(K, layout, cfg.finetune, times[1], cfg.rcond)
    return g_tq + Ahat @ (d.yts - g_ts), info


def mtl(Theta, K, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    """MTL (docs/theory.md §3.3): the body trained with ``Theta_MTL`` on 𝒟, the head reset to ``w0``
    and fine-tuned with ``K`` on the test support."""
    if cfg.mtl_heads == "independent":
        # A fresh test head is independent of the trained heads: the body's change is invisible.
        return _finetune_head(K, d.f0ts, d.f0tq, d, layout, cfg, times)
    sl = layout.slices()
    idx, task = mtl_index(layout, cfg.mtl_data)
    kern = mtl_kernel(Theta[jnp.ix_(idx, idx)], K[jnp.ix_(idx, idx)], task)
    y_all = jnp.concatenate([d.ys.reshape(-1, d.ys.shape[-1]), d.yq.reshape(-1, d.yq.shape[-1])])
    f0_all = jnp.concatenate([d.f0s.reshape(-1, d.f0s.shape[-1]), d.f0q.reshape(-1, d.f0q.shape[-1])])
    idx_local = idx - sl["train_support"].start  # supports then queries, as in y_all
    solve, i1 = eigh_apply(kern, cfg.outer, times[2], cfg.rcond)
    alpha = solve @ (y_all[idx_local] - f0_all[idx_local])
    body = Theta - K
    g_ts = d.f0ts + (body[sl["test_support"]][:, idx] @ alpha).reshape(d.f0ts.shape)
    g_tq = d.f0tq + (body[sl["test_query"]][:, idx] @ alpha).reshape(d.f0tq.shape)
    out, i2 = _finetune_head(K, g_ts, g_tq, d, layout, cfg, times)
    return out, merge(i1, i2)


def anil(Theta, K, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    """ANIL: GBML with the head's kernel ``K`` in the inner loop and at test time."""
    return _gbml(Theta, K, d, layout, cfg, times)


def maml(Theta, K, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    """MAML: GBML with the full NTK ``Theta`` in the inner loop and at test time."""
    return _gbml(Theta, Theta, d, layout, cfg, times)


def baseline(Theta, K, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    """The no-transfer baseline (docs/theory.md §3.4): a head fine-tuned on the untrained body."""
    return _finetune_head(K, d.f0ts, d.f0tq, d, layout, cfg, times)


def fomaml(Theta, tasks: TaskSet, config: PredictorConfig, f0=None) -> np.ndarray:
    r"""Discrete-time closed form of first-order MAML for a linearised network (kernel ``Theta``).

    With ``A_i = Theta(X_i, X'_i) T_i`` (MAML's inner operator, discrete) and ``A_hat`` the test
    task's at the fine-tuning time, the first-order outer step ``theta -= eta sum_i J(X_i)^T r_i``
    (``r`` the adapted query residuals) moves the residuals by the non-symmetric kernel
    ``Phi_FO(i, j) = Theta(X_i, X_j) - A_i Theta(X'_i, X_j)``::

        r_0 = F0(𝒳) - 𝒴,   r_{s+1} = (I - eta Phi_FO) r_s
        F(X) = F0(X) - eta [Theta(X, 𝒳) - A_hat Theta(X', 𝒳)] sum_{s<S} r_s

    ``F0`` as in docs/theory.md §3.2. Requires a discrete config (:attr:`PredictorConfig.discrete`). Returns
    ``[M, m_q, k]``; ``f0 [P, k]`` or ``None`` (mean predictor).
    """
    require(config.discrete, "FO-MAML's closed form needs discrete inner, fine-tuning and outer steps "
            "and a finite outer time (ntk_bridge.finite.discretise gives them)")
    L = tasks.layout
    sl = L.slices()
    k = tasks.n_outputs
    Theta = np.asarray(Theta, dtype=np.float64)
    f0 = np.zeros((L.n_points, k)) if f0 is None else np.asarray(f0, np.float64).reshape(L.n_points, k)

    def blocks(rows, cols, r_tasks, c_tasks):
        return block(Theta, sl[rows], sl[cols], r_tasks, c_tasks)

    N, M = L.n_train, L.n_test
    T = inner_operator(own(blocks("train_support", "train_support", N, N)), config.inner_time, config.inner_steps)
    A = own(blocks("train_query", "train_support", N, N)) @ T  # [N, n_q, n_s]
    T_hat = inner_operator(own(blocks("test_support", "test_support", M, M)), config.finetune_time,
                           config.finetune_steps)
    A_hat = own(blocks("test_query", "test_support", M, M)) @ T_hat  # [M, m_q, m_s]
    f0s = f0[sl["train_support"]].reshape(N, L.n_support, k)
    f0q = f0[sl["train_query"]].reshape(N, L.n_query, k)
    f0ts = f0[sl["test_support"]].reshape(M, L.m_support, k)
    f0tq = f0[sl["test_query"]].reshape(M, L.m_query, k)
    F0 = (f0q + A @ (tasks.train_support_y - f0s)).reshape(N * L.n_query, k)
    F0_test = f0tq + A_hat @ (tasks.test_support_y - f0ts)
    nq = N * L.n_query
    phi = Theta[sl["train_query"], sl["train_query"]] - np.einsum(
        "iab,ibc->iac", A, Theta[sl["train_support"], sl["train_query"]].reshape(N, L.n_support, nq)).reshape(nq, nq)
    cross = Theta[sl["test_query"], sl["train_query"]].reshape(M, L.m_query, nq) - np.einsum(
        "mab,mbc->mac", A_hat, Theta[sl["test_support"], sl["train_query"]].reshape(M, L.m_support, nq))
    eta = config.outer_time / config.outer_steps
    r = F0 - tasks.train_query_y.reshape(nq, k)
    total = np.zeros_like(r)
    for _ in range(int(config.outer_steps)):
        total += r
        r = r - eta * (phi @ r)
    return F0_test - eta * (cross @ total)


# ---------------------------------------------------------------------------------------------
# Predictions from kernels
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("layout", "cfg", "method"))
def _predict_batched(Theta, K, d: _Data, times, layout: Layout, cfg: PredictorConfig, method: str):
    """One method's closed form, vmapped over a leading batch axis of ``Theta``, ``K`` (depths) and of
    ``times`` ``[B, 3]``. One program per method (and static config): the methods of a sweep cell
    compile once each, and a method that does not depend on a setting (ANIL on ``mtl_data``, say)
    is not recomputed for it."""
    fn = functools.partial(registry.get(method).implementation("closed_form"), layout=layout, cfg=cfg)
    return jax.vmap(lambda th, k, t: fn(th, k, d, times=t), in_axes=(0, 0, 0))(Theta, K, times)


def _static_config(cfg: PredictorConfig, method: str) -> PredictorConfig:
    """The static part of a config for one method: times are passed traced, so one compilation
    serves them all, and settings the method does not read are reset to their defaults, so that
    one compilation serves every value of them."""
    m, defaults = registry.get(method), PredictorConfig()
    cfg = dataclasses.replace(cfg, inner_time=0.0, finetune_time=0.0, outer_time=0.0)
    for setting, fields in SETTING_FIELDS.items():
        if not m.depends(setting):
            cfg = dataclasses.replace(cfg, **{f: getattr(defaults, f) for f in fields if not f.endswith("_time")})
    return cfg


def _check_methods(methods: Sequence[str]) -> tuple:
    methods = tuple(methods)
    require(len(methods) > 0, "methods must name at least one method")
    for name in methods:
        require(registry.get(name).closed_form is not None, f"method {name!r} has no closed form")
    return methods


def predict_from_kernels(
    Theta,
    K,
    tasks: TaskSet,
    config: PredictorConfig | Sequence[PredictorConfig] = PredictorConfig(),
    methods: Sequence[str] = CLOSED_FORM_METHODS,
    f0=None,
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
    data = _Data(tasks.train_support_y, tasks.train_query_y, tasks.test_support_y,
                 *_split_f0(f0.reshape(P, -1), layout))
    times = np.asarray([[c.inner_time, c.finetune_time, c.outer_time] for c in configs], np.float64)
    jitted = [m for m in methods if not registry.get(m).closed_form_needs_steps]
    raw = jax.device_get({m: _predict_batched(Theta, K, data, times, layout, _static_config(configs[0], m), m)
                          for m in jitted})
    for m in methods:
        if m not in raw:  # a numpy closed form (FO-MAML), batch entry by batch entry
            impl = registry.get(m).implementation("closed_form")
            values = np.stack([impl(Theta[b], tasks, configs[b], f0) for b in range(Theta.shape[0])])
            nan = np.full(len(values), np.nan)
            raw[m] = (values, Solve(nan, np.zeros(len(values)), nan))
    results = []
    for b in range(Theta.shape[0]):
        entry = {}
        for method in methods:
            values, info = raw[method]
            v = np.asarray(values[b])
            entry[method] = Prediction(v, Diagnostics(float(info.min_eig_rel[b]), float(info.ridge_rel[b]),
                                                      float(info.cond[b]), bool(np.all(np.isfinite(v)))))
        results.append(entry)
    return results if batched else results[0]


def predict(
    tasks: TaskSet,
    depth: int | Sequence[int],
    config: PredictorConfig = PredictorConfig(),
    methods: Sequence[str] = CLOSED_FORM_METHODS,
    architecture=None,
    f0=None,
) -> dict[str, Prediction] | dict[int, dict[str, Prediction]]:
    """Infinite-width predictions for one depth, or ``{depth: ...}`` for several depths, with the
    kernels of every depth computed in one pass (:func:`ntk_bridge.kernels.kernels_by_depth`).

    Example::

        import ntk_bridge
        from ntk_bridge.tasks import subspace_tasks
        from ntk_bridge.predictors import PredictorConfig, predict

        tasks = subspace_tasks(seed=0, n_train=10, n_test=20)
        out = predict(tasks, depth=[2, 32], config=PredictorConfig(inner_time=0.1, mtl_data="query"))
        gap = out[32]["anil"].values - out[32]["mtl"].values       # [test tasks, queries, outputs]
    """
    from ntk_bridge.kernels import kernels_by_depth

    depths = [int(depth)] if np.ndim(depth) == 0 else [int(x) for x in depth]
    ks = list(kernels_by_depth(tasks.all_points(), None, architecture=architecture, depths=depths))
    out = predict_from_kernels(np.stack([k.ntk for k in ks]), np.stack([k.readout for k in ks]),
                               tasks, config, methods, f0)
    by_depth = {k.depth: o for k, o in zip(ks, out)}
    return by_depth[int(depth)] if np.ndim(depth) == 0 else {d: by_depth[d] for d in depths}
