r"""The closed forms of MTL, ANIL, MAML, FO-MAML and the no-transfer baseline (docs/theory.md §3):
pure functions of the kernels, the labels and the initial outputs.

Each takes kernels ``Theta, K [P, P]`` over the stacked points of a task set, its labels and initial
outputs (:class:`Data`), the static part of a :class:`~ntk_bridge.predictors.PredictorConfig` and
the (possibly traced) :class:`Times`, and returns the predictions on the test queries
``[M, m_q, k]`` with the diagnostics of its solves (one signature: :class:`ClosedForm`).
:data:`CLOSED_FORMS` maps each method's name to its closed form;
:func:`ntk_bridge.predictors.predict_from_kernels` runs them.

ANIL, MAML and MTL (shared heads) are their outer problems (:mod:`ntk_bridge.outer`, where each is
written once) formed and solved by ``eigh``; the structured solvers (``cholesky``, ``cg``) apply the
same outer problems (docs/theory.md §3.7).

* GBML (§3.2), inner kernel ``G = K`` (:func:`anil`) or ``Theta`` (:func:`maml`):
  ``F(X) = F0(X) + Phi(X, 𝒳) phi_outer(Phi) (𝒴 - F0(𝒳))``, ``F0`` the initial network adapted to
  each task; FO-MAML in discrete time only (:func:`fomaml`, numpy);
* MTL (§3.3, :func:`mtl`): the body trained with ``Theta_MTL = Theta - K + blockdiag_i(K)`` on 𝒟,
  the head reset to ``w0`` and fine-tuned with ``K``;
* the baseline (§3.4, :func:`baseline`): ``f0(X) + K(X, X') T_hat_K (Y' - f0(X'))``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Protocol

import jax
import numpy as np

from ntk_bridge.errors import require
from ntk_bridge.operators import Solve, block, inner_operator, own
from ntk_bridge.outer import GBMLOuter, MTLOuter, adapted, finetuned
from ntk_bridge.tasks import Layout
from ntk_bridge.settings import RESET

__all__ = ["Data", "Times", "split_f0", "mtl", "anil", "maml", "baseline", "fomaml", "ClosedForm", "CLOSED_FORMS"]


class Data(NamedTuple):
    """Labels and initial outputs, split by point group (all ``[tasks, points, k]``)."""

    ys: jax.Array
    yq: jax.Array
    yts: jax.Array
    f0s: jax.Array
    f0q: jax.Array
    f0ts: jax.Array
    f0tq: jax.Array


def split_f0(f0: np.ndarray, layout: Layout) -> tuple[np.ndarray, ...]:
    """``f0 [P, k]`` split into the four point groups, each ``[tasks, points, k]`` (numpy)."""
    sl = layout.slices()
    return (f0[sl["train_support"]].reshape(layout.n_train, layout.n_support, -1),
            f0[sl["train_query"]].reshape(layout.n_train, layout.n_query, -1),
            f0[sl["test_support"]].reshape(layout.n_test, layout.m_support, -1),
            f0[sl["test_query"]].reshape(layout.n_test, layout.m_query, -1))


class Times(NamedTuple):
    """The (possibly traced) times of one closed form: ``lambda*tau``, ``s_hat``, ``eta*t``."""

    inner: jax.Array
    finetune: jax.Array
    outer: jax.Array


def mtl(Theta, K, d: Data, layout: Layout, cfg, times):
    """MTL (docs/theory.md §3.3): the body trained with ``Theta_MTL`` on 𝒟, the head reset to ``w0``
    and fine-tuned with ``K`` on the test support (:class:`ntk_bridge.outer.MTLOuter`)."""
    if cfg.mtl_heads == "independent":
        # A fresh test head is independent of the trained heads: the body's change is invisible.
        return finetuned(K, d.f0ts, d.f0tq, d.yts, layout, cfg, times)
    return MTLOuter(Theta, K, d, layout, cfg, times).dense()


def anil(Theta, K, d: Data, layout: Layout, cfg, times):
    """ANIL: GBML (:class:`ntk_bridge.outer.GBMLOuter`) with the head's kernel ``K`` in the inner
    loop and at test time."""
    return GBMLOuter(Theta, K, K, d, layout, cfg, times).dense()


def maml(Theta, K, d: Data, layout: Layout, cfg, times):
    """MAML: GBML (:class:`ntk_bridge.outer.GBMLOuter`) with the full NTK ``Theta`` in the inner
    loop and at test time."""
    return GBMLOuter(Theta, K, Theta, d, layout, cfg, times).dense()


def baseline(Theta, K, d: Data, layout: Layout, cfg, times):
    """The no-transfer baseline (docs/theory.md §3.4): a head fine-tuned on the untrained body."""
    return finetuned(K, d.f0ts, d.f0tq, d.yts, layout, cfg, times)


def fomaml(Theta, K, d: Data, layout: Layout, cfg, times):
    r"""Discrete-time closed form of first-order MAML for a linearised network (kernel ``Theta``).

    With ``A_i = Theta(X_i, X'_i) T_i`` (MAML's inner operator, discrete) and ``A_hat`` the test
    task's at the fine-tuning time, the first-order outer step ``theta -= eta sum_i J(X_i)^T r_i``
    (``r`` the adapted query residuals) moves the residuals by the non-symmetric kernel
    ``Phi_FO(i, j) = Theta(X_i, X_j) - A_i Theta(X'_i, X_j)``::

        r_0 = F0(𝒳) - 𝒴,   r_{s+1} = (I - eta Phi_FO) r_s
        F(X) = F0(X) - eta [Theta(X, 𝒳) - A_hat Theta(X', 𝒳)] sum_{s<S} r_s

    With ``cfg.test_head == 'reset'`` the parameters moved by ``-eta J(𝒳)^T sum_s r_s`` keep only
    their body part: ``g(x) = f0(x) - eta B(x, 𝒳) sum_s r_s`` (``B = Theta - K``), adapted at test
    time from ``g`` with ``Theta``.

    ``F0`` as in docs/theory.md §3.2. Requires a discrete config (:attr:`"PredictorConfig".discrete`, its
    steps in ``cfg``, its times in ``times``); numpy, not traced. Returns ``([M, m_q, k], Solve)`` (no
    outer solve: NaN diagnostics, no ridge).
    """
    config = dataclasses.replace(cfg, inner_time=float(times.inner), finetune_time=float(times.finetune),
                                 outer_time=float(times.outer))
    require(config.discrete, "FO-MAML's closed form needs discrete inner, fine-tuning and outer steps "
            "and a finite outer time (ntk_bridge.finite.discretise gives them)")
    lay = layout
    sl = lay.slices()
    k = d.ys.shape[-1]
    Theta = np.asarray(Theta, dtype=np.float64)
    ys, yq, yts = (np.asarray(y, np.float64) for y in (d.ys, d.yq, d.yts))

    def blocks(rows, cols, r_tasks, c_tasks):
        return block(Theta, sl[rows], sl[cols], r_tasks, c_tasks)

    N, M = lay.n_train, lay.n_test
    T = inner_operator(own(blocks("train_support", "train_support", N, N)), config.inner_time, config.inner_steps)
    A = own(blocks("train_query", "train_support", N, N)) @ T  # [N, n_q, n_s]
    T_hat = inner_operator(own(blocks("test_support", "test_support", M, M)), config.finetune_time,
                           config.finetune_steps)
    A_hat = own(blocks("test_query", "test_support", M, M)) @ T_hat  # [M, m_q, m_s]
    f0s, f0q, f0ts, f0tq = (np.asarray(f, np.float64) for f in (d.f0s, d.f0q, d.f0ts, d.f0tq))
    F0 = adapted(A, f0s, f0q, ys).reshape(N * lay.n_query, k)
    F0_test = adapted(A_hat, f0ts, f0tq, yts)
    nq = N * lay.n_query
    phi = Theta[sl["train_query"], sl["train_query"]] - np.einsum(
        "iab,ibc->iac", A, Theta[sl["train_support"], sl["train_query"]].reshape(N, lay.n_support, nq)).reshape(nq, nq)
    cross = Theta[sl["test_query"], sl["train_query"]].reshape(M, lay.m_query, nq) - np.einsum(
        "mab,mbc->mac", A_hat, Theta[sl["test_support"], sl["train_query"]].reshape(M, lay.m_support, nq))
    eta = config.outer_time / config.outer_steps
    r = F0 - yq.reshape(nq, k)
    total = np.zeros_like(r)
    for _ in range(int(config.outer_steps)):
        total += r
        r = r - eta * (phi @ r)
    if config.test_head == RESET:
        B = Theta - np.asarray(K, dtype=np.float64)
        g_ts = f0ts - eta * (B[sl["test_support"], sl["train_query"]] @ total).reshape(M, lay.m_support, k)
        g_tq = f0tq - eta * (B[sl["test_query"], sl["train_query"]] @ total).reshape(M, lay.m_query, k)
        return adapted(A_hat, g_ts, g_tq, yts), _NO_SOLVE
    return F0_test - eta * (cross @ total), _NO_SOLVE


#: The diagnostics of a closed form without an outer solve run outside JAX (FO-MAML).
_NO_SOLVE = Solve(math.nan, 0.0, math.nan)


class ClosedForm(Protocol):
    """The one signature of every closed form: kernels ``Theta, K [P, P]``, :class:`Data`, the
    :class:`Layout`, the (static) config and the (possibly traced) :class:`Times`; returns the
    predictions on the test queries ``[M, m_q, k]`` and the diagnostics of its solves."""

    def __call__(self, Theta, K, d: Data, layout: Layout, cfg, times: Times) -> tuple[jax.Array, Solve]: ...


#: Each method's closed form, by method name (:data:`ntk_bridge.methods.METHODS`): FO-MAML's runs in
#: numpy (discrete times only), the others are jitted and vmapped by ``predict_from_kernels``.
CLOSED_FORMS: dict[str, ClosedForm] = {"mtl": mtl, "anil": anil, "maml": maml, "fomaml": fomaml, "baseline": baseline}
