r"""Kernel movement, the regime indicator of a trained network (docs/theory.md §8.4).

``kernel_movement = ||Theta_T - Theta_0||_F / ||Theta_0||_F``: the relative change of a network's
empirical tangent kernel (over every trainable parameter, traced over the outputs) on a set of points,
between initialisation and the end of training. In the NTK parameterisation it falls like
``n^{-1/2}`` with the width ``n`` (the kernel regime); in muP it stays of order one (features move).
The kernels come from ``neural_tangents.empirical_ntk_fn`` (implementation 1, Jacobian contraction,
or 2, NTK-vector products when the Jacobian would not fit :data:`JACOBIAN_BYTES`).
"""
from __future__ import annotations

import functools

import jax
import numpy as np

__all__ = ["JACOBIAN_BYTES", "empirical_ntk", "kernel_movement"]

#: Largest Jacobian ``[points, parameters]`` (float64 bytes) contracted directly (implementation 1).
JACOBIAN_BYTES = 256 * 2 ** 20


@functools.lru_cache(maxsize=64)
def _ntk_fn(net, implementation: int):
    import neural_tangents as nt

    return jax.jit(nt.empirical_ntk_fn(net.apply_fn, trace_axes=(-1,), implementation=implementation))


def empirical_ntk(net, params, x) -> np.ndarray:
    """``Theta(x, x) [P, P]`` of one network (``params`` as its ``apply_fn`` takes them), float64."""
    size = sum(int(np.prod(np.shape(a))) for a in jax.tree_util.tree_leaves(params))
    implementation = 1 if 8 * size * len(x) <= JACOBIAN_BYTES else 2
    return np.asarray(_ntk_fn(net, implementation)(x, None, params), np.float64)


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
