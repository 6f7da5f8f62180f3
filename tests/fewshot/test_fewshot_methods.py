"""MTL / ANIL / MAML objectives against independent re-computations (closed-form gradients, finite
differences of the second-order meta-gradient), and the method registry."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np

from ntk_bridge.fewshot import METHOD_NAMES, methods
from ntk_bridge.fewshot.methods import ANIL, MAML, METHODS, default_method_config
from ntk_bridge.fewshot.models import FewShotNet, ModelConfig, to_float32


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _episode(seed=0, n_support=6, n_query=9, ways=3, dim=5):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n_support, dim)), np.arange(n_support) % ways,
            rng.normal(size=(n_query, dim)), np.arange(n_query) % ways)


def _mlp(ways=3, dim=5, width=7):
    return FewShotNet(ModelConfig("mlp", width, 1), ways, (dim,))


def test_anil_inner_step_equals_closed_form_softmax_gradient():
    """One step on the head: W <- W - lr * F^T (softmax(F W + b) - onehot(Y)) / n, b likewise."""
    features, labels, _, _ = _episode()
    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(5, 3)), rng.normal(size=(1, 3))
    net = _mlp()
    adapted_w, adapted_b = methods.anil_adapt(net, (jnp.asarray(w), jnp.asarray(b)), jnp.asarray(features), jnp.asarray(labels), 0.3, 1)
    residual = (_softmax(features @ w + b) - np.eye(3)[labels]) / len(labels)
    np.testing.assert_allclose(adapted_w, w - 0.3 * features.T @ residual, rtol=1e-10)
    np.testing.assert_allclose(adapted_b, b - 0.3 * residual.sum(0, keepdims=True), rtol=1e-10)


def test_zero_inner_steps_reduce_meta_losses_to_plain_cross_entropy():
    net = _mlp()
    params = net.init(jax.random.PRNGKey(0), zero_head=False)
    sx, sy, qx, qy = (jnp.asarray(a) for a in _episode())
    qx, sx = qx.astype(jnp.float32), sx.astype(jnp.float32)
    plain = methods.cross_entropy(net.apply(params, qx), qy)
    for method in (ANIL, MAML):
        config = default_method_config(method.name, inner_lr=0.5, inner_steps=0)
        loss, _ = method.episode_loss(net, params, config, 3, sx, sy, qx, qy)
        np.testing.assert_allclose(loss, plain, rtol=1e-6)


def test_mtl_loss_uses_the_rows_of_the_episode_classes():
    net = FewShotNet(ModelConfig("mlp", 7, 1), 10, (5,))
    params = net.init(jax.random.PRNGKey(1), zero_head=False)
    x, y, _, _ = _episode(n_support=6)
    x = jnp.asarray(x, jnp.float32)
    classes = jnp.asarray([7, 2, 4])
    loss, acc = methods.mtl_loss(net, params, x, jnp.asarray(y), classes)
    features = np.asarray(net.features(params["body"], x), np.float64)
    features = np.sqrt(features.shape[1]) * features / np.linalg.norm(features, axis=1, keepdims=True)
    w, b = (np.asarray(a, np.float64) for a in params["head"])
    logits = features @ w[:, [7, 2, 4]] + b[:, [7, 2, 4]]
    expected = -np.mean(np.log(_softmax(logits)[np.arange(6), y]))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(acc, np.mean(logits.argmax(1) == y))


def test_maml_meta_gradient_is_second_order_and_matches_finite_differences():
    """d/dt L(theta + t v) at t = 0 by central differences (float64) equals <grad, v>; the first-order
    approximation (inner gradient held constant) does not."""
    net = _mlp()
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), net.init(jax.random.PRNGKey(2), zero_head=False))
    sx, sy, qx, qy = (jnp.asarray(a) for a in _episode(3))

    config = default_method_config("maml", inner_lr=0.5, inner_steps=2)

    @jax.jit
    def loss(p):
        return MAML.episode_loss(net, p, config, 3, sx, sy, qx, qy)[0]

    @jax.jit
    def first_order_loss(p):
        adapted = p
        for _ in range(2):
            g = jax.lax.stop_gradient(jax.grad(lambda q: methods.cross_entropy(net.apply(q, sx), sy))(adapted))
            adapted = jax.tree_util.tree_map(lambda a, d: a - 0.5 * d, adapted, g)
        return methods.cross_entropy(net.apply(adapted, qx), qy)

    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
    direction = jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, a.shape, jnp.float64) for k, a in zip(keys, leaves)])

    def along(t):
        return loss(jax.tree_util.tree_map(lambda a, v: a + t * v, params, direction))

    eps = 1e-5
    numeric = (along(eps) - along(-eps)) / (2 * eps)
    dot = lambda g: sum(jnp.vdot(a, v) for a, v in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(direction)))
    np.testing.assert_allclose(dot(jax.grad(loss)(params)), numeric, rtol=1e-6)
    assert abs(dot(jax.grad(first_order_loss)(params)) - numeric) > 1e-3 * abs(numeric)


def test_over_episodes_loop_equals_vmap():
    net = _mlp()
    params = to_float32(net.init(jax.random.PRNGKey(5), zero_head=False))
    batch = [np.stack(a) for a in zip(*[_episode(s) for s in range(3)])]
    sx, sy, qx, qy = (jnp.asarray(a, jnp.float32) if a.dtype.kind == "f" else jnp.asarray(a) for a in batch)

    config = default_method_config("maml")

    def one(a, b, c, d):
        return MAML.episode_loss(net, params, config, 3, a, b, c, d)

    assert MAML.loop_episodes and not ANIL.loop_episodes
    looped = MAML.over_episodes(one, sx, sy, qx, qy)
    vmapped = ANIL.over_episodes(one, sx, sy, qx, qy)  # the vmap path
    for a, b in zip(looped, vmapped):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    assert looped[0].shape == (3,)


def test_registry_objects_are_importable_by_path_and_distinct():
    assert tuple(METHODS) == METHOD_NAMES
    for name, method in METHODS.items():
        module, _, attr = method.import_path.partition(":")
        assert getattr(importlib.import_module(module), attr) is method and method.name == name
        config = default_method_config(name)
        assert config.spec is method
    assert len({m.label for m in METHODS.values()}) == len({m.color for m in METHODS.values()}) == len(METHODS)
    assert [m.name for m in METHODS.values() if m.closed_form_head] == ["r2d2"]
    assert [m.name for m in METHODS.values() if m.head == "classes"] == ["mtl"]
