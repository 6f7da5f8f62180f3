"""Few-shot networks: float32 everywhere, zero heads, and kernels that match the finite networks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.models import FewShotNet, ModelConfig, l2_normalize


@pytest.mark.parametrize("config", [ModelConfig(width=8), ModelConfig("mlp", 16, 2, layer_norm=False)])
def test_float32_params_features_and_zero_head(config):
    net = FewShotNet(config, n_out=5, input_shape=(8, 8, 1))
    params = net.init(jax.random.PRNGKey(0))
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)}
    assert dtypes == {jnp.dtype("float32")}
    x = jnp.asarray(np.random.default_rng(0).random((3, 8, 8, 1)), jnp.float32)
    features = net.features(params["body"], x)
    assert features.dtype == jnp.float32 and features.shape == (3, net.feature_dim)
    logits = net.apply(params, x)
    assert logits.dtype == jnp.float32 and logits.shape == (3, 5)
    np.testing.assert_array_equal(logits, 0.0)  # zero head: f0 = 0
    assert np.any(net.apply(net.init(jax.random.PRNGKey(0), zero_head=False), x) != 0)


def test_conv4_feature_dim_for_28x28():
    # Four SAME 2x2 average pools: 28 -> 14 -> 7 -> 4 -> 2, so 2 * 2 * width features.
    assert FewShotNet(ModelConfig(width=32), 5, (28, 28, 1)).feature_dim == 128


@pytest.mark.parametrize("layer_norm", [False, True])
def test_conv4_has_a_symmetric_psd_ntk(layer_norm):
    net = FewShotNet(ModelConfig(width=8, depth=2, layer_norm=layer_norm), 3, (4, 4, 1))
    x = np.random.default_rng(1).random((3, 4, 4, 1))
    ntk = np.asarray(net.kernel_fn(x, None, "ntk"))
    assert ntk.shape == (3, 3)
    np.testing.assert_allclose(ntk, ntk.T, rtol=1e-10)
    assert np.linalg.eigvalsh(ntk).min() > -1e-8 * np.abs(ntk).max()


def test_mlp_nngp_matches_monte_carlo_of_the_finite_network():
    """E[f(x) f(x')] over random initialisation (random heads) equals the analytic NNGP of the same
    triple. Width 256 and 200 networks x 10 outputs: the sample covariance has relative error about
    sqrt(2 / 2000) = 3%, the finite width adds O(1/256); compared in relative Frobenius norm with
    tolerance 0.1."""
    net = FewShotNet(ModelConfig("mlp", 256, 2, layer_norm=False), n_out=10, input_shape=(6,))
    x = np.random.default_rng(2).normal(size=(4, 6))
    x *= np.sqrt(6) / np.linalg.norm(x, axis=1, keepdims=True)
    outputs = jax.vmap(lambda k: net.apply(net.init(k, zero_head=False), jnp.asarray(x, jnp.float32)))(
        jax.random.split(jax.random.PRNGKey(3), 200))  # [200, 4, 10]
    empirical = np.einsum("sio,sjo->ij", np.asarray(outputs, np.float64), np.asarray(outputs, np.float64)) / (200 * 10)
    analytic = np.asarray(net.kernel_fn(x, None, "nngp"))
    assert np.linalg.norm(empirical - analytic) / np.linalg.norm(analytic) < 0.1


def test_l2_normalize():
    f = jnp.asarray([[3.0, 4.0], [0.0, 0.0]], jnp.float32)
    np.testing.assert_allclose(l2_normalize(f), [[0.6, 0.8], [0.0, 0.0]])


def test_bad_config():
    with pytest.raises(UserError, match="unknown architecture"):
        ModelConfig(arch="resnet")
    with pytest.raises(UserError):
        ModelConfig(width=0)
