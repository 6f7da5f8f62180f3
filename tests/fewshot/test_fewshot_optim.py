"""Optimizers, warm-up and schedules against direct computations of the same steps."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.methods import default_method_config
from ntk_bridge.fewshot.optim import make_optimizer, radam_rectification, set_learning_rate, step_factor


def _steps(optimizer, grads, params=None):
    """Updates of ``optimizer`` for a sequence of gradients ``[T, n]``."""
    params = jnp.zeros(grads.shape[1], jnp.float32) if params is None else params
    state, out = optimizer.init(params), []
    update_fn = jax.jit(optimizer.update)
    for g in grads:
        update, state = update_fn(jnp.asarray(g, jnp.float32), state, params)
        out.append(np.asarray(update))
    return np.array(out), state


def test_radam_step_is_adam_step_times_the_rectification_term():
    """For a constant gradient Adam's bias-corrected step is -lr sign(g) (up to eps); optax's RAdam step
    divided by it equals the closed-form rectification r_t (0 while it takes momentum steps)."""
    grads = np.tile([[0.3, -2.0]], (300, 1))
    adam, _ = _steps(optax.adam(1e-3), grads)
    radam, _ = _steps(optax.radam(1e-3), grads)
    t = np.arange(1, 301)
    r = radam_rectification(t)
    rectified = r > 0
    np.testing.assert_allclose(radam[rectified] / adam[rectified], np.repeat(r[rectified, None], 2, 1), rtol=2e-4)
    assert radam_rectification(100) == pytest.approx(0.2, abs=0.03)


def test_warmup_cosine_and_plateau_learning_rate_multiply():
    config = default_method_config("mtl", optimizer="adam", warmup_steps=10, schedule="cosine", lr=1e-2)
    factor = step_factor(config, max_steps=40)
    t = np.arange(40)
    expected = np.minimum(1, (t + 1) / 10) * 0.5 * (1 + np.cos(np.pi * t / 40))
    # computed in float32 (values <= 1, eps 1.2e-7): an absolute bound of a few ulps
    np.testing.assert_allclose([float(factor(s)) for s in t], expected, rtol=0, atol=1e-6)
    grads = np.tile([[1.0]], (40, 1))
    optimizer = make_optimizer(config, max_steps=40)
    updates, state = _steps(optimizer, grads[:20])
    np.testing.assert_allclose(updates[:, 0], -1e-2 * expected[:20], rtol=1e-4)  # constant gradient: |adam| = lr
    set_learning_rate(state, 5e-3)
    update, _ = optimizer.update(jnp.ones(1, jnp.float32), state, jnp.zeros(1, jnp.float32))
    assert float(update[0]) == pytest.approx(-5e-3 * expected[20], rel=1e-4)
    with pytest.raises(UserError, match="step cap"):
        step_factor(config, max_steps=None)
