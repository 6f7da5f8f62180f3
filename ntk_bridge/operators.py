r"""Operators of the closed forms: training dynamics, the inner-loop operator, the meta-kernel and
the MTL kernel (docs/theory.md §2-3).

Kernels are over the stacked points of a :class:`~ntk_bridge.tasks.TaskSet` in its
:class:`~ntk_bridge.tasks.Layout` order (train supports, train queries, test supports, test
queries). Loss and time (docs/theory.md §2): sum of squares ``1/2 ||f(X) - Y||^2``; gradient flow
for a time ``t`` (only the product learning rate x steps matters), or ``steps`` discrete steps of
size ``t / steps``, or an l2 inner problem solved to optimality. For a kernel ``G`` on the training
points, the trained residual operator is ``U diag(phi(m)) U^T`` with ``eigh(G) = U diag(m) U^T`` and

* flow:     ``phi(m) = (1 - exp(-t m)) / m`` (``phi(0) = t``; ``t = inf``: ``1 / m``),
* steps:    ``phi(m) = (1 - (1 - (t/steps) m)^steps) / m``,
* l2:       ``phi(m) = 1 / (m + mu)``.

**Inner-loop operator** on a support set: ``T = phi(G')``, ``F(X) = f(X) + G(X, X') T (Y' - f(X'))``;
``A_i = G(X_i, X'_i) T_i`` maps task ``i``'s support residual to its queries. **Meta-kernel**
(inner kernel ``G = Theta`` for MAML, ``K`` for ANIL)::

    Phi_ij = Theta(X_i,X_j) - A_i Theta(X'_i,X_j) - Theta(X_i,X'_j) A_j^T + A_i Theta(X'_i,X'_j) A_j^T

Numerics: every inverse goes through ``eigh``. Where ``phi = 1 / m`` (infinite time) and the smallest
eigenvalue is below ``rcond * max_eig``, a ridge ``rcond * max_eig`` (plus any negative part) is
added and reported (:class:`Solve`); non-PSD kernels are reported too.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ntk_bridge.errors import require
from ntk_bridge.settings import QUERY
from ntk_bridge.tasks import Layout

__all__ = ["Dynamics", "Solve", "spectral_function", "eigh_apply", "merge", "inner_operator", "block", "own",
           "adapt_train", "adapt_test", "meta_kernel_blocks", "meta_kernel", "mtl_index", "mtl_kernel"]

_SMALL = 1e-8  # below |t m| = 1e-8 the series of phi is exact to float64


# ---------------------------------------------------------------------------------------------
# Dynamics: flow / steps / l2, and the spectral function phi
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


class Solve(NamedTuple):
    """Spectral diagnostics of one or a batch of symmetric solves."""

    min_eig_rel: jax.Array  # smallest eigenvalue / largest |eigenvalue| (negative: not PSD)
    ridge_rel: jax.Array  # ridge added / largest |eigenvalue|
    cond: jax.Array  # largest / smallest positive eigenvalue


def eigh_apply(G, dyn: Dynamics, time, rcond):
    """``U phi(m) U^T`` for a batch of symmetric ``G [..., n, n]``, and its diagnostics."""
    G = 0.5 * (G + jnp.swapaxes(G, -1, -2))
    m, U = jnp.linalg.eigh(G)
    phi, ridge = spectral_function(m, dyn, time, rcond)
    op = jnp.einsum("...ij,...j,...kj->...ik", U, phi, U)
    scale = jnp.maximum(jnp.max(jnp.abs(m), axis=-1), jnp.finfo(m.dtype).tiny)
    min_m = jnp.min(m, axis=-1)
    cond = scale / jnp.maximum(min_m, jnp.finfo(m.dtype).tiny)
    return op, Solve(jnp.min(min_m / scale), jnp.max(ridge), jnp.max(cond))


def merge(*solves: Solve) -> Solve:
    return Solve(jnp.min(jnp.stack([s.min_eig_rel for s in solves])),
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
    op, _ = eigh_apply(G, dyn, None, rcond)
    return np.asarray(op)


# ---------------------------------------------------------------------------------------------
# Blocks of the stacked layout, per-task operators, meta-kernel, MTL kernel
# ---------------------------------------------------------------------------------------------

def block(G, rows: slice, cols: slice, r_tasks: int, c_tasks: int):
    """``G[rows, cols]`` as ``[r_tasks, r_points, c_tasks, c_points]``."""
    B = G[rows, cols]
    return B.reshape(r_tasks, -1, c_tasks, B.shape[1] // c_tasks)


def own(B4):
    """Diagonal task blocks ``[T, a, T, b] -> [T, a, b]`` (numpy or JAX arrays)."""
    idx = np.arange(B4.shape[0])
    return B4[idx, :, idx, :]


def adapt_train(G, layout: Layout, dyn: Dynamics, time, rcond):
    """``A_i = G(X_i, X'_i) T_i`` for every training task: ``[N, n_q, n_s]``."""
    sl, N = layout.slices(), layout.n_train
    T, info = eigh_apply(own(block(G, sl["train_support"], sl["train_support"], N, N)), dyn, time, rcond)
    return own(block(G, sl["train_query"], sl["train_support"], N, N)) @ T, info


def adapt_test(G, layout: Layout, dyn: Dynamics, time, rcond):
    """``A_hat_m = G(X_m, X'_m) T_hat_m`` for every test task: ``[M, m_q, m_s]``."""
    sl, M = layout.slices(), layout.n_test
    T, info = eigh_apply(own(block(G, sl["test_support"], sl["test_support"], M, M)), dyn, time, rcond)
    return own(block(G, sl["test_query"], sl["test_support"], M, M)) @ T, info


def meta_kernel_blocks(Theta, A, layout: Layout):
    """``Phi`` as ``[N, n_q, N, n_q]`` from the adapted Jacobians ``J_i = grad f(X_i) - A_i grad f(X'_i)``."""
    sl, N = layout.slices(), layout.n_train
    th_qq = block(Theta, sl["train_query"], sl["train_query"], N, N)
    th_sq = block(Theta, sl["train_support"], sl["train_query"], N, N)
    th_ss = block(Theta, sl["train_support"], sl["train_support"], N, N)
    t1 = jnp.einsum("iab,ibjc->iajc", A, th_sq)
    t3 = jnp.einsum("iab,ibjd,jcd->iajc", A, th_ss, A)
    return th_qq - t1 - jnp.transpose(t1, (2, 3, 0, 1)) + t3


@functools.partial(jax.jit, static_argnames=("layout", "inner", "rcond"))
def _meta_kernel(Theta, G, layout: Layout, inner: Dynamics, rcond: float):
    A, _ = adapt_train(G, layout, inner, None, rcond)
    n = layout.n_train * layout.n_query
    phi = meta_kernel_blocks(Theta, A, layout).reshape(n, n)
    return 0.5 * (phi + phi.T)


def meta_kernel(Theta, G, layout: Layout, inner: Dynamics = Dynamics(0.1), rcond: float = 1e-10) -> np.ndarray:
    """The GBML meta-kernel ``Phi(𝒳, 𝒳)``, ``[N*n_q, N*n_q]`` (inner kernel ``G``: ``Theta`` for
    MAML, ``K`` for ANIL; docs/theory.md §3.2). Vectorised over task blocks (einsum) and jitted,
    symmetric PSD by construction."""
    Theta, G = np.asarray(Theta, np.float64), np.asarray(G, np.float64)
    return np.asarray(_meta_kernel(Theta, G, layout, inner.validate("inner_time"), float(rcond)))


def mtl_index(layout: Layout, mtl_data: str):
    """Point indices of 𝒟 in the stacked layout and the training task of each."""
    sl, N = layout.slices(), layout.n_train
    s = np.arange(sl["train_support"].start, sl["train_support"].stop).reshape(N, layout.n_support)
    q = np.arange(sl["train_query"].start, sl["train_query"].stop).reshape(N, layout.n_query)
    idx = q if mtl_data == QUERY else np.concatenate([s, q], axis=1)
    task = np.repeat(np.arange(N), idx.shape[1])
    return idx.reshape(-1), task


def mtl_kernel(Theta, K, task_of_point):
    """``Theta_MTL = Theta - K + blockdiag_i(K)`` on the MTL training points: one head per task, every
    head initialised to the same ``w0`` (docs/theory.md §3.3).

    Args:
      Theta, K: ``[D, D]`` kernels on the training points.
      task_of_point: ``[D]`` integer training-task index of each point.
    """
    same = jnp.asarray(task_of_point)[:, None] == jnp.asarray(task_of_point)[None, :]
    Theta, K = jnp.asarray(Theta), jnp.asarray(K)
    return Theta - K + jnp.where(same, K, 0.0)
