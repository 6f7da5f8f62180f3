"""Kernels: the one-pass depths equal separate kernel_fn calls, exact diagonal identities, deep-limit
facts, and analytic vs Monte Carlo kernels of finite networks (neural-tangents' own criterion)."""
import json
import math

import jax
import neural_tangents as nt
import numpy as np
import pytest
from neural_tangents import stax

from ntk_bridge.kernels import (Architecture, empirical_kernels, kernels_all_depths, kernels_by_depth,
                                 kernels_of_network)
from ntk_bridge.families import _sphere


@pytest.fixture
def x(rng):
    return _sphere(rng, (12,), 7)


def test_one_pass_equals_kernel_fn_per_depth(x):
    arch = Architecture()
    depths, Th, K = kernels_all_depths(x, max_depth=6, architecture=arch)
    assert list(depths) == [1, 2, 3, 4, 5, 6]
    for i, L in enumerate(depths):
        direct = kernels_of_network(arch.network(L)[2], x)
        np.testing.assert_array_equal(Th[i], direct.ntk)
        np.testing.assert_array_equal(K[i], direct.readout)


def test_cross_kernels_and_selected_depths(x, rng):
    x2 = _sphere(rng, (5,), 7)
    ks = list(kernels_by_depth(x, x2, depths=[3, 1]))
    assert [k.depth for k in ks] == [1, 3]
    assert ks[1].ntk.shape == (12, 5)
    direct = kernels_of_network(Architecture().network(3)[2], x, x2)
    np.testing.assert_array_equal(ks[1].ntk, direct.ntk)


def test_diagonal_identities(x):
    depths, Th, K = kernels_all_depths(x, max_depth=40)
    for i, L in enumerate(depths):
        np.testing.assert_allclose(np.diag(Th[i]), L + 1, rtol=1e-12)  # Theta(x,x) = L+1
        np.testing.assert_allclose(np.diag(K[i]), 1.0, rtol=1e-12)  # K(x,x) = 1
        np.testing.assert_allclose(np.diag(K[i]) / np.diag(Th[i]), 1.0 / (L + 1), rtol=1e-12)
    assert Th.dtype == np.float64 and K.dtype == np.float64


def test_deep_limits(x):
    # normalised NTK -> 1/4 off the diagonal (slowly); readout correlation -> 1 with 1 - rho ~ c / L^2.
    ks = {k.depth: k for k in kernels_by_depth(x, depths=[4, 32, 256])}
    off = ~np.eye(len(x), dtype=bool)
    norm = {L: (k.ntk / np.diag(k.ntk)[0])[off] for L, k in ks.items()}
    dist = {L: np.max(np.abs(v - 0.25)) for L, v in norm.items()}
    assert dist[4] > dist[32] > dist[256]
    assert dist[256] < 0.1
    one_minus_rho = {L: np.max(1 - k.readout[off]) for L, k in ks.items()}
    c = one_minus_rho[256] * 256**2
    assert 0.3 * 9 * math.pi**2 / 2 < c < 3 * 9 * math.pi**2 / 2
    assert one_minus_rho[4] > one_minus_rho[32] > one_minus_rho[256]
    cond = {L: np.linalg.cond(k.readout[:4, :4]) for L, k in ks.items()}
    assert cond[256] > cond[32] > cond[4]


def test_body_kernel_is_the_gradient_gram_of_the_hidden_layers(key):
    # at a finite network: Theta - K (from empirical_kernels) equals the Gram matrix of the Jacobian
    # with respect to the hidden layers alone, computed here with jax.jacobian


    x = np.asarray(jax.random.normal(key, (5, 3)))
    init_fn, apply_fn, _ = Architecture(width=16).network(2)
    _, params = init_fn(jax.random.fold_in(key, 1), x.shape)
    k = empirical_kernels(apply_fn, params, x)
    jac = jax.jacobian(lambda body: apply_fn(list(body) + [params[-1]], x)[:, 0])(tuple(params[:-1]))
    J = np.concatenate([np.asarray(leaf).reshape(x.shape[0], -1) for leaf in jax.tree_util.tree_leaves(jac)], axis=1)
    np.testing.assert_allclose(k.body, J @ J.T, rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # a statistical check (minutes of samples): pytest -m slow, in .ci/run
@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("get, width, n_samples", [("nngp", 1024, 400), ("ntk", 512, 32)])
def test_analytic_vs_monte_carlo(depth, get, width, n_samples, rng):
    # neural-tangents' own criterion (tests/stax_test.py): finite width, a few hundred samples,
    # relative Frobenius and mean-absolute errors within 5%. 32 readout units (averaged by
    # trace_axes) act as 32x the samples; the infinite-width kernels do not depend on k.
    # The NNGP needs only forward passes, so it gets more samples than the NTK (Jacobians).
    x = _sphere(rng, (6,), 7)
    init_fn, apply_fn, kernel_fn = Architecture(width=width, n_outputs=32).network(depth)
    mc = nt.monte_carlo_kernel_fn(init_fn, apply_fn, jax.random.PRNGKey(depth), n_samples=n_samples,
                                  implementation=2, trace_axes=(-1,))
    emp, exact = np.asarray(mc(x, None, get)), np.asarray(kernel_fn(x, None, get))
    assert np.linalg.norm(emp - exact) / np.linalg.norm(exact) < 0.05
    assert np.mean(np.abs(emp - exact)) / np.mean(np.abs(exact)) < 0.05


def test_custom_architecture_and_errors(x):
    hidden = stax.serial(stax.Dense(64, W_std=1.5, b_std=0.1), stax.Erf())
    arch = Architecture.custom(hidden, stax.Dense(1, W_std=1.0, b_std=0.2))
    ks = list(kernels_by_depth(x, max_depth=2, architecture=arch))
    direct = kernels_of_network(arch.network(2)[2], x)
    np.testing.assert_array_equal(ks[1].ntk, direct.ntk)
    with pytest.raises(ValueError, match="max_depth"):
        list(kernels_by_depth(x, max_depth=0))
    with pytest.raises(ValueError, match="x1"):
        list(kernels_by_depth(np.full((3, 2), np.nan), max_depth=1))
    with pytest.raises(ValueError, match="width"):
        Architecture(width=0)


def test_empirical_kernels_are_jacobian_gram_matrices(x):
    """Theta = sum over parameters of J J^T and K = the readout block, from jax.jacobian directly."""
    init_fn, apply_fn, _ = Architecture(width=24).network(2)
    _, params = init_fn(jax.random.PRNGKey(5), (-1, x.shape[1]))
    xs = x[:6]
    out = empirical_kernels(apply_fn, params, xs)
    jac = jax.jacobian(lambda p: apply_fn(p, xs)[:, 0])(params)
    flat = [np.asarray(j).reshape(xs.shape[0], -1) for j in jax.tree_util.tree_leaves(jac)]
    theta = sum(j @ j.T for j in flat)
    head = [np.asarray(j).reshape(xs.shape[0], -1) for j in jax.tree_util.tree_leaves(
        jax.jacobian(lambda h: apply_fn(list(params[:-1]) + [h], xs)[:, 0])(params[-1]))]
    K = sum(j @ j.T for j in head)
    assert out.depth == -1 and out.ntk.dtype == np.float64
    np.testing.assert_allclose(out.ntk, theta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out.readout, K, rtol=1e-10, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(out.ntk - out.readout) > -1e-10)  # the body's kernel is PSD


def test_kernels_assembled_in_memory_mapped_files_equal_the_in_memory_pass(tmp_path, rng):
    """``allocate``: the blocked pass writes into the caller's arrays (here ``.npy`` memory maps, as
    for kernels larger than memory); the bits equal the in-memory pass's."""
    from numpy.lib.format import open_memmap

    from ntk_bridge.kernels import kernels_by_depth
    from ntk_bridge.tasks import on_sphere

    x = on_sphere(rng.standard_normal((7, 5)))
    made = []

    def allocate(name, shape):
        made.append(name)
        return open_memmap(str(tmp_path / f"{name}.npy"), "w+", np.float64, shape)

    bound = 8 * 12 * 4  # blocks of 2 x 2 point pairs
    on_disk = list(kernels_by_depth(x, depths=[1, 3], allocate=allocate, memory_bytes=bound))
    in_memory = list(kernels_by_depth(x, depths=[1, 3], memory_bytes=bound))
    assert made == ["ntk", "readout"]
    for a, b in zip(on_disk, in_memory):
        assert a.depth == b.depth and isinstance(a.ntk, np.memmap)
        np.testing.assert_array_equal(a.ntk, b.ntk)
        np.testing.assert_array_equal(a.readout, b.readout)
    # allocate alone also runs the pass in blocks, of the default bound (one block at this size): the
    # same bits as the one-pass kernels
    default = list(kernels_by_depth(x, depths=[3], allocate=lambda name, shape: np.empty(shape)))[0]
    np.testing.assert_array_equal(default.ntk, list(kernels_by_depth(x, depths=[3], memory_bytes=None))[0].ntk)
    np.testing.assert_array_equal(np.load(tmp_path / "ntk.npy")[1], on_disk[1].ntk)
    with pytest.raises(ValueError, match="float64"):
        list(kernels_by_depth(x, depths=[1], allocate=lambda name, shape: np.empty(shape, np.float32)))


def test_different_custom_layers_get_different_kernels_from_a_cache(x):
    """A cache keyed by ``describe()`` (as the finite comparison's and the sweep's cell keys are)
    returns each custom architecture's own kernels, and a rebuilt identical one hits the cache."""
    def arch(w_std, width=64):
        return Architecture.custom(stax.serial(stax.Dense(width, W_std=w_std, b_std=0.1), stax.Erf()),
                                   stax.Dense(1, W_std=1.0, b_std=0.2))

    cache, misses = {}, []

    def cached_ntk(a):
        key = json.dumps(a.describe(), sort_keys=True, default=str)
        if key not in cache:
            misses.append(key)
            cache[key] = list(kernels_by_depth(x, max_depth=1, architecture=a))[0].ntk
        return cache[key]

    first, second = cached_ntk(arch(1.5)), cached_ntk(arch(0.7))
    np.testing.assert_array_equal(second, kernels_of_network(arch(0.7).network(1)[2], x).ntk)
    assert np.max(np.abs(first - second)) > 1e-3
    np.testing.assert_array_equal(cached_ntk(arch(1.5)), first)
    assert len(misses) == 2
    # a different hidden width gives the same infinite-width kernel but other finite networks
    assert arch(1.5, width=32).describe() != arch(1.5).describe()
    assert Architecture().describe()["custom_layers"] is False
