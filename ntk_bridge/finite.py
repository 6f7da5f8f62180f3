r"""Finite-width networks trained by gradient descent, and their linearisations (THEORY.md §4, rung 3).

The networks are built from the same ``stax`` layers as the infinite-width kernels
(:meth:`ntk_bridge.kernels.Architecture.network`): one model, both worlds. Parameters are the stax
list ``[hidden_1, ..., hidden_L, readout]``; the *body* is the hidden layers, the *head* (readout) is
the last ``Dense``. Training is full-batch gradient descent on the sum of squares
``1/2 ||f(X) - Y||^2`` (THEORY.md §2), in discrete time; each method is one jit-compiled program
that trains several independently initialised networks (``jax.vmap`` over them, or ``lax.map`` on
CPU where that measured faster: :attr:`TrainingConfig.batching`).

Methods (``N`` training tasks, support ``(X'_i, Y'_i)``, query ``(X_i, Y_i)``):

* ``mtl`` -- shared body, one head per training task, every head initialised to the network's own
  readout ``w0``; loss ``sum_i 1/2 ||f(body, w_i; D_i) - Y_D_i||^2`` on ``D_i`` = support and query
  merged (``mtl_data='all'``) or the query only (``'query'``). At test the head is reset to ``w0``
  and fine-tuned on the test support (body frozen).
* ``anil`` -- inner loop: ``inner_steps`` gradient steps of size ``lambda`` on the head only, on the
  support loss; outer loss: the query loss of the adapted network, summed over tasks; the inner loop
  is unrolled and differentiated (second order); the outer step updates every parameter. At test the
  trained head is fine-tuned on the test support.
* ``maml`` -- the same with the inner loop on every parameter (second order). ``fomaml`` is
  first-order MAML (the inner gradients are treated as constants), a labelled variant; its
  closed form is :func:`fomaml_closed_form`.
* ``baseline`` -- no training: the initial head fine-tuned on the test support of the untrained body.

Every method has a *linearised* twin trained by exactly the same code on
``f_lin(theta, x) = f0(x) + J(x) (theta - theta0)`` (``neural_tangents.linearize``), so that the
width error (finite kernel vs infinite kernel) and the linearisation error (the kernel moving during
training) can be told apart. The linearised network is written as
``f_lin = readout(head, z0(x)) + J_body(x) (body - body0)`` with ``z0`` the initial features (one
``jax.jvp`` of the body): identical to ``neural_tangents.linearize(apply_fn, params0)`` because the
readout is linear in its parameters, and it lets the head-only loops run on cached features.

Discrete time and step sizes (THEORY.md §2, §5): a time ``t`` done in ``S`` steps uses the step
``t / S``. :func:`discretise` turns a :class:`~ntk_bridge.predictors.PredictorConfig` into the
discrete one the networks follow, by this rule (``Theta`` = the *infinite-width* NTK of the depth):

* inner / fine-tuning loops keep the user's times (``inner_time`` ``s = lambda tau`` and
  ``finetune_time`` are the theorem's quantities and mean the same at every depth); when their
  ``*_steps`` are unset, the number of steps is the smallest with
  ``lambda * lambda_max(Theta(X', X')) <= max_inner_step`` over every support set (``Theta``
  bounds both ANIL's ``K`` and MAML's ``Theta``).
* outer loop: ``outer_time = inf`` (the closed forms' default) becomes ``outer_steps`` steps of size
  ``eta = outer_step / lambda_max(Theta(train, train))`` over every training point (supports and
  queries). ``lambda_max`` grows like ``L + 1`` (and like the number of points), so the step shrinks
  with depth and every method's training kernel (``Theta_MTL``, ``Phi``, each below ``Theta`` in
  norm) is stable. A finite ``outer_time`` is kept, with ``outer_steps`` from the config or from
  the same bound.

The closed forms used for comparison are the *discrete* ones with exactly these times and steps
(:func:`discretise` returns a :class:`~ntk_bridge.predictors.PredictorConfig`; rows record it).

Centred and raw networks (``mode``): a *centred* network is ``f_c(theta) = f(theta) - f(theta0)``,
trained and evaluated as such (it has the gradients of ``f`` and starts at 0); at infinite width it
follows the mean predictor (``f0 = None``). A *raw* network follows the full-``f0`` closed form with
its own ``f0`` (evaluated at every stacked point, infinite-width kernels). Centring is implemented
exactly as training ``f`` on the labels ``Y + f0(X)`` and reporting ``f - f0`` at the test queries.

Divergence: an outer run whose loss becomes non-finite or exceeds ``divergence_factor`` times its
initial value stops updating; a test-time adaptation whose support loss ends above that factor times
its start (or whose outputs are not finite) fails likewise. Such a network's predictions are NaN and
its rows say ``status='diverged'``.

Example::

    from ntk_bridge.tasks import subspace_tasks
    from ntk_bridge.finite import finite_cell
    rows = finite_cell(subspace_tasks(n_train=4, n_test=3), depth=2, width=256, n_networks=2)
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from neural_tangents import stax

from ntk_bridge.results import fit_power_law, width_exponents  # noqa: F401  (re-exported)
from ntk_bridge.errors import require
from ntk_bridge.kernels import Architecture, DepthKernels, kernels_by_depth
from ntk_bridge.predictors import PredictorConfig, inner_operator, predict_from_kernels, status_of
from ntk_bridge.tasks import TaskSet

__all__ = [
    "FINITE_METHODS",
    "MODES",
    "COLUMNS",
    "TrainingConfig",
    "FiniteRun",
    "discretise",
    "init_networks",
    "train_networks",
    "infinite_predictions",
    "fomaml_closed_form",
    "finite_cell",
    "fit_power_law",
    "width_exponents",
]

FINITE_METHODS = ("mtl", "anil", "maml", "fomaml", "baseline")
MODES = ("centred", "raw")
COLUMNS = (
    "method", "depth", "width", "inner_time", "finetune_time", "outer_time", "inner_steps",
    "finetune_steps", "outer_steps", "mtl_data", "mode", "dtype", "seed", "n_networks", "network",
    "test_task", "pred_rms", "gap_to_mtl_rel", "gap_to_mtl_abs", "gap_to_baseline_rel", "test_mse",
    "dist_to_infinite_rel", "dist_to_linearized_rel", "linearized_to_infinite_rel", "infinite_gap_to_mtl_rel",
    "train_loss_rel", "status",
)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How finite networks are trained, beyond the times of a :class:`PredictorConfig`.

    Attributes:
      outer_steps: outer steps when the config leaves ``outer_steps`` unset.
      outer_step: ``eta * lambda_max(Theta(train, train))`` when ``outer_time = inf`` (stable below 2
        for the linearised network; 1 converges the bulk of the spectrum fastest).
      max_inner_step: the largest ``lambda * lambda_max(Theta(X', X'))`` of an inner or fine-tuning
        step when the number of steps is chosen automatically.
      divergence_factor: a loss above this factor times its initial value counts as diverged.
      dtype: ``'float64'`` (default, exact comparisons) or ``'float32'`` (matrix products measured
        about 6x faster on a 2-core CPU; the width errors measured here, above 1e-3, are far above
        float32 round-off; the closed forms stay float64).
      linearized: also train the linearised twin of every network (doubles the cost, roughly).
      batching: how the networks of one call share the compiled program: ``'vmap'`` (batched
        arrays), ``'map'`` (``lax.map``, one network after the other) or ``'auto'``: ``'map'`` on
        CPU, where XLA's batched matrix products measured 1-3x slower than a loop of plain ones
        (``benchmarks/bench_finite.py``), ``'vmap'`` on accelerators.
    """

    outer_steps: int = 300
    outer_step: float = 1.0
    max_inner_step: float = 0.5
    divergence_factor: float = 1e3
    dtype: str = "float64"
    linearized: bool = True
    batching: str = "auto"

    def __post_init__(self):
        require(int(self.outer_steps) >= 1, f"outer_steps must be >= 1, got {self.outer_steps!r}")
        require(math.isfinite(self.outer_step) and self.outer_step > 0,
                f"outer_step must be > 0, got {self.outer_step!r}")
        require(math.isfinite(self.max_inner_step) and self.max_inner_step > 0,
                f"max_inner_step must be > 0, got {self.max_inner_step!r}")
        require(self.divergence_factor > 1, f"divergence_factor must be > 1, got {self.divergence_factor!r}")
        require(self.dtype in ("float64", "float32"), f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        require(self.batching in ("auto", "vmap", "map"),
                f"batching must be 'auto', 'vmap' or 'map', got {self.batching!r}")

    def resolved_batching(self) -> str:
        if self.batching != "auto":
            return self.batching
        return "map" if jax.default_backend() == "cpu" else "vmap"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _top_eig(blocks: np.ndarray) -> float:
    """Largest eigenvalue over a batch of symmetric blocks ``[..., n, n]``."""
    blocks = np.asarray(blocks, dtype=np.float64)
    return float(np.max(np.linalg.eigvalsh(0.5 * (blocks + np.swapaxes(blocks, -1, -2)))))


def _own_blocks(G, sl: slice, tasks: int) -> np.ndarray:
    """Diagonal task blocks of ``G[sl, sl]``: ``[tasks, n, n]``."""
    B = np.asarray(G)[sl, sl]
    n = B.shape[0] // tasks
    B = B.reshape(tasks, n, tasks, n)
    return B[np.arange(tasks), :, np.arange(tasks), :]


def discretise(config: PredictorConfig, Theta, tasks: TaskSet,
               training: TrainingConfig = TrainingConfig()) -> PredictorConfig:
    """The discrete, finite-time :class:`PredictorConfig` that finite networks follow.

    Args:
      config: the user's config (times; steps may be unset; ``outer_time`` may be ``inf``).
      Theta: the infinite-width NTK ``[P, P]`` over ``tasks.all_points()`` at the network's depth.
      tasks: the task set.
      training: step-size rule (see the module docstring).

    Returns a config with every ``*_steps`` set and a finite ``outer_time``: use it for the closed
    forms too, so both sides take exactly the same steps.
    """
    require(config.inner_l2 is None, "finite networks train the inner loop by gradient steps; "
            "inner_l2 (an l2 inner problem at optimum) has no finite-network counterpart here")
    require(config.mtl_heads == "shared", "finite MTL networks initialise every head to the same w0 "
            "(mtl_heads='shared'); 'independent' is not supported here")
    L = tasks.layout
    sl = L.slices()
    Theta = np.asarray(Theta, dtype=np.float64)
    require(Theta.shape == (L.n_points, L.n_points),
            f"Theta must be [{L.n_points}, {L.n_points}] over tasks.all_points(), got {Theta.shape}")
    train = np.r_[sl["train_support"], sl["train_query"]]

    def steps_for(time, steps, top):
        if steps is not None:
            return int(steps)
        return max(1, int(math.ceil(time * top / training.max_inner_step - 1e-12)))

    inner_steps = steps_for(config.inner_time, config.inner_steps,
                            _top_eig(_own_blocks(Theta, sl["train_support"], L.n_train)))
    finetune_steps = steps_for(config.finetune_time, config.finetune_steps,
                               _top_eig(_own_blocks(Theta, sl["test_support"], L.n_test)))
    top_outer = _top_eig(Theta[np.ix_(train, train)])
    if math.isinf(config.outer_time):  # (PredictorConfig allows no outer_steps with an infinite time)
        outer_steps = int(training.outer_steps)
        outer_time = outer_steps * training.outer_step / top_outer
    else:
        outer_time = float(config.outer_time)
        outer_steps = int(config.outer_steps) if config.outer_steps is not None else \
            max(1, int(math.ceil(outer_time * top_outer / training.outer_step - 1e-12)))
    return dataclasses.replace(config, inner_steps=inner_steps, finetune_steps=finetune_steps,
                               outer_time=float(outer_time), outer_steps=outer_steps)


# ---------------------------------------------------------------------------------------------
# The network: one stax definition, split into body and readout
# ---------------------------------------------------------------------------------------------

class _Network:
    """``init_fn`` of the whole network and the ``apply_fn`` of its body and readout.

    Hashed by identity (a static argument of the jitted trainers); :func:`_network` caches one per
    (architecture, depth) so compiled trainers are reused across calls.
    """

    def __init__(self, architecture: Architecture, depth: int):
        self.init_fn, self.apply_fn, _ = architecture.network(depth)
        self.body_apply = stax.serial(*([architecture.hidden_block()] * depth))[1]
        self.readout_apply = architecture.readout()[1]
        self.depth = depth


@functools.lru_cache(maxsize=32)
def _network_cached(architecture: Architecture, depth: int, layer_ids: tuple) -> _Network:
    del layer_ids  # part of the key only: custom stax layers compare equal in Architecture
    return _Network(architecture, depth)


def _network(architecture: Architecture, depth: int) -> _Network:
    return _network_cached(architecture, int(depth), (id(architecture.hidden_layer), id(architecture.readout_layer)))


def _sub(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def _step(params, grads, lr):
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


def _sq(f, y):
    return 0.5 * jnp.sum((f - y) ** 2)


def _flat(x):
    return x.reshape(-1, x.shape[-1])


def _unflat(z, lead: tuple):
    return jax.tree_util.tree_map(lambda a: a.reshape(*lead, *a.shape[1:]), z)


def _represent(net: _Network, linear: bool, body, x, anchor):
    """The body's representation of inputs ``x [B, d]``.

    Nonlinear: the features ``z(x)``. Linearised: ``(z0(x), J_body(x) (body - body0))``, the initial
    features and the body's first-order change of the output.
    """
    if not linear:
        return net.body_apply(body, x)
    body0, head0 = anchor

    def features_and_output(b):
        z = net.body_apply(b, x)
        return z, net.readout_apply(head0, z)

    (z0, _), (_, df) = jax.jvp(features_and_output, (body0,), (_sub(body, body0),))
    return z0, df


def _read(net: _Network, linear: bool, head, z):
    """The output from a representation: ``readout(head, z)`` (+ the body's linear change)."""
    if not linear:
        return net.readout_apply(head, z)
    z0, df = z
    return net.readout_apply(head, z0) + df


def _apply(net, linear, params, x, anchor):
    body, head = params
    return _read(net, linear, head, _represent(net, linear, body, x, anchor))


def _adapt_head(net, linear, head, z, y, lr, steps: int):
    """``steps`` gradient steps of size ``lr`` on the head, loss ``1/2 ||f - y||^2`` (a loop that
    reverse-mode differentiation goes through step by step: second order)."""
    def one(_, h):
        return _step(h, jax.grad(lambda h_: _sq(_read(net, linear, h_, z), y))(h), lr)
    return jax.lax.fori_loop(0, steps, one, head)


def _adapt_all(net, linear, params, x, y, lr, steps: int, anchor, first_order: bool = False):
    """``steps`` gradient steps on every parameter (MAML's inner loop); first order: the inner
    gradients are constants for the outer derivative."""
    def one(_, p):
        g = jax.grad(lambda p_: _sq(_apply(net, linear, p_, x, anchor), y))(p)
        if first_order:
            g = jax.lax.stop_gradient(g)
        return _step(p, g, lr)
    return jax.lax.fori_loop(0, steps, one, params)


# ---------------------------------------------------------------------------------------------
# Losses, training loop, test-time adaptation (one network; batched over networks by the caller)
# ---------------------------------------------------------------------------------------------

class _Data(NamedTuple):
    """Inputs ``[tasks, points, d]`` and labels ``[tasks, points, k]`` (labels per network)."""

    xs: jax.Array
    ys: jax.Array
    xq: jax.Array
    yq: jax.Array
    xd: jax.Array  # MTL training inputs (support+query, or query)
    yd: jax.Array
    xts: jax.Array
    yts: jax.Array
    xtq: jax.Array


_DATA_AXES = _Data(None, 0, None, 0, None, 0, None, 0, None)


class _Steps(NamedTuple):
    inner: int
    finetune: int
    outer: int


class _Rates(NamedTuple):
    inner: jax.Array
    finetune: jax.Array
    outer: jax.Array
    divergence_factor: jax.Array


def _mtl_loss(net, linear, state, d: _Data, anchor):
    body, heads = state
    z = _unflat(_represent(net, linear, body, _flat(d.xd), anchor), d.xd.shape[:2])
    f = jax.vmap(lambda h, zi: _read(net, linear, h, zi))(heads, z)
    return _sq(f, d.yd)


def _anil_loss(net, linear, state, d: _Data, rates: _Rates, steps: _Steps, anchor):
    body, head = state
    N, ns = d.xs.shape[:2]
    z = _represent(net, linear, body, jnp.concatenate([_flat(d.xs), _flat(d.xq)]), anchor)
    zs = _unflat(jax.tree_util.tree_map(lambda a: a[:N * ns], z), (N, ns))
    zq = _unflat(jax.tree_util.tree_map(lambda a: a[N * ns:], z), d.xq.shape[:2])

    def task(zs_i, ys_i, zq_i, yq_i):
        h = _adapt_head(net, linear, head, zs_i, ys_i, rates.inner, steps.inner)
        return _sq(_read(net, linear, h, zq_i), yq_i)

    return jnp.sum(jax.vmap(task)(zs, d.ys, zq, d.yq))


def _maml_value_and_grad(net, linear, state, d: _Data, rates: _Rates, steps: _Steps, anchor,
                         first_order: bool):
    """Meta-loss and its gradient, accumulated task by task (memory of one task's inner loop)."""
    def task_loss(p, xs, ys, xq, yq):
        adapted = _adapt_all(net, linear, p, xs, ys, rates.inner, steps.inner, anchor, first_order)
        return _sq(_apply(net, linear, adapted, xq, anchor), yq)

    value_and_grad = jax.value_and_grad(task_loss)

    def accumulate(acc, task):
        loss, grad = value_and_grad(state, *task)
        return (acc[0] + loss, jax.tree_util.tree_map(jnp.add, acc[1], grad)), None

    zero = (jnp.zeros((), d.ys.dtype), jax.tree_util.tree_map(jnp.zeros_like, state))
    (loss, grad), _ = jax.lax.scan(accumulate, zero, (d.xs, d.ys, d.xq, d.yq))
    return loss, grad


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
        new = _step(state, grad, lr)
        state = jax.tree_util.tree_map(lambda old, upd: jnp.where(frozen, old, upd), state, new)
        return (state, ceiling, stopped), loss

    init = (state0, jnp.full((), jnp.inf, lr.dtype), jnp.zeros((), bool))
    (state, _, stopped), losses = jax.lax.scan(one, init, jnp.arange(steps + 1))
    return state, losses, stopped


def _test_head(net, linear, body, head, d: _Data, rates: _Rates, steps: _Steps, anchor):
    """Fine-tune ``head`` on every test support (body frozen); predict the test queries."""
    M, ms = d.xts.shape[:2]
    z = _represent(net, linear, body, jnp.concatenate([_flat(d.xts), _flat(d.xtq)]), anchor)
    zs = _unflat(jax.tree_util.tree_map(lambda a: a[:M * ms], z), (M, ms))
    zq = _unflat(jax.tree_util.tree_map(lambda a: a[M * ms:], z), d.xtq.shape[:2])

    def task(zs_m, ys_m, zq_m):
        h = _adapt_head(net, linear, head, zs_m, ys_m, rates.finetune, steps.finetune)
        return (_read(net, linear, h, zq_m), _sq(_read(net, linear, head, zs_m), ys_m),
                _sq(_read(net, linear, h, zs_m), ys_m))

    return jax.vmap(task)(zs, d.yts, zq)


def _test_all(net, linear, params, d: _Data, rates: _Rates, steps: _Steps, anchor):
    """Fine-tune every parameter on each test support (one task at a time); predict its queries."""
    def task(t):
        xs, ys, xq = t
        adapted = _adapt_all(net, linear, params, xs, ys, rates.finetune, steps.finetune, anchor)
        return (_apply(net, linear, adapted, xq, anchor), _sq(_apply(net, linear, params, xs, anchor), ys),
                _sq(_apply(net, linear, adapted, xs, anchor), ys))

    return jax.lax.map(task, (d.xts, d.yts, d.xtq))


class _Out(NamedTuple):
    predictions: jax.Array  # [M, m_q, k] test-query outputs (raw network outputs)
    history: jax.Array  # [outer_steps + 1] training loss after s steps
    loss_initial: jax.Array
    loss_final: jax.Array
    diverged: jax.Array  # bool


def _run_one(params0, data: _Data, rates: _Rates, net: _Network, linear: bool, method: str, steps: _Steps):
    body0, head0 = list(params0[:-1]), params0[-1]
    anchor = (body0, head0)
    factor = rates.divergence_factor
    nan = jnp.full((), jnp.nan, data.ys.dtype)
    if method == "baseline":
        preds, before, after = _test_head(net, linear, body0, head0, data, rates, steps, anchor)
        history, loss0, loss1, stopped = jnp.full((steps.outer + 1,), nan), nan, nan, jnp.zeros((), bool)
    else:
        if method == "mtl":
            N = data.xd.shape[0]
            state0 = (body0, jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (N, *a.shape)), head0))
            value_and_grad = jax.value_and_grad(lambda s: _mtl_loss(net, linear, s, data, anchor))
        elif method == "anil":
            state0 = (body0, head0)
            value_and_grad = jax.value_and_grad(lambda s: _anil_loss(net, linear, s, data, rates, steps, anchor))
        else:
            state0 = (body0, head0)
            value_and_grad = functools.partial(_maml_value_and_grad, net, linear, d=data, rates=rates,
                                               steps=steps, anchor=anchor, first_order=method == "fomaml")
        state, history, stopped = _gradient_descent(value_and_grad, state0, rates.outer, steps.outer, factor)
        loss0, loss1 = history[0], history[-1]
        body, head = state
        if method == "mtl":
            preds, before, after = _test_head(net, linear, body, head0, data, rates, steps, anchor)
        elif method == "anil":
            preds, before, after = _test_head(net, linear, body, head, data, rates, steps, anchor)
        else:
            preds, before, after = _test_all(net, linear, (body, head), data, rates, steps, anchor)
    test_bad = (~jnp.all(jnp.isfinite(preds)) | ~jnp.all(jnp.isfinite(after))
                | jnp.any(after > factor * jnp.maximum(before, jnp.finfo(before.dtype).tiny)))
    return _Out(preds, history, loss0, loss1, stopped | test_bad)


@functools.partial(jax.jit, static_argnames=("net", "linear", "method", "steps", "batching"))
def _run_batched(params0, data: _Data, rates: _Rates, net: _Network, linear: bool, method: str, steps: _Steps,
                 batching: str = "vmap"):
    """Every network of the batch in one compiled call: ``jax.vmap`` over networks, or ``lax.map``
    (one network after the other inside the same program)."""
    fn = functools.partial(_run_one, net=net, linear=linear, method=method, steps=steps)
    if batching == "vmap":
        return jax.vmap(fn, in_axes=(0, _DATA_AXES, None))(params0, data, rates)

    def one(args):
        params, ys, yq, yd, yts = args
        return fn(params, data._replace(ys=ys, yq=yq, yd=yd, yts=yts), rates)

    return jax.lax.map(one, (params0, data.ys, data.yq, data.yd, data.yts))


# ---------------------------------------------------------------------------------------------
# Public: train a batch of networks
# ---------------------------------------------------------------------------------------------

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


def _architecture(architecture: Architecture | None, width: int, n_outputs: int) -> Architecture:
    arch = architecture or Architecture()
    return dataclasses.replace(arch, width=int(width), n_outputs=int(n_outputs))


def _check_methods(methods: Sequence[str]) -> tuple:
    methods = tuple(dict.fromkeys(methods))
    bad = [m for m in methods if m not in FINITE_METHODS]
    require(not bad, f"unknown method(s) {', '.join(map(repr, bad))}: choose from {', '.join(FINITE_METHODS)}")
    require(len(methods) > 0, "methods must name at least one method")
    return methods


def _check_discrete(config: PredictorConfig):
    require(config.inner_steps is not None and config.finetune_steps is not None
            and config.outer_steps is not None and math.isfinite(config.outer_time),
            "finite networks need a discrete config with a finite outer_time: use discretise()")
    require(config.inner_l2 is None and config.mtl_heads == "shared",
            "finite networks support neither inner_l2 nor mtl_heads='independent'")


def _network_data(tasks: TaskSet, mtl_data: str, shift: np.ndarray) -> _Data:
    """Task arrays with labels shifted by ``shift [S, P, k]`` (``f0`` when centred, 0 when raw)."""
    L = tasks.layout
    sl = L.slices()
    S = shift.shape[0]
    k = tasks.n_outputs

    def labels(y, name, tasks_, points):
        return y[None] + shift[:, sl[name]].reshape(S, tasks_, points, k)

    ys = labels(tasks.train_support_y, "train_support", L.n_train, L.n_support)
    yq = labels(tasks.train_query_y, "train_query", L.n_train, L.n_query)
    yts = labels(tasks.test_support_y, "test_support", L.n_test, L.m_support)
    if mtl_data == "all":
        xd = np.concatenate([tasks.train_support_x, tasks.train_query_x], axis=1)
        yd = np.concatenate([ys, yq], axis=2)
    else:
        xd, yd = tasks.train_query_x, yq
    return _Data(tasks.train_support_x, ys, tasks.train_query_x, yq, xd, yd,
                 tasks.test_support_x, yts, tasks.test_query_x)


@functools.partial(jax.jit, static_argnames=("net", "dim"))
def _init_batch(keys, x, net: _Network, dim: int):
    params0 = jax.vmap(lambda key: net.init_fn(key, (-1, dim))[1])(keys)
    return params0, jax.vmap(net.apply_fn, in_axes=(0, None))(params0, x)


def init_networks(tasks: TaskSet, depth: int, width: int, seed: int = 0, n_networks: int = 1,
                  architecture: Architecture | None = None):
    """Initial parameters of ``n_networks`` networks (leading axis) and their outputs ``f0 [S, P, k]``
    on ``tasks.all_points()``. Network ``j`` uses the key ``fold_in(PRNGKey(seed), j)``: the same
    network whatever ``n_networks``."""
    arch = _architecture(architecture, width, tasks.n_outputs)
    net = _network(arch, depth)
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(int(seed)), j) for j in range(int(n_networks))])
    params0, f0 = _init_batch(keys, jnp.asarray(tasks.all_points()), net=net, dim=tasks.dim)
    return params0, np.asarray(f0, dtype=np.float64)


def train_networks(
    tasks: TaskSet,
    depth: int,
    width: int,
    config: PredictorConfig,
    methods: Sequence[str] = ("mtl", "anil", "maml"),
    seed: int = 0,
    n_networks: int = 1,
    mode: str = "centred",
    architecture: Architecture | None = None,
    training: TrainingConfig = TrainingConfig(),
) -> FiniteRun:
    """Train ``n_networks`` networks (and their linearisations) for each method.

    Args:
      tasks: the task set.
      depth, width: hidden layers ``L`` and width ``h``.
      config: a *discrete* config (every ``*_steps`` set, finite ``outer_time``), e.g. from
        :func:`discretise`. Step sizes are ``time / steps``.
      methods: any of :data:`FINITE_METHODS`.
      seed, n_networks: network ``j`` is initialised from ``fold_in(PRNGKey(seed), j)``.
      mode: ``'centred'`` or ``'raw'`` (see the module docstring).
      architecture: defaults to :class:`Architecture` ``()``; width and outputs are set here.
      training: :class:`TrainingConfig` (dtype, divergence, whether to train linearised twins).

    Each method is one jit-compiled call over all the networks (``training.batching``), compiled once
    per shapes, depth, width, method and steps.
    """
    methods = _check_methods(methods)
    _check_discrete(config)
    require(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    require(int(n_networks) >= 1, f"n_networks must be >= 1, got {n_networks!r}")
    require(int(width) >= 1 and int(depth) >= 1, f"depth and width must be >= 1, got {depth!r}, {width!r}")
    arch = _architecture(architecture, width, tasks.n_outputs)
    net = _network(arch, depth)
    params0, f0 = init_networks(tasks, depth, width, seed, n_networks, arch)
    dtype = jnp.dtype(training.dtype)
    batching = training.resolved_batching()
    shift = f0 if mode == "centred" else np.zeros_like(f0)
    data = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), _network_data(tasks, config.mtl_data, shift))
    params_run = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params0)
    steps = _Steps(int(config.inner_steps), int(config.finetune_steps), int(config.outer_steps))
    rates = _Rates(*(jnp.asarray(v, dtype) for v in (config.inner_time / steps.inner,
                                                      config.finetune_time / steps.finetune,
                                                      config.outer_time / steps.outer,
                                                      training.divergence_factor)))
    sl = tasks.layout.slices()
    L = tasks.layout
    f0_tq = f0[:, sl["test_query"]].reshape(f0.shape[0], L.n_test, L.m_query, -1)
    offset = f0_tq if mode == "centred" else 0.0

    def run(linear, method):
        # MTL and the baseline have no inner loop: one compiled program serves every inner time
        used = steps._replace(inner=0) if method in ("mtl", "baseline") else steps
        out = jax.device_get(_run_batched(params_run, data, rates, net=net, linear=linear, method=method,
                                          steps=used, batching=batching))
        diverged = np.asarray(out.diverged, bool)
        preds = np.asarray(out.predictions, np.float64) - offset
        preds[diverged] = np.nan
        return out, preds, diverged

    finite, linearized, diverged, lin_diverged, history, loss_rel = {}, {}, {}, {}, {}, {}
    for method in methods:
        out, finite[method], diverged[method] = run(False, method)
        history[method] = np.asarray(out.history, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.asarray(out.loss_final, np.float64) / np.asarray(out.loss_initial, np.float64)
        rel[diverged[method]] = np.nan
        loss_rel[method] = rel
        if training.linearized:
            if method == "baseline":  # head fine-tuning is linear in the head: the twin is identical
                linearized[method], lin_diverged[method] = finite[method].copy(), diverged[method].copy()
            else:
                _, linearized[method], lin_diverged[method] = run(True, method)
    return FiniteRun(config, mode, finite, linearized, diverged, lin_diverged, history, loss_rel, f0, params0)


# ---------------------------------------------------------------------------------------------
# Closed forms for the comparison
# ---------------------------------------------------------------------------------------------

def fomaml_closed_form(Theta, tasks: TaskSet, config: PredictorConfig, f0=None) -> np.ndarray:
    r"""Discrete-time closed form of first-order MAML for a linearised network (kernel ``Theta``).

    With ``A_i = Theta(X_i, X'_i) T_i`` (MAML's inner operator, discrete) and ``A_hat`` the test
    task's at the fine-tuning time, the first-order outer step ``theta -= eta sum_i J(X_i)^T r_i``
    (``r`` the adapted query residuals) moves the residuals by the non-symmetric kernel
    ``Phi_FO(i, j) = Theta(X_i, X_j) - A_i Theta(X'_i, X_j)``::

        r_0 = F0(𝒳) - 𝒴,   r_{s+1} = (I - eta Phi_FO) r_s
        F(X) = F0(X) - eta [Theta(X, 𝒳) - A_hat Theta(X', 𝒳)] sum_{s<S} r_s

    ``F0`` as in THEORY.md §3. Requires discrete ``inner/finetune/outer`` steps. Returns
    ``[M, m_q, k]``; ``f0 [P, k]`` or ``None`` (mean predictor).
    """
    _check_discrete(config)
    L = tasks.layout
    sl = L.slices()
    k = tasks.n_outputs
    Theta = np.asarray(Theta, dtype=np.float64)
    f0 = np.zeros((L.n_points, k)) if f0 is None else np.asarray(f0, np.float64).reshape(L.n_points, k)

    def blocks(rows, cols, r_tasks, c_tasks):
        B = Theta[sl[rows], sl[cols]]
        return B.reshape(r_tasks, B.shape[0] // r_tasks, c_tasks, B.shape[1] // c_tasks)

    def own(B4):
        idx = np.arange(B4.shape[0])
        return B4[idx, :, idx, :]

    N, M = L.n_train, L.n_test
    T = inner_operator(own(blocks("train_support", "train_support", N, N)), config.inner_time, config.inner_steps)
    A = own(blocks("train_query", "train_support", N, N)) @ T  # [N, n_q, n_s]
    T_hat = inner_operator(own(blocks("test_support", "test_support", M, M)), config.finetune_time,
                           config.finetune_steps)
    A_hat = own(blocks("test_query", "test_support", M, M)) @ T_hat  # [M, m_q, m_s]
    f0s = f0[sl["train_support"]].reshape(N, L.n_support, k)
    f0q = f0[sl["train_query"]].reshape(N, L.n_query, k)
    f0ts = f0[sl["test_support"]].reshape(M, L.m_support, k)
    f0tq = f0[sl["test_query"]].reshape(M, L.m_query, k)
    F0 = (f0q + A @ (tasks.train_support_y - f0s)).reshape(N * L.n_query, k)
    F0_test = f0tq + A_hat @ (tasks.test_support_y - f0ts)
    nq = N * L.n_query
    phi = Theta[sl["train_query"], sl["train_query"]] - np.einsum(
        "iab,ibc->iac", A, Theta[sl["train_support"], sl["train_query"]].reshape(N, L.n_support, nq)).reshape(nq, nq)
    cross = Theta[sl["test_query"], sl["train_query"]].reshape(M, L.m_query, nq) - np.einsum(
        "mab,mbc->mac", A_hat, Theta[sl["test_support"], sl["train_query"]].reshape(M, L.m_support, nq))
    eta = config.outer_time / config.outer_steps
    r = F0 - tasks.train_query_y.reshape(nq, k)
    total = np.zeros_like(r)
    for _ in range(int(config.outer_steps)):
        total += r
        r = r - eta * (phi @ r)
    return F0_test - eta * (cross @ total)


_CLOSED_FORM = ("mtl", "anil", "maml", "baseline")


def infinite_predictions(kernels: DepthKernels, tasks: TaskSet, config: PredictorConfig,
                         methods: Sequence[str], mode: str = "centred", f0: np.ndarray | None = None):
    """Infinite-width closed forms matching :func:`train_networks`' output.

    Centred: the mean predictor (``f0 = None``), one ``[M, m_q, k]`` per method, broadcast to the
    ``S`` networks. Raw: the full-``f0`` form with each network's own ``f0 [S, P, k]``.
    Returns ``({method: [S, M, m_q, k]}, {method: status})`` (status from
    :func:`~ntk_bridge.predictors.status_of`, the worst over networks).
    """
    methods = _check_methods(methods)
    require(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    require(f0 is not None, "f0 [S, P, k] is needed (its leading axis gives the number of networks)")
    S = f0.shape[0]
    kernel_methods = tuple(m for m in methods if m in _CLOSED_FORM)
    f0_list = [None] if mode == "centred" else [f0[j] for j in range(S)]
    values = {m: [] for m in methods}
    status = {m: "ok" for m in methods}
    for f0_j in f0_list:
        if kernel_methods:
            out = predict_from_kernels(kernels.ntk, kernels.readout, tasks, config, kernel_methods, f0_j)
            for m in kernel_methods:
                values[m].append(out[m].values)
                s = status_of(out[m].diagnostics)
                status[m] = s if s != "ok" else status[m]
        if "fomaml" in methods:
            v = fomaml_closed_form(kernels.ntk, tasks, config, f0_j)
            values["fomaml"].append(v)
            if not np.all(np.isfinite(v)):
                status["fomaml"] = "nan"
    out = {m: np.broadcast_to(np.stack(v), (S, *v[0].shape)) if len(v) == 1 else np.stack(v)
           for m, v in values.items()}
    return out, status


# ---------------------------------------------------------------------------------------------
# One grid cell -> tidy rows
# ---------------------------------------------------------------------------------------------

def _norm(a):
    """Frobenius norm per test task: ``[..., M, m_q, k] -> [..., M]``."""
    return np.sqrt(np.sum(np.square(a), axis=(-2, -1)))


def _rel(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return _norm(a - b) / _norm(b)


def _with_ensemble(x: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Append the ensemble mean over networks (NaN if any network failed): ``[S, ...] -> [S+1, ...]``."""
    mean = np.mean(x, axis=0, keepdims=True)
    if np.any(bad):
        mean = np.full_like(mean, np.nan)
    return np.concatenate([x, mean], axis=0)


#: The fields of a discrete config that each method's training depends on (see :func:`finite_cell`'s
#: ``cache``): MTL has no inner loop, the baseline no outer loop, ANIL and MAML ignore ``mtl_data``.
_DEPENDS_ON = {
    "baseline": ("finetune_time", "finetune_steps"),
    "mtl": ("finetune_time", "finetune_steps", "outer_time", "outer_steps", "mtl_data"),
}
_GBML_DEPENDS_ON = ("inner_time", "inner_steps", "finetune_time", "finetune_steps", "outer_time", "outer_steps")


def _train_shared(cache: dict | None, tasks: TaskSet, depth: int, width: int, cfg: PredictorConfig,
                  methods: tuple, seed: int, n_networks: int, mode: str, arch: Architecture,
                  training: TrainingConfig) -> FiniteRun:
    """:func:`train_networks`, reusing from ``cache`` every method already trained with the same
    networks and the config fields it depends on (:data:`_DEPENDS_ON`). The compiled programs and
    inputs are the same, so a reused run is bit-identical to a fresh one."""
    if cache is None:
        return train_networks(tasks, depth, width, cfg, methods, seed, n_networks, mode, arch, training)
    common = (tasks.fingerprint(), json.dumps(arch.describe(), sort_keys=True, default=str), int(depth),
              int(width), int(seed), int(n_networks), mode, training)

    def key(method):
        fields = _DEPENDS_ON.get(method, _GBML_DEPENDS_ON)
        return common + (method,) + tuple(getattr(cfg, f) for f in fields)

    missing = tuple(m for m in methods if key(m) not in cache)
    if missing:
        run = train_networks(tasks, depth, width, cfg, missing, seed, n_networks, mode, arch, training)
        for m in missing:
            cache[key(m)] = (run.f0, run.params0, run.finite[m], run.linearized.get(m), run.diverged[m],
                             run.linearized_diverged.get(m), run.history[m], run.train_loss_rel[m])
    parts = {m: cache[key(m)] for m in methods}
    f0, params0 = parts[methods[0]][:2]
    pick = lambda i: {m: p[i] for m, p in parts.items() if p[i] is not None}  # noqa: E731
    return FiniteRun(cfg, mode, pick(2), pick(3), pick(4), pick(5), pick(6), pick(7), f0, params0)


def finite_cell(
    tasks: TaskSet,
    depth: int,
    width: int,
    config: PredictorConfig = PredictorConfig(),
    methods: Sequence[str] = ("mtl", "anil", "maml"),
    seed: int = 0,
    n_networks: int = 1,
    mode: str = "centred",
    architecture: Architecture | None = None,
    training: TrainingConfig = TrainingConfig(),
    kernels: DepthKernels | None = None,
    cache: dict | None = None,
) -> pd.DataFrame:
    """Train finite networks for one (depth, width) cell and compare them with the closed forms.

    ``config`` is discretised by :func:`discretise` (the rows record the resulting times and steps,
    which the finite networks, their linearisations and the infinite-width closed forms all follow).
    MTL and the baseline are always trained (every gap is measured against them), but rows are
    written only for ``methods``. ``kernels`` (the infinite-width ``DepthKernels`` of this depth over
    ``tasks.all_points()``) may be passed to skip recomputing them. ``cache`` (a dict, initially
    empty, kept by the caller across the cells of one depth and width) lets cells share training
    runs: MTL does not depend on the inner time, the baseline on neither inner nor outer time, ANIL
    and MAML not on ``mtl_data`` -- a grid of 3 inner times x 2 MTL data trains 9 runs instead of 24,
    with bit-identical results.

    Returns one row per (method, network, test task), networks ``0..S-1`` and ``'ensemble'`` (the
    mean of the networks' predictions; compared with the mean of their closed forms, i.e. the
    closed form at the mean ``f0``). Columns (:data:`COLUMNS`):

    * ``method, depth, width, mode, dtype, seed, n_networks, network, test_task``;
    * ``inner_time, finetune_time, outer_time, inner_steps, finetune_steps, outer_steps, mtl_data``:
      the discrete config followed;
    * ``pred_rms``: RMS of the predictions on the test task's queries;
    * ``gap_to_mtl_rel = ||F - F_MTL||_F / ||F_MTL||_F`` (same network), ``gap_to_mtl_abs`` the
      same norm divided by ``sqrt(m_q k)`` instead, ``gap_to_baseline_rel`` against the baseline;
    * ``test_mse``: mean squared error on ``test_query_y`` (NaN without labels);
    * ``dist_to_infinite_rel = ||F - F_inf|| / ||F_inf||`` (same method, same steps);
      ``dist_to_linearized_rel`` against the trained linearised twin;
      ``linearized_to_infinite_rel`` the twin's distance to the closed form (the width error alone);
    * ``infinite_gap_to_mtl_rel``: ``gap_to_mtl_rel`` of the infinite-width closed forms under the
      same discrete schedule (the curve the finite-width gap approaches as the width grows);
    * ``train_loss_rel``: final / initial training loss (NaN for the baseline);
    * ``status``: ``'ok'``; ``'diverged'`` (numbers NaN); ``'linearized_diverged'``; or the
      closed form's status (``'ridge'``, ``'not_psd'``, ``'nan'``).
    """
    methods = _check_methods(methods)
    require(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    arch = _architecture(architecture, width, tasks.n_outputs)
    if kernels is None:
        kernels = next(kernels_by_depth(tasks.all_points(), depths=[int(depth)], architecture=arch))
    require(kernels.depth in (int(depth), -1), f"kernels are of depth {kernels.depth}, the cell has depth {depth}")
    cfg = discretise(config, kernels.ntk, tasks, training)
    needed = tuple(dict.fromkeys(("mtl", "baseline") + methods))
    run = _train_shared(cache, tasks, depth, width, cfg, needed, int(seed), int(n_networks), mode, arch, training)
    infinite, inf_status = infinite_predictions(kernels, tasks, cfg, needed, mode, run.f0)
    S, M = int(n_networks), tasks.layout.n_test
    bad_mtl, bad_base = run.diverged["mtl"], run.diverged["baseline"]
    F_mtl = _with_ensemble(run.finite["mtl"], bad_mtl)
    F_base = _with_ensemble(run.finite["baseline"], bad_base)
    y = tasks.test_query_y
    network = np.array(list(range(S)) + ["ensemble"], dtype=object)
    F_inf_mtl = np.concatenate([infinite["mtl"], np.mean(infinite["mtl"], axis=0, keepdims=True)])
    frames = []
    for method in methods:
        bad = run.diverged[method]
        F = _with_ensemble(run.finite[method], bad)
        F_inf = np.concatenate([infinite[method], np.mean(infinite[method], axis=0, keepdims=True)])
        if training.linearized:
            lin_bad = run.linearized_diverged[method]
            F_lin = _with_ensemble(run.linearized[method], lin_bad)
            dist_lin, lin_inf = _rel(F, F_lin), _rel(F_lin, F_inf)
            lin_bad_all = np.append(lin_bad, np.any(lin_bad))
        else:
            dist_lin = lin_inf = np.full((S + 1, M), np.nan)
            lin_bad_all = np.zeros(S + 1, bool)
        m_q, k = F.shape[-2:]
        test_mse = (np.mean(np.square(F - y[None]), axis=(-2, -1)) if y is not None
                    else np.full((S + 1, M), np.nan))
        bad_all = np.append(bad, np.any(bad))
        status = np.where(bad_all, "diverged", np.where(lin_bad_all, "linearized_diverged", inf_status[method]))
        loss_rel = np.append(run.train_loss_rel[method], np.nan)
        frame = pd.DataFrame({
            "network": np.repeat(network, M),
            "test_task": np.tile(np.arange(M), S + 1),
            "pred_rms": np.sqrt(np.mean(np.square(F), axis=(-2, -1))).ravel(),
            "gap_to_mtl_rel": _rel(F, F_mtl).ravel(),
            "gap_to_mtl_abs": (_norm(F - F_mtl) / math.sqrt(m_q * k)).ravel(),
            "gap_to_baseline_rel": _rel(F, F_base).ravel(),
            "test_mse": test_mse.ravel(),
            "dist_to_infinite_rel": _rel(F, F_inf).ravel(),
            "dist_to_linearized_rel": dist_lin.ravel(),
            "linearized_to_infinite_rel": lin_inf.ravel(),
            "infinite_gap_to_mtl_rel": _rel(F_inf, F_inf_mtl).ravel(),
            "train_loss_rel": np.repeat(loss_rel, M),
            "status": np.repeat(status, M),
        })
        frame.insert(0, "method", method)
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    constants = {"depth": int(depth), "width": int(width), "inner_time": cfg.inner_time,
                 "finetune_time": cfg.finetune_time, "outer_time": cfg.outer_time,
                 "inner_steps": cfg.inner_steps, "finetune_steps": cfg.finetune_steps,
                 "outer_steps": cfg.outer_steps, "mtl_data": cfg.mtl_data, "mode": mode,
                 "dtype": training.dtype, "seed": int(seed), "n_networks": S}
    for name, value in constants.items():
        out[name] = value
    return out[list(COLUMNS)]
