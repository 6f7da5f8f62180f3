"""N-way K-shot episodes drawn from one split of a :class:`~ntk_bridge.datasets.loaders.FewShotDataset`.

An episode (a task) picks ``ways`` distinct classes of the split in random order; class ``j`` of the
episode gets label ``j``. Each class contributes ``shots`` support and ``queries`` query images,
drawn without replacement, so support and query never share an image. Episodes only ever see one
split's array, so meta-train, meta-validation and meta-test classes cannot mix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ntk_bridge.errors import UserError


@dataclass(frozen=True)
class Episodes:
    """A batch of ``E`` episodes (float32 images in [0, 1]).

    Attributes:
      support_x: ``[E, ways * shots, H, W, ch]``, grouped by label (label ``j`` at rows
        ``j*shots .. (j+1)*shots - 1``).
      support_y: ``[E, ways * shots]`` int32 labels in ``0..ways-1``.
      query_x: ``[E, ways * queries, H, W, ch]``, grouped by label likewise.
      query_y: ``[E, ways * queries]`` int32.
      classes: ``[E, ways]`` int32: the split's class index behind each label (MTL's head rows).
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    classes: np.ndarray

    @property
    def n_episodes(self) -> int:
        return self.support_x.shape[0]


def check_episode_shape(images: np.ndarray, ways: int, shots: int, queries: int) -> None:
    """Raise :class:`UserError` unless ``ways``-way ``shots``-shot episodes with ``queries`` queries
    per class fit a split ``images`` of shape ``[C, S, H, W, ch]``."""
    n_classes, n_samples = images.shape[:2]
    if ways < 2 or shots < 1 or queries < 0:
        raise UserError(f"need ways >= 2, shots >= 1, queries >= 0; got {ways}, {shots}, {queries}")
    if ways > n_classes:
        raise UserError(f"{ways}-way episodes need {ways} classes but the split has {n_classes}")
    if shots + queries > n_samples:
        raise UserError(f"{shots} shots + {queries} queries exceed the {n_samples} images per class")


def sample_episodes(
    images: np.ndarray, ways: int, shots: int, queries: int, n_episodes: int, rng: np.random.Generator
) -> Episodes:
    """Draw ``n_episodes`` episodes from a split ``images`` (uint8 ``[C, S, H, W, ch]``).

    Vectorised: the classes of each episode are the first ``ways`` entries of a random permutation of
    ``range(C)`` (an argsort of uniform noise), the images of each class the first
    ``shots + queries`` of a permutation of ``range(S)``.
    """
    check_episode_shape(images, ways, shots, queries)
    n_classes, n_samples = images.shape[:2]
    classes = np.argsort(rng.random((n_episodes, n_classes)), axis=1)[:, :ways]
    picks = np.argsort(rng.random((n_episodes, ways, n_samples)), axis=2)[:, :, : shots + queries]
    chosen = images[classes[:, :, None], picks].astype(np.float32) / np.float32(255)  # [E, ways, K+Q, H, W, ch]
    shape = images.shape[2:]
    labels = np.arange(ways, dtype=np.int32)
    return Episodes(
        support_x=chosen[:, :, :shots].reshape(n_episodes, ways * shots, *shape),
        support_y=np.broadcast_to(np.repeat(labels, shots), (n_episodes, ways * shots)).copy(),
        query_x=chosen[:, :, shots:].reshape(n_episodes, ways * queries, *shape),
        query_y=np.broadcast_to(np.repeat(labels, queries), (n_episodes, ways * queries)).copy(),
        classes=classes.astype(np.int32),
    )


def fixed_episodes(
    images: np.ndarray,
    ways: int,
    shots: int,
    queries: int,
    n_episodes: int,
    seed: int,
    stream: int = 0,
    chunk: int = 50,
) -> Iterator[Episodes]:
    """A reproducible stream of ``n_episodes`` episodes in batches of at most ``chunk``.

    Batch ``b`` is drawn with ``default_rng([seed, stream, b])``: the same ``(seed, stream)`` gives
    the same episodes to every method (paired comparisons), distinct ``stream`` values give
    independent sets (validation vs test), and memory stays bounded for large test sets.
    """
    for b, start in enumerate(range(0, n_episodes, chunk)):
        count = min(chunk, n_episodes - start)
        yield sample_episodes(images, ways, shots, queries, count, np.random.default_rng([seed, stream, b]))
