"""Architectures and the neural-tangents adapter: the kernels of every depth in one pass.

Conventions (docs/theory.md §2). A fully connected ReLU network of depth ``L`` has ``L`` hidden layers
``Dense(width) -> Relu`` followed by a linear readout ``Dense(k)``: ``L + 1`` trainable layers, NTK
parameterisation. Defaults: hidden ``W_std = sqrt(2)``, ``b_std = 0``; readout ``W_std = 1``,
``b_std = 0``. On the sphere ``||x||^2 = d`` this gives ``Theta(x, x) = L + 1`` and ``K(x, x) = 1``.

Two kernels per depth:

* ``Theta`` -- the full neural tangent kernel (``kernel_fn(..., 'ntk')``);
* ``K`` -- the readout (head) kernel, the Gram matrix of the gradients with respect to the readout
  weights and bias. For a ``Dense`` readout in NTK parameterisation this is exactly the output NNGP
  (``kernel_fn(..., 'nngp')``): ``d f / d W = W_std phi / sqrt(h)``, ``d f / d b = b_std``.

``Theta_body = Theta - K`` is the kernel of the body (all hidden layers).

One pass over the layers gives every depth: the ``Kernel`` object after hidden layer ``l`` is pushed
through the readout's ``kernel_fn`` to read off ``(Theta_l, K_l)``, then through the next hidden block.
That is ``L_max`` hidden-block and ``L_max`` readout evaluations instead of ``L_max (L_max + 3) / 2``
for a separate ``kernel_fn`` per depth.

The module imports neural-tangents (and JAX) only when a network or a kernel is built, so that
describing an architecture (for a cache key, say) costs nothing. The kernel functions run eagerly
(op by op). Under ``jax.jit`` XLA fuses neural-tangents' ``arccos``
in a way that loses about 1e-7 relative accuracy in ``Theta`` near the diagonal; the eager path is
bit-identical to calling ``kernel_fn`` of the whole network.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from ntk_bridge.errors import require

__all__ = [
    "Architecture",
    "DepthKernels",
    "kernels_by_depth",
    "kernels_all_depths",
    "kernels_of_network",
    "empirical_kernels",
]


class DepthKernels(NamedTuple):
    """Kernels of one depth over a set of points ``x1`` (rows) and ``x2`` (columns).

    Attributes:
      depth: number of hidden layers ``L``.
      ntk: ``Theta``, shape ``[P1, P2]``, float64.
      readout: ``K``, the readout (head) kernel, shape ``[P1, P2]``, float64.
    """

    depth: int
    ntk: np.ndarray
    readout: np.ndarray

    @property
    def body(self) -> np.ndarray:
        """``Theta_body = Theta - K``: the tangent kernel of the hidden layers."""
        return self.ntk - self.readout


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A deep network made of one repeated hidden block and a readout, as ``stax`` layers.

    The default is docs/theory.md §2's fully connected ReLU network in NTK parameterisation. Any ``stax``
    block can be used instead through :meth:`custom`: the same object builds finite networks
    (``init_fn``, ``apply_fn``) and infinite-width kernels (``kernel_fn``).

    Attributes:
      width: hidden width ``h`` (used by finite networks only; the kernels are its ``h -> inf`` limit).
      hidden_w_std, hidden_b_std: hidden ``Dense`` standard deviations.
      readout_w_std, readout_b_std: readout ``Dense`` standard deviations.
      n_outputs: ``k``, the readout size.
      parameterization: ``'ntk'`` (default) or ``'standard'``.
    """

    width: int = 512
    hidden_w_std: float = math.sqrt(2.0)
    hidden_b_std: float = 0.0
    readout_w_std: float = 1.0
    readout_b_std: float = 0.0
    n_outputs: int = 1
    parameterization: str = "ntk"
    hidden_layer: tuple | None = dataclasses.field(default=None, compare=False, repr=False)
    readout_layer: tuple | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        require(int(self.width) >= 1, f"width must be a positive integer, got {self.width!r}")
        require(int(self.n_outputs) >= 1, f"n_outputs must be positive, got {self.n_outputs!r}")
        require(self.parameterization in ("ntk", "standard"),
                f"parameterization must be 'ntk' or 'standard', got {self.parameterization!r}")
        for name in ("hidden_w_std", "hidden_b_std", "readout_w_std", "readout_b_std"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"{name} must be finite and >= 0, got {value!r}")

    @classmethod
    def custom(cls, hidden_block: tuple, readout: tuple, **kwargs) -> "Architecture":
        """An architecture from user ``stax`` layers: ``hidden_block`` is repeated ``L`` times.

        ``readout`` must be a ``stax.Dense`` layer in NTK parameterisation for ``K`` to be the readout
        gradient Gram matrix (then ``K`` equals the output NNGP exactly).
        """
        return cls(hidden_layer=tuple(hidden_block), readout_layer=tuple(readout), **kwargs)

    def hidden_block(self) -> tuple:
        """``(init_fn, apply_fn, kernel_fn)`` of one hidden layer ``Dense(h) -> Relu``."""
        if self.hidden_layer is not None:
            return self.hidden_layer
        from neural_tangents import stax

        return stax.serial(
            stax.Dense(int(self.width), W_std=self.hidden_w_std, b_std=self.hidden_b_std,
                       parameterization=self.parameterization),
            stax.Relu(),
        )

    def readout(self) -> tuple:
        """``(init_fn, apply_fn, kernel_fn)`` of the linear readout ``Dense(k)``."""
        if self.readout_layer is not None:
            return self.readout_layer
        from neural_tangents import stax

        return stax.Dense(int(self.n_outputs), W_std=self.readout_w_std, b_std=self.readout_b_std,
                          parameterization=self.parameterization)

    def network(self, depth: int) -> tuple:
        """The whole network of ``depth`` hidden layers as one ``stax`` triple."""
        require(int(depth) >= 1, f"depth must be >= 1, got {depth!r}")
        from neural_tangents import stax

        return stax.serial(*([self.hidden_block()] * int(depth)), self.readout())

    def describe(self) -> dict:
        """A JSON-serialisable description (for provenance and cache keys)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("hidden_layer", "readout_layer")}
        d["custom_layers"] = self.hidden_layer is not None or self.readout_layer is not None
        return d


def _check_points(x, name):
    x = np.asarray(x, dtype=np.float64)
    require(x.ndim == 2, f"{name} must have shape [points, dim], got {x.shape}")
    require(x.shape[0] >= 1, f"{name} must contain at least one point")
    require(bool(np.all(np.isfinite(x))), f"{name} contains NaN or inf")
    return x


def kernels_by_depth(
    x1: np.ndarray,
    x2: np.ndarray | None = None,
    max_depth: int = 32,
    architecture: Architecture | None = None,
    depths: Sequence[int] | None = None,
) -> Iterator[DepthKernels]:
    """Yield ``DepthKernels`` for depths ``1..max_depth`` in one pass over the layers.

    Args:
      x1: ``[P1, d]`` points (rows). Natural normalisation ``||x||^2 = d``.
      x2: ``[P2, d]`` points (columns), or ``None`` for ``x1`` itself (then the kernels are symmetric).
      max_depth: the deepest network ``L_max``.
      architecture: defaults to :class:`Architecture` ``()``.
      depths: only yield these depths (the pass still walks every layer up to ``max(depths)``).

    Yields ``DepthKernels(depth, ntk [P1, P2], readout [P1, P2])`` in increasing depth, as float64
    numpy arrays. Streaming keeps memory at one depth's kernels however deep the sweep.
    """
    import jax.numpy as jnp

    arch = architecture or Architecture()
    x1 = _check_points(x1, "x1")
    if x2 is not None:
        x2 = _check_points(x2, "x2")
        require(x2.shape[1] == x1.shape[1], f"x2 has dim {x2.shape[1]}, x1 has dim {x1.shape[1]}")
    if depths is not None:
        wanted = sorted({int(d) for d in depths})
        require(len(wanted) > 0 and wanted[0] >= 1, f"depths must be >= 1, got {depths!r}")
        max_depth = wanted[-1]
    else:
        require(int(max_depth) >= 1, f"max_depth must be >= 1, got {max_depth!r}")
        wanted = list(range(1, int(max_depth) + 1))
    wanted_set = set(wanted)
    _, _, hidden_kernel = arch.hidden_block()
    _, _, readout_kernel = arch.readout()
    kernel = hidden_kernel(jnp.asarray(x1), None if x2 is None else jnp.asarray(x2))
    for depth in range(1, int(max_depth) + 1):
        if depth > 1:
            kernel = hidden_kernel(kernel)
        if depth in wanted_set:
            out = readout_kernel(kernel)
            yield DepthKernels(depth, np.asarray(out.ntk, dtype=np.float64),
                               np.asarray(out.nngp, dtype=np.float64))


def kernels_all_depths(x1, x2=None, max_depth: int = 32, architecture: Architecture | None = None,
                       depths: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All depths at once: ``(depths [D], Theta [D, P1, P2], K [D, P1, P2])``.

    Convenience wrapper over :func:`kernels_by_depth` for small point sets.
    """
    ks = list(kernels_by_depth(x1, x2, max_depth, architecture, depths))
    return (np.array([k.depth for k in ks]), np.stack([k.ntk for k in ks]),
            np.stack([k.readout for k in ks]))


def kernels_of_network(kernel_fn, x1, x2=None, depth: int | None = None) -> DepthKernels:
    """``(Theta, K)`` of a single user network given by its ``stax`` ``kernel_fn``.

    ``K`` is read as the output NNGP, which is the readout gradient kernel when the last layer is a
    ``Dense`` layer in NTK parameterisation.
    """
    x1 = _check_points(x1, "x1")
    x2 = None if x2 is None else _check_points(x2, "x2")
    out = kernel_fn(x1, x2, ("ntk", "nngp"))
    return DepthKernels(-1 if depth is None else int(depth), np.asarray(out.ntk, np.float64),
                        np.asarray(out.nngp, np.float64))


def empirical_kernels(apply_fn, params, x1, x2=None) -> DepthKernels:
    """``(Theta, K)`` of one *finite* network at its parameters ``params`` (a stax list whose last
    entry is the readout): the empirical NTK over every parameter and the readout gradient kernel
    (the NTK over the readout's parameters alone), via ``neural_tangents.empirical_ntk_fn``.

    The closed forms with these kernels are exactly what the network's linearisation trains to
    (docs/theory.md §5, rung 2). Returns ``DepthKernels`` with ``depth = -1``, float64 arrays.
    """
    import neural_tangents as nt

    x1 = _check_points(x1, "x1")
    x2 = None if x2 is None else _check_points(x2, "x2")
    params = list(params)
    theta = nt.empirical_ntk_fn(apply_fn, implementation=2)(x1, x2, params)
    K = nt.empirical_ntk_fn(lambda head, x: apply_fn(params[:-1] + [head], x), implementation=1)(x1, x2, params[-1])
    return DepthKernels(-1, np.asarray(theta, np.float64), np.asarray(K, np.float64))
