"""Generated task families, each documented by what can transfer between its tasks and why.

Every generator is deterministic given its seed and puts its inputs on the sphere ``||x||^2 = d``
(docs/theory.md §2). Infinite-width learners cannot move their features, so they can only transfer
what the tasks have *in common as functions of the inputs*; a family without a common part shows
closeness of predictors that do not use the training tasks.

=============  ==================================================================================
family         tasks, and what transfers
=============  ==================================================================================
``subspace``   linear teachers in a shared rank-2 subspace whose coefficients share a common mean
               (75% of a teacher's variance): the common mean direction transfers
``linear``     independent linear teachers: nothing transfers but the input distribution
``sinusoid``   MAML's ``A sin(x - phi)``: amplitude and phase vary, the shape is common
``common``     a shared teacher plus a task-specific one, ``sqrt(s) w + sqrt(1 - s) w_t`` through a
               ``tanh`` link: the shared teacher (weight ``s``) transfers, nonlinearly
``kanji``      N-way K-shot episodes of rendered handwriting (the few-shot path's data), pixels on
               the sphere, centred one-hot labels, no image in two episodes: the classes get new
               labels in every episode, so what transfers is how characters look, which only a
               learner that moves its features can use (finite networks, the few-shot path); for a
               fixed kernel it is a family without a common part
``omniglot``   the same episodes from the user's Omniglot folder (``data_dir``)
=============  ==================================================================================
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from ntk_bridge.errors import require
from ntk_bridge.tasks import TaskSet, on_sphere

__all__ = ["subspace_tasks", "linear_tasks", "sinusoid_tasks", "common_tasks", "kanji_tasks", "omniglot_tasks",
           "image_tasks", "image_validation_episodes",
           "image_family_data", "sinusoid_embed", "GENERATORS", "IMAGE_FAMILIES"]


def _sphere(rng: np.random.Generator, shape: Iterable[int], dim: int) -> np.ndarray:
    """Points uniform on the sphere ``||x||^2 = dim``: ``[*shape, dim]``."""
    return on_sphere(rng.standard_normal((*shape, dim)))


def _check_sizes(n_train, n_test, n_support, n_query, dim):
    for name, v in (("n_train", n_train), ("n_test", n_test), ("n_support", n_support),
                    ("n_query", n_query), ("dim", dim)):
        require(isinstance(v, (int, np.integer)) and v >= 1, f"{name} must be a positive integer, got {v!r}")


def _teacher_tasks(rng, teachers, n_train, n_test, n_support, n_query, dim, noise, name):
    """Linear teachers ``y = x @ w / sqrt(d)`` (+ noise); ``teachers`` has shape ``[N + M, d, k]``."""
    n_tasks = n_train + n_test
    xs = _sphere(rng, (n_tasks, n_support + n_query), dim)
    ys = np.einsum("tpd,tdk->tpk", xs, teachers) / np.sqrt(dim)
    ys = ys + noise * rng.standard_normal(ys.shape)
    sx, qx = xs[:, :n_support], xs[:, n_support:]
    sy, qy = ys[:, :n_support], ys[:, n_support:]
    return TaskSet(sx[:n_train], sy[:n_train], qx[:n_train], qy[:n_train],
                   sx[n_train:], sy[n_train:], qx[n_train:], qy[n_train:], name=name)


def subspace_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5,
                   n_query: int = 10, dim: int = 16, rank: int = 2, shared: float = 0.75,
                   n_outputs: int = 1, noise: float = 0.0) -> TaskSet:
    """Shared-subspace linear regression (the default task family: transfer is possible).

    A shared orthonormal basis ``B [d, r]`` and a shared coefficient ``mu ~ N(0, I_r)`` are drawn
    once; task ``t`` has teacher ``w_t = sqrt(d / r) B c_t`` with
    ``c_t = sqrt(shared) mu + sqrt(1 - shared) z_t``, ``z_t ~ N(0, I_r)`` (so ``E||w_t||^2 = d``),
    and labels ``y = x . w_t / sqrt(d) + noise * N(0, 1)``, ``x`` uniform on the sphere
    ``||x||^2 = d`` (so ``Var y ~ 1``).

    ``shared`` is the fraction of a teacher's variance common to all tasks. Infinite-width learners
    do not move their features, so they can only transfer a common part of the function: with
    ``shared = 0`` no method beats the no-transfer baseline; with the default 0.75 all of them do at
    small depth, and drift toward it as depth grows.
    """
    _check_sizes(n_train, n_test, n_support, n_query, dim)
    require(1 <= rank <= dim, f"rank must be in 1..dim={dim}, got {rank!r}")
    require(0 <= shared <= 1, f"shared must be in [0, 1], got {shared!r}")
    require(noise >= 0, f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    mu = rng.standard_normal((1, rank, n_outputs))
    coef = np.sqrt(shared) * mu + np.sqrt(1 - shared) * rng.standard_normal((n_train + n_test, rank, n_outputs))
    teachers = np.sqrt(dim / rank) * np.einsum("dr,trk->tdk", basis, coef)
    return _teacher_tasks(rng, teachers, n_train, n_test, n_support, n_query, dim, noise, "subspace")


def linear_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5,
                 n_query: int = 10, dim: int = 16, n_outputs: int = 1, noise: float = 0.0) -> TaskSet:
    """Independent linear teachers ``w_t ~ N(0, I_d)`` per task: nothing to transfer but the input
    distribution. Labels ``y = x . w_t / sqrt(d) + noise``, ``x`` on the sphere ``||x||^2 = d``."""
    _check_sizes(n_train, n_test, n_support, n_query, dim)
    require(noise >= 0, f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    teachers = rng.standard_normal((n_train + n_test, dim, n_outputs))
    return _teacher_tasks(rng, teachers, n_train, n_test, n_support, n_query, dim, noise, "linear")


SINUSOID_OFFSET = 2.5


def sinusoid_embed(x: np.ndarray, dim: int = 2) -> np.ndarray:
    """Embed scalar inputs ``x`` on the sphere ``||e||^2 = dim``: ``e = sqrt(dim) u / ||u||`` with
    ``u = (x, c, 0, ..., 0)``, ``c = 2.5``.

    A bias-free ReLU NTK sees only angles and norms, so raw 1-D inputs would collapse to two
    directions; the constant coordinate turns ``x in [-5, 5]`` into distinct angles (+-63 degrees).
    """
    x = np.asarray(x, dtype=np.float64)
    u = np.zeros(x.shape + (dim,))
    u[..., 0] = x
    u[..., 1] = SINUSOID_OFFSET
    return u / np.linalg.norm(u, axis=-1, keepdims=True) * np.sqrt(dim)


def sinusoid_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5,
                   n_query: int = 10, dim: int = 2) -> TaskSet:
    """MAML's sinusoid regression: ``y = A sin(x - phi)``, ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``,
    ``x ~ U[-5, 5]``; inputs embedded by :func:`sinusoid_embed` (``dim >= 2``). Predicting 0 gives
    an expected MSE of about 4.25."""
    _check_sizes(n_train, n_test, n_support, n_query, dim)
    require(dim >= 2, f"sinusoid tasks need dim >= 2 (x and a constant coordinate), got {dim}")
    rng = np.random.default_rng(seed)
    n_tasks = n_train + n_test
    amp = rng.uniform(0.1, 5.0, (n_tasks, 1))
    phase = rng.uniform(0.0, np.pi, (n_tasks, 1))
    x = rng.uniform(-5.0, 5.0, (n_tasks, n_support + n_query))
    y = (amp * np.sin(x - phase))[..., None]
    e = sinusoid_embed(x, dim)
    s, q = slice(0, n_support), slice(n_support, None)
    return TaskSet(e[:n_train, s], y[:n_train, s], e[:n_train, q], y[:n_train, q],
                   e[n_train:, s], y[n_train:, s], e[n_train:, q], y[n_train:, q], name="sinusoid")


def common_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5, n_query: int = 10,
                 dim: int = 16, shared: float = 0.75, n_outputs: int = 1, noise: float = 0.0) -> TaskSet:
    """A shared teacher plus a task-specific one, through a ``tanh`` link.

    ``w ~ N(0, I_d)`` is drawn once, ``w_t ~ N(0, I_d)`` per task; task ``t`` has labels
    ``y = tanh(x . (sqrt(shared) w + sqrt(1 - shared) w_t) / sqrt(d)) + noise * N(0, 1)`` with ``x``
    uniform on the sphere ``||x||^2 = d``. ``shared`` is the weight of the common teacher: with
    ``shared = 0`` nothing transfers, with 1 every task is the same function.
    """
    _check_sizes(n_train, n_test, n_support, n_query, dim)
    require(0 <= shared <= 1, f"shared must be in [0, 1], got {shared!r}")
    require(noise >= 0, f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((1, dim, n_outputs))
    teachers = math.sqrt(shared) * w + math.sqrt(1 - shared) * rng.standard_normal((n_train + n_test, dim, n_outputs))
    n_tasks = n_train + n_test
    xs = _sphere(rng, (n_tasks, n_support + n_query), dim)
    ys = np.tanh(np.einsum("tpd,tdk->tpk", xs, teachers) / math.sqrt(dim)) + noise * rng.standard_normal(
        (n_tasks, n_support + n_query, n_outputs))
    sx, qx, sy, qy = xs[:, :n_support], xs[:, n_support:], ys[:, :n_support], ys[:, n_support:]
    return TaskSet(sx[:n_train], sy[:n_train], qx[:n_train], qy[:n_train],
                   sx[n_train:], sy[n_train:], qx[n_train:], qy[n_train:], name="common")


#: Rendered kanji classes used by :func:`kanji_tasks` (a seeded subset; rendered once and cached).
KANJI_CLASSES = 300


def _downsample(images: np.ndarray, side: int) -> np.ndarray:
    """``uint8 [..., H, W]`` box-averaged to ``[..., side, side]`` floats (``H`` a multiple of
    ``side``), else resized by area with PIL."""
    h = images.shape[-1]
    if h % side == 0:
        f = h // side
        return images.reshape(*images.shape[:-2], side, f, side, f).mean(axis=(-3, -1))
    from PIL import Image

    flat = images.reshape(-1, h, h)
    out = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BOX), np.float64) for im in flat])
    return out.reshape(*images.shape[:-2], side, side)


def _episodes(rng, images: np.ndarray, n_tasks: int, ways: int, shots: int, queries: int, name: str = "kanji"):
    """``n_tasks`` episodes of ``ways`` distinct classes with ``shots`` support and ``queries`` query
    samples per class: inputs ``[T, ways*shots, ...]``, ``[T, ways*queries, ...]`` and labels
    ``0..ways-1``. No image is used twice among the episodes (a class may recur with other images):
    the same image under two label assignments would make the meta-training targets contradict
    each other, which no predictor fitted to them can satisfy."""
    C, S = images.shape[:2]
    need = shots + queries
    require(ways <= C, f"{name} tasks need {ways} classes per task, the split has {C}")
    require(need <= S, f"{name} tasks need {need} samples per class, the data has {S}")
    require(n_tasks * ways * need <= C * (S - S % need),
            f"{name} tasks: {n_tasks} episodes of {ways} x {need} distinct images do not fit in the split's "
            f"{C} classes of {S} images")
    order = np.stack([rng.permutation(S) for _ in range(C)])  # each class's images in a random order
    used = np.zeros(C, dtype=int)
    sx, qx = [], []
    for _ in range(n_tasks):
        free = np.flatnonzero(used + need <= S)
        require(len(free) >= ways, f"{name} tasks: only {len(free)} classes have {need} unused images left for the "
                f"next episode; ask for fewer episodes or smaller ones")
        classes = rng.choice(free, ways, replace=False)
        picks = np.stack([order[c, used[c]:used[c] + need] for c in classes])
        used[classes] += need
        chosen = images[classes[:, None], picks]
        sx.append(chosen[:, :shots].reshape(ways * shots, *images.shape[2:]))
        qx.append(chosen[:, shots:].reshape(ways * queries, *images.shape[2:]))
    return np.stack(sx), np.stack(qx), np.repeat(np.arange(ways), shots), np.repeat(np.arange(ways), queries)


def _check_image_sizes(name, n_train, n_test, n_support, n_query, dim, ways) -> int:
    """Checks of an image family's sizes (before any data is read); returns the image side."""
    _check_sizes(n_train, n_test, n_support, n_query, dim)
    side = math.isqrt(dim)
    require(side * side == dim and side >= 2, f"{name} tasks need a square number of pixels (dim 49 = 7 x 7, 196 "
            f"= 14 x 14), got dim {dim}")
    require(ways >= 2 and n_support % ways == 0 and n_query % ways == 0,
            f"{name} tasks are {ways}-way: the support ({n_support}) and query ({n_query}) sizes must be multiples "
            f"of {ways}")
    return side


def _image_split(data, split: str, n: int, rng, side: int, ways: int, n_support: int, n_query: int, name: str):
    """``n`` episodes of one split of ``data`` as :func:`image_tasks` prepares them: support inputs,
    support targets, query inputs, query targets (``[n, m, side*side]`` and ``[n, m, ways]``)."""
    dim = side * side
    onehot = np.eye(ways) - 1.0 / ways
    images = _downsample(data.splits[split][..., 0], side)
    sx, qx, sl, ql = _episodes(rng, images, n, ways, n_support // ways, n_query // ways, name)
    flat = lambda a: a.reshape(*a.shape[:2], dim)  # noqa: E731
    centre = lambda a: a - a.mean(axis=-1, keepdims=True)  # noqa: E731
    return (on_sphere(centre(flat(sx))), np.broadcast_to(onehot[sl], (n, len(sl), ways)),
            on_sphere(centre(flat(qx))), np.broadcast_to(onehot[ql], (n, len(ql), ways)))


def image_tasks(data, seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5, n_query: int = 10,
                dim: int = 49, ways: int = 5, name: str = "images") -> TaskSet:
    """N-way K-shot episodes of a :class:`ntk_bridge.datasets.loaders.FewShotDataset` (one channel used):
    training tasks from its meta-training classes, test tasks from its meta-test classes,
    ``n_support / ways`` shots and ``n_query / ways`` queries per class.

    Images are averaged down to ``sqrt(dim) x sqrt(dim)`` pixels (``dim`` a square), each image's
    mean is subtracted and the pixels are put on the sphere ``||x||^2 = d``; labels are centred
    one-hot vectors (``1 - 1/ways`` on the true class, ``-1/ways`` elsewhere: ``k = ways``). The task
    set keeps ``image_shape = (side, side, 1)``, so convolutional architectures see images.
    ``seed`` picks the episodes.
    """
    side = _check_image_sizes(name, n_train, n_test, n_support, n_query, dim, ways)
    rng = np.random.default_rng(seed)
    (a, b, c, d), (e, f, g, h) = (_image_split(data, split, n, rng, side, ways, n_support, n_query, name)
                                  for split, n in (("train", n_train), ("test", n_test)))
    return TaskSet(a, b, c, d, e, f, g, h, name=name, image_shape=(side, side, 1))


def image_validation_episodes(data, seed: int = 0, n_val: int = 20, n_support: int = 5, n_query: int = 10,
                              dim: int = 49, ways: int = 5, name: str = "images") -> tuple[np.ndarray, ...]:
    """``n_val`` episodes of ``data``'s meta-validation classes, prepared exactly as
    :func:`image_tasks` prepares its training and test episodes (same sizes, pixels and labels),
    drawn from their own stream ``default_rng([seed, 1])`` so the task set's episodes do not move.
    For networks that need a validation set to stop training (``ntk-bridge fewshot --tasks-of``);
    the closed forms never see it. Returns ``(support_x, support_y, query_x, query_y)``."""
    side = _check_image_sizes(name, 1, 1, n_support, n_query, dim, ways)
    return _image_split(data, "val", int(n_val), np.random.default_rng([seed, 1]), side, ways, n_support, n_query,
                        f"{name} validation")


def image_family_data(family: str, data_dir: str | None = None, max_classes: int = KANJI_CLASSES):
    """The :class:`~ntk_bridge.datasets.loaders.FewShotDataset` behind an image family: the rendered kanji
    (seed 0, ``max_classes`` characters) or the user's Omniglot copy at 28 x 28."""
    require(family in IMAGE_FAMILIES, f"{family!r} is not an image family ({', '.join(IMAGE_FAMILIES)})")
    if family == "kanji":
        from ntk_bridge.datasets.loaders import KanjiConfig, load_kanji

        return load_kanji(KanjiConfig(max_classes=max_classes))
    require(data_dir is not None, "omniglot tasks are read from your copy of Omniglot: pass --data-dir DIR")
    from ntk_bridge.datasets.loaders import load_dataset

    return load_dataset("omniglot", data_dir, 0, 28)


def kanji_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5, n_query: int = 10,
                dim: int = 49, ways: int = 5, max_classes: int = KANJI_CLASSES) -> TaskSet:
    """N-way K-shot episodes of rendered kanji (:func:`ntk_bridge.datasets.loaders.load_kanji`; the
    few-shot path's data), as :func:`image_tasks`: 28 x 28 renders averaged down to
    ``sqrt(dim) x sqrt(dim)``, pixels on the sphere, centred one-hot labels, ``image_shape`` kept.
    ``seed`` picks the episodes; the rendering is fixed (seed 0, ``max_classes`` characters).
    """
    _check_image_sizes("kanji", n_train, n_test, n_support, n_query, dim, ways)
    data = image_family_data("kanji", max_classes=max_classes)
    return image_tasks(data, seed, n_train, n_test, n_support, n_query, dim, ways, name="kanji")


def omniglot_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5, n_query: int = 10,
                   dim: int = 49, ways: int = 5, data_dir: str | None = None) -> TaskSet:
    """N-way K-shot episodes of the user's Omniglot copy (``data_dir`` in the official layout, read by
    :func:`ntk_bridge.datasets.loaders.load_dataset`), as :func:`image_tasks`: background alphabets for
    the training tasks, the test split of the evaluation alphabets for the test tasks."""
    require(data_dir is not None, "omniglot tasks are read from your copy of Omniglot: pass --data-dir DIR")
    _check_image_sizes("omniglot", n_train, n_test, n_support, n_query, dim, ways)
    data = image_family_data("omniglot", data_dir)
    return image_tasks(data, seed, n_train, n_test, n_support, n_query, dim, ways, name="omniglot")


GENERATORS = {"subspace": subspace_tasks, "linear": linear_tasks, "sinusoid": sinusoid_tasks,
              "common": common_tasks, "kanji": kanji_tasks, "omniglot": omniglot_tasks}
#: Families whose inputs are images (their task sets carry ``image_shape``).
IMAGE_FAMILIES = ("kanji", "omniglot")
