"""ntk_bridge.operators, rung 1 of docs/theory.md §5: the inner-loop operator against ``expm`` and
matrix powers, its limits, and the meta-kernel against a per-task-pair loop."""
import math

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from ntk_bridge.kernels import kernels_all_depths
from ntk_bridge.operators import (Dynamics, adapt_train, inner_operator, meta_kernel, meta_kernel_blocks,
                                  spectral_function)
from ntk_bridge.families import subspace_tasks

import reference as ref


def random_psd(rng, n, cond=10.0):
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    m = np.geomspace(1.0, 1.0 / cond, n)
    return (q * m) @ q.T


def rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b)))


# -- inner-loop operator ------------------------------------------------------------------------

@given(n=st.integers(1, 6), s=st.floats(1e-3, 20.0), seed=st.integers(0, 10_000))
def test_operator_flow_matches_expm(n, s, seed):
    G = random_psd(np.random.default_rng(seed), n, cond=50.0)
    expected = np.linalg.solve(G, np.eye(n) - scipy.linalg.expm(-s * G))
    assert rel(inner_operator(G, s), expected) < 1e-10


@given(n=st.integers(1, 5), steps=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_operator_steps_matches_matrix_power(n, steps, seed):
    G = random_psd(np.random.default_rng(seed), n)
    time = 0.7 * steps  # step 0.7 < 2 / max eig = 2: stable
    expected = np.linalg.solve(G, np.eye(n) - np.linalg.matrix_power(np.eye(n) - 0.7 * G, steps))
    assert rel(inner_operator(G, time, steps=steps), expected) < 1e-10


def test_operator_unstable_steps_matches_matrix_power(rng):
    # step size above 2 / max eig: the discrete operator oscillates and grows; still exact.
    G = random_psd(rng, 4)
    expected = np.linalg.solve(G, np.eye(4) - np.linalg.matrix_power(np.eye(4) - 2.5 * G, 7))
    assert rel(inner_operator(G, 2.5 * 7, steps=7), expected) < 1e-10


def test_operator_limits(rng):
    G = random_psd(rng, 5)
    s = 1e-9
    assert rel(inner_operator(G, s), s * np.eye(5)) < 1e-8  # s -> 0: T -> s I
    assert np.allclose(inner_operator(G, 0.0), 0.0)
    assert rel(inner_operator(G, 2000.0), np.linalg.inv(G)) < 1e-10  # s -> inf: T -> G^-1 (min eig 0.1)
    assert rel(inner_operator(G, math.inf), np.linalg.inv(G)) < 1e-10
    assert rel(inner_operator(G, 1.0, l2=0.3), np.linalg.inv(G + 0.3 * np.eye(5))) < 1e-12
    assert rel(inner_operator(G, 3.0, steps=1), 3.0 * np.eye(5)) < 1e-12  # one step: T = lambda I


def test_operator_batched_equals_loop(rng):
    Gs = np.stack([random_psd(rng, 4) for _ in range(6)])
    batched = inner_operator(Gs, 0.8)
    for b in range(6):
        assert rel(batched[b], inner_operator(Gs[b], 0.8)) < 1e-13


def test_operator_singular_kernel_is_stable():
    # rank one kernel (as K at large depth): finite time needs no ridge and stays exact.
    v = np.ones((4, 1))
    G = v @ v.T
    T = inner_operator(G, 0.5)
    expected = 0.5 * (np.eye(4) - G / 4) + (1 - np.exp(-0.5 * 4)) / 4 * G / 4
    assert rel(T, expected) < 1e-12


def test_infinite_time_ridge_is_reported():
    m = np.array([[1.0, 1e-14, -1e-15]])
    phi, ridge = spectral_function(m, Dynamics(math.inf), rcond=1e-10)
    assert float(ridge[0]) > 0
    assert np.all(np.isfinite(np.asarray(phi)))
    phi, ridge = spectral_function(np.array([[1.0, 0.5]]), Dynamics(math.inf))
    assert float(ridge[0]) == 0.0


@pytest.fixture(scope="module")
def small():
    tasks = subspace_tasks(seed=3, n_train=4, n_test=3, n_support=3, n_query=4, dim=6, n_outputs=2)
    depths, Th, K = kernels_all_depths(tasks.all_points(), max_depth=3)
    return tasks, Th[1], K[1]  # depth 2


def test_meta_kernel_symmetric_psd_and_matches_loop(small):
    tasks, Th, K = small
    L = tasks.layout
    n = L.n_train * L.n_query
    for G in (Th, K):
        for inner in (Dynamics(0.3), Dynamics(1.0, steps=4), Dynamics(0.0, l2=0.5)):
            # the blocks before meta_kernel symmetrises them: symmetric by the algebra, not by fiat
            A, _ = adapt_train(G, L, inner, None, 1e-10)
            raw = np.asarray(meta_kernel_blocks(Th, A, L)).reshape(n, n)
            assert rel(raw, raw.T) < 1e-12
            Phi = meta_kernel(Th, G, tasks.layout, inner)
            assert np.linalg.eigvalsh(Phi).min() > -1e-12 * np.abs(Phi).max()
            _, Phi_ref = ref.gbml(Th, G, tasks, (inner.time, inner.steps, inner.l2),
                                  (1.0, None), (math.inf, None))
            assert rel(Phi, Phi_ref) < 1e-12
