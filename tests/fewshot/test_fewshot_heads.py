"""R2D2's ridge head and ProtoNet's prototypes against independent computations: an iterative solve
of the ridge problem, finite differences of the outer loss through the solve, a naive loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.sparse.linalg import cg

from ntk_bridge.fewshot import methods
from ntk_bridge.fewshot.methods import PROTONET, R2D2, default_method_config
from ntk_bridge.fewshot.models import FewShotNet, ModelConfig


@pytest.mark.parametrize("n,d", [(6, 9), (15, 4)])  # fewer and more support points than features
def test_ridge_closed_form_equals_conjugate_gradient_on_the_primal_normal_equations(n, d, rng):
    """W = A^T (A A^T + lam I)^-1 Y (dual, what R2D2 computes) equals the minimiser of
    ||A W - Y||^2 + lam ||W||^2 found by CG on (A^T A + lam I) W = A^T Y, column by column."""
    ways, lam = 3, 0.7
    features, labels = rng.normal(size=(n, d)), np.arange(n) % ways
    closed = np.asarray(methods.ridge_head(jnp.asarray(features), jnp.asarray(labels), ways, lam))
    a = np.hstack([features, np.ones((n, 1))])
    y = np.eye(ways)[labels]
    normal = a.T @ a + lam * np.eye(d + 1)
    for k in range(ways):
        w, info = cg(normal, a.T @ y[:, k], rtol=1e-13, atol=0, maxiter=1000)
        assert info == 0
        np.testing.assert_allclose(closed[:, k], w, rtol=1e-8, atol=1e-10)
    # and the solution is a stationary point of the ridge objective
    np.testing.assert_allclose(a.T @ (a @ closed - y) + lam * closed, 0, atol=1e-10)


def _float64(tree):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _episode(rng, ways=3, shots=2, queries=3, dim=5):
    sx = rng.normal(size=(ways * shots, dim))
    qx = rng.normal(size=(ways * queries, dim))
    return (jnp.asarray(sx), jnp.asarray(np.repeat(np.arange(ways), shots)), jnp.asarray(qx),
            jnp.asarray(np.repeat(np.arange(ways), queries)))


def _directional_fd(loss, params, direction, eps=1e-5):
    along = lambda t: loss(jax.tree_util.tree_map(lambda a, v: a + t * v, params, direction))  # noqa: E731
    return (along(eps) - along(-eps)) / (2 * eps)


def _dot(g, v):
    return sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(v)))


def test_r2d2_outer_gradient_goes_through_the_solve_and_matches_finite_differences(rng):
    """d/dt L(theta + t v) by central differences (float64) equals <grad L, v> for the body, the ridge
    penalty and the scale; holding the solved head constant (stop_gradient) gives another number."""
    net = FewShotNet(ModelConfig("mlp", 7, 1), 1, (5,))
    config = default_method_config("r2d2")
    params = _float64(R2D2.init_params(net, jax.random.PRNGKey(0)))
    sx, sy, qx, qy = _episode(rng)

    @jax.jit
    def loss(p):
        return R2D2.episode_loss(net, p, config, 3, sx, sy, qx, qy)[0]

    @jax.jit
    def frozen_head_loss(p):
        lam = jnp.exp(p["ridge"]["log_lambda"])
        w = jax.lax.stop_gradient(methods.ridge_head(net.features(p["body"], sx), sy, 3, lam))
        logits = jnp.exp(p["ridge"]["log_scale"]) * (methods.append_ones(net.features(p["body"], qx)) @ w)
        return methods.cross_entropy(logits, qy)

    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    direction = jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, a.shape, jnp.float64) for k, a in zip(keys, leaves)])
    grad = jax.jit(jax.grad(loss))(params)
    np.testing.assert_allclose(_dot(grad, direction), _directional_fd(loss, params, direction), rtol=1e-6)
    # the penalty alone: d L / d log_lambda
    only_lambda = jax.tree_util.tree_map(jnp.zeros_like, params)
    only_lambda["ridge"]["log_lambda"] = jnp.ones((), jnp.float64)
    grad_lambda = grad["ridge"]["log_lambda"]
    np.testing.assert_allclose(grad_lambda, _directional_fd(loss, params, only_lambda), rtol=1e-6)
    assert abs(grad_lambda) > 1e-6
    assert abs(_dot(jax.jit(jax.grad(frozen_head_loss))(params), direction) - _dot(grad, direction)) > 1e-4


def test_prototype_logits_equal_a_naive_loop(rng):
    ways, shots, queries, d = 4, 3, 5, 6
    support, query = rng.normal(size=(ways * shots, d)), rng.normal(size=(ways * queries, d))
    labels = rng.permutation(np.repeat(np.arange(ways), shots))
    logits = np.asarray(methods.prototype_logits(jnp.asarray(support), jnp.asarray(labels), jnp.asarray(query), ways))
    expected = np.empty((ways * queries, ways))
    for k in range(ways):
        members = [support[i] for i in range(len(labels)) if labels[i] == k]
        centre = sum(members) / len(members)
        for q in range(len(query)):
            expected[q, k] = -sum((query[q][j] - centre[j]) ** 2 for j in range(d))
    np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-10)


def test_protonet_query_logits_use_the_body_features(rng):
    net = FewShotNet(ModelConfig("mlp", 7, 1), 1, (5,))
    params = _float64(PROTONET.init_params(net, jax.random.PRNGKey(2)))
    assert set(params) == {"body"}
    sx, sy, qx, _ = _episode(rng)
    logits = PROTONET.query_logits(net, params, default_method_config("protonet"), sx, sy, qx, 3)
    fs, fq = np.asarray(net.features(params["body"], sx)), np.asarray(net.features(params["body"], qx))
    centres = np.stack([fs[np.asarray(sy) == k].mean(0) for k in range(3)])
    np.testing.assert_allclose(logits, -((fq[:, None, :] - centres[None]) ** 2).sum(-1), rtol=1e-10, atol=1e-10)
