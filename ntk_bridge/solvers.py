r"""The outer solvers as objects: :class:`Dense`, :class:`Cholesky` and :class:`CG`, each saying
which outer systems it fits (memory), what it costs (bytes, seconds) and how it solves one
(docs/theory.md §3.7).

An outer system (:class:`System`) is symmetric, ``n x n`` (``n = N n_q`` for the meta-kernel,
``|𝒟|`` for MTL's kernel): its product ``v -> A v``, its per-task diagonal blocks ``[T, a, a]`` and
a function that forms it densely. Every solver's :meth:`~Solver.solve` returns
``(x = A^-1 rhs, Solve, residual)`` (the residual NaN for direct solves):

* :class:`Dense`: ``A`` formed, its ``eigh`` with the ridge below ``rcond`` (the closed forms' own
  path, which also handles finite outer times: ``phi_outer(A)`` in place of ``A^-1``);
* :class:`Cholesky`: ``A`` formed once, factorised (``n^3 / 3``), ``dpocon``'s condition estimate,
  the dense ``eigh`` as fallback for a failed or ill-conditioned factorisation (from
  :data:`ntk_bridge.blocked.LAPACK_MAX_ORDER` on, :mod:`ntk_bridge.blocked` and no fallback);
* :class:`CG`: conjugate gradients with the block-Jacobi preconditioner, nothing ``n x n`` formed,
  stopping at the relative residual ``tol`` in every column.

The user's spelling (``--solver auto|dense|cholesky|cg``) is parsed once (:func:`parse`); ``auto``
chooses one of the three for a layout and its configs (:func:`choose`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Callable, ClassVar, NamedTuple

import numpy as np

from ntk_bridge import blocked
from ntk_bridge.errors import require
from ntk_bridge.settings import ALL
from ntk_bridge.tasks import Layout

if TYPE_CHECKING:
    from ntk_bridge.operators import Solve


def _operators():
    """:mod:`ntk_bridge.operators`, imported when a system is solved: choosing and costing a solver
    (what a sweep plans, even one whose cells are all cached) needs no JAX."""
    from ntk_bridge import operators

    return operators

__all__ = ["SOLVERS", "CG_TOL", "AUTO_MIN_SIZE", "AUTO_MEMORY_FRACTION", "System", "Solver", "Dense", "Cholesky",
           "CG", "CGResult", "pcg", "parse", "choose", "outer_size", "available_memory", "resolve", "solve_estimate",
           "grid_solvers", "solver_plan"]

#: The user's spellings of the outer solvers: ``auto`` picks one of the others (:func:`choose`).
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


class System(NamedTuple):
    """A symmetric outer system: its product, its per-task diagonal blocks ``[T, a, a]``, and a
    function that forms it densely."""

    matvec: Callable[[np.ndarray], np.ndarray]
    blocks: np.ndarray
    form: Callable[[], np.ndarray]


def outer_size(layout: Layout, mtl_data: str) -> int:
    """The largest outer system of a closed form: ``N n_q`` (meta-kernel) or ``|𝒟|`` (MTL)."""
    return layout.n_train * (layout.n_query + (layout.n_support if mtl_data == ALL else 0))


def _sizes(layout: Layout) -> tuple[int, int, int]:
    """``(N n_q, N (n' + n), the larger)``: the meta-kernel's and MTL's (all data) outer sizes."""
    meta, mtl = layout.n_train * layout.n_query, outer_size(layout, ALL)
    return meta, mtl, max(meta, mtl)


@dataclasses.dataclass(frozen=True)
class Solver:
    """What every outer solver says: its name (the user's spelling), whether it goes through the
    per-task structure (an outer problem of :mod:`ntk_bridge.outer` applied) rather than the jitted closed forms, what one
    method's outer solve costs on a layout (:meth:`cost`), whether an ``n x n`` system fits in
    ``memory`` bytes (:meth:`fits`) and how it solves one (:meth:`solve`). Costs were measured on a
    2-core machine (``benchmarks/README.md``)."""

    name: ClassVar[str] = ""
    structured: ClassVar[bool] = True
    #: the tolerance of an iterative solve (inf for direct ones): the rows' ``tolerance``
    tolerance: ClassVar[float] = math.inf

    def cost(self, layout: Layout) -> tuple[int, float]:
        """``(bytes, seconds)`` of one method's outer solve on ``layout``."""
        raise NotImplementedError

    def fits(self, n: int, memory: int | None) -> bool:
        """Whether an ``n x n`` outer system can be solved within ``memory`` bytes (``None``: unknown)."""
        return True

    def solve(self, system: System, rhs: np.ndarray, dyn, rcond: float) -> tuple[np.ndarray, Solve, float]:
        """``(system^-1 rhs, Solve, residual)`` at an infinite outer time (``dyn``: its dynamics)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Dense(Solver):
    """The ``eigh`` of the formed system with its ridge: about 6 copies of the meta-kernel
    (``N n_q`` square) and of MTL's kernel (``N (n' + n)``), ``2e-3 + 3e-9 n^3`` s."""

    name: ClassVar[str] = "dense"
    structured: ClassVar[bool] = False

    def cost(self, layout):
        meta, mtl, n = _sizes(layout)
        return 8 * 6 * (meta ** 2 + mtl ** 2), 2e-3 + 3e-9 * n ** 3

    def solve(self, system, rhs, dyn, rcond):
        op, info = _operators().eigh_apply(system.form(), dyn, math.inf, rcond)
        return np.asarray(op) @ rhs, _operators().Solve(*(float(v) for v in info)), math.nan


@dataclasses.dataclass(frozen=True)
class Cholesky(Solver):
    """The formed system factorised in place: two ``n x n`` arrays (the system and one product
    while forming it), ``2e-3 + 4e-11 n^3`` s; fits where ``3 n^2`` float64 take at most
    :data:`AUTO_MEMORY_FRACTION` of the memory. A failed factorisation, or an estimated condition
    number above ``1 / rcond``, falls back to the dense ``eigh`` with its ridge (below
    :data:`ntk_bridge.blocked.LAPACK_MAX_ORDER`; past it, NaN predictions and ``not_psd``)."""

    name: ClassVar[str] = "cholesky"

    def cost(self, layout):
        n = _sizes(layout)[2]
        return 8 * 2 * n ** 2, 2e-3 + 4e-11 * n ** 3

    def fits(self, n, memory):
        return memory is None or 24 * n * n <= AUTO_MEMORY_FRACTION * memory

    def solve(self, system, rhs, dyn, rcond):
        import scipy.linalg
        from scipy.linalg import lapack

        a = system.form()
        norm1 = blocked.norm1(a)
        if a.shape[0] >= blocked.LAPACK_MAX_ORDER:  # past what scipy's LAPACK can factorise
            info = blocked.cholesky(a)
            if info == 0:
                rc = 1.0 / (norm1 * blocked.inverse_norm1(a))
                if rc > rcond:
                    return blocked.cho_solve(a, rhs), _operators().Solve(math.nan, 0.0, 1.0 / rc), math.nan
            # no dense fallback at this size (eigh needs several n x n arrays): the rows say not_psd
            return np.full(np.shape(rhs), np.nan), _operators().Solve(-1.0, 0.0, math.inf), math.nan
        # factorised in place (the only n x n array held); a.T is its Fortran-ordered view, whose lower
        # triangle is the upper triangle of the (symmetric) formed matrix
        factor, info = lapack.dpotrf(a.T if a.flags.c_contiguous else a, lower=1, overwrite_a=1, clean=1)
        rc = lapack.dpocon(factor, norm1, uplo="L")[0] if info == 0 else 0.0
        if info == 0 and rc > rcond:
            x = scipy.linalg.cho_solve((factor, True), rhs)
            return x, _operators().Solve(math.nan, 0.0, 1.0 / rc), math.nan
        del factor, a
        # formed again (the failed factorisation overwrote it): the dense path, with its ridge
        return Dense().solve(system, rhs, dyn, rcond)


@dataclasses.dataclass(frozen=True)
class CG(Solver):
    """Preconditioned conjugate gradients (:func:`pcg`, block-Jacobi): nothing ``n x n`` held
    (``8 n`` floats), ``2e-3 + 1e-9 n^3`` s at ``n`` iterations of a product with the training
    kernel. ``not_converged`` after ``max_iter`` iterations (default ``4 n``), ``not_psd`` on
    negative curvature; no ridge.

    Attributes:
      tol: the relative residual ``||A x - r|| / ||r||`` to reach in every output column.
      max_iter: the iteration limit, ``None`` for ``4 max(n, 25)``.
    """

    tol: float = CG_TOL
    max_iter: int | None = None
    name: ClassVar[str] = "cg"

    @property
    def tolerance(self) -> float:
        return self.tol

    def cost(self, layout):
        n = _sizes(layout)[2]
        return 8 * 8 * n, 2e-3 + 1e-9 * n ** 3

    def solve(self, system, rhs, dyn, rcond):
        res = pcg(system.matvec, rhs, block_jacobi(system.blocks), self.tol, self.max_iter)
        return res.x, _operators().Solve(-1.0 if res.negative_curvature else math.nan, 0.0, math.nan), res.residual


_BY_NAME = {cls.name: cls for cls in (Dense, Cholesky, CG)}


def parse(solver: str | Solver) -> Solver | str:
    """The user's spelling as a solver object (``'auto'`` stays ``'auto'``, for :func:`choose`);
    a solver object is returned as it is."""
    if isinstance(solver, Solver):
        return solver
    require(solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    return "auto" if solver == "auto" else _BY_NAME[solver]()


def available_memory() -> int | None:
    """Free physical memory in bytes (page cache not counted: a cautious figure), ``None`` unknown."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def choose(solver: str | Solver, layout: Layout, configs, memory: int | None = None) -> Solver:
    """The solver for closed forms with these configs: one named explicitly (the structured ones
    need an infinite outer time); ``auto``: :class:`Dense` below :data:`AUTO_MIN_SIZE` or at a finite
    outer time, else :class:`Cholesky` where it fits in ``memory`` bytes (default: the available
    memory), else :class:`CG`."""
    solver = parse(solver)
    if isinstance(solver, Dense):
        return solver
    to_convergence = all(math.isinf(c.outer_time) and c.outer_steps is None for c in configs)
    if solver != "auto":
        require(to_convergence, f"--solver {solver.name}: the structured outer solves handle --outer-time inf only "
                "(finite outer times need the dense eigh)")
        return solver
    n = max(outer_size(layout, c.mtl_data) for c in configs)
    if not to_convergence or n < AUTO_MIN_SIZE:
        return Dense()
    if memory is None:
        memory = available_memory()
    return Cholesky() if Cholesky().fits(n, memory) else CG()


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


def block_jacobi(blocks: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``r -> blockdiag(blocks)^+ r`` for symmetric ``blocks [T, a, a]`` (pseudo-inverse below 1e-12
    of each block's largest eigenvalue)."""
    m, U = np.linalg.eigh(0.5 * (blocks + np.swapaxes(blocks, 1, 2)))
    keep = m > 1e-12 * np.max(np.abs(m), axis=1, keepdims=True)
    inv = np.einsum("tab,tb,tcb->tac", U, np.where(keep, 1.0 / np.where(keep, m, 1.0), 0.0), U)
    T, a = blocks.shape[:2]
    return lambda r: np.einsum("tab,tbk->tak", inv, r.reshape(T, a, -1)).reshape(r.shape)


def resolve(solver, layout: Layout, configs, memory: int | None = None) -> str:
    """The name (``'dense'``, ``'cholesky'`` or ``'cg'``) of :func:`ntk_bridge.solvers.choose`'s choice."""
    return choose(solver, layout, configs, memory).name


def solve_estimate(solvers, layout: Layout) -> tuple[int, float]:
    """``(bytes, seconds)`` of one method's outer solve in the worst of ``solvers`` (names or
    objects): the largest of their :meth:`ntk_bridge.solvers.Solver.cost`."""
    cost = [parse(s).cost(layout) for s in solvers]
    return max(c[0] for c in cost), max(c[1] for c in cost)


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
        memory = available_memory()
    return tuple(((float(o), m), resolve(solver, layout, [_Outer(float(o), None, m)], memory))
                 for o in outer_times for m in mtl_data)


class _Outer(NamedTuple):  # the fields of a PredictorConfig that resolve() reads
    outer_time: float
    outer_steps: int | None
    mtl_data: str
