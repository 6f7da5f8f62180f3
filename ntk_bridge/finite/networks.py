"""Finite networks from the same ``stax`` definition as the kernels, split into body and readout,
and their linearisations (docs/theory.md §4, and §5 rung 3).

Parameters are the stax list ``[hidden_1, ..., hidden_L, readout]``; the *body* is the hidden
layers, the *head* (readout) is the last ``Dense``. The linearised network is written as
``f_lin = readout(head, z0(x)) + J_body(x) (body - body0)`` with ``z0`` the initial features (one
``jax.jvp`` of the body): identical to ``neural_tangents.linearize(apply_fn, params0)`` because the
readout is linear in its parameters, and it lets the head-only loops run on cached features.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ntk_bridge.kernels import Architecture
from ntk_bridge.tasks import TaskSet

__all__ = ["Network", "network_for", "architecture_for", "init_networks", "represent", "read", "apply",
           "adapt_head", "adapt_all", "sq", "step", "flat", "unflat"]


class Network:
    """``init_fn`` of the whole network and the ``apply_fn`` of its body and readout.

    Hashed by identity (a static argument of the jitted trainers); :func:`_network` caches one per
    (architecture, depth) so compiled trainers are reused across calls.
    """

    def __init__(self, architecture: Architecture, depth: int):
        self.init_fn, apply_fn, _ = architecture.network(depth)
        body_apply = architecture.body(depth)[1]
        if architecture.convolutional:  # flat task inputs [B, H W C] -> images [B, H, W, C]
            self.apply_fn = lambda params, x, **kw: apply_fn(params, architecture.as_input(x), **kw)
            self.body_apply = lambda params, x, **kw: body_apply(params, architecture.as_input(x), **kw)
        else:
            self.apply_fn, self.body_apply = apply_fn, body_apply
        self.readout_apply = architecture.readout()[1]
        self.input_shape = architecture.input_shape
        self.depth = depth


@functools.lru_cache(maxsize=32)
def _network_cached(architecture: Architecture, depth: int, layer_ids: tuple) -> Network:
    del layer_ids  # part of the key only: custom stax layers compare equal in Architecture
    return Network(architecture, depth)


def network_for(architecture: Architecture, depth: int) -> Network:
    """The (cached) :class:`Network` of ``depth`` hidden layers (a muP one,
    :class:`ntk_bridge.finite.mup.MupNetwork`, for ``param='mup'``)."""
    if architecture.param == "mup":
        from ntk_bridge.finite.mup import mup_network

        return mup_network(int(architecture.width), int(architecture.n_outputs), int(depth), architecture.activation,
                           float(architecture.hidden_w_std), float(architecture.readout_w_std))
    return _network_cached(architecture, int(depth), (id(architecture.hidden_layer), id(architecture.readout_layer)))


def sub(a, b):
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def step(params, grads, lr):
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


def sq(f, y):
    return 0.5 * jnp.sum((f - y) ** 2)


def flat(x):
    return x.reshape(-1, x.shape[-1])


def unflat(z, lead: tuple):
    return jax.tree_util.tree_map(lambda a: a.reshape(*lead, *a.shape[1:]), z)


def represent(net: Network, linear: bool, body, x, anchor):
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

    (z0, _), (_, df) = jax.jvp(features_and_output, (body0,), (sub(body, body0),))
    return z0, df


def read(net: Network, linear: bool, head, z):
    """The output from a representation: ``readout(head, z)`` (+ the body's linear change)."""
    if not linear:
        return net.readout_apply(head, z)
    z0, df = z
    return net.readout_apply(head, z0) + df


def apply(net, linear, params, x, anchor):
    body, head = params
    return read(net, linear, head, represent(net, linear, body, x, anchor))


def adapt_head(net, linear, head, z, y, lr, steps: int):
    """``steps`` gradient steps of size ``lr`` on the head, loss ``1/2 ||f - y||^2`` (a loop that
    reverse-mode differentiation goes through step by step: second order)."""
    def one(_, h):
        return step(h, jax.grad(lambda h_: sq(read(net, linear, h_, z), y))(h), lr)
    return jax.lax.fori_loop(0, steps, one, head)


def adapt_all(net, linear, params, x, y, lr, steps: int, anchor, first_order: bool = False):
    """``steps`` gradient steps on every parameter (MAML's inner loop); first order: the inner
    gradients are constants for the outer derivative."""
    def one(_, p):
        g = jax.grad(lambda p_: sq(apply(net, linear, p_, x, anchor), y))(p)
        if first_order:
            g = jax.lax.stop_gradient(g)
        return step(p, g, lr)
    return jax.lax.fori_loop(0, steps, one, params)



def architecture_for(architecture: Architecture | None, width: int, n_outputs: int) -> Architecture:
    arch = architecture or Architecture()
    return dataclasses.replace(arch, width=int(width), n_outputs=int(n_outputs))



@functools.partial(jax.jit, static_argnames=("net", "dim"))
def _init_batch(keys, x, net: Network, dim: int):
    params0 = jax.vmap(lambda key: net.init_fn(key, net.input_shape(dim))[1])(keys)
    return params0, jax.vmap(net.apply_fn, in_axes=(0, None))(params0, x)


def init_networks(tasks: TaskSet, depth: int, width: int, seed: int = 0, n_networks: int = 1,
                  architecture: Architecture | None = None, network=None):
    """Initial parameters of ``n_networks`` networks (leading axis) and their outputs ``f0 [S, P, k]``
    on ``tasks.all_points()``. Network ``j`` uses the key ``fold_in(PRNGKey(seed), j)``: the same
    network whatever ``n_networks``. ``network`` (an object with :class:`Network`'s attributes)
    replaces the architecture's."""
    arch = architecture_for(architecture, width, tasks.n_outputs)
    net = network_for(arch, depth) if network is None else network
    keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(int(seed)), j) for j in range(int(n_networks))])
    params0, f0 = _init_batch(keys, jnp.asarray(tasks.all_points()), net=net, dim=tasks.dim)
    return params0, np.asarray(f0, dtype=np.float64)

