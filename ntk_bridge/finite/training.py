"""Training finite networks: full-batch gradient descent of every network of a cell in one compiled
program per method (docs/theory.md §4, and §5 rung 3).

Training is full-batch gradient descent on the sum of squares ``1/2 ||f(X) - Y||^2`` in discrete
time; each method (:mod:`ntk_bridge.finite.objectives`) is one jit-compiled program that trains
several independently initialised networks (``jax.vmap`` over them, or ``lax.map`` on CPU where that
measured faster: :attr:`~ntk_bridge.finite.schedule.TrainingConfig.batching`).

Divergence: an outer run whose loss becomes non-finite or exceeds ``divergence_factor`` times its
initial value stops updating; a test-time adaptation whose support loss ends above that factor times
its start (or whose outputs are not finite) fails likewise. Such a network's predictions are NaN.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntk_bridge import methods as registry
from ntk_bridge.errors import require
from ntk_bridge.finite import movement as _movement
from ntk_bridge.finite.movement import kernel_movement
from ntk_bridge.finite.networks import Network, architecture_for, init_networks, network_for, step
from ntk_bridge.finite.objectives import DATA_AXES, TRAINERS, Data, Rates, Steps, Trainer, network_data
from ntk_bridge.finite.schedule import MODES, TrainingConfig, check_discrete
from ntk_bridge.kernels import Architecture
from ntk_bridge.predictors import PredictorConfig
from ntk_bridge.tasks import TaskSet
from ntk_bridge.settings import LEARNED, RESET

__all__ = ["FINITE_METHODS", "FiniteRun", "train_networks", "check_methods", "release_programs"]

#: Methods with a finite-width trainer.
FINITE_METHODS = registry.names(finite=True)


def _gradient_descent(value_and_grad: Callable, state0, lr, steps: int, factor):
    """``steps`` full-batch gradient steps; stops updating once the loss is non-finite or above
    ``factor`` x the initial loss.

    One scan of ``steps + 1`` evaluations (the last one only measures the final loss), so the loss
    graph is compiled once. Returns ``(state, losses [steps + 1], diverged)``: ``losses[s]`` is the
    loss after ``s`` steps.
    """
    def one(carry, s):
        state, ceiling, stopped = carry
        loss, grad = value_and_grad(state)
        ceiling = jnp.where(s == 0, factor * jnp.maximum(loss, jnp.finfo(loss.dtype).tiny), ceiling)
        stopped = stopped | ~jnp.isfinite(loss) | (loss > ceiling)
        frozen = stopped | (s == steps)
        new = step(state, grad, lr)
        state = jax.tree_util.tree_map(lambda old, upd: jnp.where(frozen, old, upd), state, new)
        return (state, ceiling, stopped), loss

    init = (state0, jnp.full((), jnp.inf, lr.dtype), jnp.zeros((), bool))
    (state, _, stopped), losses = jax.lax.scan(one, init, jnp.arange(steps + 1))
    return state, losses, stopped



class _Out(NamedTuple):
    predictions: jax.Array  # [M, m_q, k] test-query outputs (raw network outputs)
    history: jax.Array  # [outer_steps + 1] training loss after s steps
    loss_initial: jax.Array
    loss_final: jax.Array
    diverged: jax.Array  # bool
    final: tuple  # (body, head) of the trained network that test-time adaptation starts from



def _run_one(params0, data: Data, rates: Rates, net: Network, linear: bool, trainer: Trainer, steps: Steps,
             test_head: str):
    body0, head0 = list(params0[:-1]), params0[-1]
    anchor = (body0, head0)
    factor = rates.divergence_factor
    nan = jnp.full((), jnp.nan, data.ys.dtype)
    if trainer.init is None:
        state = (body0, head0)
        history, loss0, loss1, stopped = jnp.full((steps.outer + 1,), nan), nan, nan, jnp.zeros((), bool)
    else:
        value_and_grad = trainer.value_and_grad(net, linear, data, rates, steps, anchor)
        state, history, stopped = _gradient_descent(value_and_grad, trainer.init(body0, head0, data), rates.outer,
                                                    steps.outer, factor)
        loss0, loss1 = history[0], history[-1]
    test = trainer.test_reset if test_head == RESET else trainer.test
    preds, before, after = test(net, linear, state, head0, data, rates, steps, anchor)
    final = (state[0], head0 if test is trainer.test_reset else state[1])
    test_bad = (~jnp.all(jnp.isfinite(preds)) | ~jnp.all(jnp.isfinite(after))
                | jnp.any(after > factor * jnp.maximum(before, jnp.finfo(before.dtype).tiny)))
    return _Out(preds, history, loss0, loss1, stopped | test_bad, final)


@functools.partial(jax.jit, static_argnames=("net", "linear", "trainer", "steps", "batching", "test_head"))
def _run_batched(params0, data: Data, rates: Rates, net: Network, linear: bool, trainer: Trainer, steps: Steps,
                 batching: str = "vmap", test_head: str = LEARNED):
    """Every network of the batch in one compiled call: ``jax.vmap`` over networks, or ``lax.map``
    (one network after the other inside the same program)."""
    fn = functools.partial(_run_one, net=net, linear=linear, trainer=trainer, steps=steps, test_head=test_head)
    if batching == "vmap":
        return jax.vmap(fn, in_axes=(0, DATA_AXES, None))(params0, data, rates)

    def one(args):
        params, ys, yq, yd, yts = args
        return fn(params, data._replace(ys=ys, yq=yq, yd=yd, yts=yts), rates)

    return jax.lax.map(one, (params0, data.ys, data.yq, data.yd, data.yts))




class FiniteRun(NamedTuple):
    """Networks of one cell, trained (arrays over ``S`` networks; predictions on the test queries).

    Attributes:
      config: the discrete config every network followed.
      mode: ``'centred'`` (predictions are ``f - f0``) or ``'raw'``.
      finite: ``{method: [S, M, m_q, k]}`` trained networks' predictions, NaN where diverged.
      linearized: same for the linearised twins (``{}`` when not trained).
      diverged, linearized_diverged: ``{method: [S] bool}``.
      history: ``{method: [S, outer_steps + 1]}`` training loss after ``s`` outer steps (nonlinear).
      train_loss_rel: ``{method: [S]}`` final / initial training loss (nonlinear; NaN for baseline).
      f0: ``[S, P, k]`` each network's outputs at initialisation on ``tasks.all_points()``.
      params0: the networks' initial parameters (stax pytree, leading axis ``S``).
      kernel_movement: ``{method: [S]}`` ``||Theta_T - Theta_0||_F / ||Theta_0||_F`` of each trained
        network's empirical NTK on the test tasks' points (:mod:`ntk_bridge.finite.movement`; the
        network test-time adaptation starts from; NaN where diverged).
    """

    config: PredictorConfig
    mode: str
    finite: dict
    linearized: dict
    diverged: dict
    linearized_diverged: dict
    history: dict
    train_loss_rel: dict
    f0: np.ndarray
    params0: object
    kernel_movement: dict | None = None




def check_methods(names: Sequence[str]) -> tuple:
    """``names`` without repeats; ``UserError`` unless each method has a finite-width trainer."""
    names = tuple(dict.fromkeys(names))
    require(len(names) > 0, "methods must name at least one method")
    bad = [m for m in names if m not in FINITE_METHODS]
    require(not bad, f"unknown method(s) {', '.join(map(repr, bad))}: choose from {', '.join(FINITE_METHODS)}")
    return names




def train_networks(
    tasks: TaskSet,
    depth: int,
    width: int,
    config: PredictorConfig,
    methods: Sequence[str] = registry.DEFAULT_SWEEP,
    seed: int = 0,
    n_networks: int = 1,
    mode: str = "centred",
    architecture: Architecture | None = None,
    training: TrainingConfig = TrainingConfig(),
    network=None,
) -> FiniteRun:
    """Train ``n_networks`` networks (and their linearisations) for each method.

    Args:
      tasks: the task set.
      depth, width: hidden layers ``L`` and width ``h``.
      config: a *discrete* config (every ``*_steps`` set, finite ``outer_time``), e.g. from
        :func:`discretise`. Step sizes are ``time / steps``.
      methods: names of methods with a finite-width trainer (:data:`FINITE_METHODS`).
      seed, n_networks: network ``j`` is initialised from ``fold_in(PRNGKey(seed), j)``.
      mode: ``'centred'`` or ``'raw'`` (see the module docstring).
      architecture: defaults to :class:`Architecture` ``()``; width and outputs are set here.
      training: :class:`TrainingConfig` (dtype, divergence, whether to train linearised twins).
      network: an object with :class:`~ntk_bridge.finite.networks.Network`'s attributes that replaces
        the architecture's (the muP limit's width-``(d + k)`` network, :mod:`ntk_bridge.finite.mup`).

    Each method is one jit-compiled call over all the networks (``training.batching``), compiled once
    per shapes, depth, width, method and steps.
    """
    methods = check_methods(methods)
    check_discrete(config)
    require(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    require(int(n_networks) >= 1, f"n_networks must be >= 1, got {n_networks!r}")
    require(int(width) >= 1 and int(depth) >= 1, f"depth and width must be >= 1, got {depth!r}, {width!r}")
    arch = architecture_for(architecture, width, tasks.n_outputs)
    net = network_for(arch, depth) if network is None else network
    params0, f0 = init_networks(tasks, depth, width, seed, n_networks, arch, net)
    dtype = jnp.dtype(training.dtype)
    batching = training.resolved_batching()
    shift = f0 if mode == "centred" else np.zeros_like(f0)
    data = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), network_data(tasks, config.mtl_data, shift))
    params_run = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params0)
    steps = Steps(int(config.inner_steps), int(config.finetune_steps), int(config.outer_steps))
    rates = Rates(*(jnp.asarray(v, dtype) for v in (config.inner_time / steps.inner,
                                                      config.finetune_time / steps.finetune,
                                                      config.outer_time / steps.outer,
                                                      training.divergence_factor)))
    sl = tasks.layout.slices()
    lay = tasks.layout
    f0_tq = f0[:, sl["test_query"]].reshape(f0.shape[0], lay.n_test, lay.m_query, -1)
    offset = f0_tq if mode == "centred" else 0.0

    def run(linear, method):
        # a method without an inner loop (MTL, the baseline): one program serves every inner time
        used = steps if registry.get(method).depends("inner_time") else steps._replace(inner=0)
        head = config.test_head if registry.get(method).depends("test_head") else LEARNED
        out = jax.device_get(_run_batched(params_run, data, rates, net=net, linear=linear,
                                          trainer=TRAINERS[method], steps=used,
                                          batching=batching, test_head=head))
        diverged = np.asarray(out.diverged, bool)
        preds = np.asarray(out.predictions, np.float64) - offset
        preds[diverged] = np.nan
        return out, preds, diverged

    finite, linearized, diverged, lin_diverged, history, loss_rel, movement = {}, {}, {}, {}, {}, {}, {}
    test_points = np.concatenate([tasks.test_support_x.reshape(-1, tasks.dim), tasks.test_query_x.reshape(-1, tasks.dim)])
    for method in methods:
        out, finite[method], diverged[method] = run(False, method)
        body_t, head_t = out.final
        if TRAINERS[method].init is None:  # untrained (the baseline): the kernel is the initial one
            movement[method] = np.where(diverged[method], np.nan, 0.0)
        else:
            movement[method] = kernel_movement(net, params_run, list(body_t) + [head_t],
                                               jnp.asarray(test_points, dtype), diverged[method])
        history[method] = np.asarray(out.history, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.asarray(out.loss_final, np.float64) / np.asarray(out.loss_initial, np.float64)
        rel[diverged[method]] = np.nan
        loss_rel[method] = rel
        if training.linearized:
            if TRAINERS[method].init is None:
                # no training, and head fine-tuning is linear in the head: the twin is identical
                linearized[method], lin_diverged[method] = finite[method].copy(), diverged[method].copy()
            else:
                _, linearized[method], lin_diverged[method] = run(True, method)
    return FiniteRun(config, mode, finite, linearized, diverged, lin_diverged, history, loss_rel, f0, params0,
                     movement)


def release_programs() -> None:
    """Drop the compiled programs of finite networks once a width and depth is done: the kernel-movement
    functions of :mod:`ntk_bridge.finite.movement` and every JAX program of the process (``jax.clear_caches()``;
    a program needed again is recompiled, or reloaded from the persistent compilation cache, the same program).
    Kept, each width and depth's trainers held about 0.1 GB (depths 1-4, widths 256 and 1024, 3 methods)."""
    _movement._ntk_fn.cache_clear()
    jax.clear_caches()
