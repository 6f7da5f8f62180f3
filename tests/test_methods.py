"""Every method of the registry (:data:`ntk_bridge.methods.METHODS`) and every outer solver
(:mod:`ntk_bridge.solvers`), as tables: each closed form against the naive reference
(``tests/reference.py``), ``depends_on`` honest both ways, jit against no jit; each solver object
against :class:`~ntk_bridge.solvers.Dense`, and ``auto``'s choices on a table of sizes; each method's
finite trainer (:data:`ntk_bridge.finite.objectives.TRAINERS`), trained on the linearised network, against
its discrete closed form with the network's empirical kernels (rung 2; gradient flow against the
continuous closed forms: ``tests/finite/test_linearized.py``)."""
import dataclasses
import math

import jax
import numpy as np
import pytest

import reference
from ntk_bridge import methods as registry
from ntk_bridge import solvers
from ntk_bridge import finite
from ntk_bridge.closed_forms import CLOSED_FORMS
from ntk_bridge.families import subspace_tasks
from ntk_bridge.kernels import Architecture, empirical_kernels, kernels_all_depths
from ntk_bridge.predictors import SETTING_FIELDS, PredictorConfig, predict_from_kernels
from ntk_bridge.tasks import Layout
from test_structured import random_tasks

METHODS = list(registry.METHODS)
#: a discrete config (every method, FO-MAML included, has a closed form there)
BASE = PredictorConfig(inner_time=0.3, inner_steps=3, finetune_time=0.5, finetune_steps=2, outer_time=0.2,
                       outer_steps=20)
#: one other value of each setting's first field (width is a network's, not a closed form's)
CHANGED = {"inner_time": 0.45, "finetune_time": 0.8, "outer_time": 0.3, "mtl_data": "query", "test_head": "reset"}


@pytest.fixture(scope="module")
def problem():
    tasks = random_tasks(n_train=3, n_test=2, dim=5)
    _, Th, K = kernels_all_depths(tasks.all_points(), depths=[2])
    f0 = 0.3 * np.random.default_rng(1).standard_normal((tasks.layout.n_points, tasks.n_outputs))
    return tasks, Th[0], K[0], f0


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_every_method_with_a_closed_form_is_in_the_table():
    assert set(CLOSED_FORMS) == set(registry.names(closed_form=True))
    assert all(callable(f) for f in CLOSED_FORMS.values())


@pytest.mark.parametrize("method", METHODS)
def test_closed_form_equals_the_naive_reference(problem, method):
    tasks, Th, K, f0 = problem
    got = predict_from_kernels(Th, K, tasks, BASE, (method,), f0=f0)[method].values
    inner, fine, outer = (BASE.inner_time, 3), (BASE.finetune_time, 2), (BASE.outer_time, 20)
    if method == "mtl":
        want = reference.mtl(Th, K, tasks, fine, outer, "all", f0)
    elif method == "baseline":
        want = reference.baseline(K, tasks, fine, f0)
    elif method in ("anil", "maml"):
        want = reference.gbml(Th, K if method == "anil" else Th, tasks, inner, fine, outer, f0, K=K)[0]
    else:
        pytest.skip(f"{method}: no naive reference (rung 2 below holds its linearised trainer)")
    assert rel(got, want) < 1e-10


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("setting", sorted(CHANGED))
def test_depends_on_is_honest(problem, method, setting):
    """Changing a setting the method does not depend on changes nothing; changing one it depends on
    changes its predictions."""
    tasks, Th, K, f0 = problem
    cfg = dataclasses.replace(BASE, **{SETTING_FIELDS[setting][0]: CHANGED[setting]})
    a = predict_from_kernels(Th, K, tasks, BASE, (method,), f0=f0)[method].values
    b = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0)[method].values
    if registry.get(method).depends(setting):
        assert rel(b, a) > 1e-6, (method, setting)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", [m for m in METHODS if not registry.get(m).closed_form_needs_steps])
def test_jit_equals_no_jit(problem, method):
    tasks, Th, K, f0 = problem
    for cfg in (BASE, PredictorConfig(inner_time=0.3, finetune_time=0.5)):
        jitted = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0)[method].values
        with jax.disable_jit():
            plain = predict_from_kernels(Th, K, tasks, cfg, (method,), f0=f0)[method].values
        assert rel(plain, jitted) < 1e-12


def small_system(seed=0, tasks=4, a=3):
    """An SPD ``n x n`` system (``n = tasks a``) with its per-task diagonal blocks."""
    rng = np.random.default_rng(seed)
    n = tasks * a
    x = rng.standard_normal((n, n))
    A = x @ x.T / n + 0.5 * np.eye(n)
    blocks = np.stack([A[i * a:(i + 1) * a, i * a:(i + 1) * a] for i in range(tasks)])
    return solvers.System(lambda v: A @ v, blocks, lambda: A.copy()), A, rng.standard_normal((n, 2))


@pytest.mark.parametrize("solver", [solvers.Cholesky(), solvers.CG(), solvers.CG(tol=1e-13)])
def test_every_solver_equals_dense(solver):
    system, A, rhs = small_system()
    dyn = PredictorConfig().outer
    want = solvers.Dense().solve(system, rhs, dyn, 1e-10)[0]
    got, _, residual = solver.solve(system, rhs, dyn, 1e-10)
    assert rel(got, want) < 1e-9 and rel(got, np.linalg.solve(A, rhs)) < 1e-9
    assert math.isnan(residual) if not isinstance(solver, solvers.CG) else residual <= solver.tol


def test_parse_and_the_cost_table():
    assert [type(solvers.parse(s)).__name__ for s in ("dense", "cholesky", "cg")] == ["Dense", "Cholesky", "CG"]
    assert solvers.parse("auto") == "auto" and solvers.parse(solvers.CG(1e-6)) == solvers.CG(1e-6)
    lay = Layout(n_train=10, n_test=2, n_support=5, n_query=15, m_support=5, m_query=15)  # 150 and 200
    assert solvers.Dense().cost(lay) == (8 * 6 * (150 ** 2 + 200 ** 2), 2e-3 + 3e-9 * 200 ** 3)
    assert solvers.Cholesky().cost(lay) == (8 * 2 * 200 ** 2, 2e-3 + 4e-11 * 200 ** 3)
    assert solvers.CG().cost(lay) == (8 * 8 * 200, 2e-3 + 1e-9 * 200 ** 3)


INF = PredictorConfig(outer_time=math.inf)
FIN = PredictorConfig(outer_time=5.0)
#: (train tasks of 5 + 15 points, config, memory in bytes, auto's choice): |𝒟| = 20 N
AUTO_TABLE = [(7, INF, None, "dense"), (74, INF, 1 << 40, "dense"), (75, INF, 1 << 40, "cholesky"),
              (200, FIN, 1 << 40, "dense"), (200, INF, 48 * 4000 ** 2, "cholesky"),
              (200, INF, 48 * 4000 ** 2 - 8, "cg")]


@pytest.mark.parametrize("n_train, cfg, memory, choice", AUTO_TABLE)
def test_auto_chooses_as_the_table_says(n_train, cfg, memory, choice):
    lay = Layout(n_train=n_train, n_test=2, n_support=5, n_query=15, m_support=5, m_query=15)
    assert solvers.choose("auto", lay, [cfg], memory).name == choice


# -- rung 2 over the registry: each finite trainer, linearised, equals its discrete closed form ------------
# one mode in the fast suite, the raw networks and the reset head with the slow tests (.ci/run runs both)
@pytest.mark.parametrize("mode, test_head", [pytest.param("raw", "learned", marks=pytest.mark.slow),
                                             ("centred", "learned"),
                                             pytest.param("centred", "reset", marks=pytest.mark.slow)])
def test_each_trainer_on_the_linearised_network_equals_its_discrete_closed_form(mode, test_head):
    trained = registry.names(finite=True)
    assert set(trained) == set(registry.names(closed_form=True))  # every trainer has a closed form to meet
    t, depth, width = subspace_tasks(seed=7, n_train=3, n_test=2, n_support=3, n_query=4, dim=5), 2, 48
    _, apply_fn, kernel_fn = Architecture(width=width).network(depth)
    x = t.all_points()
    cfg = finite.discretise(PredictorConfig(inner_time=0.3, finetune_time=0.5, mtl_data="all", test_head=test_head),
                            np.asarray(kernel_fn(x, None, "ntk")), t, finite.TrainingConfig(outer_steps=25))
    run = finite.train_networks(t, depth, width, cfg, trained, seed=3, n_networks=2, mode=mode)
    for j in range(2):
        params = jax.tree_util.tree_map(lambda a: a[j], run.params0)
        _, theta, K = empirical_kernels(apply_fn, params, x)
        f0 = run.f0[j] if mode == "raw" else None
        closed = {m: p.values for m, p in predict_from_kernels(theta, K, t, cfg, trained, f0=f0).items()}
        for method in trained:
            lin, cf = run.linearized[method][j], closed[method]
            assert not run.linearized_diverged[method][j]
            err = np.max(np.abs(lin - cf)) / np.max(np.abs(cf))
            assert err < 1e-8, (mode, j, method, err)
            if registry.get(method).role != "baseline":  # the nonlinear network is near, not equal, at width 48
                gap = np.max(np.abs(run.finite[method][j] - cf)) / np.max(np.abs(cf))
                assert 1e-4 < gap < 0.5, (method, gap)
    moved = run.linearized["maml"][0] - run.linearized["baseline"][0]
    assert np.max(np.abs(moved)) > 1e-2  # meta-training changed the predictions


def test_anil_and_maml_share_one_program_and_give_their_own_closed_forms(problem):
    """ANIL and MAML are one compiled program with the inner kernel an argument; each equals its own closed
    form (:data:`CLOSED_FORMS`) jitted alone, bit for bit."""
    from ntk_bridge.closed_forms import CLOSED_FORMS, Data, Times, split_f0
    from ntk_bridge.predictors import _predict_batched

    tasks, Th, K, f0 = problem
    cfg = PredictorConfig(inner_time=0.3, finetune_time=0.5)
    from ntk_bridge import programs

    _predict_batched.clear_cache()
    programs._LOADED.clear()
    got = predict_from_kernels(Th, K, tasks, cfg, ("anil", "maml"), f0=f0)
    assert len(programs._LOADED) + _predict_batched._cache_size() == 1  # exported (kept on disk), or jitted
    d = Data(tasks.train_support_y, tasks.train_query_y, tasks.test_support_y,
             *split_f0(np.asarray(f0).reshape(tasks.layout.n_points, -1), tasks.layout))
    for m in ("anil", "maml"):
        alone = jax.jit(lambda th, k, t: CLOSED_FORMS[m](th, k, d, tasks.layout, cfg, Times(*t))[0])(
            Th, K, np.array([0.3, 0.5, cfg.outer_time]))
        np.testing.assert_array_equal(got[m].values, np.asarray(alone))
