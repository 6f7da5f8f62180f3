"""Episode sampler: shapes, labels, provenance of every image, seeding, and errors."""
import numpy as np
import pytest

from ntk_bridge.datasets.episodes import fixed_episodes, sample_episodes
from ntk_bridge.datasets.loaders import load_digits_dataset
from ntk_bridge.errors import UserError


def _tagged_split(n_classes=12, n_samples=10, offset=0):
    """uint8 [C, S, 4, 4, 1] whose pixel (0,0) is the global class id and pixel (0,1) the sample id."""
    images = np.zeros((n_classes, n_samples, 4, 4, 1), np.uint8)
    images[:, :, 0, 0, 0] = np.arange(n_classes)[:, None] + offset
    images[:, :, 0, 1, 0] = np.arange(n_samples)[None, :]
    return images


def _tags(x):
    return np.rint(x[..., 0, 0, 0] * 255).astype(int), np.rint(x[..., 0, 1, 0] * 255).astype(int)


def test_shapes_dtypes_and_labels():
    ep = sample_episodes(_tagged_split(), ways=5, shots=2, queries=3, n_episodes=7, rng=np.random.default_rng(0))
    assert ep.support_x.shape == (7, 10, 4, 4, 1) and ep.query_x.shape == (7, 15, 4, 4, 1)
    assert ep.support_x.dtype == np.float32 and ep.support_y.dtype == np.int32 and ep.classes.shape == (7, 5)
    np.testing.assert_array_equal(ep.support_y[0], np.repeat(np.arange(5), 2))
    np.testing.assert_array_equal(ep.query_y[3], np.repeat(np.arange(5), 3))
    assert 0.0 <= ep.support_x.min() and ep.support_x.max() <= 1.0


def test_every_image_comes_from_its_labelled_class_without_reuse():
    ep = sample_episodes(_tagged_split(), ways=4, shots=3, queries=5, n_episodes=50, rng=np.random.default_rng(1))
    s_class, s_sample = _tags(ep.support_x)
    q_class, q_sample = _tags(ep.query_x)
    for e in range(50):
        assert len(set(ep.classes[e])) == 4
        np.testing.assert_array_equal(s_class[e], ep.classes[e][ep.support_y[e]])
        np.testing.assert_array_equal(q_class[e], ep.classes[e][ep.query_y[e]])
        for label in range(4):
            used = np.concatenate([s_sample[e][ep.support_y[e] == label], q_sample[e][ep.query_y[e] == label]])
            assert len(set(used)) == 8  # support and query never share an image


def test_classes_never_leak_between_splits():
    """Episodes only index their own split: with splits tagged by disjoint class-id ranges, every image
    of a validation or test episode carries an id of that split."""
    splits = {"train": _tagged_split(12, 10, 0), "val": _tagged_split(6, 10, 100), "test": _tagged_split(8, 10, 200)}
    for name, lo in (("train", 0), ("val", 100), ("test", 200)):
        ep = sample_episodes(splits[name], 5, 1, 2, 40, np.random.default_rng(2))
        ids = np.concatenate([_tags(ep.support_x)[0].ravel(), _tags(ep.query_x)[0].ravel()])
        assert ids.min() >= lo and ids.max() < lo + splits[name].shape[0]


def test_classes_and_labels_are_shuffled_uniformly():
    ep = sample_episodes(_tagged_split(), 5, 1, 1, 4000, np.random.default_rng(3))
    counts = np.bincount(ep.classes.ravel(), minlength=12)
    # Each class is in a 5-way episode with probability 5/12: 1666.7 expected, sd about 31.
    assert np.all(np.abs(counts - 4000 * 5 / 12) < 5 * 31), counts
    first_label_counts = np.bincount(ep.classes[:, 0], minlength=12)
    assert np.all(np.abs(first_label_counts - 4000 / 12) < 5 * 17.6), first_label_counts


def test_seeding():
    images = load_digits_dataset().splits["train"]
    a = sample_episodes(images, 3, 1, 2, 5, np.random.default_rng(7))
    b = sample_episodes(images, 3, 1, 2, 5, np.random.default_rng(7))
    c = sample_episodes(images, 3, 1, 2, 5, np.random.default_rng(8))
    np.testing.assert_array_equal(a.support_x, b.support_x)
    assert not np.array_equal(a.query_x, c.query_x)
    s1 = [e.classes for e in fixed_episodes(images, 3, 1, 2, 120, seed=0, stream=1)]
    s2 = [e.classes for e in fixed_episodes(images, 3, 1, 2, 120, seed=0, stream=1)]
    s3 = [e.classes for e in fixed_episodes(images, 3, 1, 2, 120, seed=0, stream=2)]
    assert [len(x) for x in s1] == [50, 50, 20]
    assert all(np.array_equal(x, y) for x, y in zip(s1, s2))
    assert not all(np.array_equal(x, y) for x, y in zip(s1, s3))


@pytest.mark.parametrize("ways,shots,queries,match", [
    (13, 1, 1, "split has 12"), (5, 6, 5, "exceed the 10 images"), (1, 1, 1, "ways >= 2"), (5, 0, 1, "shots >= 1"),
])
def test_errors(ways, shots, queries, match):
    with pytest.raises(UserError, match=match):
        sample_episodes(_tagged_split(), ways, shots, queries, 1, np.random.default_rng(0))
