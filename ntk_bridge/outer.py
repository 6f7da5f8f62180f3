r"""The outer problems of the closed forms, each written once (docs/theory.md §3.7): GBML's
(:class:`GBMLOuter`, §3.2, with the reset test head of §3.5) and MTL's with shared heads
(:class:`MTLOuter`, §3.3).

A closed form is ``F(X) = F0(X) + C(X) phi_outer(S) r``: an outer system ``S`` (the meta-kernel
``Phi``, ``N n_q`` square, or ``Theta_MTL``, ``|𝒟|`` square), a right-hand side ``r = 𝒴 - F0(𝒳)``
on its training points, and a test operator ``C`` from outer coefficients to test predictions
(GBML's cross block ``Phi(X, 𝒳)``; with the head reset, and for MTL, the trained body's outputs
``(Theta - K)(X, .)`` adapted at test time). An :class:`Outer` holds one closed form's inner and
test-time operators (``A``, ``A_hat``: :func:`ntk_bridge.operators.adapt_train`, ``adapt_test``)
and states each of these once, in two evaluations:

* formed, in JAX (jit- and vmap-able): ``S`` from 4-index products (:meth:`Outer.formed`) and ``C``
  formed; :meth:`Outer.dense` takes the ``eigh`` of ``S``, at every outer time. The closed forms of
  :mod:`ntk_bridge.closed_forms` are this.
* applied, in numpy (``numpy=True``): ``S``'s product, its per-task diagonal blocks and ``S`` formed a
  block of tasks at a time (:meth:`Outer.system`, a :class:`ntk_bridge.solvers.System`), ``C``
  applied, never formed; :meth:`Outer.solve` hands the system to a structured solver (``cholesky``,
  ``cg``: :mod:`ntk_bridge.solvers`) at an infinite outer time.

The right-hand side, ``F0`` and the test-time adaptation (:func:`adapted`) are one code for both.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ntk_bridge.errors import require
from ntk_bridge.operators import (Solve, adapt_test, adapt_train, block, eigh_apply, merge, meta_kernel_blocks,
                                  mtl_index, mtl_kernel, own)
from ntk_bridge.settings import RESET
from ntk_bridge.solvers import Solver, System, parse
from ntk_bridge.tasks import Layout

__all__ = ["FORM_BLOCK_ELEMENTS", "adapted", "finetuned", "Outer", "GBMLOuter", "MTLOuter"]

#: Elements of the temporaries of one block of tasks when a meta-kernel system is formed (256 MB).
FORM_BLOCK_ELEMENTS = 1 << 25


def adapted(A, f_support, f_query, y_support):
    """Outputs ``f`` adapted per task by the operator ``A`` (``[T, a, b]``): ``f(X) + A (Y' - f(X'))``:
    ``F0`` on the training queries (``A``) and test queries (``A_hat``), and test-time fine-tuning
    from a trained body's outputs."""
    return f_query + A @ (y_support - f_support)


def finetuned(K, g_ts, g_tq, yts, layout: Layout, cfg, times, numpy: bool = False):
    """A head fine-tuned with the readout kernel ``K`` on each test support from the outputs ``g``:
    ``g(X) + K(X, X') T_hat_K (Y' - g(X'))``; returns ``(values, Solve)`` (MTL, the baseline)."""
    Ahat, info = adapt_test(K, layout, cfg.finetune, times.finetune, cfg.rcond)
    return adapted(np.asarray(Ahat) if numpy else Ahat, g_ts, g_tq, yts), info


class Outer:
    """One closed form's outer problem over kernels ``Theta, K [P, P]``, labels and initial outputs
    ``d`` (:class:`ntk_bridge.closed_forms.Data`), a layout, the static config and the (possibly
    traced) times. ``numpy=True``: operators and data held in numpy, for :meth:`solve`; otherwise
    JAX arrays, possibly traced, for :meth:`dense`."""

    def __init__(self, Theta, K, d, layout: Layout, cfg, times, numpy: bool = False):
        self.Theta, self.K, self.layout, self.cfg, self.times, self.numpy = Theta, K, layout, cfg, times, numpy
        self.d = type(d)(*(np.asarray(x) for x in d)) if numpy else d
        self.xp = np if numpy else jnp
        self.infos: list = []  # diagnostics of the inner solves

    def rhs(self):
        """``𝒴 - F0(𝒳)`` on the outer training points, ``[n, k]``."""
        raise NotImplementedError

    def formed(self):
        """The outer system ``[n, n]`` in one piece (JAX)."""
        raise NotImplementedError

    def system(self) -> System:
        """The outer system as its product, per-task diagonal blocks and blockwise formation (numpy)."""
        raise NotImplementedError

    def predict(self, coef, formed: bool):
        """Test predictions ``[M, m_q, k]`` from outer coefficients ``coef [n, k]``, with the test
        operator formed (JAX) or applied (numpy), and the diagnostics of any solve this takes."""
        raise NotImplementedError

    def dense(self):
        """The closed form at any outer time: ``S`` formed, ``phi_outer(S)`` from its ``eigh``.
        Returns ``(values, Solve)``."""
        solve, info = eigh_apply(self.formed(), self.cfg.outer, self.times.outer, self.cfg.rcond)
        values, infos = self.predict(solve @ self.rhs(), formed=True)
        return values, merge(*self.infos, info, *infos)

    def solve(self, solver: str | Solver):
        """The closed form at an infinite outer time by a structured solver (``numpy=True``).
        Returns ``(values, Solve, residual)``."""
        solver = parse(solver)
        require(self.numpy, "the structured solves take an outer problem held in numpy")
        require(isinstance(solver, Solver), "the structured solves take a resolved solver, not 'auto'")
        coef, info, residual = solver.solve(self.system(), self.rhs(), self.cfg.outer, self.cfg.rcond)
        values, infos = self.predict(coef, formed=False)
        return values, _merged(*self.infos, info, *infos), residual

    def _trained_body(self, moved):
        """``g = f0 + moved`` on the test supports and queries (``moved(group) [M, m, k]``): the
        outputs of the trained body with the head at ``w0``."""
        return self.d.f0ts + moved("test_support"), self.d.f0tq + moved("test_query")

    def _split_test(self, values):
        """Rows over the test supports then queries ``[M (m' + m), k]`` as ``moved(group)``."""
        n_ts = self.layout.n_test * self.layout.m_support
        parts = {"test_support": values[:n_ts].reshape(self.d.f0ts.shape),
                 "test_query": values[n_ts:].reshape(self.d.f0tq.shape)}
        return parts.__getitem__


class GBMLOuter(Outer):
    r"""GBML (docs/theory.md §3.2), inner kernel ``G`` (``K``: ANIL, ``Theta``: MAML): ``S = Phi``,
    ``r = 𝒴 - F0(𝒳)`` on the training queries, ``C = Phi(X, 𝒳)``; with ``cfg.test_head == 'reset'``
    (§3.5) the trained body's outputs ``g(x) = f0(x) + sum_j [B(x, X_j) - B(x, X'_j) A_j^T] c_j``
    (``B = Theta - K``), adapted from ``g`` with ``A_hat``.

    Applied: ``J = B_A J_train`` with ``B_A = [-blockdiag_i(A_i), I]`` (:meth:`lift` is ``B_A^T``,
    :meth:`reduce` is ``B_A``), so ``Phi v = B_A Theta_train B_A^T v`` and ``C c`` is the same product
    with the test rows of ``Theta``; a test task's ``B_A`` has ``A_hat``."""

    def __init__(self, Theta, K, G, d, layout: Layout, cfg, times, numpy: bool = False):
        super().__init__(Theta, K, d, layout, cfg, times, numpy)
        A, i1 = adapt_train(G, layout, cfg.inner, times.inner, cfg.rcond)
        Ahat, i2 = adapt_test(G, layout, cfg.finetune, times.finetune, cfg.rcond)
        self.A, self.Ahat = (np.asarray(A), np.asarray(Ahat)) if numpy else (A, Ahat)
        self.infos = [i1, i2]
        self.n = layout.n_train * layout.n_query
        self.n_tr = layout.slices()["train_query"].stop  # the training supports, then queries

    def rhs(self):
        d = self.d
        return (d.yq - adapted(self.A, d.f0s, d.f0q, d.ys)).reshape(self.n, -1)

    def formed(self):
        return meta_kernel_blocks(self.Theta, self.A, self.layout).reshape(self.n, self.n)

    def lift(self, v):
        """``B_A^T v``: ``[N n_q, k] -> [N (n' + n), k]`` (supports, then queries)."""
        N, ns, nq = self.layout.n_train, self.layout.n_support, self.layout.n_query
        return np.concatenate([-np.einsum("iqs,iqk->isk", self.A, v.reshape(N, nq, -1)).reshape(N * ns, -1), v])

    @staticmethod
    def reduce(u, a, n_s, n_q, tasks):
        """``B_a u`` for ``u`` over the supports ``[tasks n_s]``, then the queries ``[tasks n_q]``."""
        us, uq = u[:tasks * n_s].reshape(tasks, n_s, -1), u[tasks * n_s:].reshape(tasks, n_q, -1)
        return uq - np.einsum("iqs,isk->iqk", a, us)

    def system(self) -> System:
        Theta, A, layout, n, n_tr = self.Theta, self.A, self.layout, self.n, self.n_tr
        sl, N, ns, nq = layout.slices(), layout.n_train, layout.n_support, layout.n_query
        s, q = sl["train_support"], sl["train_query"]

        def matvec(v):
            return self.reduce(Theta[:n_tr, :n_tr] @ self.lift(v), A, ns, nq, N).reshape(n, -1)

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
        return System(matvec, blocks, form)

    def predict(self, coef, formed):
        d, layout, A, Ahat = self.d, self.layout, self.A, self.Ahat
        sl, N, M = layout.slices(), layout.n_train, layout.n_test
        if self.cfg.test_head == RESET:
            g_ts, g_tq = self._trained_body(self._body_formed(coef) if formed else self._body_applied(coef))
            return adapted(Ahat, g_ts, g_tq, d.yts), []
        F0_test = adapted(Ahat, d.f0ts, d.f0tq, d.yts)
        if not formed:
            u = self.Theta[self.n_tr:, :self.n_tr] @ self.lift(coef)
            return F0_test + self.reduce(u, Ahat, layout.m_support, layout.m_query, M), []
        Theta = self.Theta
        cross = (block(Theta, sl["test_query"], sl["train_query"], M, N)
                 - jnp.einsum("mab,mbjc->majc", Ahat, block(Theta, sl["test_support"], sl["train_query"], M, N))
                 - jnp.einsum("majd,jcd->majc", block(Theta, sl["test_query"], sl["train_support"], M, N), A)
                 + jnp.einsum("mab,mbjd,jcd->majc", Ahat,
                              block(Theta, sl["test_support"], sl["train_support"], M, N), A))
        return F0_test + cross.reshape(M, layout.m_query, self.n) @ coef, []

    def _body_formed(self, coef):
        """``moved(group) = sum_j [B(X, X_j) c_j - B(X, X'_j) A_j^T c_j]`` by per-task-pair products."""
        layout, A = self.layout, self.A
        sl, N, M = layout.slices(), layout.n_train, layout.n_test
        B = self.Theta - self.K
        c = coef.reshape(N, layout.n_query, -1)
        u = jnp.einsum("jcd,jck->jdk", A, c)  # A_j^T c_j on the supports
        points = {"test_support": layout.m_support, "test_query": layout.m_query}

        def moved(rows):
            m = (jnp.einsum("majc,jck->mak", block(B, sl[rows], sl["train_query"], M, N), c)
                 - jnp.einsum("majd,jdk->mak", block(B, sl[rows], sl["train_support"], M, N), u))
            return m.reshape(M, points[rows], -1)

        return moved

    def _body_applied(self, coef):
        """The same, as ``(Theta - K)(X_test, 𝒳_train) B_A^T c``: two products with the test rows."""
        w, n_tr = self.lift(coef), self.n_tr
        return self._split_test(self.Theta[n_tr:, :n_tr] @ w - self.K[n_tr:, :n_tr] @ w)


class MTLOuter(Outer):
    r"""MTL with shared heads (docs/theory.md §3.3): ``S = Theta_MTL = Theta - K + blockdiag_i(K_ii)``
    on 𝒟 (``cfg.mtl_data``: supports and queries, or queries), ``r = 𝒴 - f0(𝒟)``, the trained body's
    outputs ``g = f0 + (Theta - K)(X, 𝒟) alpha`` fine-tuned with ``K`` at test time. Applied:
    ``Theta_MTL v = (Theta - K) v + blockdiag_i(K_ii) v``."""

    def __init__(self, Theta, K, d, layout: Layout, cfg, times, numpy: bool = False):
        require(cfg.mtl_heads == "shared", "MTL's outer problem is for shared heads (independent heads have none)")
        super().__init__(Theta, K, d, layout, cfg, times, numpy)
        self.idx, self.task = mtl_index(layout, cfg.mtl_data)

    def rhs(self):
        d, xp, k = self.d, self.xp, self.d.ys.shape[-1]
        y_all = xp.concatenate([d.ys.reshape(-1, k), d.yq.reshape(-1, k)])
        f0_all = xp.concatenate([d.f0s.reshape(-1, k), d.f0q.reshape(-1, k)])
        local = self.idx - self.layout.slices()["train_support"].start  # supports then queries, as in y_all
        return y_all[local] - f0_all[local]

    def formed(self):
        idx = self.idx
        return mtl_kernel(self.Theta[jnp.ix_(idx, idx)], self.K[jnp.ix_(idx, idx)], self.task)

    def _span(self):
        """𝒟 as a permutation of a contiguous range of points, task by task: ``(span, local, per)``."""
        idx = self.idx
        span = slice(int(idx.min()), int(idx.max()) + 1)
        require(len(idx) == span.stop - span.start, "MTL's training points must fill a contiguous range")
        return span, idx - span.start, len(idx) // self.layout.n_train

    def _scatter(self, v):
        span, local, _ = self._span()
        w = np.zeros((len(self.idx), v.shape[1]))
        w[local] = v
        return w

    def system(self) -> System:
        Theta, K, idx, N = self.Theta, self.K, self.idx, self.layout.n_train
        span, local, per = self._span()
        groups = [idx[i * per:(i + 1) * per] for i in range(N)]
        own_k = np.stack([K[np.ix_(g, g)] for g in groups])

        def matvec(v):
            w = self._scatter(v)
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

        return System(matvec, np.stack([Theta[np.ix_(g, g)] for g in groups]), form)

    def predict(self, alpha, formed):
        layout, Theta, K, idx = self.layout, self.Theta, self.K, self.idx
        sl = layout.slices()
        if formed:
            body = Theta - K
            shapes = {"test_support": self.d.f0ts.shape, "test_query": self.d.f0tq.shape}
            g_ts, g_tq = self._trained_body(lambda rows: (body[sl[rows]][:, idx] @ alpha).reshape(shapes[rows]))
        else:
            span, w = self._span()[0], self._scatter(alpha)
            test = slice(sl["test_support"].start, layout.n_points)
            g_ts, g_tq = self._trained_body(self._split_test(Theta[test, span] @ w - K[test, span] @ w))
        values, info = finetuned(K, g_ts, g_tq, self.d.yts, layout, self.cfg, self.times, self.numpy)
        return values, [info]


def _own_blocks(G, rows: slice, cols: slice, tasks: int) -> np.ndarray:
    return np.asarray(own(block(G, rows, cols, tasks, tasks)))


def _merged(*solves: Solve) -> Solve:
    """Diagnostics over several solves, ignoring the NaNs of what a structured solve cannot know
    (the smallest eigenvalue of a factorised or iterated system)."""
    def pick(field, fn):
        vals = [float(getattr(s, field)) for s in solves if np.isfinite(float(getattr(s, field)))]
        return fn(vals) if vals else math.nan
    return Solve(pick("min_eig_rel", min), pick("ridge_rel", max), pick("cond", max))
