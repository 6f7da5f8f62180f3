"""The outer problems (``ntk_bridge.outer``, docs/theory.md §3.7) against the naive loops of
``tests/reference.py``: the outer system applied (product), its per-task diagonal blocks, formed a
block of tasks at a time and formed in one piece (JAX) are the reference's meta-kernel (MTL kernel);
the right-hand side is the reference's; the test operator, formed or applied, turns given outer
coefficients into the reference's predictions at those coefficients (learned and reset heads).
"""
import math

import numpy as np
import pytest

from ntk_bridge.closed_forms import Data, Times, split_f0
from ntk_bridge.kernels import kernels_all_depths
from ntk_bridge.outer import GBMLOuter, MTLOuter
from ntk_bridge.predictors import PredictorConfig

import reference
from test_structured import FINETUNE, INNER, random_tasks

TIMES = Times(INNER, FINETUNE, math.inf)


@pytest.fixture(scope="module")
def problem():
    tasks = random_tasks(seed=3)
    _, Th, K = kernels_all_depths(tasks.all_points(), depths=[3])
    f0 = 0.3 * np.random.default_rng(2).standard_normal((tasks.layout.n_points, tasks.n_outputs))
    data = Data(tasks.train_support_y, tasks.train_query_y, tasks.test_support_y, *split_f0(f0, tasks.layout))
    return tasks, Th[0], K[0], f0, data


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def outer_problem(problem, method, mtl_data="all", test_head="learned"):
    """``(Outer held in numpy, reference system, reference rhs, reference(coef) -> predictions)``."""
    tasks, Th, K, f0, data = problem
    cfg = PredictorConfig(inner_time=INNER, finetune_time=FINETUNE, mtl_data=mtl_data, test_head=test_head)
    captured = {}

    def capture(S, R):
        captured.update(S=S, R=R)
        return np.zeros_like(R)

    fine, outer = (FINETUNE, None), (math.inf, None)
    if method == "mtl":
        def run(solve):
            return reference.mtl(Th, K, tasks, fine, outer, mtl_data, f0, outer_solve=solve)
        p = MTLOuter(Th, K, data, tasks.layout, cfg, TIMES, numpy=True)
    else:
        G = K if method == "anil" else Th

        def run(solve):
            return reference.gbml(Th, G, tasks, (INNER, None), fine, outer, f0, K=K, test_head=test_head,
                                  outer_solve=solve)[0]
        p = GBMLOuter(Th, K, G, data, tasks.layout, cfg, TIMES, numpy=True)
    run(capture)
    return p, captured["S"], captured["R"], lambda coef: run(lambda S, R: coef)


SYSTEMS = [("anil", "all"), ("maml", "all"), ("mtl", "all"), ("mtl", "query")]


@pytest.mark.parametrize("method, mtl_data", SYSTEMS)
def test_the_outer_system_is_the_reference_kernel_applied_blocked_and_formed(problem, method, mtl_data, rng):
    """``S v``, the diagonal blocks ``S_ii``, ``S`` formed a block of tasks at a time and in one piece,
    and ``r``: the reference's meta-kernel (MTL kernel) and right-hand side, to rounding."""
    p, S, R, _ = outer_problem(problem, method, mtl_data)
    lay, n = problem[0].layout, S.shape[0]
    assert n == lay.n_train * (lay.n_query + (lay.n_support if (method, mtl_data) == ("mtl", "all") else 0))
    system = p.system()
    v = rng.standard_normal((n, 3))
    assert rel(system.matvec(v), S @ v) < 1e-10
    per = system.blocks.shape[1]
    assert system.blocks.shape == (n // per, per, per)
    for t, b in enumerate(system.blocks):
        assert rel(b, S[t * per:(t + 1) * per, t * per:(t + 1) * per]) < 1e-10
    assert rel(system.form(), S) < 1e-10
    assert rel(p.formed(), S) < 1e-10
    assert rel(p.rhs(), R) < 1e-10
    # the structured evaluations against the JAX formation from the same operators: rounding only
    np.testing.assert_allclose(system.form(), p.formed(), rtol=0, atol=1e-13 * np.abs(S).max())


CASES = [("anil", "all", "learned"), ("maml", "all", "learned"), ("anil", "all", "reset"),
         ("maml", "all", "reset"), ("mtl", "all", "learned"), ("mtl", "query", "learned")]


@pytest.mark.parametrize("method, mtl_data, test_head", CASES)
def test_the_test_operator_formed_and_applied_gives_the_reference_predictions(problem, method, mtl_data,
                                                                              test_head, rng):
    """At arbitrary outer coefficients (not a solution: every column of the test operator is hit),
    the formed (JAX) and applied (numpy) test operators give the reference's predictions."""
    p, S, R, at = outer_problem(problem, method, mtl_data, test_head)
    coef = rng.standard_normal(R.shape)
    want = at(coef)
    formed, formed_infos = p.predict(coef, formed=True)
    applied, applied_infos = p.predict(coef, formed=False)
    assert rel(formed, want) < 1e-10 and rel(applied, want) < 1e-10
    assert len(formed_infos) == len(applied_infos) == (1 if method == "mtl" else 0)  # MTL's fine-tuning solve
    # the coefficients matter: the reference at zero coefficients is far from these predictions
    assert rel(at(np.zeros_like(coef)), want) > 1e-3


def test_a_structured_solve_needs_an_outer_problem_in_numpy(problem):
    from ntk_bridge.errors import UserError

    tasks, Th, K, f0, data = problem
    p = MTLOuter(Th, K, data, tasks.layout, PredictorConfig(), TIMES)
    with pytest.raises(UserError, match="held in numpy"):
        p.solve("cg")
    with pytest.raises(UserError, match="independent heads"):
        MTLOuter(Th, K, data, tasks.layout, PredictorConfig(mtl_heads="independent"), TIMES)
