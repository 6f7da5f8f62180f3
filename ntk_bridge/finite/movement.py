r"""Kernel movement, the regime indicator of a trained network (docs/theory.md §8.4).

``kernel_movement = ||Theta_T - Theta_0||_F / ||Theta_0||_F``: the relative change of a network's
empirical tangent kernel (over every trainable parameter, traced over the outputs) on a set of points,
between initialisation and the end of training. In the NTK parameterisation it falls like
``n^{-1/2}`` with the width ``n`` (the kernel regime); in muP it stays of order one (features move).

The kernels come from ``neural_tangents.empirical_ntk_fn`` by Jacobian contraction (implementation 1) with
``vmap_axes=0``: the networks treat every input on its own, so each point's Jacobian ``[k, parameters]`` is
formed alone. Without it the Jacobian of the whole batch carries the zero cross-point blocks, ``[P k, P, n]``
cotangents, and the NTK-vector-product implementation holds about as much: both grow like ``P^2 k n`` (a sweep's
cell of the linear muP network on kanji episodes, ``P = 300`` test points, ``k = 5``, peaked at 1.2, 2.1 and 3.8
GiB at widths 128, 256 and 512, and at about 15 GB at 2048; blocked and per point, 0.50, 0.68, 0.87, 0.88 and
0.89 GiB at 128 to 2048). The kernel is assembled from blocks of :func:`block_size` points, so no Jacobian block
exceeds :data:`JACOBIAN_BYTES`; :func:`movement_bytes` is the peak the memory budget (:mod:`ntk_bridge.budget`)
counts for it.
"""
from __future__ import annotations

import functools
import math

import jax
import numpy as np

__all__ = ["JACOBIAN_BYTES", "block_size", "movement_bytes", "empirical_ntk", "kernel_movement"]

#: Largest Jacobian block ``[points, outputs, parameters]`` (float64 bytes) formed at once.
JACOBIAN_BYTES = 256 * 2 ** 20
#: Jacobian blocks held at the peak of one block pair: its two blocks and XLA's working copies (measured about
#: 2 at width 2048 on 300 points, one block of 60 points: 0.5 GB above the process before the call).
JACOBIAN_COPIES = 3


def block_size(n_points: int, n_outputs: int, n_params: int) -> int:
    """Points per block: as many as keep a block's Jacobian within :data:`JACOBIAN_BYTES` (at least one)."""
    per_point = 8 * max(int(n_outputs), 1) * max(int(n_params), 1)
    return int(max(1, min(int(n_points), JACOBIAN_BYTES // per_point)))


def movement_bytes(n_points: int, n_outputs: int, n_params: int) -> int:
    """Peak memory (bytes) of :func:`kernel_movement` on ``n_points`` points: :data:`JACOBIAN_COPIES`
    Jacobian blocks of :func:`block_size` points and the two ``P x P`` kernels."""
    block = block_size(n_points, n_outputs, n_params)
    return int(JACOBIAN_COPIES * 8 * block * max(int(n_outputs), 1) * int(n_params) + 3 * 8 * int(n_points) ** 2)


@functools.lru_cache(maxsize=64)
def _ntk_fn(net):
    import neural_tangents as nt

    return jax.jit(nt.empirical_ntk_fn(net.apply_fn, trace_axes=(-1,), implementation=1, vmap_axes=0))


def empirical_ntk(net, params, x) -> np.ndarray:
    """``Theta(x, x) [P, P]`` of one network (``params`` as its ``apply_fn`` takes them), float64,
    assembled from blocks of :func:`block_size` points (the last block padded with zero inputs)."""
    size = sum(int(np.prod(np.shape(a))) for a in jax.tree_util.tree_leaves(params))
    x = np.asarray(x)
    P = int(x.shape[0])
    k = int(np.prod(jax.eval_shape(net.apply_fn, params, x[:1]).shape[1:]))
    B = block_size(P, k, size)
    nb = math.ceil(P / B)
    padded = np.concatenate([x, np.zeros((nb * B - P,) + x.shape[1:], x.dtype)]) if nb * B > P else x
    blocks = padded.reshape((nb, B) + x.shape[1:])
    fn = _ntk_fn(net)
    theta = np.empty((nb * B, nb * B), np.float64)
    for a in range(nb):
        for b in range(a, nb):
            t = np.asarray(fn(blocks[a], blocks[b], params), np.float64)
            theta[a * B:(a + 1) * B, b * B:(b + 1) * B] = t
            theta[b * B:(b + 1) * B, a * B:(a + 1) * B] = t.T
    return theta[:P, :P]


def kernel_movement(net, params0, params_t, x, bad: np.ndarray | None = None) -> np.ndarray:
    """``||Theta_T - Theta_0||_F / ||Theta_0||_F`` on the points ``x [P, d]`` for each of ``S``
    networks: ``params0`` and ``params_t`` carry a leading axis ``S``; NaN where ``bad [S]``."""
    leaves = jax.tree_util.tree_leaves(params0)
    S = int(leaves[0].shape[0])
    bad = np.zeros(S, bool) if bad is None else np.asarray(bad, bool)
    out = np.full(S, np.nan)
    x = np.asarray(x)
    for j in range(S):
        if bad[j]:
            continue
        p0, pt = (jax.tree_util.tree_map(lambda a: a[j], p) for p in (params0, params_t))
        t0, tt = empirical_ntk(net, p0, x), empirical_ntk(net, pt, x)
        norm = np.linalg.norm(t0)
        out[j] = np.linalg.norm(tt - t0) / norm if norm > 0 else np.nan
    return out
