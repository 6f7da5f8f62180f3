"""Tests of ntk_bridge.finite: finite networks trained by gradient descent (docs/theory.md §4, and §5 rung 3).

Exact identities first (the body/readout split is the stax network; the linearised network is
``neural_tangents.linearize``), then the statistical check of rung 3 (the
distance to the infinite-width predictor falls like a power of the width), then divergence handling
and the rate fit against scipy. (Rung 2 through this module's trainers, every method's trained linearised
network against its discrete closed form with empirical kernels: ``tests/test_methods.py``.)
"""
import math

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
import pandas as pd
import pytest

from ntk_bridge import finite
from ntk_bridge.errors import UserError
from ntk_bridge.finite import comparison, networks
from ntk_bridge.finite import objectives
from ntk_bridge.finite import training as trainers
from ntk_bridge.metrics import NAMES
from ntk_bridge.results import width_exponents
from ntk_bridge.kernels import Architecture, kernels_by_depth
from ntk_bridge.predictors import PredictorConfig, predict_from_kernels
from ntk_bridge.families import subspace_tasks


@pytest.fixture(scope="module")
def small_tasks():
    return subspace_tasks(seed=7, n_train=3, n_test=2, n_support=3, n_query=4, dim=5)


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------

def test_body_and_readout_split_is_the_stax_network_and_its_linearisation(small_tasks, key):
    arch = Architecture(width=32)
    net = networks.network_for(arch, 3)
    init_fn, apply_fn, _ = arch.network(3)
    _, params0 = init_fn(key, (-1, small_tasks.dim))
    x = jnp.asarray(small_tasks.all_points())
    body0, head0 = list(params0[:-1]), params0[-1]
    split = networks.apply(net, False, (body0, head0), x, None)
    np.testing.assert_allclose(split, apply_fn(params0, x), rtol=1e-13, atol=1e-13)

    # a perturbed point: the linearised model must equal neural_tangents.linearize exactly
    leaves, tree = jax.tree_util.tree_flatten(params0)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    moved = jax.tree_util.tree_unflatten(
        tree, [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    ours = networks.apply(net, True, (list(moved[:-1]), moved[-1]), x, (body0, head0))
    theirs = nt.linearize(apply_fn, params0)(moved, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(theirs - apply_fn(moved, x)))) > 1e-4  # the nonlinearity is visible


def test_network_j_does_not_depend_on_how_many_are_initialised(small_tasks):
    p1, f1 = finite.init_networks(small_tasks, 2, 16, seed=5, n_networks=1)
    p3, f3 = finite.init_networks(small_tasks, 2, 16, seed=5, n_networks=3)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p3)):
        np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(f1[0], f3[0], rtol=1e-13, atol=1e-13)  # batched matmul round-off only
    assert not np.allclose(f3[0], f3[1])


def test_discretise_follows_the_documented_step_rule(small_tasks):
    training = finite.TrainingConfig(outer_steps=40, outer_step=0.8, max_inner_step=0.3)
    sl = small_tasks.layout.slices()
    train = np.r_[sl["train_support"], sl["train_query"]]
    etas = []
    for depth in (1, 4):
        theta = next(kernels_by_depth(small_tasks.all_points(), depths=[depth])).ntk
        cfg = finite.discretise(PredictorConfig(inner_time=0.4, finetune_time=2.0), theta, small_tasks, training)
        top = np.linalg.eigvalsh(theta[np.ix_(train, train)]).max()
        assert cfg.outer_steps == 40 and math.isclose(cfg.outer_time, 40 * 0.8 / top, rel_tol=1e-12)
        etas.append(cfg.outer_time / cfg.outer_steps)
        for time, steps, part in ((cfg.inner_time, cfg.inner_steps, "train_support"),
                                  (cfg.finetune_time, cfg.finetune_steps, "test_support")):
            n = small_tasks.layout.n_support if part == "train_support" else small_tasks.layout.m_support
            blocks = theta[sl[part], sl[part]]
            tops = [np.linalg.eigvalsh(blocks[i * n:(i + 1) * n, i * n:(i + 1) * n]).max()
                    for i in range(blocks.shape[0] // n)]
            assert time / steps * max(tops) <= 0.3 + 1e-12  # stable step
            assert steps == 1 or time / (steps - 1) * max(tops) > 0.3  # and the fewest such steps
    assert etas[1] < etas[0] / 1.8  # the outer step shrinks with depth (||Theta|| ~ L + 1)
    # user-given steps and finite times are kept
    cfg = finite.discretise(PredictorConfig(inner_time=0.2, inner_steps=3, outer_time=5.0, outer_steps=7),
                            theta, small_tasks, training)
    assert (cfg.inner_steps, cfg.outer_steps, cfg.outer_time) == (3, 7, 5.0)
    with pytest.raises(UserError):
        finite.discretise(PredictorConfig(inner_l2=0.1), theta, small_tasks, training)


# ---------------------------------------------------------------------------------------------
# Rung 3: finite networks -> infinite width
# ---------------------------------------------------------------------------------------------

WIDTHS = (64, 128, 256, 512, 1024)
N_NETWORKS = 8


def _width_rows(widths, n_networks):
    """Centred networks of depth 1 at ``widths``, ``n_networks`` each (float64, no linearised twins)."""
    tasks = subspace_tasks(seed=1, n_train=3, n_test=2, n_support=3, n_query=4, dim=5)
    training = finite.TrainingConfig(outer_steps=100, linearized=False)
    frames = [finite.finite_cell(tasks, 1, w, PredictorConfig(), ("mtl", "anil", "maml", "baseline"),
                                 seed=0, n_networks=n_networks, mode="centred", training=training)
              for w in widths]
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def width_rows():
    """Five widths, eight networks each: the rate fit's rows (slow)."""
    return _width_rows(WIDTHS, N_NETWORKS)


@pytest.mark.slow
def test_distance_to_infinite_width_falls_like_a_power_of_width(width_rows):
    fits = width_exponents(width_rows).set_index("method")
    for method in ("mtl", "anil", "maml"):
        p, lo, hi, n = fits.loc[method, ["exponent", "ci95_low", "ci95_high", "n"]]
        assert n == len(WIDTHS) * N_NETWORKS
        # NTK theory: fluctuations of the finite kernel and its movement are O(h^-1/2)
        assert -0.8 <= p <= -0.3, (method, p, lo, hi)
        assert hi < 0, (method, lo, hi)  # the decrease is significant


def test_rows_have_the_documented_columns_and_consistent_gaps():
    rows = _width_rows((128,), 4)  # the schema needs no rate fit: one width, four networks
    assert list(rows.columns) == NAMES
    assert set(rows["status"]) == {"ok"}
    assert set(rows["network"]) == set(range(4)) | {"ensemble"}
    mtl = rows[rows["method"] == "mtl"]
    assert np.all(mtl["gap_to_mtl_rel"] == 0) and np.all(mtl["gap_to_mtl_abs"] == 0)
    base = rows[rows["method"] == "baseline"]
    assert np.all(base["gap_to_baseline_rel"] == 0)
    assert np.all(rows["dist_to_linearized_rel"].isna())  # not trained in this fixture
    trained = rows[(rows["method"] != "baseline") & (rows["network"] != "ensemble")]
    assert np.all(trained["train_loss_rel"] < 0.05)  # nearly converged
    assert rows[rows["network"] == "ensemble"]["train_loss_rel"].isna().all()
    # the ensemble mean is closer to the mean predictor than a typical single centred network
    one = rows[(rows["network"] != "ensemble") & (rows["method"] != "baseline")]
    ens = rows[(rows["network"] == "ensemble") & (rows["method"] != "baseline")]
    assert ens["dist_to_infinite_rel"].mean() < one["dist_to_infinite_rel"].mean()


def test_raw_networks_follow_their_own_f0(small_tasks):
    # raw networks differ from the mean predictor by f0 (O(1)) but from their own full-f0 closed form
    # only by the width error, so the raw distance is far below the distance to the mean predictor
    training = finite.TrainingConfig(outer_steps=30, linearized=False)
    kern = next(kernels_by_depth(small_tasks.all_points(), depths=[1]))
    rows = finite.finite_cell(small_tasks, 1, 512, methods=("anil",), n_networks=2, mode="raw",
                              training=training, kernels=kern)
    run = finite.train_networks(small_tasks, 1, 512, finite.discretise(PredictorConfig(), kern.ntk, small_tasks,
                                                                       training),
                                ("anil",), n_networks=2, mode="raw", training=training)
    mean, _ = finite.infinite_predictions(kern, small_tasks, run.config, ("anil",), "centred", run.f0)
    to_mean = np.linalg.norm(run.finite["anil"] - mean["anil"]) / np.linalg.norm(mean["anil"])
    own = rows[rows["network"] != "ensemble"]["dist_to_infinite_rel"].mean()
    assert (rows["mode"] == "raw").all() and own < 0.2 < to_mean


# ---------------------------------------------------------------------------------------------
# Divergence, dtypes, rate fit
# ---------------------------------------------------------------------------------------------

def test_absurd_step_size_is_reported_as_diverged_not_as_numbers(small_tasks):
    cfg = PredictorConfig(outer_time=1e4, outer_steps=20)  # eta * lambda_max ~ 1e4
    rows = finite.finite_cell(small_tasks, 1, 32, cfg, ("mtl", "anil"), n_networks=2,
                              training=finite.TrainingConfig(outer_steps=20))
    assert set(rows["status"]) == {"diverged"}
    numeric = ["pred_rms", "gap_to_mtl_rel", "test_mse", "dist_to_infinite_rel", "train_loss_rel"]
    assert rows[numeric].isna().all().all()


def _trained_each_way(tasks, steps, width, methods, n_networks=1, **setting):
    """``{value: trained networks}`` of depth 1 (not linearised), ``steps`` outer steps, for each value of the
    one :class:`finite.TrainingConfig` field in ``setting`` (``field=(value, ...)``)."""
    (field, values), = setting.items()
    kern = next(kernels_by_depth(tasks.all_points(), depths=[1]))
    cfg = finite.discretise(PredictorConfig(), kern.ntk, tasks, finite.TrainingConfig(outer_steps=steps))
    return {value: finite.train_networks(tasks, 1, width, cfg, methods, n_networks=n_networks,
                                         training=finite.TrainingConfig(outer_steps=steps, linearized=False,
                                                                        **{field: value}))
            for value in values}


def test_float32_training_is_float32_and_close_to_float64(small_tasks):
    out = _trained_each_way(small_tasks, 20, 64, ("anil",), dtype=("float32", "float64"))
    a, b = out["float32"].finite["anil"], out["float64"].finite["anil"]
    assert np.max(np.abs(a - b)) / np.max(np.abs(b)) < 1e-4
    arch = networks.architecture_for(None, 64, 1)
    params, _ = finite.init_networks(small_tasks, 1, 64)
    data = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32),
                                  objectives.network_data(small_tasks, "all", np.zeros((1, small_tasks.layout.n_points, 1))))
    params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), params)
    rates = objectives.Rates(*(jnp.asarray(v, jnp.float32) for v in (0.1, 0.1, 0.01, 1e3)))
    res = trainers._run_batched(params, data, rates, net=networks.network_for(arch, 1), linear=False,
                                trainer=objectives.ANIL_TRAINER, steps=objectives.Steps(1, 1, 2))
    assert res.predictions.dtype == jnp.float32 and res.history.dtype == jnp.float32


def test_vmap_and_map_batching_train_the_same_networks(small_tasks):
    out = _trained_each_way(small_tasks, 5, 16, ("mtl", "maml"), n_networks=2, batching=("vmap", "map"))
    for method in ("mtl", "maml"):
        np.testing.assert_allclose(out["vmap"].finite[method], out["map"].finite[method], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out["vmap"].history[method], out["map"].history[method], rtol=1e-10)


def test_bad_arguments_raise_user_errors(small_tasks):
    with pytest.raises(UserError):
        finite.finite_cell(small_tasks, 1, 16, methods=("reptile",))
    with pytest.raises(UserError):
        finite.finite_cell(small_tasks, 1, 16, mode="uncentred")
    with pytest.raises(UserError):
        finite.train_networks(small_tasks, 1, 16, PredictorConfig())  # not discrete


@pytest.mark.slow  # 20 s: every cell of a unit trained twice, shared and alone
def test_cells_sharing_a_cache_equal_fresh_cells_and_train_fewer_runs(small_tasks, monkeypatch):
    """finite_cell's cache: MTL ignores the inner time, ANIL/MAML ignore mtl_data, the baseline
    both; shared runs must give exactly the rows of cells computed alone."""
    trained = []
    real = comparison.train_networks

    def counting(*args, **kwargs):
        trained.extend(args[4] if len(args) > 4 else kwargs["methods"])
        return real(*args, **kwargs)

    monkeypatch.setattr(comparison, "train_networks", counting)
    schedule = finite.TrainingConfig(outer_steps=10)
    grid = [PredictorConfig(inner_time=s, mtl_data=d) for s in (0.1, 1.0) for d in ("all", "query")]
    kw = dict(methods=("mtl", "anil", "maml"), n_networks=2, training=schedule)
    alone = [finite.finite_cell(small_tasks, 1, 24, cfg, **kw) for cfg in grid]
    n_alone, trained[:] = len(trained), []
    cache: dict = {}
    shared = [finite.finite_cell(small_tasks, 1, 24, cfg, cache=cache, **kw) for cfg in grid]
    assert n_alone == 4 * 4  # every cell trains mtl, baseline, anil and maml
    assert sorted(trained) == sorted(["mtl"] * 2 + ["baseline"] + ["anil"] * 2 + ["maml"] * 2)
    for a, b in zip(alone, shared):
        pd.testing.assert_frame_equal(a, b)
    # the infinite-width gap column is the closed forms' gap under the same discrete schedule
    kern = next(kernels_by_depth(small_tasks.all_points(), depths=[1]))
    cfg = finite.discretise(grid[3], kern.ntk, small_tasks, schedule)
    out = predict_from_kernels(kern.ntk, kern.readout, small_tasks, cfg, ("mtl", "anil"))
    f, g = out["anil"].values, out["mtl"].values
    expect = np.linalg.norm((f - g).reshape(len(f), -1), axis=1) / np.linalg.norm(g.reshape(len(g), -1), axis=1)
    rows = shared[3][(shared[3]["method"] == "anil") & (shared[3]["network"] == 0)]
    np.testing.assert_allclose(rows["infinite_gap_to_mtl_rel"], expect, rtol=1e-10)
    assert np.all(shared[3][shared[3]["method"] == "mtl"]["infinite_gap_to_mtl_rel"] == 0)
