"""Convolutional and residual architectures (docs/theory.md §7): rung 2 of the verification ladder
(closed forms with a finite conv / resnet network's empirical kernels == gradient descent on its
linearisation), analytic vs Monte Carlo kernels, the one-pass and blocked kernels vs ``kernel_fn``.

The training loops are written the plain way, as in ``tests/finite/test_linearized.py``: parameters as
pytrees, ``jax.grad`` of the sum-of-squares loss, inner loops unrolled and differentiated (second
order); nothing is shared with ``ntk_bridge.predictors`` but the configuration of times and steps.
"""
import functools

import jax
import neural_tangents as nt
import numpy as np
import pytest

from ntk_bridge.kernels import Architecture, kernels_all_depths, kernels_by_depth
from ntk_bridge.predictors import PredictorConfig, predict_from_kernels
from ntk_bridge.tasks import TaskSet, on_sphere


TOL = 1e-8
OUTER_STEPS, INNER_STEPS, FINETUNE_STEPS = 12, 1, 2
SHAPE = (4, 4, 1)


def image_tasks(seed=0, n_train=2, n_test=2, n_support=3, n_query=3, shape=SHAPE):
    """Random images on the sphere, labels of a shared linear teacher plus a task-specific one."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    w = rng.standard_normal(d)

    def split(n):
        x = on_sphere(rng.standard_normal((n, n_support + n_query, d)))
        teach = w + 0.5 * rng.standard_normal((n, 1, d))
        y = np.sum(x * teach, axis=-1, keepdims=True) / np.sqrt(d)
        return x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:]

    return TaskSet(*split(n_train), *split(n_test), name="images", image_shape=shape)


def sq(f, y):
    return 0.5 * jax.numpy.sum((f - y) ** 2)


def sgd(p, g, lr):
    return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)


def gram(f, params, X):
    """``J J^T`` of ``f(params, X)[:, 0]`` over every leaf of ``params`` (``jax.jacobian``)."""
    jac = jax.tree_util.tree_leaves(jax.jacobian(lambda p: f(p, X)[:, 0])(params))
    J = np.concatenate([np.asarray(j).reshape(X.shape[0], -1) for j in jac], axis=1)
    return J @ J.T


# the residual network's twin of the conv check runs with the slow tests (.ci/run runs both)
@pytest.fixture(scope="module", params=["conv", pytest.param("resnet", marks=pytest.mark.slow)])
def setup(request):
    tasks = image_tasks(seed=3)
    arch = Architecture.for_tasks(tasks, request.param, width=6)
    init_fn, apply_img, _ = arch.network(2 if request.param == "conv" else 1)  # 2 convolutions, resp. 3
    _, params0 = init_fn(jax.random.PRNGKey(1), arch.input_shape(tasks.dim))
    apply_fn = lambda p, x: apply_img(p, arch.as_input(x))  # noqa: E731  flat inputs, as the task set holds them
    X = tasks.all_points()
    theta = gram(apply_fn, params0, X)  # the empirical NTK: every parameter
    K = gram(lambda h, x: apply_fn(list(params0[:-1]) + [h], x), params0[-1], X)  # the readout's parameters
    sl = tasks.layout.slices()
    train = np.r_[sl["train_support"], sl["train_query"]]
    return dict(arch=request.param, tasks=tasks, f_lin=nt.linearize(apply_fn, params0), params0=params0,
                theta=theta, K=K, f0=np.asarray(apply_fn(params0, X)),
                eta=float(0.5 / np.linalg.eigvalsh(theta[np.ix_(train, train)]).max()),
                lam=float(0.5 / np.linalg.eigvalsh(theta).max()))


def closed_form(s, method):
    cfg = PredictorConfig(inner_time=s["lam"] * INNER_STEPS, inner_steps=INNER_STEPS,
                          finetune_time=s["lam"] * FINETUNE_STEPS, finetune_steps=FINETUNE_STEPS,
                          outer_time=s["eta"] * OUTER_STEPS, outer_steps=OUTER_STEPS, mtl_data="all")
    return predict_from_kernels(s["theta"], s["K"], s["tasks"], cfg, methods=(method,), f0=s["f0"])[method].values


def adapt(f_lin, params, x, y, lr, steps, head_only):
    for _ in range(steps):
        if head_only:
            g = jax.grad(lambda h: sq(f_lin(list(params[:-1]) + [h], x), y))(params[-1])
            params = list(params[:-1]) + [sgd(params[-1], g, lr)]
        else:
            params = sgd(params, jax.grad(lambda p: sq(f_lin(p, x), y))(params), lr)
    return params


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def test_closed_forms_equal_gradient_descent_on_the_linearised_conv_network(setup):
    """MTL (heads reset at test), ANIL and MAML (second-order unrolled inner loops) and the baseline,
    all with this network's empirical kernels and the same discrete steps: equal to 1e-8."""
    s = setup
    t, f_lin, lam, eta, params0 = s["tasks"], s["f_lin"], s["lam"], s["eta"], s["params0"]
    M, N = t.layout.n_test, t.layout.n_train

    @functools.partial(jax.jit, static_argnums=1)
    def test_preds(params, head_only):
        return jax.numpy.stack([f_lin(adapt(f_lin, params, t.test_support_x[m], t.test_support_y[m], lam,
                                            FINETUNE_STEPS, head_only), t.test_query_x[m]) for m in range(M)])

    for method in ("anil", "maml"):
        head_only = method == "anil"

        def meta_loss(p):
            return sum(sq(f_lin(adapt(f_lin, p, t.train_support_x[i], t.train_support_y[i], lam, INNER_STEPS,
                                      head_only), t.train_query_x[i]), t.train_query_y[i]) for i in range(N))

        grad, params = jax.jit(jax.grad(meta_loss)), params0
        for _ in range(OUTER_STEPS):
            params = sgd(params, grad(params), eta)
        gd = np.asarray(test_preds(params, head_only))
        assert rel(gd, s["f0"][-gd.size:].reshape(gd.shape)) > 1e-2  # training moved the outputs
        assert rel(closed_form(s, method), gd) < TOL, (s["arch"], method)

    xd = np.concatenate([t.train_support_x, t.train_query_x], axis=1)
    yd = np.concatenate([t.train_support_y, t.train_query_y], axis=1)
    body, heads = list(params0[:-1]), [params0[-1]] * N

    def loss(b, hs):
        return sum(sq(f_lin(b + [hs[i]], xd[i]), yd[i]) for i in range(N))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for _ in range(OUTER_STEPS):
        gb, gh = grad(body, heads)
        body, heads = sgd(body, gb, eta), [sgd(h, g, eta) for h, g in zip(heads, gh)]
    assert rel(closed_form(s, "mtl"), np.asarray(test_preds(body + [params0[-1]], True))) < TOL, s["arch"]
    assert rel(closed_form(s, "baseline"), np.asarray(test_preds(params0, True))) < TOL, s["arch"]


@pytest.mark.slow  # a statistical check (Monte Carlo over networks): pytest -m slow, in .ci/run
@pytest.mark.parametrize("arch, get, width, n_samples", [("conv", "nngp", 128, 400), ("conv", "ntk", 64, 16),
                                                     ("resnet", "nngp", 128, 200)])
def test_analytic_vs_monte_carlo_conv_kernels(arch, get, width, n_samples, rng):
    """neural-tangents' criterion (its stax tests): relative Frobenius and mean-absolute errors within
    5%. 16 readout units are traced, so a sample averages 16 readouts; widths are kept small for
    time (the empirical NTK of a 3 x 3 convolution costs ``O(width^2)`` per point) and samples to what
    keeps the error clear of 5% (measured over two point sets: conv NNGP 3-5% at 200 samples, so 400;
    conv NTK 1.9% at 16; resnet NNGP 2.1-2.7% at 200), for a finite-width bias of ``O(1/width)`` and
    fluctuations of ``O(1/sqrt(width samples))``."""
    x = on_sphere(rng.standard_normal((5, 16)))
    a = Architecture(arch=arch, image_shape=SHAPE, width=width, n_outputs=16)
    init_fn, apply_fn, kernel_fn = a.network(2)
    mc = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(7), n_samples=n_samples, implementation=1,
                                  trace_axes=(-1,))
    xi = a.as_input(x)
    emp, exact = np.asarray(mc(xi, None, get)), np.asarray(kernel_fn(xi, None, get))
    assert np.linalg.norm(emp - exact) / np.linalg.norm(exact) < 0.05
    assert np.mean(np.abs(emp - exact)) / np.mean(np.abs(exact)) < 0.05


@pytest.mark.parametrize("arch, readout", [("conv", "flatten"), ("resnet", "flatten"), ("conv", "gap")])
def test_one_pass_and_blocks_equal_kernel_fn_per_depth(arch, readout, rng):
    x = on_sphere(rng.standard_normal((6, 16)))
    a = Architecture(arch=arch, image_shape=SHAPE, spatial_readout=readout)
    depths, Th, K = kernels_all_depths(x, max_depth=2, architecture=a)
    for i, L in enumerate(depths):
        direct = a.network(L)[2](a.as_input(x), None, ("ntk", "nngp"))
        np.testing.assert_array_equal(Th[i], np.asarray(direct.ntk))
        np.testing.assert_array_equal(K[i], np.asarray(direct.nngp))
    # blocks of 3 x 3 point pairs (a bound of 9 pairs). flatten: the same bits; gap: the full spatial
    # convolutions of other batch sizes round differently
    bound = 9 * int(np.prod(SHAPE[:2])) ** (1 if readout == "flatten" else 2) * 8 * 12
    same = np.testing.assert_array_equal if readout == "flatten" else functools.partial(
        np.testing.assert_allclose, rtol=1e-13, atol=0)
    _, Tb, Kb = kernels_all_depths(x, max_depth=2, architecture=a, memory_bytes=bound)
    same(Tb, Th)
    same(Kb, K)
    x2 = on_sphere(rng.standard_normal((3, 16)))
    cross = list(kernels_by_depth(x, x2, depths=[2], architecture=a, memory_bytes=bound))[0]
    direct = a.network(2)[2](a.as_input(x), a.as_input(x2), ("ntk", "nngp"))
    same(cross.ntk, np.asarray(direct.ntk))


def test_conv_needs_images_and_describes_itself():
    with pytest.raises(ValueError, match="image"):
        Architecture(arch="conv")
    with pytest.raises(ValueError, match="image_shape"):
        Architecture.for_tasks(TaskSet(*[np.ones((1, 2, 3))] * 7), "resnet")
    a = Architecture(arch="resnet", image_shape=(4, 4, 1))
    assert a.describe()["arch"] == "resnet" and a.describe()["image_shape"] == [4, 4, 1]
    assert "arch" not in Architecture().describe()  # the fc description (every earlier cache key) is unchanged
    with pytest.raises(ValueError, match="dimension"):
        list(kernels_by_depth(np.ones((2, 15)), depths=[1], architecture=a))


# -- the command line, verify's architecture dimension and the figure ------------------------------

def test_image_arch_on_a_flat_task_file_is_one_line(capsys, tmp_path):
    from ntk_bridge.cli import main

    t = image_tasks()
    flat = TaskSet(**t.arrays(), name="flat")
    flat.save(tmp_path / "flat.npz")
    code = main(["sweep", "--tasks", str(tmp_path / "flat.npz"), "--arch", "conv", "--depth", "1",
                 "--out", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    lines = [l for l in (out + err).splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and "image_shape" in lines[0], out + err
    for args in (["--arch", "cnn"], ["--arch", "conv", "--tasks", "subspace"]):
        code = main(["verify", "--quick", "--no-finite", "--out", str(tmp_path / "v"), *args])
        out, err = capsys.readouterr()
        lines = [l for l in (out + err).splitlines() if l.strip()]
        assert code == 2 and len(lines) == 1 and "--arch" in lines[0], out + err


@pytest.fixture(scope="module")
def panel_rows(tmp_path_factory):
    """A one-file panel over fc and conv (the file's tasks are images)."""
    from ntk_bridge.verify.panel import Family, Panel, run_panel

    root = tmp_path_factory.mktemp("panel")
    path = root / "img.npz"
    image_tasks(seed=5, n_train=4, n_test=3).save(path)
    panel = Panel("t", families=(Family(str(path)),), seeds=(0,), depths=(1, 2), inner_times=(0.1,),
                  mtl_data=("all",), test_heads=("learned",), archs=("fc", "conv"))
    rows, _ = run_panel(panel, str(root / "out"), finite=False)
    return path, root, rows


def test_verify_panel_gains_the_architecture(panel_rows):
    """conv rows are a condition of their own (``img/conv``) and equal a plain conv sweep; the fc rows
    are the fc sweep's, so the default panel's numbers do not move."""
    from ntk_bridge.config import SweepConfig
    from ntk_bridge.sweep import run_sweep
    from ntk_bridge.verify.panel import FULL, QUICK

    path, root, rows = panel_rows
    assert set(rows["tasks"]) == {"img", "img/conv"}
    assert FULL.archs == QUICK.archs == ("fc",) and "archs" not in QUICK.describe()
    for arch, label in (("fc", "img"), ("conv", "img/conv")):
        cfg = SweepConfig.of(family=str(path), depths=(1, 2), inner_times=(0.1,), mtl_data=("all",), arch=arch)
        alone = run_sweep(cfg, str(root / f"alone_{arch}"), figures=False)
        mine = rows[rows["tasks"] == label]
        np.testing.assert_array_equal(np.sort(mine["gap_to_mtl_rel"].to_numpy()),
                                      np.sort(alone["gap_to_mtl_rel"].to_numpy()))
    gap = rows[rows["method"] == "anil"].groupby("tasks")["gap_to_mtl_rel"].mean()
    assert gap["img"] != gap["img/conv"]  # the architectures give different kernels


def test_conv_gap_vs_depth_figure_from_its_table(panel_rows, tmp_path):
    from ntk_bridge.figures.conv import conv_gap_vs_depth_table, plot_conv_gap_vs_depth

    _, _, rows = panel_rows
    frames = {"fc": rows[rows["tasks"] == "img"], "conv": rows[rows["tasks"] == "img/conv"]}
    table = conv_gap_vs_depth_table(frames, chance=0.2)
    assert set(table["arch"]) == {"fc", "conv"} and set(table["depth"]) == {1, 2}
    paths = plot_conv_gap_vs_depth(table, str(tmp_path / "conv_gap_vs_depth"))
    assert sorted(p.rsplit(".", 1)[1] for p in paths) == ["csv", "pdf", "png"]
    import pandas as pd

    back = pd.read_csv(tmp_path / "conv_gap_vs_depth.csv")
    assert {"arch", "gap_to_mtl_rel_q50", "test_accuracy_q50", "chance"} <= set(back.columns)


def test_conv_gap_vs_depth_figure_draws_the_trained_networks(panel_rows, tmp_path):
    """The trained networks' rows (``ntk-bridge fewshot --tasks-of``): per method the mean over test
    episodes of each episode's accuracy averaged over seeds, its 95% half-width over episodes; they
    reach the figure's CSV beside every closed-form row."""
    import pandas as pd

    from ntk_bridge.figures.conv import conv_gap_vs_depth_table, plot_conv_gap_vs_depth

    _, _, rows = panel_rows
    episodes = pd.DataFrame({"method": ["mtl"] * 6 + ["nn-pixels"] * 3, "seed": [0, 0, 0, 1, 1, 1, 0, 0, 0],
                             "episode": [0, 1, 2] * 3, "accuracy": [0.2, 0.4, 1.0, 0.4, 0.6, 0.8, 0.5, 0.5, 0.2]})
    table = conv_gap_vs_depth_table({"fc": rows[rows["tasks"] == "img"]}, chance=0.2, networks=episodes)
    nets = table[table["source"] == "trained network"].set_index("method")
    per_episode = np.array([0.3, 0.5, 0.9])
    assert list(nets.index) == ["mtl", "nn-pixels"] and nets.loc["mtl", "seeds"] == 2
    assert nets.loc["mtl", "network_accuracy"] == pytest.approx(per_episode.mean())
    assert nets.loc["mtl", "network_ci95"] == pytest.approx(1.96 * per_episode.std(ddof=1) / np.sqrt(3))
    plot_conv_gap_vs_depth(table, str(tmp_path / "fig"))
    back = pd.read_csv(tmp_path / "fig.csv")
    assert len(back) == len(table) and set(back["source"]) == {"closed form", "trained network"}
