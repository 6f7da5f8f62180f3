"""Structured outer solves (docs/theory.md §3.7: ``ntk_bridge.outer``, ``ntk_bridge.solvers``): the Cholesky solve from
per-task blocks and block-Jacobi conjugate gradients against a dense ``scipy.linalg.solve`` of the
meta-kernel and of the MTL kernel built by the naive loops of ``tests/reference.py``; the stopping
rule and statuses of conjugate gradients; which solver runs when.
"""
import math

import numpy as np
import pytest
import scipy.linalg

from ntk_bridge import metrics, outer, solvers
from ntk_bridge.errors import UserError
from ntk_bridge.kernels import kernels_all_depths
from ntk_bridge.predictors import Diagnostics, PredictorConfig, predict_from_kernels
from ntk_bridge.tasks import Layout, TaskSet, on_sphere

import reference

INNER, FINETUNE = 0.3, 1.0


def random_tasks(seed=0, n_train=8, n_test=3, n_support=3, n_query=4, dim=8, k=2):
    """Linear teachers sharing a common part, ``k`` outputs (every solve is checked column by column)."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal((dim, k))

    def split(n):
        x = on_sphere(rng.standard_normal((n, n_support + n_query, dim)))
        y = x @ (common + 0.7 * rng.standard_normal((n, dim, k))) / np.sqrt(dim)
        return x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:]

    return TaskSet(*split(n_train), *split(n_test), name="linear2")


@pytest.fixture(scope="module")
def problem():
    tasks = random_tasks()
    _, Th, K = kernels_all_depths(tasks.all_points(), depths=[2])
    f0 = 0.3 * np.random.default_rng(1).standard_normal((tasks.layout.n_points, tasks.n_outputs))
    return tasks, Th[0], K[0], f0


def dense_solve(A, R):
    return scipy.linalg.solve(A, R, assume_a="pos")


def expected(method, Theta, K, tasks, f0, mtl_data="all", test_head="learned"):
    inner, fine, outer = (INNER, None), (FINETUNE, None), (math.inf, None)
    if method == "mtl":
        return reference.mtl(Theta, K, tasks, fine, outer, mtl_data, f0, outer_solve=dense_solve)
    G = K if method == "anil" else Theta
    return reference.gbml(Theta, G, tasks, inner, fine, outer, f0, K=K, test_head=test_head,
                          outer_solve=dense_solve)[0]


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CASES = [("mtl", "all", "learned"), ("mtl", "query", "learned"), ("anil", "all", "learned"),
         ("maml", "all", "learned"), ("anil", "all", "reset"), ("maml", "all", "reset")]


@pytest.mark.parametrize("method, mtl_data, test_head", CASES)
def test_cholesky_from_blocks_equals_a_dense_solve(problem, method, mtl_data, test_head):
    """One Cholesky factorisation of the meta-kernel (MTL kernel) formed from per-task blocks, with a
    network's own f0, equals ``scipy.linalg.solve`` of the naively built matrix to 1e-10."""
    tasks, Th, K, f0 = problem
    cfg = PredictorConfig(inner_time=INNER, finetune_time=FINETUNE, mtl_data=mtl_data, test_head=test_head)
    got = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0, solver="cholesky")[method]
    assert got.diagnostics.ridge_rel == 0 and math.isfinite(got.diagnostics.cond)  # factorised, no fallback
    assert math.isnan(got.diagnostics.residual)
    assert rel(got.values, expected(method, Th, K, tasks, f0, mtl_data, test_head)) < 1e-10


@pytest.mark.parametrize("method", ["anil", "maml"])
def test_the_meta_kernel_formed_a_few_tasks_at_a_time_is_the_same(problem, method, monkeypatch):
    """Forming the meta-kernel system in blocks of tasks (two at a time here; at paper scale, blocks
    whose temporaries stay near ``FORM_BLOCK_ELEMENTS``) gives the one-block prediction."""
    tasks, Th, K, f0 = problem
    cfg = PredictorConfig(inner_time=INNER, finetune_time=FINETUNE)
    whole = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0, solver="cholesky")[method].values
    layout = tasks.layout
    per_task = layout.n_query * max(layout.n_train * layout.n_query, layout.n_train * layout.n_support)
    monkeypatch.setattr(outer, "FORM_BLOCK_ELEMENTS", 2 * per_task)
    blocked = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0, solver="cholesky")[method].values
    assert layout.n_train > 2 and rel(blocked, whole) < 1e-13
    assert rel(blocked, expected(method, Th, K, tasks, f0)) < 1e-10


def test_blocked_cholesky_and_solve_equal_lapack(rng):
    """The factorisation used past scipy's LAPACK limit, by blocks of 7 rows: the same factor as
    numpy's, the same solutions as ``scipy.linalg.solve``; the condition estimate is at most the exact
    ``||A^-1||_1`` (a lower bound), within a factor 3 of it, and LAPACK's ``dpocon`` estimate."""
    from ntk_bridge.blocked import cho_solve as blocked_cho_solve
    from ntk_bridge.blocked import cholesky as blocked_cholesky
    from ntk_bridge.blocked import inverse_norm1 as _inverse_norm1

    m = rng.standard_normal((50, 60))
    a = m @ m.T / 60 + 0.1 * np.eye(50)
    work = a.copy()
    work[np.triu_indices(50, 1)] = np.nan  # only the lower triangle may be read
    assert blocked_cholesky(work, block=7) == 0
    np.testing.assert_allclose(np.tril(work), np.linalg.cholesky(a), rtol=0, atol=1e-12)
    rhs = rng.standard_normal((50, 3))
    np.testing.assert_allclose(blocked_cho_solve(work, rhs, block=7), scipy.linalg.solve(a, rhs), rtol=1e-10)
    np.testing.assert_allclose(blocked_cho_solve(work, rhs[:, 0], block=7), scipy.linalg.solve(a, rhs[:, 0]),
                               rtol=1e-10)
    exact = np.linalg.norm(np.linalg.inv(a), 1)
    assert exact / 3 <= _inverse_norm1(work, block=7) <= exact * (1 + 1e-10)
    from scipy.linalg import lapack  # LAPACK's own estimate from its own factor: the same algorithm

    lapack_rcond = lapack.dpocon(np.linalg.cholesky(a), np.linalg.norm(a, 1), uplo="L")[0]
    assert 1 / (np.linalg.norm(a, 1) * _inverse_norm1(work, block=7)) == pytest.approx(lapack_rcond, rel=1e-8)
    indefinite = a - 2 * np.eye(50) * np.linalg.eigvalsh(a).max()
    assert blocked_cholesky(indefinite.copy(), block=7) == 1


@pytest.mark.parametrize("method", ["mtl", "anil", "maml"])
def test_systems_past_the_lapack_limit_take_the_blocked_factorisation(problem, method, monkeypatch):
    """With the limit lowered below this problem's systems, the blocked factorisation gives the
    predictions of LAPACK's (and of the dense reference); a singular system gives NaN, reported not ok."""
    from ntk_bridge import blocked

    tasks, Th, K, f0 = problem
    cfg = PredictorConfig(inner_time=INNER, finetune_time=FINETUNE)
    lapack = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0, solver="cholesky")[method]
    monkeypatch.setattr(blocked, "LAPACK_MAX_ORDER", 10)
    monkeypatch.setattr(blocked, "CHOLESKY_BLOCK", 16)
    blocked = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0, solver="cholesky")[method]
    assert rel(blocked.values, lapack.values) < 1e-12 and blocked.diagnostics.ridge_rel == 0
    # the same estimator as LAPACK's dpocon (dlacn2) on the same matrix
    assert blocked.diagnostics.cond == pytest.approx(lapack.diagnostics.cond, rel=1e-8)
    singular = predict_from_kernels(Th * 0, K * 0, tasks, cfg, (method,), f0=f0, solver="cholesky")[method]
    assert not singular.diagnostics.finite


def test_norm1_in_row_blocks(rng):
    from ntk_bridge.blocked import norm1

    a = rng.standard_normal((37, 11))
    assert norm1(a, rows=5) == pytest.approx(np.linalg.norm(a, 1), rel=1e-14)


def _meta_kernel(problem, method="maml"):
    tasks, Th, K, f0 = problem
    G = K if method == "anil" else Th
    _, Phi = reference.gbml(Th, G, tasks, (INNER, None), (FINETUNE, None), (math.inf, None), f0)
    return Phi


def _mtl_kernel(problem, mtl_data):
    """``Theta - K + blockdiag_i(K_ii)`` on MTL's training points, by a loop over tasks."""
    tasks, Th, K, f0 = problem
    idx, _ = reference.split(tasks, f0)
    D = [np.r_[idx["s"][i], idx["q"][i]] if mtl_data == "all" else idx["q"][i] for i in range(tasks.layout.n_train)]
    A = np.block([[Th[np.ix_(a, b)] - (0 if a is b else K[np.ix_(a, b)]) for b in D] for a in D])
    return A


@pytest.mark.parametrize("method, mtl_data, test_head", CASES)
def test_conjugate_gradients_equal_a_dense_solve_to_their_tolerance(problem, method, mtl_data, test_head):
    """Stopped at a relative residual r <= CG_TOL, the coefficients are within cond * r of the exact
    ones; the predictions are linear in them, so within cond * CG_TOL (relative) too: that bound,
    computed from the matrix itself, is the tolerance."""
    tasks, Th, K, f0 = problem
    cfg = PredictorConfig(inner_time=INNER, finetune_time=FINETUNE, mtl_data=mtl_data, test_head=test_head)
    got = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0, solver="cg")[method]
    d = got.diagnostics
    assert d.residual <= solvers.CG_TOL and d.tolerance == solvers.CG_TOL
    assert metrics.status_of(d) == "ok"
    cond = np.linalg.cond(_mtl_kernel(problem, mtl_data) if method == "mtl" else _meta_kernel(problem, method))
    bound = 10 * cond * solvers.CG_TOL  # 10: the prediction's own rounding on top
    assert bound < 1e-5  # the bound says something
    assert rel(got.values, expected(method, Th, K, tasks, f0, mtl_data, test_head)) < bound


def test_pcg_on_a_meta_kernel_against_scipy(problem, rng):
    """pcg's recomputed residual is the true one, the block-Jacobi preconditioner is exact on a
    block-diagonal matrix (one iteration), and the solution is within cond * tol of scipy's."""
    Phi = _meta_kernel(problem)
    b = rng.standard_normal((Phi.shape[0], 3))
    blocks = np.stack([Phi[i:i + 4, i:i + 4] for i in range(0, Phi.shape[0], 4)])
    res = solvers.pcg(lambda v: Phi @ v, b, solvers.block_jacobi(blocks))
    true = np.max(np.linalg.norm(Phi @ res.x - b, axis=0) / np.linalg.norm(b, axis=0))
    assert res.residual == pytest.approx(true, rel=1e-6) and res.residual <= solvers.CG_TOL
    exact = scipy.linalg.solve(Phi, b, assume_a="pos")
    assert rel(res.x, exact) < 10 * np.linalg.cond(Phi) * solvers.CG_TOL
    diag = scipy.linalg.block_diag(*blocks)
    one = solvers.pcg(lambda v: diag @ v, b, solvers.block_jacobi(blocks))
    assert one.iterations == 1 and rel(one.x, scipy.linalg.solve(diag, b)) < 1e-12


def test_pcg_statuses(rng):
    """Too few iterations: the residual is reported above the tolerance (status not_converged);
    a negative definite matrix: negative curvature (status not_psd)."""
    n = 60
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    spd = (Q * np.geomspace(1, 1e6, n)) @ Q.T
    b = rng.standard_normal((n, 1))
    ident = lambda r: r  # noqa: E731
    short = solvers.pcg(lambda v: spd @ v, b, ident, max_iter=3)
    assert short.iterations == 3 and short.residual > solvers.CG_TOL and not short.negative_curvature
    d = Diagnostics(math.nan, 0.0, math.nan, True, short.residual, solvers.CG_TOL)
    assert metrics.status_of(d) == "not_converged"
    bad = solvers.pcg(lambda v: -spd @ v, b, ident)  # negative definite: b^T A b < 0 at once
    assert bad.negative_curvature
    assert metrics.status_of(Diagnostics(-1.0, 0.0, math.nan, True, bad.residual, solvers.CG_TOL)) == "not_psd"


def test_cholesky_falls_back_to_the_dense_ridge_when_singular(problem):
    """Two identical training tasks make the meta-kernel singular: the factorisation is refused
    (condition estimate above 1 / rcond) and the dense eigh with its ridge is used, as the dense
    path does; both report the ridge."""
    tasks, _, _, _ = problem
    arrays = tasks.arrays()
    for key in ("train_support_x", "train_support_y", "train_query_x", "train_query_y"):
        arrays[key] = np.concatenate([arrays[key], arrays[key][:1]])
    twin = TaskSet(**arrays, name="twin")
    _, Th, K = kernels_all_depths(twin.all_points(), depths=[2])
    cfg = PredictorConfig(inner_time=INNER, finetune_time=FINETUNE)
    got = predict_from_kernels(Th[0], K[0], twin, cfg, ("maml",), solver="cholesky")["maml"]
    dense = predict_from_kernels(Th[0], K[0], twin, cfg, ("maml",), solver="dense")["maml"]
    assert got.diagnostics.ridge_rel > 0 and dense.diagnostics.ridge_rel > 0
    assert metrics.status_of(got.diagnostics) == metrics.status_of(dense.diagnostics) == "ridge"


# -- which solver runs when ---------------------------------------------------------------------

def layout(n_train, n_support=5, n_query=15):
    return Layout(n_train, n_support, n_query, 10, n_support, n_query)


INF = PredictorConfig()
FINITE = PredictorConfig(outer_time=5.0)


def test_resolve_rule():
    small, big = layout(10), layout(200)  # MTL on all data: 200 and 4,000 points
    n = solvers.outer_size(big, "all")
    assert n == 4000 and solvers.outer_size(big, "query") == 3000
    assert solvers.resolve("auto", small, [INF]) == "dense"  # every default sweep
    assert solvers.resolve("auto", big, [FINITE]) == "dense"  # finite outer times need the spectrum
    assert solvers.resolve("auto", big, [INF], memory=48 * n * n) == "cholesky"  # 3 n^2 floats in half of it
    assert solvers.resolve("auto", big, [INF], memory=48 * n * n - 8) == "cg"
    just = layout(solvers.AUTO_MIN_SIZE // 20)
    assert solvers.outer_size(just, "all") == solvers.AUTO_MIN_SIZE
    assert solvers.resolve("auto", just, [INF], memory=1 << 40) == "cholesky"
    assert solvers.resolve("auto", layout(solvers.AUTO_MIN_SIZE // 20 - 1), [INF], memory=1 << 40) == "dense"
    for named in ("dense", "cholesky", "cg"):
        assert solvers.resolve(named, small, [INF]) == named
    with pytest.raises(UserError, match="outer-time inf"):
        solvers.resolve("cholesky", small, [FINITE])
    with pytest.raises(UserError, match="solver must be one of"):
        solvers.resolve("qr", small, [INF])


def test_auto_takes_the_structured_path_above_the_threshold(problem, monkeypatch):
    """Below the threshold ``auto`` is the dense path bit for bit; above it the structured solves run
    for MTL (shared heads), ANIL and MAML, and never for the baseline or FO-MAML."""
    tasks, Th, K, f0 = problem
    cfg = PredictorConfig(inner_time=INNER, finetune_time=FINETUNE)
    methods = ("mtl", "anil", "maml", "baseline")
    auto = predict_from_kernels(Th, K, tasks, cfg, methods, solver="auto")
    dense = predict_from_kernels(Th, K, tasks, cfg, methods, solver="dense")
    for m in methods:
        np.testing.assert_array_equal(auto[m].values, dense[m].values)
    calls = []
    solve = outer.Outer.solve
    monkeypatch.setattr(outer.Outer, "solve", lambda self, *a: calls.append(type(self).__name__) or solve(self, *a))
    monkeypatch.setattr(solvers, "AUTO_MIN_SIZE", 10)  # auto chooses in ntk_bridge.solvers
    big = predict_from_kernels(Th, K, tasks, cfg, methods, solver="auto")
    assert sorted(calls) == ["GBMLOuter", "GBMLOuter", "MTLOuter"]
    cho = predict_from_kernels(Th, K, tasks, cfg, methods, solver="cholesky")
    for m in methods:
        np.testing.assert_array_equal(big[m].values, cho[m].values)
    calls.clear()
    steps = PredictorConfig(inner_time=INNER, finetune_time=FINETUNE, inner_steps=2, finetune_steps=2,
                            outer_time=5.0, outer_steps=10)
    predict_from_kernels(Th, K, tasks, steps, ("fomaml", "mtl"), solver="auto")
    assert calls == []  # a finite outer time: dense
