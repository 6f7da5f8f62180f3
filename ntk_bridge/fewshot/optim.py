"""Outer optimizers of the few-shot methods: RAdam or Adam, linear warm-up, learning-rate schedule.

``make_optimizer(config, max_steps)`` returns an optax transformation whose step is
``lr_t = lr * plateau_t * warmup(t) * decay(t)``:

* ``lr * plateau_t``: optax's ``inject_hyperparams`` learning rate, which the training loop lowers on
  validation plateaus (:mod:`~ntk_bridge.fewshot.train`);
* ``warmup(t) = min(1, (t + 1) / warmup_steps)`` (1 when ``warmup_steps = 0``);
* ``decay(t)``: 1 for ``schedule="plateau"``; ``(1 + cos(pi t / max_steps)) / 2`` for
  ``schedule="cosine"`` (then reduce-on-plateau is off and plateaus only end the run).

Adam and RAdam steps are linear in the learning rate, so scaling their output by
``warmup(t) decay(t)`` is the same as scaling ``lr``. RAdam (Liu et al. 2020) has a warm-up of its
own: its rectification term :func:`radam_rectification` shrinks early steps (about 0.2 of Adam's
at step 100 with ``b2 = 0.999``) and it takes plain momentum-SGD steps for the first few.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.methods import MethodConfig


def radam_rectification(step: int | np.ndarray, b2: float = 0.999, threshold: float = 5.0) -> np.ndarray:
    """RAdam's factor ``r_t`` on Adam's step at (1-based) ``step`` (0 where it takes SGD steps).

    ``rho_inf = 2 / (1 - b2) - 1``, ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``,
    ``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))`` when
    ``rho_t > threshold``.
    """
    t = np.asarray(step, np.float64)
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
    r = np.sqrt(np.clip((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho), 0, None))
    return np.where(rho > threshold, r, 0.0)


def step_factor(config: MethodConfig, max_steps: int | None):
    """The schedule ``t -> warmup(t) * decay(t)`` (an optax schedule, ``t`` from 0)."""
    if config.schedule == "cosine" and not max_steps:
        raise UserError(f"{config.method}: schedule=cosine needs a step cap (--max-steps)")

    def factor(count):
        t = jnp.asarray(count, jnp.float32)
        value = jnp.ones((), jnp.float32)
        if config.warmup_steps > 0:
            value = value * jnp.minimum(1.0, (t + 1.0) / config.warmup_steps)
        if config.schedule == "cosine":
            value = value * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t, max_steps) / max_steps))
        return value

    return factor


def make_optimizer(config: MethodConfig, max_steps: int | None = None) -> optax.GradientTransformation:
    """``config.optimizer`` with an injectable float32 learning rate (``opt_state[0].hyperparams``),
    then ``warmup * decay`` (see the module docstring)."""
    factory = {"radam": optax.radam, "adam": optax.adam}[config.optimizer]
    base = optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(learning_rate=config.lr)
    if config.warmup_steps == 0 and config.schedule == "plateau":
        return optax.chain(base)
    return optax.chain(base, optax.scale_by_schedule(step_factor(config, max_steps)))


def set_learning_rate(opt_state, lr: float) -> None:
    """Set the injected learning rate of a :func:`make_optimizer` state (in place)."""
    opt_state[0].hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
