r"""Outer solves at scale, through the per-task structure of the meta-kernel and the MTL kernel
(docs/theory.md §3.7).

The dense closed forms (:mod:`ntk_bridge.closed_forms`) build the meta-kernel ``Phi`` (``N n_q``
square) and ``Theta_MTL`` (``|𝒟|`` square) with 4-index einsums and take their ``eigh`` (about
``9 n^3``), then form the ``n x n`` operator ``U phi(m) U^T`` (another ``n^3``): at paper scale
(1,000 tasks of 5 + 15 points: ``Phi`` 15,000 square, ``Theta_MTL`` 20,000) that is tens of minutes
per cell on one core. At an infinite outer time a closed form needs only ``Phi^-1 r`` (resp.
``Theta_MTL^-1 r``), and both matrices have cheap structured products:

* GBML: ``J = B J_train`` with ``B = [-blockdiag_i(A_i), I]`` (``A_i = G(X_i, X'_i) T_i``, the
  per-task inner operators), so ``Phi = B Theta_train B^T``: ``Phi v`` is one product with the
  training kernel, ``(Theta_train w)_query - blockdiag(A) (Theta_train w)_support`` with
  ``w = B^T v``; the prediction's cross block is the same product with the test rows of ``Theta``
  (never formed).
* MTL: ``Theta_MTL v = (Theta - K) v + blockdiag_i(K_ii) v``.

Two solvers use this (objects of :mod:`ntk_bridge.solvers`, :func:`resolve` says which runs when):

* ``cholesky`` (direct): ``Phi`` is formed once from the per-task blocks (``O(n^2 n_s)`` work, no
  4-index temporaries), factorised once (``n^3 / 3``, the only cubic step) and solved for every
  output column; LAPACK's ``dpocon`` estimates its condition number. A factorisation that fails, or
  an estimated condition number above ``1 / rcond`` (the dense path's ridge threshold), falls back to
  the dense ``eigh`` with its ridge, so the result means what the dense one means. From
  :data:`ntk_bridge.blocked.LAPACK_MAX_ORDER` on: :func:`ntk_bridge.blocked.cholesky` and ``dpocon``'s
  condition estimator (:func:`ntk_bridge.blocked.inverse_norm1`) instead, and no dense fallback (a failure gives NaN predictions).
* ``cg`` (iterative, nothing ``n x n`` formed): conjugate gradients with a block-Jacobi
  preconditioner (the exact inverse of each task's own diagonal block, ``Phi_ii`` resp.
  ``Theta_ii``). Stopping rule: relative residual ``||A x - r|| / ||r|| <= CG_TOL = 1e-10`` in every
  output column, recomputed from scratch at the end (not the recurrence's); ``not_converged`` after
  ``max_iter`` iterations (default ``4 n``), ``not_psd`` on negative curvature; no ridge. Its
  iteration count grows with the condition number (measured: ``benchmarks/README.md``, section 7),
  so it wins where the system is well conditioned or too large to form.
"""
from __future__ import annotations

import math

import numpy as np

from ntk_bridge.errors import require
from ntk_bridge.operators import Solve, adapt_test, adapt_train, block, mtl_index, own
from ntk_bridge.solvers import (AUTO_MIN_SIZE, CG, CG_TOL, SOLVERS, CGResult, Solver, System,  # noqa: F401
                                block_jacobi, grid_solvers, outer_size, parse, pcg, resolve, solve_estimate,
                                solver_plan)
from ntk_bridge.tasks import Layout
from ntk_bridge.settings import LEARNED, RESET

__all__ = ["SOLVERS", "CG_TOL", "AUTO_MIN_SIZE", "CGResult", "pcg", "resolve", "grid_solvers", "solver_plan",
           "solve_estimate", "outer_size", "gbml", "mtl"]

_block_jacobi = block_jacobi


def _solver(solver, tol: float, max_iter: int | None) -> Solver:
    """``solver`` as an object; the name ``'cg'`` with ``tol`` and ``max_iter``."""
    solver = parse(solver)
    require(isinstance(solver, Solver), "the structured solves take a resolved solver, not 'auto'")
    return CG(tol, max_iter) if solver == CG() and (tol, max_iter) != (CG_TOL, None) else solver


#: Elements of the temporaries of one block of tasks when a meta-kernel system is formed (256 MB).
FORM_BLOCK_ELEMENTS = 1 << 25


def _own_blocks(G, rows: slice, cols: slice, tasks: int) -> np.ndarray:
    return np.asarray(own(block(G, rows, cols, tasks, tasks)))


def gbml(Theta, G, d, layout: Layout, cfg, times, solver: str | Solver = "cholesky", tol: float = CG_TOL,
         max_iter: int | None = None, K=None):
    """docs/theory.md §3.2 at an infinite outer time (``G``: the inner kernel) by a structured solve;
    with ``cfg.test_head == 'reset'`` (§3.5, needs the readout kernel ``K``) the test-time adaptation
    starts from the trained body with the head at ``w0``. ``d``: :class:`ntk_bridge.closed_forms.Data`
    (numpy). Returns ``(values [M, m_q, k], Solve, residual)``."""
    require(getattr(cfg, "test_head", LEARNED) == LEARNED or K is not None,
            "the reset test-head protocol needs the readout kernel K")
    sl, N, ns, nq = layout.slices(), layout.n_train, layout.n_support, layout.n_query
    A, i1 = adapt_train(G, layout, cfg.inner, times.inner, cfg.rcond)
    Ahat, i2 = adapt_test(G, layout, cfg.finetune, times.finetune, cfg.rcond)
    A, Ahat = np.asarray(A), np.asarray(Ahat)
    n_tr, n = sl["train_query"].stop, N * nq
    s, q = sl["train_support"], sl["train_query"]

    def lift(v):  # B^T v: [N n_q, k] -> [n_tr, k]
        return np.concatenate([-np.einsum("iqs,iqk->isk", A, v.reshape(N, nq, -1)).reshape(N * ns, -1), v])

    def reduce(u, a, n_s, n_q, tasks):  # B u for supports [tasks n_s] then queries [tasks n_q]
        us, uq = u[:tasks * n_s].reshape(tasks, n_s, -1), u[tasks * n_s:].reshape(tasks, n_q, -1)
        return uq - np.einsum("iqs,isk->iqk", a, us)

    def matvec(v):
        return reduce(Theta[:n_tr, :n_tr] @ lift(v), A, ns, nq, N).reshape(n, -1)

    def form():
        # Theta(X, X) - A Theta(X', X) - (A Theta(X', X))^T + A Theta(X', X') A^T, a block of tasks'
        # rows at a time: the n x n result is the only array of its size
        phi = np.array(Theta[q, q])
        tb = max(1, FORM_BLOCK_ELEMENTS // max(nq * max(n, N * ns), 1))  # tasks per block
        for i in range(0, N, tb):
            j = min(i + tb, N)
            rows = slice(i * nq, j * nq)
            sup = slice(s.start + i * ns, s.start + j * ns)
            at_sq = np.einsum("iqs,isn->iqn", A[i:j], Theta[sup, q].reshape(j - i, ns, n)).reshape(-1, n)
            phi[rows] -= at_sq
            phi[:, rows] -= at_sq.T
            at_ss = np.einsum("iqs,isn->iqn", A[i:j], Theta[sup, s].reshape(j - i, ns, N * ns)).reshape(-1, N, ns)
            phi[rows] += np.einsum("mjs,jqs->mjq", at_ss, A).reshape(-1, n)
        return phi

    t1 = A @ _own_blocks(Theta, s, q, N)
    blocks = _own_blocks(Theta, q, q, N) - t1 - np.swapaxes(t1, 1, 2) + \
        A @ _own_blocks(Theta, s, s, N) @ np.swapaxes(A, 1, 2)
    F0_train = np.asarray(d.f0q) + A @ (np.asarray(d.ys) - np.asarray(d.f0s))
    F0_test = np.asarray(d.f0tq) + Ahat @ (np.asarray(d.yts) - np.asarray(d.f0ts))
    rhs = (np.asarray(d.yq) - F0_train).reshape(n, -1)
    coef, i3, residual = _solver(solver, tol, max_iter).solve(System(matvec, blocks, form), rhs, cfg.outer, cfg.rcond)
    if getattr(cfg, "test_head", LEARNED) == RESET:  # §3.5: the trained body, the head back at w0
        w = lift(coef)
        moved = Theta[n_tr:, :n_tr] @ w - K[n_tr:, :n_tr] @ w
        n_ts = layout.n_test * layout.m_support
        g_ts = np.asarray(d.f0ts) + moved[:n_ts].reshape(d.f0ts.shape)
        g_tq = np.asarray(d.f0tq) + moved[n_ts:].reshape(d.f0tq.shape)
        return g_tq + Ahat @ (np.asarray(d.yts) - g_ts), _merged(i1, i2, i3), residual
    u = Theta[n_tr:, :n_tr] @ lift(coef)
    return F0_test + reduce(u, Ahat, layout.m_support, layout.m_query, layout.n_test), _merged(i1, i2, i3), residual


def mtl(Theta, K, d, layout: Layout, cfg, times, solver: str | Solver = "cholesky", tol: float = CG_TOL,
        max_iter: int | None = None):
    """docs/theory.md §3.3 (shared heads) at an infinite outer time by a structured solve. Returns
    ``(values [M, m_q, k], Solve, residual)``."""
    require(cfg.mtl_heads == "shared", "the structured MTL solve is for shared heads (independent heads have none)")
    sl, N = layout.slices(), layout.n_train
    idx, _ = mtl_index(layout, cfg.mtl_data)
    span = slice(int(idx.min()), int(idx.max()) + 1)
    require(len(idx) == span.stop - span.start, "MTL's training points must fill a contiguous range")
    local, per = idx - span.start, len(idx) // N  # 𝒟: a permutation of a contiguous range, task by task
    groups = [idx[i * per:(i + 1) * per] for i in range(N)]
    own_k = np.stack([K[np.ix_(g, g)] for g in groups])

    def scatter(v):
        w = np.zeros((len(idx), v.shape[1]))
        w[local] = v
        return w

    def matvec(v):
        w = scatter(v)
        body = (Theta[span, span] @ w - K[span, span] @ w)[local]
        return body + np.einsum("tab,tbk->tak", own_k, v.reshape(N, per, -1)).reshape(v.shape)

    def form():  # row block by row block: no temporary of the whole size
        a = np.empty((len(idx), len(idx)))
        step = max(1, (1 << 24) // max(len(idx), 1))
        for r in range(0, len(idx), step):
            rows = idx[r:r + step]
            a[r:r + step] = Theta[rows][:, idx]
            a[r:r + step] -= K[rows][:, idx]
        for i in range(N):
            a[i * per:(i + 1) * per, i * per:(i + 1) * per] += own_k[i]
        return a

    blocks = np.stack([Theta[np.ix_(g, g)] for g in groups])
    k = d.ys.shape[-1]
    y_all = np.concatenate([np.asarray(d.ys).reshape(-1, k), np.asarray(d.yq).reshape(-1, k)])
    f0_all = np.concatenate([np.asarray(d.f0s).reshape(-1, k), np.asarray(d.f0q).reshape(-1, k)])
    rhs = (y_all - f0_all)[idx - sl["train_support"].start]
    alpha, i1, residual = _solver(solver, tol, max_iter).solve(System(matvec, blocks, form), rhs, cfg.outer,
                                                              cfg.rcond)
    w = scatter(alpha)
    test = slice(sl["test_support"].start, layout.n_points)
    g = Theta[test, span] @ w - K[test, span] @ w
    n_ts = layout.n_test * layout.m_support
    g_ts, g_tq = np.asarray(d.f0ts) + g[:n_ts].reshape(d.f0ts.shape), np.asarray(d.f0tq) + g[n_ts:].reshape(d.f0tq.shape)
    Ahat, i2 = adapt_test(K, layout, cfg.finetune, times.finetune, cfg.rcond)
    return g_tq + np.asarray(Ahat) @ (np.asarray(d.yts) - g_ts), _merged(i1, i2), residual


def _merged(*solves: Solve) -> Solve:
    """Diagnostics over several solves, ignoring the NaNs of what a structured solve cannot know
    (the smallest eigenvalue of a factorised or iterated system)."""
    def pick(field, fn):
        vals = [float(getattr(s, field)) for s in solves if np.isfinite(float(getattr(s, field)))]
        return fn(vals) if vals else math.nan
    return Solve(pick("min_eig_rel", min), pick("ridge_rel", max), pick("cond", max))
