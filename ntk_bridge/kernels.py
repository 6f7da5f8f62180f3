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

Beyond the theorem's network, ``arch='conv'`` and ``arch='resnet'`` are convolutional and residual
ReLU networks on images (:mod:`ntk_bridge.convnets`, docs/theory.md §7): depth counts blocks, the
kernels of every depth still come from one pass, and the pass runs in blocks of point pairs when
one pass over all points would exceed a memory bound (:data:`KERNEL_MEMORY_BYTES`).

The module imports neural-tangents (and JAX) only when a network or a kernel is built, so that
describing an architecture (for a cache key, say) costs nothing. The kernel functions run eagerly
(op by op). Under ``jax.jit`` XLA fuses neural-tangents' ``arccos``
in a way that loses about 1e-7 relative accuracy in ``Theta`` near the diagonal; the eager path is
bit-identical to calling ``kernel_fn`` of the whole network.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from ntk_bridge import convnets, runtime
from ntk_bridge.errors import require
from ntk_bridge.layer_keys import custom_layers_key

__all__ = [
    "ARCHS", "ACTIVATIONS", "PARAMS",
    "KERNEL_MEMORY_BYTES",
    "Architecture",
    "DepthKernels",
    "kernels_by_depth",
    "kernels_all_depths",
    "kernels_of_network",
    "empirical_kernels",
]


#: Architectures (:mod:`ntk_bridge.convnets`).
ARCHS = convnets.ARCHS
#: Activations of the fully connected hidden layers, and parameterisations of its finite networks.
ACTIVATIONS, PARAMS = ("relu", "linear"), ("ntk", "mup")
#: Bound on the neural-tangents intermediates of one kernel pass (2 GiB, :mod:`ntk_bridge.convnets`).
KERNEL_MEMORY_BYTES = convnets.KERNEL_MEMORY_BYTES


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
      arch: ``'fc'`` (the theorem's network), ``'conv'`` or ``'resnet'`` (:mod:`ntk_bridge.convnets`;
        ``width`` is then the number of channels).
      image_shape: ``(H, W, C)`` of the inputs of ``conv`` and ``resnet`` (flat inputs ``[P, H W C]``
        are reshaped to images).
      spatial_readout: ``'flatten'`` or ``'gap'`` (global average pooling) before the readout of a
        convolutional body.
      filter_size: ``f`` of the ``f x f`` convolutions.
      residual_w_std: ``W_std`` of the last convolution of a residual branch.
      activation: ``'relu'`` or ``'linear'`` (the identity) of the fully connected hidden layers.
      param: *finite* fully connected networks in the NTK parameterisation (``'ntk'``, the ``stax``
        network) or muP (``'mup'``, :mod:`ntk_bridge.finite.mup`); the kernels are the NTK limit.
    """

    width: int = 512
    hidden_w_std: float = math.sqrt(2.0)
    hidden_b_std: float = 0.0
    readout_w_std: float = 1.0
    readout_b_std: float = 0.0
    n_outputs: int = 1
    parameterization: str = "ntk"
    arch: str = "fc"
    image_shape: tuple[int, int, int] | None = None
    spatial_readout: str = "flatten"
    filter_size: int = 3
    residual_w_std: float = 1.0
    activation: str = "relu"
    param: str = "ntk"
    hidden_layer: tuple | None = dataclasses.field(default=None, compare=False, repr=False)
    readout_layer: tuple | None = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self):
        require(int(self.width) >= 1, f"width must be a positive integer, got {self.width!r}")
        require(int(self.n_outputs) >= 1, f"n_outputs must be positive, got {self.n_outputs!r}")
        require(self.parameterization in ("ntk", "standard"),
                f"parameterization must be 'ntk' or 'standard', got {self.parameterization!r}")
        for name in ("hidden_w_std", "hidden_b_std", "readout_w_std", "readout_b_std", "residual_w_std"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"{name} must be finite and >= 0, got {value!r}")
        require(self.arch in ARCHS, f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        require(self.spatial_readout in convnets.READOUTS,
                f"spatial_readout must be one of {', '.join(convnets.READOUTS)}, got {self.spatial_readout!r}")
        require(self.activation in ACTIVATIONS,
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        require(self.param in PARAMS, f"param must be one of {', '.join(PARAMS)}, got {self.param!r}")
        require((self.activation, self.param) == ("relu", "ntk") or (self.arch == "fc" and self.hidden_layer is None),
                "activation 'linear' and param 'mup' are for the fully connected network without custom layers")
        require(int(self.filter_size) >= 1, f"filter_size must be >= 1, got {self.filter_size!r}")
        if self.convolutional:
            shape = self.image_shape
            require(shape is not None and len(shape) == 3 and all(int(v) >= 1 for v in shape),
                    f"arch {self.arch!r} needs image inputs: image_shape (H, W, C), got {shape!r}")
            require(self.hidden_layer is None and self.readout_layer is None,
                    "custom layers replace the fully connected architecture only (arch 'fc')")
            object.__setattr__(self, "image_shape", tuple(int(v) for v in shape))

    @property
    def convolutional(self) -> bool:
        """Whether the inputs are images (``conv``, ``resnet``)."""
        return self.arch != "fc"
    @classmethod
    def custom(cls, hidden_block: tuple, readout: tuple, **kwargs) -> "Architecture":
        """An architecture from user ``stax`` layers: ``hidden_block`` is repeated ``L`` times.

        ``readout`` must be a ``stax.Dense`` layer in NTK parameterisation for ``K`` to be the readout
        gradient Gram matrix (then ``K`` equals the output NNGP exactly).
        """
        return cls(hidden_layer=tuple(hidden_block), readout_layer=tuple(readout), **kwargs)

    @classmethod
    def for_tasks(cls, tasks, arch: str = "fc", **kwargs) -> "Architecture":
        """The architecture ``arch`` for the inputs of ``tasks`` (a :class:`~ntk_bridge.tasks.TaskSet`):
        ``conv`` and ``resnet`` take its ``image_shape``."""
        if arch != "fc":
            require(tasks.image_shape is not None, f"arch {arch!r} needs image tasks (a task set with image_shape); "
                    f"{tasks.name} tasks have flat inputs")
            kwargs = dict(kwargs, image_shape=tasks.image_shape)
        return cls(arch=arch, **kwargs)

    def stem(self) -> tuple | None:
        """The layer before the first block (``resnet``: a ``Conv``), or ``None``."""
        return convnets.stem(self) if self.convolutional else None

    def hidden_block(self) -> tuple:
        """``(init_fn, apply_fn, kernel_fn)`` of one hidden layer ``Dense(h) -> Relu`` (or one block
        of a convolutional architecture)."""
        if self.hidden_layer is not None:
            return self.hidden_layer
        if self.convolutional:
            return convnets.hidden_block(self)
        from neural_tangents import stax

        return stax.serial(
            stax.Dense(int(self.width), W_std=self.hidden_w_std, b_std=self.hidden_b_std,
                       parameterization=self.parameterization),
            stax.Relu() if self.activation == "relu" else stax.Identity(),
        )

    def readout(self) -> tuple:
        """``(init_fn, apply_fn, kernel_fn)`` of the linear readout ``Dense(k)``."""
        if self.readout_layer is not None:
            return self.readout_layer
        if self.convolutional:
            return convnets.readout(self)
        from neural_tangents import stax

        return stax.Dense(int(self.n_outputs), W_std=self.readout_w_std, b_std=self.readout_b_std,
                          parameterization=self.parameterization)

    def _layers(self, depth: int) -> list:
        require(int(depth) >= 1, f"depth must be >= 1, got {depth!r}")
        stem = self.stem()
        return ([stem] if stem is not None else []) + [self.hidden_block()] * int(depth)

    def body(self, depth: int) -> tuple:
        """Everything before the readout (stem and ``depth`` blocks) as one ``stax`` triple."""
        from neural_tangents import stax

        return stax.serial(*self._layers(depth))

    def network(self, depth: int) -> tuple:
        """The whole network of ``depth`` hidden layers (blocks) as one ``stax`` triple; a
        convolutional one takes images ``[P, H, W, C]`` (:meth:`as_input`)."""
        from neural_tangents import stax

        return stax.serial(*self._layers(depth), self.readout())

    def input_shape(self, dim: int) -> tuple:
        """The ``init_fn`` input shape for flat inputs of dimension ``dim``."""
        if not self.convolutional:
            return (-1, int(dim))
        require(int(np.prod(self.image_shape)) == int(dim),
                f"image_shape {self.image_shape} does not match inputs of dimension {dim}")
        return (-1, *self.image_shape)

    def as_input(self, x):
        """Flat inputs ``[..., d]`` as the network's inputs (images ``[..., H, W, C]`` for ``conv``
        and ``resnet``; unchanged for ``fc``)."""
        if not self.convolutional:
            return x
        self.input_shape(x.shape[-1])
        return x.reshape(*x.shape[:-1], *self.image_shape)

    def describe(self) -> dict:
        """A JSON-serialisable description (for provenance and cache keys). The ``fc`` description
        has the fields of the fully connected network only (cache keys of earlier runs stay valid)."""
        conv_only = ("arch", "image_shape", "spatial_readout", "filter_size", "residual_w_std")
        skip = ("hidden_layer", "readout_layer") + (() if self.convolutional else conv_only)
        if self.arch == "conv":
            skip += ("residual_w_std",)
        # fields added later enter the description only when set, so earlier cache keys stay valid
        skip += tuple(name for name, default in (("activation", "relu"), ("param", "ntk"))
                      if getattr(self, name) == default)
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        if "image_shape" in d:
            d["image_shape"] = list(d["image_shape"])
        d["custom_layers"] = custom_layers_key(self.hidden_layer, self.readout_layer)  # False without
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
    memory_bytes: int | None = KERNEL_MEMORY_BYTES,
    allocate: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
) -> Iterator[DepthKernels]:
    """Yield ``DepthKernels`` for depths ``1..max_depth`` in one pass over the layers.

    Args:
      x1: ``[P1, d]`` points (rows). Natural normalisation ``||x||^2 = d``. Convolutional
        architectures reshape them to images (:meth:`Architecture.as_input`).
      x2: ``[P2, d]`` points (columns), or ``None`` for ``x1`` itself (then the kernels are symmetric).
      max_depth: the deepest network ``L_max``.
      architecture: defaults to :class:`Architecture` ``()``.
      depths: only yield these depths (the pass still walks every layer up to ``max(depths)``).
      memory_bytes: bound on the pass's neural-tangents intermediates (:func:`ntk_bridge.convnets.pass_bytes`);
        above it the pass runs over blocks of ``b x b`` point pairs, one pass over the depths per
        block, and the kernels of every wanted depth are assembled before they are yielded (they
        take ``16 D P1 P2`` bytes more). ``None``: never in blocks.
      allocate: ``allocate(name, shape)`` returns the float64 arrays the blocked pass assembles the
        kernels in (``name`` ``"ntk"`` or ``"readout"``, ``shape`` ``[D, P1, P2]``), e.g. memory-mapped
        files (``numpy.lib.format.open_memmap``) when the kernels do not fit in memory; the pass then
        always runs in blocks and yields views of them. Default: ``numpy.empty``.

    Yields ``DepthKernels(depth, ntk [P1, P2], readout [P1, P2])`` in increasing depth, as float64
    numpy arrays. Unblocked, streaming keeps memory at one depth's kernels however deep the sweep.
    """
    arch = architecture or Architecture()
    x1 = _check_points(x1, "x1")
    if x2 is not None:
        x2 = _check_points(x2, "x2")
        require(x2.shape[1] == x1.shape[1], f"x2 has dim {x2.shape[1]}, x1 has dim {x1.shape[1]}")
    if depths is not None:
        wanted = sorted({int(d) for d in depths})
        require(len(wanted) > 0 and wanted[0] >= 1, f"depths must be >= 1, got {depths!r}")
    else:
        require(int(max_depth) >= 1, f"max_depth must be >= 1, got {max_depth!r}")
        wanted = list(range(1, int(max_depth) + 1))
    arch.input_shape(x1.shape[1])
    p2 = len(x1) if x2 is None else len(x2)
    if allocate is not None or (memory_bytes is not None and convnets.pass_bytes(len(x1), p2, arch) > memory_bytes):
        yield from _blocked_pass(x1, x2, arch, wanted, int(memory_bytes or KERNEL_MEMORY_BYTES), allocate)
    else:
        yield from _one_pass(x1, x2, arch, wanted)


def _one_pass(x1, x2, arch: Architecture, wanted: list[int]) -> Iterator[DepthKernels]:
    import jax.numpy as jnp

    wanted_set, shapes = set(wanted), {}  # every layer's shapes worked out once (runtime.shapes_once)
    stem = arch.stem()
    _, _, hidden_kernel = arch.hidden_block()
    _, _, readout_kernel = arch.readout()
    first = hidden_kernel if stem is None else stem[2]
    inputs = (jnp.asarray(arch.as_input(x1)), None if x2 is None else jnp.asarray(arch.as_input(x2)))
    with runtime.shapes_once(shapes):
        kernel = first(*inputs, **convnets.input_requirements(arch))
    for depth in range(1, wanted[-1] + 1):
        with runtime.shapes_once(shapes):
            kernel = hidden_kernel(kernel) if depth > 1 or stem is not None else kernel
            out = readout_kernel(kernel) if depth in wanted_set else None
        if out is not None:
            yield DepthKernels(depth, np.asarray(out.ntk, dtype=np.float64), np.asarray(out.nngp, dtype=np.float64))


def _blocked_pass(x1, x2, arch: Architecture, wanted: list[int], memory_bytes: int,
                  allocate: Callable[[str, tuple[int, ...]], np.ndarray] | None = None) -> Iterator[DepthKernels]:
    """:func:`_one_pass` over blocks of point pairs (upper blocks only when ``x2`` is ``None``),
    assembled in arrays from ``allocate`` (see :func:`kernels_by_depth`)."""
    symmetric = x2 is None
    cols = x1 if symmetric else x2
    b = convnets.block_points(arch, memory_bytes)
    rows_at = [slice(i, min(i + b, len(x1))) for i in range(0, len(x1), b)]
    cols_at = [slice(j, min(j + b, len(cols))) for j in range(0, len(cols), b)]
    shape = (len(wanted), len(x1), len(cols))
    make = allocate or (lambda name, shape: np.empty(shape))
    ntk, nngp = make("ntk", shape), make("readout", shape)
    require(all(a.shape == shape and a.dtype == np.float64 for a in (ntk, nngp)),
            f"allocate must return float64 arrays of shape {shape}")
    for i, r in enumerate(rows_at):
        for j, c in enumerate(cols_at):
            if symmetric and j < i:
                continue
            diagonal = symmetric and i == j
            for w, k in enumerate(_one_pass(x1[r], None if diagonal else cols[c], arch, wanted)):
                ntk[w, r, c], nngp[w, r, c] = k.ntk, k.readout
                if symmetric and not diagonal:
                    ntk[w, c, r], nngp[w, c, r] = k.ntk.T, k.readout.T
    for w, depth in enumerate(wanted):
        yield DepthKernels(depth, ntk[w], nngp[w])


def kernels_all_depths(x1, x2=None, max_depth: int = 32, architecture: Architecture | None = None,
                       depths: Sequence[int] | None = None,
                       memory_bytes: int | None = KERNEL_MEMORY_BYTES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All depths at once: ``(depths [D], Theta [D, P1, P2], K [D, P1, P2])``.

    Convenience wrapper over :func:`kernels_by_depth` for small point sets.
    """
    ks = list(kernels_by_depth(x1, x2, max_depth, architecture, depths, memory_bytes))
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
