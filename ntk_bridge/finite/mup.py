r"""Finite fully connected networks in the maximal-update parameterisation (muP), and the width-``(d + k)``
network that is the muP limit of the one-hidden-layer linear network (docs/theory.md §8).

muP (Yang & Hu 2021) in *multiplier form*: every trainable matrix ``w_l`` is drawn with variance
``sigma_l^2 / n`` (``n`` the width) and multiplied by a width-dependent constant in the forward pass;
every parameter takes the same gradient step (so the inner, outer and fine-tuning loops of
:mod:`ntk_bridge.finite.objectives` run unchanged). For inputs ``x [B, d]`` and depth ``L``:

* input layer ``h_1 = sqrt(n / d) x w_1``, ``w_1 [d, n]``: effective weights of variance
  ``sigma_h^2 / d`` and, because a step on ``w_1`` moves ``sqrt(n/d) w_1`` by ``(n / d)`` times the
  gradient of the effective weights, an effective learning rate ``eta n / d``;
* hidden layers ``h_l = phi(h_{l-1}) w_l``, ``w_l [n, n]``: variance ``sigma_h^2 / n``, rate ``eta``;
* readout ``f = phi(h_L) w_out / sqrt(n)``, ``w_out [n, k]``: effective variance ``sigma_o^2 / n^2``,
  effective rate ``eta / n``.

These are Yang & Hu's muP for SGD (initial variances ``1/fan_in`` except ``1/fan_in^2`` at the
readout; learning rates ``eta fan_out``, ``eta``, ``eta / fan_in``), with the input dimension held
fixed. No biases (the NTK networks' ``b_std`` is 0 too). With ``sigma_h`` the hidden
``W_std`` of the architecture and ``sigma_o`` its readout ``W_std``, the muP network's tangent kernel at
initialisation tends to the NTK-parameterised network's (the output layer gives the NNGP ``K``, the
input layer ``sigma_o^2 x.x' / d`` at depth 1): one step-size rule (:func:`~ntk_bridge.finite.schedule.discretise`)
serves both parameterisations and every width.

At depth 1 with a positively homogeneous ``phi`` (ReLU, identity) the multipliers cancel,
``f = d^{-1/2} phi(x w_1) w_out``, and for ``phi`` the identity the network is a random projection of a
width-``(d + k)`` one: with ``Omega [n, d + k]`` standard normal, ``w_1 = n^{-1/2} A_0 Omega^T`` and
``w_out = n^{-1/2} Omega B_0`` where ``A_0 = [sigma_h I_d, 0] [d, d + k]`` and
``B_0 = [0; sigma_o I_k] [d + k, k]``. Gradient steps keep that form (the gradient of ``w_1`` is
``n^{-1/2}`` (the gradient of ``A``) ``Omega^T``, that of ``w_out`` is ``n^{-1/2} Omega`` (that of ``B``)),
so at every step ``f_n(x) = d^{-1/2} x A (Omega^T Omega / n) B``: :func:`limit_network` is the network
``d^{-1/2} x A B`` trained by the same steps, the ``n -> inf`` limit (``Omega^T Omega / n -> I`` at rate
``n^{-1/2}``).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ntk_bridge.errors import require

__all__ = ["MupNetwork", "mup_network", "limit_network", "limit_width"]


def _activation(name: str):
    return jax.nn.relu if name == "relu" else (lambda h: h)


class MupNetwork:
    """A muP fully connected network with the attributes of :class:`ntk_bridge.finite.networks.Network`:
    ``init_fn``, ``apply_fn``, ``body_apply``, ``readout_apply``, ``input_shape``, ``depth``.

    Parameters are ``[(w_1,), ..., (w_L,), (w_out,)]`` (the last entry is the head). Hashed by identity.
    """

    def __init__(self, width: int, n_outputs: int, depth: int, activation: str = "relu",
                 hidden_std: float = math.sqrt(2.0), readout_std: float = 1.0):
        require(int(width) >= 1 and int(depth) >= 1, f"width and depth must be >= 1, got {width!r}, {depth!r}")
        n, k, L = int(width), int(n_outputs), int(depth)
        phi = _activation(activation)
        self.width, self.depth, self.activation = n, L, activation

        def init_fn(key, input_shape):
            d = int(input_shape[-1])
            keys = jax.random.split(key, L + 1)
            body = [(hidden_std / math.sqrt(n) * jax.random.normal(keys[l], (d if l == 0 else n, n)),)
                    for l in range(L)]
            head = (readout_std / math.sqrt(n) * jax.random.normal(keys[L], (n, k)),)
            return (-1, k), body + [head]

        def body_apply(body, x, **kw):
            d = x.shape[-1]
            h = math.sqrt(n / d) * (x @ body[0][0])
            for (w,) in body[1:]:
                h = phi(h) @ w
            return phi(h)

        def readout_apply(head, z, **kw):
            return (z @ head[0]) / math.sqrt(n)

        self.init_fn, self.body_apply, self.readout_apply = init_fn, body_apply, readout_apply
        self.apply_fn = lambda params, x, **kw: readout_apply(params[-1], body_apply(list(params[:-1]), x))
        self.input_shape = lambda dim: (-1, int(dim))


@functools.lru_cache(maxsize=32)
def mup_network(width: int, n_outputs: int, depth: int, activation: str, hidden_std: float,
                readout_std: float) -> MupNetwork:
    """The (cached) :class:`MupNetwork`: compiled trainers are reused across calls."""
    return MupNetwork(width, n_outputs, depth, activation, hidden_std, readout_std)


def limit_width(dim: int, n_outputs: int) -> int:
    """Width of the muP limit of the one-hidden-layer linear network: ``d + k``."""
    return int(dim) + int(n_outputs)


class _LimitNetwork:
    """``f(x) = d^{-1/2} x A B`` with ``A [d, d + k]`` and ``B [d + k, k]`` initialised to
    ``[sigma_h I_d, 0]`` and ``[0; sigma_o I_k]`` (deterministic: the key is not used)."""

    def __init__(self, n_outputs: int, hidden_std: float, readout_std: float):
        k = int(n_outputs)
        self.depth, self.activation = 1, "linear"

        def init_fn(key, input_shape):
            d = int(input_shape[-1])
            A = jnp.concatenate([hidden_std * jnp.eye(d), jnp.zeros((d, k))], axis=1)
            B = jnp.concatenate([jnp.zeros((d, k)), readout_std * jnp.eye(k)], axis=0)
            return (-1, k), [(A,), (B,)]

        def body_apply(body, x, **kw):
            return (x @ body[0][0]) / math.sqrt(x.shape[-1])

        def readout_apply(head, z, **kw):
            return z @ head[0]

        self.init_fn, self.body_apply, self.readout_apply = init_fn, body_apply, readout_apply
        self.apply_fn = lambda params, x, **kw: readout_apply(params[-1], body_apply(list(params[:-1]), x))
        self.input_shape = lambda dim: (-1, int(dim))


@functools.lru_cache(maxsize=32)
def limit_network(n_outputs: int, hidden_std: float = 1.0, readout_std: float = 1.0) -> _LimitNetwork:
    """The (cached) width-``(d + k)`` network whose training is the muP limit of the one-hidden-layer linear
    network with these standard deviations (the module docstring)."""
    return _LimitNetwork(n_outputs, hidden_std, readout_std)
