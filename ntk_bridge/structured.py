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

Two solvers use this (:func:`resolve` says which runs when):

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
import os
from typing import Callable, NamedTuple

import numpy as np

from ntk_bridge import blocked
from ntk_bridge.errors import require
from ntk_bridge.operators import Solve, adapt_test, adapt_train, block, eigh_apply, mtl_index, own
from ntk_bridge.tasks import Layout

__all__ = ["SOLVERS", "CG_TOL", "AUTO_MIN_SIZE", "CGResult", "pcg", "resolve", "grid_solvers", "solver_plan",
           "solve_estimate", "outer_size", "gbml", "mtl"]

#: Outer solvers: ``auto`` picks one of the others (:func:`resolve`).
SOLVERS = ("auto", "dense", "cholesky", "cg")
#: Relative residual at which conjugate gradients stop (every output column).
CG_TOL = 1e-10
#: Under ``auto``, outer systems from this size on take the structured direct solve (measured 2.4 to
#: 9.4 times faster than the dense ``eigh`` from 1,125 to 4,000, slower at 375 to 500:
#: ``benchmarks/README.md``, section 7; the default sweep's systems are 100 to 150 and keep the dense path).
AUTO_MIN_SIZE = 1500
#: Under ``auto``, a system whose formed matrix and factor would take more than this fraction of the
#: available memory goes to conjugate gradients instead.
AUTO_MEMORY_FRACTION = 0.5


class CGResult(NamedTuple):
    x: np.ndarray  # [n, k]
    residual: float  # max over columns of ||A x - b|| / ||b||, recomputed at the end
    iterations: int
    negative_curvature: bool


def pcg(matvec: Callable[[np.ndarray], np.ndarray], b: np.ndarray, precond: Callable[[np.ndarray], np.ndarray],
        tol: float = CG_TOL, max_iter: int | None = None, restarts: int = 2) -> CGResult:
    """Preconditioned conjugate gradients for ``A x = b``, ``b [n, k]``: the ``k`` columns side by
    side, each with its own step sizes, a column frozen once it has converged. After the recurrence
    stops, the residual is recomputed as ``b - A x``; above ``tol`` (rounding drift) the solve
    restarts from ``x``, at most ``restarts`` times, within ``max_iter`` iterations in all."""
    b = np.asarray(b, np.float64)
    max_iter = int(max_iter or 4 * max(b.shape[0], 25))
    bnorm = np.linalg.norm(b, axis=0)
    bnorm = np.where(bnorm > 0, bnorm, 1.0)
    x, r = np.zeros_like(b), b.copy()
    total, negative, residual = 0, False, math.inf
    for _ in range(restarts + 1):
        z = precond(r)
        p, rz = z.copy(), np.sum(r * z, axis=0)
        while total < max_iter:
            active = np.linalg.norm(r, axis=0) / bnorm > tol
            if not active.any():
                break
            Ap = matvec(p)
            pAp = np.sum(p * Ap, axis=0)
            if np.any(pAp[active] <= 0):
                negative = True
                break
            alpha = np.where(active, rz / np.where(active, pAp, 1.0), 0.0)
            x += alpha * p
            r -= alpha * Ap
            z = precond(r)
            rz_new = np.sum(r * z, axis=0)
            beta = np.where(active, rz_new / np.where(rz != 0, rz, 1.0), 0.0)
            p, rz = np.where(active, z + beta * p, p), np.where(active, rz_new, rz)
            total += 1
        r = b - matvec(x)
        residual = float(np.max(np.linalg.norm(r, axis=0) / bnorm))
        if residual <= tol or negative or total >= max_iter:
            break
    return CGResult(x, residual, total, negative)


def outer_size(layout: Layout, mtl_data: str) -> int:
    """The largest outer system of a closed form: ``N n_q`` (meta-kernel) or ``|𝒟|`` (MTL)."""
    return layout.n_train * (layout.n_query + (layout.n_support if mtl_data == "all" else 0))


def resolve(solver: str, layout: Layout, configs, memory: int | None = None) -> str:
    """``'dense'``, ``'cholesky'`` or ``'cg'`` for closed forms with these configs: a solver named
    explicitly (the structured ones need an infinite outer time); ``auto``: ``dense`` below
    :data:`AUTO_MIN_SIZE` or at a finite outer time, else ``cholesky`` when ``3 n^2`` float64 fit in
    :data:`AUTO_MEMORY_FRACTION` of ``memory`` bytes (default: the available memory), else ``cg``."""
    require(solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if solver == "dense":
        return "dense"
    to_convergence = all(math.isinf(c.outer_time) and c.outer_steps is None for c in configs)
    if solver != "auto":
        require(to_convergence, f"--solver {solver}: the structured outer solves handle --outer-time inf only "
                "(finite outer times need the dense eigh)")
        return solver
    n = max(outer_size(layout, c.mtl_data) for c in configs)
    if not to_convergence or n < AUTO_MIN_SIZE:
        return "dense"
    if memory is None:
        try:  # free physical memory (page cache not counted: a cautious figure)
            memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            memory = None
    return "cholesky" if memory is None or 24 * n * n <= AUTO_MEMORY_FRACTION * memory else "cg"


def solve_estimate(solvers, layout: Layout) -> tuple[int, float]:
    """``(bytes, seconds)`` of one method's outer solve in the worst of ``solvers``: ``dense`` holds
    about 6 copies of the meta-kernel (``N n_q`` square) and of MTL's kernel (``N (n' + n)``) and takes
    ``2e-3 + 3e-9 n^3`` s; ``cholesky`` two ``n x n`` arrays (the formed system, factorised in place,
    and one product while forming it) and ``2e-3 + 4e-11 n^3`` s; ``cg`` nothing ``n x n`` and, at
    ``n`` iterations of a product with the training kernel, ``2e-3 + 1e-9 n^3`` s (measured on a
    2-core machine, ``benchmarks/README.md``)."""
    meta, mtl = layout.n_train * layout.n_query, outer_size(layout, "all")
    n = max(meta, mtl)
    cost = {"dense": (8 * 6 * (meta ** 2 + mtl ** 2), 2e-3 + 3e-9 * n ** 3),
            "cholesky": (8 * 2 * n ** 2, 2e-3 + 4e-11 * n ** 3), "cg": (8 * 8 * n, 2e-3 + 1e-9 * n ** 3)}
    return max(cost[s][0] for s in solvers), max(cost[s][1] for s in solvers)


def grid_solvers(solver: str, layout: Layout, outer_times, mtl_data, plan: tuple | None = None) -> list[str]:
    """The outer solvers a sweep grid's infinite-width cells use (sorted, without repeats), those of
    ``plan`` (:func:`solver_plan`) when given."""
    plan = solver_plan(solver, layout, outer_times, mtl_data) if plan is None else plan
    return sorted({s for _, s in plan})


def solver_plan(solver: str, layout: Layout, outer_times, mtl_data, memory: int | None = None) -> tuple:
    """``solver`` resolved (:func:`resolve`) for every ``(outer_time, mtl_data)`` of a grid, once, from
    one reading of the available memory: ``(((outer_time, mtl_data), 'dense' | 'cholesky' | 'cg'), ...)``.
    A sweep resolves ``auto`` here when it plans and hands the result to every unit and worker, so
    that the solver its cache keys name is the one that computed the numbers."""
    if solver == "auto" and memory is None:
        try:
            memory = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            memory = None
    return tuple(((float(o), m), resolve(solver, layout, [_Outer(float(o), None, m)], memory))
                 for o in outer_times for m in mtl_data)


class _Outer(NamedTuple):  # the fields of a PredictorConfig that resolve() reads
    outer_time: float
    outer_steps: int | None
    mtl_data: str


class _System(NamedTuple):
    """A symmetric outer system: its product, its per-task diagonal blocks ``[T, a, a]``, and a
    function that forms it densely."""

    matvec: Callable[[np.ndarray], np.ndarray]
    blocks: np.ndarray
    form: Callable[[], np.ndarray]


def _block_jacobi(blocks: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``r -> blockdiag(blocks)^+ r`` for symmetric ``blocks [T, a, a]`` (pseudo-inverse below 1e-12
    of each block's largest eigenvalue)."""
    m, U = np.linalg.eigh(0.5 * (blocks + np.swapaxes(blocks, 1, 2)))
    keep = m > 1e-12 * np.max(np.abs(m), axis=1, keepdims=True)
    inv = np.einsum("tab,tb,tcb->tac", U, np.where(keep, 1.0 / np.where(keep, m, 1.0), 0.0), U)
    T, a = blocks.shape[:2]
    return lambda r: np.einsum("tab,tbk->tak", inv, r.reshape(T, a, -1)).reshape(r.shape)


def _solve(system: _System, rhs: np.ndarray, solver: str, dyn, rcond: float, tol: float,
           max_iter: int | None) -> tuple[np.ndarray, Solve, float]:
    """``system^-1 rhs`` by ``cholesky`` (with the dense ``eigh`` as fallback) or ``cg``; returns
    ``(x, Solve, residual)`` (residual NaN for direct solves)."""
    if solver == "cg":
        res = pcg(system.matvec, rhs, _block_jacobi(system.blocks), tol, max_iter)
        return res.x, Solve(-1.0 if res.negative_curvature else math.nan, 0.0, math.nan), res.residual
    import scipy.linalg
    from scipy.linalg import lapack

    a = system.form()
    norm1 = blocked.norm1(a)
    if a.shape[0] >= blocked.LAPACK_MAX_ORDER:  # past what scipy's LAPACK can factorise
        info = blocked.cholesky(a)
        if info == 0:
            rc = 1.0 / (norm1 * blocked.inverse_norm1(a))
            if rc > rcond:
                return blocked.cho_solve(a, rhs), Solve(math.nan, 0.0, 1.0 / rc), math.nan
        # no dense fallback at this size (eigh needs several n x n arrays): the rows say not_psd
        return np.full(np.shape(rhs), np.nan), Solve(-1.0, 0.0, math.inf), math.nan
    # factorised in place (the only n x n array held); a.T is its Fortran-ordered view, whose lower
    # triangle is the upper triangle of the (symmetric) formed matrix
    factor, info = lapack.dpotrf(a.T if a.flags.c_contiguous else a, lower=1, overwrite_a=1, clean=1)
    rc = lapack.dpocon(factor, norm1, uplo="L")[0] if info == 0 else 0.0
    if info == 0 and rc > rcond:
        x = scipy.linalg.cho_solve((factor, True), rhs)
        return x, Solve(math.nan, 0.0, 1.0 / rc), math.nan
    del factor, a
    a = system.form()  # formed again: the failed factorisation overwrote it
    op, info = eigh_apply(a, dyn, math.inf, rcond)  # near-singular: the dense path, with its ridge
    return np.asarray(op) @ rhs, Solve(*(float(v) for v in info)), math.nan


#: Elements of the temporaries of one block of tasks when a meta-kernel system is formed (256 MB).
FORM_BLOCK_ELEMENTS = 1 << 25


def _own_blocks(G, rows: slice, cols: slice, tasks: int) -> np.ndarray:
    return np.asarray(own(block(G, rows, cols, tasks, tasks)))


def gbml(Theta, G, d, layout: Layout, cfg, times, solver: str = "cholesky", tol: float = CG_TOL,
         max_iter: int | None = None, K=None):
    """docs/theory.md §3.2 at an infinite outer time (``G``: the inner kernel) by a structured solve;
    with ``cfg.test_head == 'reset'`` (§3.5, needs the readout kernel ``K``) the test-time adaptation
    starts from the trained body with the head at ``w0``. ``d``: :class:`ntk_bridge.closed_forms.Data`
    (numpy). Returns ``(values [M, m_q, k], Solve, residual)``."""
    require(getattr(cfg, "test_head", "learned") == "learned" or K is not None,
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
    coef, i3, residual = _solve(_System(matvec, blocks, form), rhs, solver, cfg.outer, cfg.rcond, tol, max_iter)
    if getattr(cfg, "test_head", "learned") == "reset":  # §3.5: the trained body, the head back at w0
        w = lift(coef)
        moved = Theta[n_tr:, :n_tr] @ w - K[n_tr:, :n_tr] @ w
        n_ts = layout.n_test * layout.m_support
        g_ts = np.asarray(d.f0ts) + moved[:n_ts].reshape(d.f0ts.shape)
        g_tq = np.asarray(d.f0tq) + moved[n_ts:].reshape(d.f0tq.shape)
        return g_tq + Ahat @ (np.asarray(d.yts) - g_ts), _merged(i1, i2, i3), residual
    u = Theta[n_tr:, :n_tr] @ lift(coef)
    return F0_test + reduce(u, Ahat, layout.m_support, layout.m_query, layout.n_test), _merged(i1, i2, i3), residual


def mtl(Theta, K, d, layout: Layout, cfg, times, solver: str = "cholesky", tol: float = CG_TOL,
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
    alpha, i1, residual = _solve(_System(matvec, blocks, form), rhs, solver, cfg.outer, cfg.rcond, tol, max_iter)
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
