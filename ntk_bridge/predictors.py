r"""Closed-form predictors of MTL, ANIL, MAML and the no-transfer baseline (THEORY.md §3).

All functions take kernels over the stacked points of a :class:`~ntk_bridge.tasks.TaskSet` in its
:class:`~ntk_bridge.tasks.Layout` order (train supports, train queries, test supports, test queries)
and return predictions on the test queries, shape ``[M, m_q, k]``. Kernels are scalar (``[P, P]``,
the infinite-width kernels are proportional to ``I_k``); labels may have ``k`` columns.

Loss and time (THEORY.md §2): sum of squares ``1/2 ||f(X) - Y||^2``; gradient flow for a time
``t`` (only the product learning rate x steps matters), or ``steps`` discrete steps of size
``t / steps``, or an l2 inner problem solved to optimality. For a kernel ``G`` on the training points,
the trained residual operator is ``U diag(phi(m)) U^T`` with ``eigh(G) = U diag(m) U^T`` and

* flow:     ``phi(m) = (1 - exp(-t m)) / m`` (``phi(0) = t``; ``t = inf``: ``1 / m``),
* steps:    ``phi(m) = (1 - (1 - (t/steps) m)^steps) / m``,
* l2:       ``phi(m) = 1 / (m + mu)``.

**Inner-loop operator** on a support set: ``T = phi(G')``, ``F(X) = f(X) + G(X, X') T (Y' - f(X'))``.

**GBML** (``G = Theta`` for MAML, ``G = K`` for ANIL), with ``A_i = G(X_i, X'_i) T_i``::

    Phi_ij = Theta(X_i,X_j) - A_i Theta(X'_i,X_j) - Theta(X_i,X'_j) A_j^T + A_i Theta(X'_i,X'_j) A_j^T
    F0(X_i) = f0(X_i) + A_i (Y'_i - f0(X'_i))
    F(X)    = F0(X) + Phi(X, 𝒳) phi_outer(Phi) (𝒴 - F0(𝒳))

where the test cross block uses the test task's own operator at the fine-tuning time.

**MTL** (shared body, heads all initialised to ``w0``), trained on ``𝒟`` (all points of every
training task, or their queries only)::

    Theta_MTL = Theta - K + blockdiag_i(K)           on 𝒟 x 𝒟
    alpha     = phi_outer(Theta_MTL) (𝒴_𝒟 - f0(𝒟))
    g(x)      = f0(x) + Theta_body(x, 𝒟) alpha       (trained body, head reset to w0)
    F(X)      = g(X) + K(X, X') T_hat_K (Y' - g(X'))  (head fine-tuned on the test support)

**Baseline**: ``f0(X) + K(X, X') T_hat_K (Y' - f0(X'))``, a head fine-tuned on an untrained body.

Every closed form is affine in the initial outputs ``f0``: ``f0 = None`` gives the mean predictor
over initialisations (``f0 = 0``); passing the outputs of one network at initialisation gives what
that network follows (exactly, for its linearisation).

Numerics: every inverse goes through ``eigh``. Where ``phi = 1 / m`` (infinite time) and the smallest
eigenvalue is below ``rcond * max_eig``, a ridge ``rcond * max_eig`` (plus any negative part) is
added and reported in :class:`Diagnostics`; non-PSD kernels and non-finite values are reported too.
Nothing is hidden: callers decide what to do with a flagged result.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntk_bridge.errors import require
from ntk_bridge.tasks import Layout, TaskSet

__all__ = [
    "METHODS",
    "Dynamics",
    "PredictorConfig",
    "Diagnostics",
    "Prediction",
    "inner_operator",
    "spectral_function",
    "meta_kernel",
    "mtl_kernel",
    "predict",
    "predict_from_kernels",
    "status_of",
]

METHODS = ("mtl", "anil", "maml", "baseline")
_SMALL = 1e-8  # below |t m| = 1e-8 the series of phi is exact to float64


# ---------------------------------------------------------------------------------------------
# Dynamics: flow / steps / l2, and the spectral function phi.
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Dynamics:
    """How a set of parameters is trained on the squared loss.

    Attributes:
      time: ``t = learning rate x steps`` (``inf`` = trained to convergence).
      steps: ``None`` for gradient flow, else the number of discrete gradient steps of size
        ``time / steps`` (exact for linearised networks).
      l2: if set, the l2-regularised problem at its optimum, ``T = (G + l2 I)^-1`` (``time`` unused).
    """

    time: float = math.inf
    steps: int | None = None
    l2: float | None = None

    @property
    def mode(self) -> str:
        return "l2" if self.l2 is not None else ("flow" if self.steps is None else "steps")

    def validate(self, name: str) -> "Dynamics":
        t = float(self.time)
        require(not math.isnan(t) and t >= 0, f"{name} must be >= 0 (or inf), got {self.time!r}")
        if self.steps is not None:
            require(int(self.steps) >= 1 and int(self.steps) == self.steps,
                    f"{name.replace('time', 'steps')} must be a positive integer, got {self.steps!r}")
            require(math.isfinite(t), f"{name} must be finite when {name.replace('time', 'steps')} is set")
        if self.l2 is not None:
            require(math.isfinite(self.l2) and self.l2 > 0, f"{name} l2 must be > 0, got {self.l2!r}")
        return self


def spectral_function(m, dyn: Dynamics, time=None, rcond: float = 1e-10):
    """``phi(m)`` of :class:`Dynamics` on eigenvalues ``m`` ``[..., n]`` (see the module docstring).

    ``time`` overrides ``dyn.time`` with a (possibly traced) value. Returns ``(phi, ridge_rel)``:
    ``ridge_rel [...]`` is the ridge added, relative to the largest eigenvalue (0 when none was
    needed; only infinite-time flows can need one).
    """
    m = jnp.asarray(m)
    t = jnp.asarray(dyn.time if time is None else time, dtype=m.dtype)
    scale = jnp.maximum(jnp.max(jnp.abs(m), axis=-1), jnp.finfo(m.dtype).tiny)
    zero_ridge = jnp.zeros(m.shape[:-1], m.dtype)
    if dyn.mode == "l2":
        return 1.0 / (m + dyn.l2), zero_ridge
    if dyn.mode == "steps":
        lam = t / dyn.steps
        z = lam * m
        small = jnp.abs(z) < _SMALL
        safe_m = jnp.where(small, 1.0, m)
        below = z < 1.0
        via_log = -jnp.expm1(dyn.steps * jnp.log1p(-jnp.where(below, z, 0.0))) / safe_m
        via_pow = (1.0 - (1.0 - z) ** dyn.steps) / safe_m
        series = t * (1.0 - (dyn.steps - 1) * z / 2.0)
        return jnp.where(small, series, jnp.where(below, via_log, via_pow)), zero_ridge
    # gradient flow
    x = t * m
    finite = jnp.isfinite(t)
    small = jnp.abs(x) < _SMALL
    safe_m = jnp.where(small | ~finite, 1.0, m)
    flow = jnp.where(small, t * (1.0 - x / 2.0), -jnp.expm1(-jnp.where(finite, x, 0.0)) / safe_m)
    # t = inf: interpolation, 1/m, with a ridge where the spectrum is (near-)singular.
    floor = rcond * scale
    min_m = jnp.min(m, axis=-1)
    ridge = jnp.where(finite | (min_m >= floor), 0.0, floor + jnp.maximum(-min_m, 0.0))
    interp = 1.0 / (m + ridge[..., None])
    return jnp.where(finite, flow, interp), ridge / scale


class _Solve(NamedTuple):
    """Spectral diagnostics of one or a batch of symmetric solves."""

    min_eig_rel: jax.Array  # smallest eigenvalue / largest |eigenvalue| (negative: not PSD)
    ridge_rel: jax.Array  # ridge added / largest |eigenvalue|
    cond: jax.Array  # largest / smallest positive eigenvalue


def _eigh_apply(G, dyn: Dynamics, time, rcond):
    """``U phi(m) U^T`` for a batch of symmetric ``G [..., n, n]``, and its diagnostics."""
    G = 0.5 * (G + jnp.swapaxes(G, -1, -2))
    m, U = jnp.linalg.eigh(G)
    phi, ridge = spectral_function(m, dyn, time, rcond)
    op = jnp.einsum("...ij,...j,...kj->...ik", U, phi, U)
    scale = jnp.maximum(jnp.max(jnp.abs(m), axis=-1), jnp.finfo(m.dtype).tiny)
    min_m = jnp.min(m, axis=-1)
    cond = scale / jnp.maximum(min_m, jnp.finfo(m.dtype).tiny)
    return op, _Solve(jnp.min(min_m / scale), jnp.max(ridge), jnp.max(cond))


def _merge(*solves: _Solve) -> _Solve:
    return _Solve(jnp.min(jnp.stack([s.min_eig_rel for s in solves])),
                  jnp.max(jnp.stack([s.ridge_rel for s in solves])),
                  jnp.max(jnp.stack([s.cond for s in solves])))


def inner_operator(G, time: float = 1.0, steps: int | None = None, l2: float | None = None,
                   rcond: float = 1e-10) -> np.ndarray:
    """The inner-loop operator ``T`` for support kernels ``G [..., n, n]`` (batched over tasks).

    ``T = G^-1 (I - exp(-time G))`` (flow), ``G^-1 (I - (I - (time/steps) G)^steps)`` (steps) or
    ``(G + l2 I)^-1`` (l2), computed from ``eigh(G)``, never through ``inv``.
    """
    dyn = Dynamics(float(time), steps, l2).validate("time")
    G = jnp.asarray(G, dtype=jnp.float64)
    require(G.ndim >= 2 and G.shape[-1] == G.shape[-2], f"G must be [..., n, n], got {G.shape}")
    op, _ = _eigh_apply(G, dyn, None, rcond)
    return np.asarray(op)


# ---------------------------------------------------------------------------------------------
# Configuration
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
      mtl_heads: ``'shared'`` (every head initialised to the same ``w0``, THEORY.md's default) or
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Block helpers over the stacked layout
# ---------------------------------------------------------------------------------------------

def _block(G, rows: slice, cols: slice, r_tasks: int, c_tasks: int):
    """``G[rows, cols]`` as ``[r_tasks, r_points, c_tasks, c_points]``."""
    B = G[rows, cols]
    return B.reshape(r_tasks, -1, c_tasks, B.shape[1] // c_tasks)


def _own(B4):
    """Diagonal task blocks ``[T, a, T, b] -> [T, a, b]``."""
    idx = jnp.arange(B4.shape[0])
    return B4[idx, :, idx, :]


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


# ---------------------------------------------------------------------------------------------
# Kernels of the methods
# ---------------------------------------------------------------------------------------------

def _adapt_train(G, layout: Layout, dyn: Dynamics, time, rcond):
    """``A_i = G(X_i, X'_i) T_i`` for every training task: ``[N, n_q, n_s]``."""
    sl, N = layout.slices(), layout.n_train
    T, info = _eigh_apply(_own(_block(G, sl["train_support"], sl["train_support"], N, N)), dyn, time, rcond)
    return _own(_block(G, sl["train_query"], sl["train_support"], N, N)) @ T, info


def _adapt_test(G, layout: Layout, dyn: Dynamics, time, rcond):
    """``A_hat_m = G(X_m, X'_m) T_hat_m`` for every test task: ``[M, m_q, m_s]``."""
    sl, M = layout.slices(), layout.n_test
    T, info = _eigh_apply(_own(_block(G, sl["test_support"], sl["test_support"], M, M)), dyn, time, rcond)
    return _own(_block(G, sl["test_query"], sl["test_support"], M, M)) @ T, info


def _meta_kernel_blocks(Theta, A, layout: Layout):
    """``Phi`` as ``[N, n_q, N, n_q]`` from the adapted Jacobians ``J_i = grad f(X_i) - A_i grad f(X'_i)``."""
    sl, N = layout.slices(), layout.n_train
    th_qq = _block(Theta, sl["train_query"], sl["train_query"], N, N)
    th_sq = _block(Theta, sl["train_support"], sl["train_query"], N, N)
    th_ss = _block(Theta, sl["train_support"], sl["train_support"], N, N)
    t1 = jnp.einsum("iab,ibjc->iajc", A, th_sq)
    t3 = jnp.einsum("iab,ibjd,jcd->iajc", A, th_ss, A)
    return th_qq - t1 - jnp.transpose(t1, (2, 3, 0, 1)) + t3


def meta_kernel(Theta, G, layout: Layout, inner: Dynamics = Dynamics(0.1), rcond: float = 1e-10):
    """The GBML meta-kernel ``Phi(𝒳, 𝒳)``, ``[N*n_q, N*n_q]`` (inner kernel ``G``: ``Theta`` for
    MAML, ``K`` for ANIL). Vectorised over task blocks (einsum), symmetric PSD by construction."""
    Theta, G = jnp.asarray(Theta, jnp.float64), jnp.asarray(G, jnp.float64)
    A, _ = _adapt_train(G, layout, inner.validate("inner_time"), None, rcond)
    phi = _meta_kernel_blocks(Theta, A, layout)
    n = layout.n_train * layout.n_query
    phi = phi.reshape(n, n)
    return np.asarray(0.5 * (phi + phi.T))


def _mtl_index(layout: Layout, mtl_data: str):
    """Point indices of 𝒟 in the stacked layout and the training task of each."""
    sl, N = layout.slices(), layout.n_train
    s = np.arange(sl["train_support"].start, sl["train_support"].stop).reshape(N, layout.n_support)
    q = np.arange(sl["train_query"].start, sl["train_query"].stop).reshape(N, layout.n_query)
    idx = q if mtl_data == "query" else np.concatenate([s, q], axis=1)
    task = np.repeat(np.arange(N), idx.shape[1])
    return idx.reshape(-1), task


def mtl_kernel(Theta, K, task_of_point, heads: str = "shared"):
    """``Theta_MTL`` on the MTL training points: ``Theta - K + blockdiag_i(K)`` (shared head
    initialisation) or ``blockdiag_i(Theta)`` (independent heads, infinite width).

    Args:
      Theta, K: ``[D, D]`` kernels on the training points.
      task_of_point: ``[D]`` integer training-task index of each point.
    """
    same = jnp.asarray(task_of_point)[:, None] == jnp.asarray(task_of_point)[None, :]
    Theta, K = jnp.asarray(Theta), jnp.asarray(K)
    if heads == "independent":
        return jnp.where(same, Theta, 0.0)
    return Theta - K + jnp.where(same, K, 0.0)


# ---------------------------------------------------------------------------------------------
# Predictors
# ---------------------------------------------------------------------------------------------

class Diagnostics(NamedTuple):
    """Numerical health of one method's prediction (floats; see :func:`status_of`)."""

    min_eig_rel: float
    ridge_rel: float
    cond: float
    finite: bool


class Prediction(NamedTuple):
    values: np.ndarray  # [M, m_q, k] predictions on the test queries
    diagnostics: Diagnostics


def status_of(diag: Diagnostics, psd_tol: float = 1e-9) -> str:
    """``'ok'``, or the first problem found: ``'nonfinite'`` (NaN or inf in the output), ``'not_psd'`` (a kernel
    with an eigenvalue below ``-psd_tol`` x its largest), ``'ridge'`` (a solve needed a ridge)."""
    if not diag.finite:
        return "nonfinite"
    if diag.min_eig_rel < -psd_tol:
        return "not_psd"
    if diag.ridge_rel > 0:
        return "ridge"
    return "ok"


def _gbml(Theta, G, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    sl, N, M = layout.slices(), layout.n_train, layout.n_test
    A, i1 = _adapt_train(G, layout, cfg.inner, times[0], cfg.rcond)
    Ahat, i2 = _adapt_test(G, layout, cfg.finetune, times[1], cfg.rcond)
    nq = N * layout.n_query
    phi = _meta_kernel_blocks(Theta, A, layout).reshape(nq, nq)
    F0_train = d.f0q + A @ (d.ys - d.f0s)
    F0_test = d.f0tq + Ahat @ (d.yts - d.f0ts)
    cross = (_block(Theta, sl["test_query"], sl["train_query"], M, N)
             - jnp.einsum("mab,mbjc->majc", Ahat, _block(Theta, sl["test_support"], sl["train_query"], M, N))
             - jnp.einsum("majd,jcd->majc", _block(Theta, sl["test_query"], sl["train_support"], M, N), A)
             + jnp.einsum("mab,mbjd,jcd->majc", Ahat,
                          _block(Theta, sl["test_support"], sl["train_support"], M, N), A))
    solve, i3 = _eigh_apply(phi, cfg.outer, times[2], cfg.rcond)
    coef = solve @ (d.yq - F0_train).reshape(nq, -1)
    out = F0_test + cross.reshape(M, layout.m_query, nq) @ coef
    return out, _merge(i1, i2, i3)


def _finetune_head(K, g_ts, g_tq, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    """``g(X) + K(X, X') T_hat_K (Y' - g(X'))`` per test task."""
    Ahat, info = _adapt_test(K, layout, cfg.finetune, times[1], cfg.rcond)
    return g_tq + Ahat @ (d.yts - g_ts), info


def _mtl(Theta, K, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    if cfg.mtl_heads == "independent":
        # A fresh test head is independent of the trained heads: the body's change is invisible.
        return _finetune_head(K, d.f0ts, d.f0tq, d, layout, cfg, times)
    sl, M = layout.slices(), layout.n_test
    idx, task = _mtl_index(layout, cfg.mtl_data)
    kern = mtl_kernel(Theta[jnp.ix_(idx, idx)], K[jnp.ix_(idx, idx)], task, cfg.mtl_heads)
    y_all = jnp.concatenate([d.ys.reshape(-1, d.ys.shape[-1]), d.yq.reshape(-1, d.yq.shape[-1])])
    f0_all = jnp.concatenate([d.f0s.reshape(-1, d.f0s.shape[-1]), d.f0q.reshape(-1, d.f0q.shape[-1])])
    idx_local = idx - sl["train_support"].start  # supports then queries, as in y_all
    solve, i1 = _eigh_apply(kern, cfg.outer, times[2], cfg.rcond)
    alpha = solve @ (y_all[idx_local] - f0_all[idx_local])
    body = Theta - K
    g_ts = d.f0ts + (body[sl["test_support"]][:, idx] @ alpha).reshape(d.f0ts.shape)
    g_tq = d.f0tq + (body[sl["test_query"]][:, idx] @ alpha).reshape(d.f0tq.shape)
    out, i2 = _finetune_head(K, g_ts, g_tq, d, layout, cfg, times)
    return out, _merge(i1, i2)


def _baseline(Theta, K, d: _Data, layout: Layout, cfg: PredictorConfig, times):
    return _finetune_head(K, d.f0ts, d.f0tq, d, layout, cfg, times)


_CLOSED_FORMS = {
    "mtl": _mtl,
    "anil": lambda Theta, K, d, layout, cfg, times: _gbml(Theta, K, d, layout, cfg, times),
    "maml": lambda Theta, K, d, layout, cfg, times: _gbml(Theta, Theta, d, layout, cfg, times),
    "baseline": _baseline,
}


@functools.partial(jax.jit, static_argnames=("layout", "cfg", "method"))
def _predict_batched(Theta, K, d: _Data, times, layout: Layout, cfg: PredictorConfig, method: str):
    """One method's closed form, vmapped over a leading batch axis of ``Theta``, ``K`` (depths) and of
    ``times`` ``[B, 3]``. One program per method (and static config): the methods of a sweep cell
    compile once each, and a method that does not depend on a setting (ANIL on ``mtl_data``, say)
    is not recomputed for it."""
    fn = functools.partial(_CLOSED_FORMS[method], layout=layout, cfg=cfg)
    return jax.vmap(lambda th, k, t: fn(th, k, d, times=t), in_axes=(0, 0, 0))(Theta, K, times)


def _static_config(cfg: PredictorConfig, method: str) -> PredictorConfig:
    """The static part of a config for one method: times are passed traced, so one compilation
    serves them all, and settings the method does not read are reset to their defaults, so that
    one compilation serves every value of them."""
    cfg = dataclasses.replace(cfg, inner_time=0.0, finetune_time=0.0, outer_time=0.0)
    if method != "mtl":
        cfg = dataclasses.replace(cfg, mtl_data="all", mtl_heads="shared")
    if method in ("mtl", "baseline"):
        cfg = dataclasses.replace(cfg, inner_steps=None, inner_l2=None)
    if method == "baseline":
        cfg = dataclasses.replace(cfg, outer_steps=None)
    return cfg


def _check_methods(methods: Sequence[str]) -> tuple:
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    require(not bad, f"unknown method(s) {', '.join(map(repr, bad))}: choose from {', '.join(METHODS)}")
    require(len(methods) > 0, "methods must name at least one method")
    return methods


def predict_from_kernels(
    Theta,
    K,
    tasks: TaskSet,
    config: PredictorConfig | Sequence[PredictorConfig] = PredictorConfig(),
    methods: Sequence[str] = METHODS,
    f0=None,
) -> dict[str, Prediction] | list[dict[str, Prediction]]:
    """Closed-form predictions on the test queries from given kernels.

    Args:
      Theta, K: ``[P, P]`` kernels over ``tasks.all_points()``, or ``[B, P, P]`` for a batch (for
        example every depth); a batch is computed in one vmapped, jitted call per method.
      tasks: the :class:`TaskSet` (labels; its layout fixes the point order).
      config: one :class:`PredictorConfig`, or a list of ``B`` configs differing only in their times
        (one per batch entry; a single config is broadcast).
      methods: subset of ``('mtl', 'anil', 'maml', 'baseline')``.
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
    static = _static_config(configs[0], "mtl")
    require(all(_static_config(c, "mtl") == static for c in configs),
            "a batch of configs may differ only in inner_time, finetune_time and outer_time")
    k = tasks.n_outputs
    if f0 is None:
        f0 = np.zeros((P, k))
    else:
        f0 = np.asarray(f0, dtype=np.float64)
        require(f0.shape[0] == P and f0.size == P * k, f"f0 must have shape [{P}, {k}], got {f0.shape}")
        require(bool(np.all(np.isfinite(f0))), "f0 contains NaN or inf")
        require(configs[0].mtl_heads == "shared" or "mtl" not in methods,
                "f0 (a single network's outputs) is defined for shared MTL heads only")
    data = _Data(tasks.train_support_y, tasks.train_query_y, tasks.test_support_y,
                 *_split_f0(f0.reshape(P, -1), layout))
    times = np.asarray([[c.inner_time, c.finetune_time, c.outer_time] for c in configs], np.float64)
    raw = jax.device_get({m: _predict_batched(Theta, K, data, times, layout, _static_config(configs[0], m), m)
                          for m in methods})
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
    methods: Sequence[str] = METHODS,
    architecture=None,
    f0=None,
) -> dict[str, Prediction] | dict[int, dict[str, Prediction]]:
    """Infinite-width predictions for one depth, or ``{depth: ...}`` for several depths, with the
    kernels of every depth computed in one pass (:func:`ntk_bridge.kernels.kernels_by_depth`)."""
    from ntk_bridge.kernels import kernels_by_depth

    depths = [int(depth)] if np.ndim(depth) == 0 else [int(x) for x in depth]
    ks = list(kernels_by_depth(tasks.all_points(), None, architecture=architecture, depths=depths))
    out = predict_from_kernels(np.stack([k.ntk for k in ks]), np.stack([k.readout for k in ks]),
                               tasks, config, methods, f0)
    by_depth = {k.depth: o for k, o in zip(ks, out)}
    return by_depth[int(depth)] if np.ndim(depth) == 0 else {d: by_depth[d] for d in depths}
