r"""Convolutional and residual architectures, as ``stax`` layers (docs/theory.md §7).

The theorem is proved for fully connected ReLU networks; these are the networks of the paper's
experiments, written once as neural-tangents ``stax`` layers so that the same definition gives
finite networks, empirical kernels and infinite-width kernels (:class:`ntk_bridge.kernels.Architecture`
with ``arch='conv'`` or ``'resnet'``). Every convolution is ``Conv(width, (f, f), padding='SAME')``
in NTK parameterisation, ``f = 3`` by default; the input is an image ``[H, W, C]``.

* ``conv``: ``L`` blocks ``Conv -> Relu`` (``W_std = sqrt 2``), then the readout.
* ``resnet``: a stem ``Conv`` (``W_std = 1``), then ``L`` residual blocks
  ``FanOut(2) -> parallel(Identity, Relu -> Conv -> Relu -> Conv) -> FanInSum`` (branch
  ``W_std = sqrt 2`` then ``residual_w_std = 1``), then ``Relu`` and the readout. The ReLU sits in
  front of the branch (the pre-activation block of He et al. 2016, neural-tangents' WideResNet):
  neural-tangents sums branches only when both are Gaussian, so the post-activation block
  ``... -> FanInSum -> Relu`` has no analytic kernel (``FanInSum`` raises ``NotImplementedError``
  for the next block's non-Gaussian identity branch).
* readout ``flatten`` (default): ``Flatten -> Dense(k)``; ``gap``: ``GlobalAvgPool -> Dense(k)``.

**Cost of the infinite-width kernels.** A ``Flatten`` readout needs only the *spatial diagonal* of
each layer's covariance (each pixel's covariance with the same pixel of the other image): the kernel
of ``P`` images is ``[P, P, H, W]`` per layer, ``O(P^2 HW)`` memory and ``O(P^2 HW f^2)`` work. Global
average pooling needs every pair of pixels, ``[P, P, H, H, W, W]``: ``O(P^2 (HW)^2)`` memory and
``O(P^2 (HW)^2 f^4)`` work. In float64 one such array takes ``8 P^2 HW`` resp. ``8 P^2 (HW)^2``
bytes: 600 images of 14 x 14 need 0.56 GB per array with ``flatten`` (feasible on a laptop, in
blocks) and 110 GB with ``gap`` (not feasible); at 7 x 7, ``gap`` is 6.9 GB for 600 images,
feasible only for about 200 images on a machine with a few GB to spare (0.77 GB per array). The
kernels are computed in blocks of point pairs so that the pass stays under a stated memory bound
(:func:`ntk_bridge.kernels.kernels_by_depth`, :func:`pass_bytes`).
"""
from __future__ import annotations

import math

__all__ = ["ARCHS", "READOUTS", "PASS_ARRAYS", "stem", "hidden_block", "readout", "input_requirements",
           "spatial_size", "pass_bytes", "block_points", "pass_estimate"]

#: Architectures: the theorem's fully connected network, and the two of this module.
ARCHS = ("fc", "conv", "resnet")
#: Readouts of a convolutional body.
READOUTS = ("flatten", "gap")
#: Peak float64 arrays of the kernel's spatial size that one eager layer of the pass holds
#: (neural-tangents' ReLU and convolution intermediates): a conservative bound, the measured peak of
#: whole-network ``kernel_fn`` calls being 6.6 (``benchmarks/bench_conv.py --full``).
PASS_ARRAYS = 12
#: The fully connected pass holds about 11 ``P1 x P2`` arrays (``ntk_bridge.budget.estimate``).
FC_PASS_ARRAYS = 11
#: Bound on the neural-tangents intermediates of one kernel pass (2 GiB): above it the pass runs in
#: blocks of point pairs (:func:`ntk_bridge.kernels.kernels_by_depth`); the kernels come on top.
KERNEL_MEMORY_BYTES = 2 << 30


def _conv(arch, w_std: float):
    from neural_tangents import stax

    f = int(arch.filter_size)
    return stax.Conv(int(arch.width), (f, f), padding="SAME", W_std=w_std, b_std=arch.hidden_b_std,
                     parameterization=arch.parameterization)


def stem(arch) -> tuple | None:
    """The layer before the first block: ``Conv`` for ``resnet`` (its blocks add their input to
    their branch, which needs ``width`` channels and a Gaussian input), none otherwise."""
    if arch.arch != "resnet":
        return None
    return _conv(arch, 1.0)


def hidden_block(arch) -> tuple:
    """One block of a convolutional architecture (see the module docstring)."""
    from neural_tangents import stax

    if arch.arch == "conv":
        return stax.serial(_conv(arch, arch.hidden_w_std), stax.Relu())
    branch = stax.serial(stax.Relu(), _conv(arch, arch.hidden_w_std), stax.Relu(), _conv(arch, arch.residual_w_std))
    return stax.serial(stax.FanOut(2), stax.parallel(stax.Identity(), branch), stax.FanInSum())


def readout(arch) -> tuple:
    """``[Relu ->] Flatten | GlobalAvgPool -> Dense(k)`` (the ``Relu`` for ``resnet`` only)."""
    from neural_tangents import stax

    pool = stax.Flatten() if arch.spatial_readout == "flatten" else stax.GlobalAvgPool()
    dense = stax.Dense(int(arch.n_outputs), W_std=arch.readout_w_std, b_std=arch.readout_b_std,
                       parameterization=arch.parameterization)
    layers = ([stax.Relu()] if arch.arch == "resnet" else []) + [pool, dense]
    return stax.serial(*layers)


def input_requirements(arch) -> dict:
    """Keyword arguments of the first ``kernel_fn`` call on images: a ``Flatten`` readout needs the
    spatial diagonal only (what the whole network's ``kernel_fn`` also chooses)."""
    if arch.arch == "fc":
        return {}
    return {"diagonal_spatial": arch.spatial_readout == "flatten"}


def spatial_size(arch) -> int:
    """Entries per point pair of one layer's covariance: 1 (``fc``), ``HW`` (``flatten``), ``(HW)^2`` (``gap``)."""
    if arch.arch == "fc":
        return 1
    hw = int(arch.image_shape[0]) * int(arch.image_shape[1])
    return hw if arch.spatial_readout == "flatten" else hw * hw


def pass_bytes(p1: int, p2: int, arch) -> int:
    """Estimated peak bytes of one unblocked kernel pass over ``p1 x p2`` point pairs."""
    arrays = FC_PASS_ARRAYS if arch.arch == "fc" else PASS_ARRAYS
    return int(8 * arrays * int(p1) * int(p2) * spatial_size(arch))


def block_points(arch, memory_bytes: int) -> int:
    """The largest block of points ``b`` whose ``b x b`` pass stays under ``memory_bytes`` (at least 1)."""
    per_pair = pass_bytes(1, 1, arch)
    return max(1, int(math.isqrt(max(int(memory_bytes) // per_pair, 1))))


#: Seconds per point pair, spatial entry and layer of the eager pass on 2 cores (measured with
#: ``benchmarks/bench_conv.py --full``: 600 images of 14 x 14, ``conv``, 7.3e-8; a ``resnet`` block is
#: about two layers).
SECONDS_PER_ENTRY = 7.3e-8


def pass_estimate(arch, points: int, n_depths: int, max_depth: int,
                  memory_bytes: int = KERNEL_MEMORY_BYTES) -> tuple[int, float]:
    """``(bytes, seconds)`` of a sweep's kernel pass over ``points`` points. Unblocked: the pass's
    arrays (:func:`pass_bytes`, which hold the kernels); in blocks (above ``memory_bytes``): the bound
    plus the assembled kernels of every depth (``16 D P^2`` bytes). Time: ``max_depth`` layers of
    :data:`SECONDS_PER_ENTRY` per point pair and spatial entry (a ``resnet`` block is two layers),
    or, fully connected, ``0.008 + 4e-8 P^2`` seconds per depth."""
    full = pass_bytes(points, points, arch)
    memory = full if full <= memory_bytes else memory_bytes + 16 * n_depths * points ** 2
    if arch.arch == "fc":
        return int(memory), float(max_depth * (0.008 + 4e-8 * points ** 2))
    layers = max_depth * (2 if arch.arch == "resnet" else 1)
    return int(memory), float(SECONDS_PER_ENTRY * points ** 2 * spatial_size(arch) * layers)
