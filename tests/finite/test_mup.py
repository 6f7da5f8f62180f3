"""Finite muP networks, the muP limit of the one-hidden-layer linear network and kernel movement
(docs/theory.md §8): finite widths approach the limit at rate width^-1/2, the limit after one inner and
one outer step equals a closed form derived by hand, and the kernel moves in muP but not in the NTK
parameterisation."""
import dataclasses
import math

import numpy as np
import pytest

from ntk_bridge.cli import main
from ntk_bridge.families import subspace_tasks
from ntk_bridge.finite import TrainingConfig, train_networks
from ntk_bridge.finite.mup_limit import mup_limit_run
from ntk_bridge.kernels import Architecture
from ntk_bridge.metrics import relative
from ntk_bridge.predictors import PredictorConfig
from ntk_bridge.results import fit_power_law

LINEAR = Architecture(activation="linear", hidden_w_std=1.0)
TASKS = dict(n_train=3, n_test=2, n_support=3, n_query=4, dim=4)
#: a discrete schedule: 2 inner, 2 fine-tuning and 10 outer steps (each outer step half the stable one,
#: 1 / lambda_max(Theta) = 0.066: at the edge of stability the training is chaotic and widths do not converge)
SCHEDULE = PredictorConfig(inner_time=0.2, inner_steps=2, finetune_time=0.5, finetune_steps=2, outer_time=0.3,
                           outer_steps=10, mtl_data="all")
FAST = TrainingConfig(linearized=False)


def _finite(tasks, width, param, methods=("mtl", "anil"), n_networks=4, arch=LINEAR, config=SCHEDULE,
            mode="centred"):
    arch = dataclasses.replace(arch, param=param)
    return train_networks(tasks, 1, width, config, methods, seed=1, n_networks=n_networks, mode=mode,
                          architecture=arch, training=FAST)


@pytest.mark.slow
def test_finite_mup_networks_approach_the_mup_limit_at_rate_one_over_sqrt_width():
    methods = ("mtl", "anil")
    tasks = subspace_tasks(seed=3, **TASKS)
    limit = mup_limit_run(tasks, SCHEDULE, methods, LINEAR, FAST).finite
    widths = [32, 128, 512, 2048]
    points = {m: ([], []) for m in methods}
    for w in widths:
        run = _finite(tasks, w, "mup", methods, n_networks=8)
        for m in methods:
            dist = np.mean(relative(run.finite[m], limit[m][0][None]), axis=1)  # per network, mean over test tasks
            points[m][0].extend([w] * len(dist))
            points[m][1].extend(dist)
    for m, (xs, ys) in points.items():
        p, lo, hi, n = fit_power_law(xs, ys)
        # the exponent -1/2, told apart from its neighbours -1/4 and -1
        assert lo <= -0.5 <= hi and -1 < lo and hi < -0.25, (m, p, lo, hi)
        # the widest networks within the fit's prediction (x 3 for the spread over networks)
        c = np.mean(np.log(ys) - p * np.log(xs))
        predicted = math.exp(c + p * math.log(widths[-1]))
        assert np.max(ys[-8:]) < 3 * predicted, (m, ys[-8:], predicted)


@pytest.mark.slow
def test_finite_mup_maml_and_fomaml_approach_the_mup_limit():
    """16 times the width: the distance to the limit falls by about 4 (sqrt 16), not by 2 (width^-1/4) nor 16."""
    methods = ("maml", "fomaml")
    tasks = subspace_tasks(seed=3, **TASKS)
    limit = mup_limit_run(tasks, SCHEDULE, methods, LINEAR, FAST).finite
    runs = [_finite(tasks, w, "mup", methods, n_networks=8).finite for w in (128, 2048)]
    for m in methods:
        dist = [np.mean(relative(run[m], limit[m][0][None])) for run in runs]
        assert 2.5 < dist[0] / dist[1] < 8, (m, dist)


def _hand_derived(tasks, lam, eta, mu):
    """ANIL and MTL in the muP limit after one inner step (ANIL), one outer step and one fine-tuning
    step, from the formulas of docs/theory.md §8.3 written out with numpy (``sigma_h = sigma_o = 1``,
    ``a = d^{-1/2}``, ``A_0 = [I_d, 0]``, ``B_0 = [0; I_k]``, so ``A_0 B_0 = 0`` and ``A_0 A_0^T = I_d``)."""
    d, k = tasks.dim, tasks.n_outputs
    a = d ** -0.5
    A0 = np.hstack([np.eye(d), np.zeros((d, k))])
    B0 = np.vstack([np.zeros((d, k)), np.eye(k)])
    Xs, Ys, Xq, Yq = tasks.train_support_x, tasks.train_support_y, tasks.train_query_x, tasks.train_query_y
    # ANIL: B_i' = B0 + lam a A0^T Xs^T Ys; the outer gradient through the inner step
    gA, gB = np.zeros_like(A0), np.zeros_like(B0)
    for xs, ys, xq, yq in zip(Xs, Ys, Xq, Yq):
        R = lam * a ** 2 * xq @ xs.T @ ys - yq
        G = xs.T @ xs
        gB += (np.eye(d + k) - lam * a ** 2 * A0.T @ G @ A0) @ (a * A0.T @ xq.T @ R)
        gA += (a * xq.T @ R @ B0.T + lam * a ** 2 * (xq.T @ R @ ys.T @ xs @ A0 + xs.T @ ys @ R.T @ xq @ A0)
               - lam * a ** 3 * G @ A0 @ A0.T @ xq.T @ R @ B0.T)
    A1, B1 = A0 - eta * gA, B0 - eta * gB
    # MTL (support and query merged, every head at B0): f = 0 at initialisation
    mA = np.zeros_like(A0)
    for xs, ys, xq, yq in zip(Xs, Ys, Xq, Yq):
        x, y = np.vstack([xs, xq]), np.vstack([ys, yq])
        mA += a * x.T @ (-y) @ B0.T
    M1 = A0 - eta * mA

    def finetune(A, B):
        out = []
        for xs, ys, xq in zip(tasks.test_support_x, tasks.test_support_y, tasks.test_query_x):
            zs, zq = a * xs @ A, a * xq @ A
            out.append(zq @ (B - mu * zs.T @ (zs @ B - ys)))
        return np.stack(out)

    return dict(anil=finetune(A1, B1), mtl=finetune(M1, B0))


def test_mup_limit_after_one_inner_and_one_outer_step_is_the_hand_derived_closed_form():
    tasks = subspace_tasks(seed=5, n_outputs=2, **TASKS)
    lam, eta, mu = 0.3, 0.2, 0.4
    config = PredictorConfig(inner_time=lam, inner_steps=1, finetune_time=mu, finetune_steps=1, outer_time=eta,
                             outer_steps=1, mtl_data="all")
    run = mup_limit_run(tasks, config, ("mtl", "anil", "baseline"), LINEAR, FAST)
    expected = _hand_derived(tasks, lam, eta, mu)
    for method in ("mtl", "anil"):
        np.testing.assert_allclose(run.finite[method][0], expected[method], rtol=1e-10, atol=1e-12)
    # the representation has width d + k, and the step did move it (features are learned)
    assert run.params0[0][0].shape[-1] == tasks.dim + tasks.n_outputs
    assert np.all(run.kernel_movement["anil"] > 1e-3) and run.kernel_movement["baseline"][0] == 0


def test_mup_limit_is_deterministic():
    tasks = subspace_tasks(seed=2, **TASKS)
    a = mup_limit_run(tasks, SCHEDULE, ("mtl", "anil", "maml"), LINEAR, FAST)
    b = mup_limit_run(tasks, SCHEDULE, ("mtl", "anil", "maml"), LINEAR, FAST)
    for m in ("mtl", "anil", "maml"):
        assert np.array_equal(a.finite[m], b.finite[m]) and np.all(np.isfinite(a.finite[m]))


@pytest.mark.slow
def test_kernel_movement_falls_with_width_in_ntk_param_not_in_mup():
    """The one-hidden-layer linear network, ANIL: 16 times the width, three networks each."""
    tasks = subspace_tasks(seed=4, **TASKS)
    slope = {}
    for param in ("ntk", "mup"):
        xs, ys = [], []
        for w in (64, 1024):
            xs += [w] * 3
            ys += list(_finite(tasks, w, param, ("anil",), n_networks=3).kernel_movement["anil"])
        slope[param] = fit_power_law(xs, ys)[0]
    assert slope["ntk"] < -0.35 and slope["mup"] > -0.15, slope


def test_mup_at_initialisation_has_the_ntk_of_the_ntk_network():
    """The step-size rule is shared: a wide muP network's empirical NTK at initialisation is the NTK limit."""
    from ntk_bridge.finite.movement import empirical_ntk
    from ntk_bridge.finite.networks import init_networks, network_for
    from ntk_bridge.kernels import kernels_by_depth

    tasks = subspace_tasks(seed=1, **TASKS)
    x = tasks.all_points()
    arch = dataclasses.replace(LINEAR, param="mup", width=4096)
    params, _ = init_networks(tasks, 1, 4096, seed=0, architecture=arch)
    theta = empirical_ntk(network_for(arch, 1), [tuple(a[0] for a in layer) for layer in params], x)
    exact = next(kernels_by_depth(x, depths=[1], architecture=LINEAR)).ntk
    assert np.linalg.norm(theta - exact) / np.linalg.norm(exact) < 0.05


@pytest.mark.parametrize("args, word", [
    (["--width", "mup", "--activation", "linear", "--depth", "2"], "--depth 1"),
    (["--width", "mup", "--depth", "1"], "--activation linear"),
    (["--param", "mup", "--arch", "conv", "--tasks", "kanji", "--dim", "16", "--support", "5", "--query", "5"],
     "--arch fc"),
    (["--param", "mu"], "--param"),
])
def test_bad_mup_input_is_one_line_exit_2(capsys, tmp_path, args, word):
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["sweep", "--train-tasks", "3", "--test-tasks", "2", "--support", "5", "--query", "5", "--dim", "4",
                 "--out", str(out), *args])
    text = "".join(capsys.readouterr())
    lines = [line for line in text.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], text
    assert not out.exists()


def test_a_users_omniglot_runs_in_the_mup_limit_beside_a_finite_mup_network(tmp_path, write_omniglot):
    """``--tasks omniglot --data-dir`` (a copy in the official layout) through the feature-learning path:
    the muP limit and a finite muP network of MTL and ANIL, 5-way 1-shot episodes with 3 queries per class."""
    import pandas as pd

    write_omniglot(tmp_path / "omniglot", drawers=8)
    out = tmp_path / "run"
    code = main(["sweep", "--tasks", "omniglot", "--data-dir", str(tmp_path / "omniglot"), "--dim", "16",
                 "--support", "5", "--query", "15", "--train-tasks", "2", "--test-tasks", "2", "--depth", "1",
                 "--activation", "linear", "--param", "mup", "--width", "16,mup", "--methods", "mtl,anil",
                 "--inner-time", "0.5", "--outer-time", "1", "--mtl-data", "all", "--seeds", "1", "--no-linearized",
                 "--no-figures", "--out", str(out)])
    assert code == 0
    df = pd.read_csv(out / "results.csv")
    assert set(df["tasks"]) == {"omniglot"} and set(df["status"]) == {"ok"}
    assert set(df["width"].astype(str)) == {"16", "mup"} and set(df["param"]) == {"mup"}
    assert df["test_accuracy"].between(0, 1).all() and df["kernel_movement"].notna().any()
    finite = df[df["width"].astype(str) == "16"]
    assert (finite["dist_to_infinite_rel"] > 0).all()  # measured against the muP limit


def test_default_architecture_description_is_unchanged():
    """Cache keys of earlier runs stay valid: new fields enter the description only when set."""
    d = Architecture().describe()
    assert "activation" not in d and "param" not in d
    assert Architecture(activation="linear").describe()["activation"] == "linear"


def _curve_distance(history, limit):
    """Per network: ``max_s |L_n(s) - L_inf(s)| / L_inf(0)`` over the outer steps ``s`` (``history [S, T]``)."""
    return np.max(np.abs(history - limit[None]), axis=1) / limit[0]


@pytest.mark.slow
def test_mup_training_curves_are_the_same_at_every_width_and_ntk_kernels_freeze():
    """muP's promise: at fixed hyperparameters the training-loss curves (MTL, ANIL; raw networks, 8 per width)
    converge to the muP limit's curve as the width grows, while NTK-parameterised networks trained with the
    same settings stop moving their kernels.

    Tolerances, none chosen by hand: (1) the curve distance is fitted against width on 32, 128, 512; its
    exponent's 95% CI holds -1/2 (and is told apart from -1/4 and -1), and the 95% prediction interval of
    that fit for the mean log distance of 8 networks at width 2048 (out of sample) holds the measured one;
    (2) no drift with width: at every width and step, the mean over networks of ``L_n(s) - L_inf(s)`` is
    within the Bonferroni-corrected t quantile (two-sided 5% over every width, step and method) of its
    standard error (the width's bias is O(1/n), the spread over networks O(n^-1/2)); (3) kernel movement:
    the NTK networks' fitted exponent is below -1/4 (it is -1 for this linear network), muP's within
    0.1 of 0. About 20 s on 2 cores."""
    from scipy import stats

    methods = ("mtl", "anil")
    tasks = subspace_tasks(seed=3, **TASKS)
    limit = mup_limit_run(tasks, SCHEDULE, methods, LINEAR, FAST).history
    widths, S = (32, 128, 512, 2048), 8
    runs = {w: _finite(tasks, w, "mup", methods, n_networks=S, mode="raw") for w in widths}
    n_tests = len(widths) * SCHEDULE.outer_steps * len(methods)
    quantile = stats.t.ppf(1 - 0.025 / n_tests, S - 1)
    for m in methods:
        lim = limit[m][0]
        dist = {w: _curve_distance(runs[w].history[m], lim) for w in widths}
        x = np.log(np.repeat(widths[:-1], S).astype(float))
        y = np.log(np.concatenate([dist[w] for w in widths[:-1]]))
        fit = stats.linregress(x, y)
        half = stats.t.ppf(0.975, len(x) - 2) * fit.stderr
        assert fit.slope - half <= -0.5 <= fit.slope + half, (m, fit)
        assert -1 < fit.slope < -0.25, (m, fit)
        residual = y - fit.intercept - fit.slope * x
        s = math.sqrt(residual @ residual / (len(x) - 2))
        x_new = math.log(widths[-1])
        se = s * math.sqrt(1 / S + 1 / len(x) + (x_new - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2))
        predicted = fit.intercept + fit.slope * x_new
        measured = float(np.mean(np.log(dist[widths[-1]])))
        assert abs(measured - predicted) <= stats.t.ppf(0.975, len(x) - 2) * se, (m, measured, predicted, se)
        for w in widths:
            diff = runs[w].history[m][:, 1:] - lim[None, 1:]
            sem = diff.std(axis=0, ddof=1) / math.sqrt(S)
            assert np.all(np.abs(diff.mean(axis=0)) <= quantile * sem), (m, w, diff.mean(axis=0), sem)
    # the same settings in the NTK parameterisation: the kernel stops moving as the width grows
    ntk = {w: _finite(tasks, w, "ntk", ("anil",), n_networks=4).kernel_movement["anil"] for w in (32, 2048)}
    slope_ntk = fit_power_law(np.repeat([32, 2048], 4), np.concatenate([ntk[32], ntk[2048]]))[0]
    movement = np.concatenate([runs[w].kernel_movement["anil"] for w in widths])
    slope_mup = fit_power_law(np.repeat(widths, S), movement)[0]
    assert slope_ntk < -0.25 and abs(slope_mup) < 0.1, (slope_ntk, slope_mup)


@pytest.mark.slow
def test_mup_relu_networks_are_measured_against_the_ntk_closed_form():
    """Without a muP limit (ReLU, depth 2) a muP network's ``dist_to_infinite_rel`` is its distance to the NTK
    closed form of the same steps, recomputed here from the trained network and the closed form."""
    from ntk_bridge.finite import finite_cell, infinite_predictions
    from ntk_bridge.finite.schedule import discretise
    from ntk_bridge.kernels import kernels_by_depth

    tasks = subspace_tasks(seed=1, **TASKS)
    arch = Architecture(param="mup")
    rows = finite_cell(tasks, 2, 64, SCHEDULE, ("anil",), seed=1, n_networks=2, architecture=arch, training=FAST)
    net = rows[(rows["method"] == "anil") & (rows["network"] == 0)]
    assert set(rows["status"]) == {"ok"} and np.all(np.isfinite(rows["dist_to_infinite_rel"]))
    kernels = next(kernels_by_depth(tasks.all_points(), depths=[2], architecture=arch))
    cfg = discretise(SCHEDULE, kernels.ntk, tasks, FAST)
    run = train_networks(tasks, 2, 64, cfg, ("anil",), seed=1, n_networks=2,
                         architecture=dataclasses.replace(arch, width=64), training=FAST)
    inf, _ = infinite_predictions(kernels, tasks, cfg, ("anil",), "centred", run.f0)
    np.testing.assert_allclose(net["dist_to_infinite_rel"], relative(run.finite["anil"][0], inf["anil"][0]), rtol=1e-8)
