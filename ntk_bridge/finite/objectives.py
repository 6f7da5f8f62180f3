"""What each method optimises and how it adapts at test time: the losses, the test-time
adaptation and one :class:`Trainer` per method (docs/theory.md §4, and §5 rung 3).

Methods (``N`` training tasks, support ``(X'_i, Y'_i)``, query ``(X_i, Y_i)``):

* MTL: shared body, one head per training task, every head initialised to the network's own
  readout ``w0``; loss ``sum_i 1/2 ||f(body, w_i; D_i) - Y_D_i||^2`` on ``D_i`` = support and query
  merged (``mtl_data='all'``) or the query only (``'query'``). At test the head is reset to ``w0``
  and fine-tuned on the test support (body frozen).
* ANIL: inner loop of ``inner_steps`` gradient steps of size ``lambda`` on the head only, on the
  support loss; outer loss: the query loss of the adapted network, summed over tasks; the inner loop
  is unrolled and differentiated (second order); the outer step updates every parameter. At test the
  trained head is fine-tuned on the test support.
* MAML: the same with the inner loop on every parameter (second order); FO-MAML treats the inner
  gradients as constants.
* the baseline: no training; the initial head fine-tuned on the test support.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ntk_bridge import methods as registry
from ntk_bridge.finite.networks import adapt_all, adapt_head, apply, flat, read, represent, sq, unflat
from ntk_bridge.settings import ALL
from ntk_bridge.tasks import TaskSet

__all__ = ["Data", "Steps", "Rates", "Trainer", "network_data", "MTL_TRAINER", "ANIL_TRAINER", "MAML_TRAINER",
           "FOMAML_TRAINER", "BASELINE_TRAINER", "TRAINERS"]


class Data(NamedTuple):
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


DATA_AXES = Data(None, 0, None, 0, None, 0, None, 0, None)


class Steps(NamedTuple):
    inner: int
    finetune: int
    outer: int


class Rates(NamedTuple):
    inner: jax.Array
    finetune: jax.Array
    outer: jax.Array
    divergence_factor: jax.Array



def network_data(tasks: TaskSet, mtl_data: str, shift: np.ndarray) -> Data:
    """Task arrays with labels shifted by ``shift [S, P, k]`` (``f0`` when centred, 0 when raw)."""
    lay = tasks.layout
    sl = lay.slices()
    S = shift.shape[0]
    k = tasks.n_outputs

    def labels(y, name, tasks_, points):
        return y[None] + shift[:, sl[name]].reshape(S, tasks_, points, k)

    ys = labels(tasks.train_support_y, "train_support", lay.n_train, lay.n_support)
    yq = labels(tasks.train_query_y, "train_query", lay.n_train, lay.n_query)
    yts = labels(tasks.test_support_y, "test_support", lay.n_test, lay.m_support)
    if mtl_data == ALL:
        xd = np.concatenate([tasks.train_support_x, tasks.train_query_x], axis=1)
        yd = np.concatenate([ys, yq], axis=2)
    else:
        xd, yd = tasks.train_query_x, yq
    return Data(tasks.train_support_x, ys, tasks.train_query_x, yq, xd, yd,
                 tasks.test_support_x, yts, tasks.test_query_x)




def _mtl_loss(net, linear, state, d: Data, anchor):
    body, heads = state
    z = unflat(represent(net, linear, body, flat(d.xd), anchor), d.xd.shape[:2])
    f = jax.vmap(lambda h, zi: read(net, linear, h, zi))(heads, z)
    return sq(f, d.yd)


def _anil_loss(net, linear, state, d: Data, rates: Rates, steps: Steps, anchor):
    body, head = state
    N, ns = d.xs.shape[:2]
    z = represent(net, linear, body, jnp.concatenate([flat(d.xs), flat(d.xq)]), anchor)
    zs = unflat(jax.tree_util.tree_map(lambda a: a[:N * ns], z), (N, ns))
    zq = unflat(jax.tree_util.tree_map(lambda a: a[N * ns:], z), d.xq.shape[:2])

    def task(zs_i, ys_i, zq_i, yq_i):
        h = adapt_head(net, linear, head, zs_i, ys_i, rates.inner, steps.inner)
        return sq(read(net, linear, h, zq_i), yq_i)

    return jnp.sum(jax.vmap(task)(zs, d.ys, zq, d.yq))


def _maml_value_and_grad(net, linear, state, d: Data, rates: Rates, steps: Steps, anchor,
                         first_order: bool):
    """Meta-loss and its gradient, accumulated task by task (memory of one task's inner loop)."""
    def task_loss(p, xs, ys, xq, yq):
        adapted = adapt_all(net, linear, p, xs, ys, rates.inner, steps.inner, anchor, first_order)
        return sq(apply(net, linear, adapted, xq, anchor), yq)

    value_and_grad = jax.value_and_grad(task_loss)

    def accumulate(acc, task):
        loss, grad = value_and_grad(state, *task)
        return (acc[0] + loss, jax.tree_util.tree_map(jnp.add, acc[1], grad)), None

    zero = (jnp.zeros((), d.ys.dtype), jax.tree_util.tree_map(jnp.zeros_like, state))
    (loss, grad), _ = jax.lax.scan(accumulate, zero, (d.xs, d.ys, d.xq, d.yq))
    return loss, grad



def _test_head(net, linear, body, head, d: Data, rates: Rates, steps: Steps, anchor):
    """Fine-tune ``head`` on every test support (body frozen); predict the test queries."""
    M, ms = d.xts.shape[:2]
    z = represent(net, linear, body, jnp.concatenate([flat(d.xts), flat(d.xtq)]), anchor)
    zs = unflat(jax.tree_util.tree_map(lambda a: a[:M * ms], z), (M, ms))
    zq = unflat(jax.tree_util.tree_map(lambda a: a[M * ms:], z), d.xtq.shape[:2])

    def task(zs_m, ys_m, zq_m):
        h = adapt_head(net, linear, head, zs_m, ys_m, rates.finetune, steps.finetune)
        return (read(net, linear, h, zq_m), sq(read(net, linear, head, zs_m), ys_m),
                sq(read(net, linear, h, zs_m), ys_m))

    return jax.vmap(task)(zs, d.yts, zq)


def _test_all(net, linear, params, d: Data, rates: Rates, steps: Steps, anchor):
    """Fine-tune every parameter on each test support (one task at a time); predict its queries."""
    def task(t):
        xs, ys, xq = t
        adapted = adapt_all(net, linear, params, xs, ys, rates.finetune, steps.finetune, anchor)
        return (apply(net, linear, adapted, xq, anchor), sq(apply(net, linear, params, xs, anchor), ys),
                sq(apply(net, linear, adapted, xs, anchor), ys))

    return jax.lax.map(task, (d.xts, d.yts, d.xtq))



@dataclasses.dataclass(frozen=True)
class Trainer:
    """How one method trains a network and adapts it at test time (:data:`TRAINERS` holds one per method).

    Attributes:
      name: the method's name.
      init: ``(body0, head0, data) -> state`` of the outer loop, or ``None`` for no training.
      value_and_grad: ``(net, linear, data, rates, steps, anchor) -> (state -> (loss, grad))``.
      test: ``(net, linear, state, head0, data, rates, steps, anchor) -> (predictions, support loss
        before, after)``: the test-time adaptation from the trained state.
      test_reset: the same from the trained body with the head reset to ``head0`` (the ``reset``
        test-head protocol, docs/theory.md §3.5; MTL and the baseline always start there).
    """

    name: str
    init: Callable | None
    value_and_grad: Callable | None
    test: Callable
    test_reset: Callable


def _pair(body0, head0, data):
    return (body0, head0)


def _heads_per_task(body0, head0, data):
    N = data.xd.shape[0]
    return (body0, jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (N, *a.shape)), head0))


def _maml_objective(first_order: bool):
    def build(net, linear, data, rates, steps, anchor):
        return functools.partial(_maml_value_and_grad, net, linear, d=data, rates=rates, steps=steps, anchor=anchor,
                                 first_order=first_order)
    return build


def _test_reset_head(net, linear, state, head0, data, rates, steps, anchor):
    return _test_head(net, linear, state[0], head0, data, rates, steps, anchor)


def _test_trained_head(net, linear, state, head0, data, rates, steps, anchor):
    return _test_head(net, linear, state[0], state[1], data, rates, steps, anchor)


def _test_every_parameter(net, linear, state, head0, data, rates, steps, anchor):
    return _test_all(net, linear, state, data, rates, steps, anchor)


def _test_every_parameter_from_head0(net, linear, state, head0, data, rates, steps, anchor):
    return _test_all(net, linear, (state[0], head0), data, rates, steps, anchor)


MTL_TRAINER = Trainer(
    registry.MTL.name, _heads_per_task,
    lambda net, linear, data, rates, steps, anchor: jax.value_and_grad(
        lambda s: _mtl_loss(net, linear, s, data, anchor)),
    _test_reset_head, _test_reset_head)
ANIL_TRAINER = Trainer(
    registry.ANIL.name, _pair,
    lambda net, linear, data, rates, steps, anchor: jax.value_and_grad(
        lambda s: _anil_loss(net, linear, s, data, rates, steps, anchor)),
    _test_trained_head, _test_reset_head)
MAML_TRAINER = Trainer(registry.MAML.name, _pair, _maml_objective(first_order=False), _test_every_parameter,
                       _test_every_parameter_from_head0)
FOMAML_TRAINER = Trainer(registry.FOMAML.name, _pair, _maml_objective(first_order=True), _test_every_parameter,
                         _test_every_parameter_from_head0)
BASELINE_TRAINER = Trainer(registry.BASELINE.name, None, None, _test_reset_head, _test_reset_head)

#: Each method's finite-width trainer, by method name (the methods whose registry entry has ``finite``).
TRAINERS: dict[str, Trainer] = {t.name: t for t in (MTL_TRAINER, ANIL_TRAINER, MAML_TRAINER, FOMAML_TRAINER,
                                                   BASELINE_TRAINER)}
