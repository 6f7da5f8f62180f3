"""ntk_bridge.predictors, rung 1 of docs/theory.md §5: the vectorised closed forms vs a naive loop and
exact identities."""
import dataclasses

import numpy as np
import pytest

from ntk_bridge.kernels import kernels_all_depths
from ntk_bridge.metrics import status_of
from ntk_bridge.predictors import PredictorConfig, predict, predict_from_kernels
from ntk_bridge.families import linear_tasks, subspace_tasks

import reference as ref


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b)))


# -- kernels of the methods --------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    tasks = subspace_tasks(seed=3, n_train=4, n_test=3, n_support=3, n_query=4, dim=6, n_outputs=2)
    depths, Th, K = kernels_all_depths(tasks.all_points(), max_depth=3)
    return tasks, Th[1], K[1]  # depth 2


CASES = [
    dict(),
    dict(inner_time=1.3, finetune_time=0.4, outer_time=2.0),
    dict(inner_time=0.6, inner_steps=3, finetune_time=0.5, finetune_steps=2, outer_time=5.0, outer_steps=20),
    dict(inner_time=0.0, inner_l2=0.2, mtl_data="query"),
]


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("with_f0", [False, True])
def test_vectorised_equals_naive_loop(small, kw, with_f0, rng):
    tasks, Th, K = small
    cfg = PredictorConfig(**kw)
    f0 = rng.standard_normal((tasks.layout.n_points, 2)) if with_f0 else None
    out = predict_from_kernels(Th, K, tasks, cfg, f0=f0)
    inner = (cfg.inner_time, cfg.inner_steps, cfg.inner_l2)
    fine = (cfg.finetune_time, cfg.finetune_steps)
    outer = (cfg.outer_time, cfg.outer_steps)
    assert rel(out["anil"].values, ref.gbml(Th, K, tasks, inner, fine, outer, f0)[0]) < 1e-9
    assert rel(out["maml"].values, ref.gbml(Th, Th, tasks, inner, fine, outer, f0)[0]) < 1e-9
    reset = predict_from_kernels(Th, K, tasks, dataclasses.replace(cfg, test_head="reset"), ("anil", "maml"), f0=f0)
    assert rel(reset["anil"].values, ref.gbml(Th, K, tasks, inner, fine, outer, f0, K=K, test_head="reset")[0]) < 1e-9
    assert rel(reset["maml"].values, ref.gbml(Th, Th, tasks, inner, fine, outer, f0, K=K, test_head="reset")[0]) < 1e-9
    assert rel(reset["anil"].values, out["anil"].values) > 1e-3  # the protocols differ
    assert rel(out["mtl"].values, ref.mtl(Th, K, tasks, fine, outer, cfg.mtl_data, f0)) < 1e-9
    assert rel(out["baseline"].values, ref.baseline(K, tasks, fine, f0)) < 1e-12
    for p in out.values():
        assert status_of(p.diagnostics) == "ok"


def test_zero_inner_time_is_ntk_regression_on_queries(small):
    tasks, Th, K = small
    cfg = PredictorConfig(inner_time=0.0, finetune_time=0.0)
    out = predict_from_kernels(Th, K, tasks, cfg, methods=("anil", "maml"))
    L = tasks.layout
    sl = L.slices()
    q, tq = sl["train_query"], sl["test_query"]
    expected = Th[tq, q] @ np.linalg.solve(Th[q, q], tasks.train_query_y.reshape(-1, 2))
    expected = expected.reshape(L.n_test, L.m_query, 2)
    assert rel(out["anil"].values, expected) < 1e-10
    assert rel(out["maml"].values, expected) < 1e-10


def test_independent_heads_collapse_to_the_reference_baseline(small):
    # with independently initialised heads nothing the body learns reaches a fresh test head
    tasks, Th, K = small
    out = predict_from_kernels(Th, K, tasks, PredictorConfig(mtl_heads="independent"), methods=("mtl",))
    assert rel(out["mtl"].values, ref.baseline(K, tasks, (1.0, None))) < 1e-12


def test_mean_predictor_is_mean_of_full_forms(small, rng):
    # The closed forms are affine in f0: averaging the full form over +-f0 gives the mean predictor.
    tasks, Th, K = small
    f0 = rng.standard_normal((tasks.layout.n_points, 2))
    cfg = PredictorConfig(inner_time=0.5, outer_time=3.0)
    mean = predict_from_kernels(Th, K, tasks, cfg)
    plus = predict_from_kernels(Th, K, tasks, cfg, f0=f0)
    minus = predict_from_kernels(Th, K, tasks, cfg, f0=-f0)
    for m in mean:
        assert rel(0.5 * (plus[m].values + minus[m].values), mean[m].values) < 1e-10


def test_batched_depths_equal_single_calls():
    tasks = subspace_tasks(seed=1, n_train=3, n_test=2, n_support=2, n_query=3, dim=5)
    cfgs = [PredictorConfig(inner_time=t) for t in (0.01, 0.1, 1.0)]
    depths, Th, K = kernels_all_depths(tasks.all_points(), max_depth=3)
    batch = predict_from_kernels(Th, K, tasks, cfgs)
    for b in range(3):
        single = predict_from_kernels(Th[b], K[b], tasks, cfgs[b])
        for m in single:
            assert rel(batch[b][m].values, single[m].values) < 1e-12


def test_gap_shrinks_with_depth_reference_magnitudes():
    # the reference magnitudes' setting: N=5, n=4, n'=3, d=20, t=inf, s_hat=1, MTL on queries.
    # Its magnitudes are for one draw of independent linear tasks; we check order of magnitude.
    tasks = linear_tasks(seed=0, n_train=5, n_test=5, n_support=3, n_query=4, dim=20)
    out = predict(tasks, [1, 16, 128], PredictorConfig(inner_time=0.01, mtl_data="query"),
                  methods=("mtl", "anil"))
    gap = {L: np.linalg.norm(o["anil"].values - o["mtl"].values) / np.linalg.norm(o["anil"].values)
           for L, o in out.items()}
    assert 0.1 < gap[1] < 1.0
    assert 0.002 < gap[16] < 0.04
    assert 1e-4 < gap[128] < 3e-3
    assert gap[1] > gap[16] > gap[128]


# -- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, word", [
    (dict(inner_time=-1.0), "inner_time"),
    (dict(finetune_time=float("nan")), "finetune_time"),
    (dict(outer_time=-0.5), "outer_time"),
    (dict(outer_steps=5), "outer_time"),  # steps need a finite time
    (dict(inner_steps=0, inner_time=1.0), "inner_steps"),
    (dict(mtl_data="support"), "mtl_data"),
    (dict(mtl_heads="many"), "mtl_heads"),
])
def test_bad_config_raises_value_error_naming_argument(kw, word):
    with pytest.raises(ValueError, match=word):
        PredictorConfig(**kw)


def test_bad_kernels_and_methods(small):
    tasks, Th, K = small
    with pytest.raises(ValueError, match="Theta"):
        predict_from_kernels(Th[:-1, :-1], K[:-1, :-1], tasks)
    with pytest.raises(ValueError, match="K has shape"):
        predict_from_kernels(Th, K[None], tasks)
    with pytest.raises(ValueError, match="unknown method"):
        predict_from_kernels(Th, K, tasks, methods=("mtl", "reptile"))
    with pytest.raises(ValueError, match="f0"):
        predict_from_kernels(Th, K, tasks, f0=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="f0"):
        predict_from_kernels(Th, K, tasks, f0=np.full((tasks.layout.n_points, 2), np.nan))


def test_nan_kernel_is_flagged(small):
    tasks, Th, K = small
    Th = Th.copy()
    Th[0, 0] = np.nan
    out = predict_from_kernels(Th, K, tasks, methods=("maml",))
    assert status_of(out["maml"].diagnostics) == "nonfinite"


def test_predict_reuses_the_kernel_pass_of_the_previous_call(monkeypatch):
    """A loop over configurations of one task set pays the kernel pass once; other points, another
    architecture or other depths compute their own kernels, and the reused kernels give the numbers of
    a fresh pass."""
    import ntk_bridge.kernels as kernels
    from ntk_bridge import predictors

    tasks = subspace_tasks(seed=3, n_train=3, n_test=2, n_support=2, n_query=3, dim=4)
    other = subspace_tasks(seed=4, n_train=3, n_test=2, n_support=2, n_query=3, dim=4)
    calls = []
    real = kernels.kernels_by_depth
    monkeypatch.setattr(kernels, "kernels_by_depth", lambda *a, **k: calls.append(1) or real(*a, **k))
    predictors._LAST_KERNELS.clear()
    first = predict(tasks, depth=[1, 2], config=PredictorConfig(inner_time=0.1), methods=("anil",))
    again = predict(tasks, depth=[1, 2], config=PredictorConfig(inner_time=1.0), methods=("anil",))
    assert len(calls) == 1
    predict(tasks, depth=[1, 3], methods=("anil",))
    predict(other, depth=[1, 3], methods=("anil",))
    assert len(calls) == 3
    predictors._LAST_KERNELS.clear()
    fresh = predict(tasks, depth=[1, 2], config=PredictorConfig(inner_time=1.0), methods=("anil",))
    for d in (1, 2):
        assert np.array_equal(again[d]["anil"].values, fresh[d]["anil"].values)
        assert not np.array_equal(first[d]["anil"].values, again[d]["anil"].values)


def test_predict_computes_each_method_once_per_setting_it_depends_on(monkeypatch):
    """Over the main job's six configurations (three inner times x two MTL data) MTL is computed once per
    MTL data, ANIL and MAML once per inner time, the baseline once, as the sweep computes them; every
    prediction has the bits of a fresh call; other labels on the same points are computed anew."""
    from ntk_bridge import predictors

    tasks = subspace_tasks(seed=3, n_train=3, n_test=2, n_support=2, n_query=3, dim=4)
    configs = [PredictorConfig(inner_time=s, mtl_data=m) for s in (0.01, 0.1, 1.0) for m in ("all", "query")]
    methods = ("mtl", "anil", "maml", "baseline")
    computed = []
    real = predictors.predict_from_kernels
    monkeypatch.setattr(predictors, "predict_from_kernels",
                        lambda *a, **k: computed.extend((m, a[3].inner_time, a[3].mtl_data) for m in a[4])
                        or real(*a, **k))
    predictors._LAST_KERNELS.clear()
    got = [predict(tasks, depth=[1, 2], config=c, methods=methods) for c in configs]
    count = {m: sum(1 for c in computed if c[0] == m) for m in methods}
    assert count == {"mtl": 2 * 2, "anil": 3 * 2, "maml": 3 * 2, "baseline": 1 * 2}  # x 2 depths
    for c, out in zip(configs, got):
        predictors._LAST_KERNELS.clear()  # a fresh pass, every method computed
        fresh = predict(tasks, depth=[1, 2], config=c, methods=methods)
        for d in (1, 2):
            for m in methods:
                assert np.array_equal(out[d][m].values, fresh[d][m].values), (c, d, m)
                assert out[d][m].diagnostics == fresh[d][m].diagnostics
    # the sweep's path: one kernel pass, one call per depth
    from ntk_bridge.kernels import kernels_by_depth

    for kern in kernels_by_depth(tasks.all_points(), depths=[1, 2]):
        sweep = real(kern.ntk, kern.readout, tasks, configs[-1], methods)
        for m in methods:
            assert np.array_equal(sweep[m].values, got[-1][kern.depth][m].values), (kern.depth, m)
    relabelled = dataclasses.replace(tasks, train_query_y=tasks.train_query_y + 1.0)
    computed.clear()
    moved = predict(relabelled, depth=[1, 2], config=configs[-1], methods=methods)
    assert {c[0] for c in computed} == set(methods)
    assert not np.array_equal(moved[2]["mtl"].values, got[-1][2]["mtl"].values)
