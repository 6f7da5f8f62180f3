"""Dataset loaders on fixtures generated in the real on-disk layouts, the kanji cache, and their errors."""
import pickle

import numpy as np
import pytest
from PIL import Image

from ntk_bridge.datasets import loaders as data
from ntk_bridge.errors import UserError


def test_omniglot_layout_shapes_inversion_and_disjoint_splits(tmp_path, write_omniglot):
    write_omniglot(tmp_path)
    ds = data.load_omniglot(tmp_path, image_size=28, seed=0)
    assert ds.splits["train"].shape == (2 * 3, 4, 28, 28, 1)
    assert ds.splits["val"].shape[0] + ds.splits["test"].shape[0] == 4 * 3
    assert ds.splits["val"].shape[0] == 3  # a quarter of the 4 evaluation alphabets, whole alphabets
    images = ds.splits["train"]
    assert images.dtype == np.uint8 and images.max() == 255 and np.median(images) == 0  # ink is 255
    names = {s: set(n) for s, n in ds.class_names.items()}
    assert not (names["train"] & names["val"]) and not (names["val"] & names["test"]) and not (names["train"] & names["test"])
    alphabets = {s: {n.split("/")[1] for n in names[s]} for s in ("val", "test")}
    assert not (alphabets["val"] & alphabets["test"])


def test_omniglot_accepts_torchvision_nesting_and_load_dataset(tmp_path, write_omniglot):
    write_omniglot(tmp_path / "omniglot-py")
    ds = data.load_dataset("omniglot", tmp_path, image_size=14)
    assert ds.image_shape == (14, 14, 1)


@pytest.mark.parametrize("make", ["empty", "only_background", "no_pngs"])
def test_omniglot_wrong_layout_names_the_expected_layout(tmp_path, make):
    if make == "only_background":
        (tmp_path / "images_background" / "A" / "c1").mkdir(parents=True)
    if make == "no_pngs":
        (tmp_path / "images_background" / "A" / "c1").mkdir(parents=True)
        (tmp_path / "images_evaluation" / "B" / "c1").mkdir(parents=True)
    with pytest.raises(UserError, match="images_background/<alphabet>/<character>"):
        data.load_dataset("omniglot", tmp_path)


def _write_mini_imagenet(root, classes=(3, 2, 2), per_class=5, side=84):
    rng = np.random.default_rng(0)
    for split, n_classes in zip(("train", "val", "test"), classes):
        n = n_classes * per_class
        images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        class_dict = {f"n{split}{c:03d}": list(range(c * per_class, (c + 1) * per_class)) for c in range(n_classes)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as handle:
            pickle.dump({"image_data": images, "class_dict": class_dict}, handle)


def test_mini_imagenet_pickles_and_resize(tmp_path):
    _write_mini_imagenet(tmp_path)
    ds = data.load_mini_imagenet(tmp_path)
    assert ds.splits["train"].shape == (3, 5, 84, 84, 3) and ds.splits["val"].shape == (2, 5, 84, 84, 3)
    with open(tmp_path / "mini-imagenet-cache-train.pkl", "rb") as handle:
        stored = pickle.load(handle)
    first = sorted(stored["class_dict"])[0]
    np.testing.assert_array_equal(ds.splits["train"][0], stored["image_data"][stored["class_dict"][first]])
    small = data.load_dataset("mini-imagenet", tmp_path, image_size=21)
    assert small.splits["test"].shape == (2, 5, 21, 21, 3)


def test_mini_imagenet_missing_or_malformed(tmp_path):
    with pytest.raises(UserError, match="mini-imagenet-cache-train.pkl"):
        data.load_dataset("mini-imagenet", tmp_path)
    _write_mini_imagenet(tmp_path)
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as handle:
        pickle.dump({"images": np.zeros((2, 84, 84, 3), np.uint8)}, handle)
    with pytest.raises(UserError, match="class_dict"):
        data.load_dataset("mini-imagenet", tmp_path)


def test_load_dataset_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        data.load_dataset("cifar")
    with pytest.raises(UserError, match="--data-dir"):
        data.load_dataset("omniglot")
    with pytest.raises(UserError, match="does not exist"):
        data.load_dataset("omniglot", tmp_path / "nowhere")


def test_digits_split_is_disjoint_and_seeded():
    a, b = data.load_digits_dataset(0), data.load_digits_dataset(1)
    assert a.summary() == {"train": (4, 174), "val": (3, 174), "test": (3, 174)}
    labels = [set(a.class_names[s]) for s in data.SPLITS]
    assert set().union(*labels) == {str(d) for d in range(10)} and sum(map(len, labels)) == 10
    assert a.class_names != b.class_names
    assert a.splits["train"].dtype == np.uint8 and a.splits["train"].max() == 255


def test_split_classes_partitions():
    parts = data.split_classes(100, (0.7, 0.1, 0.2), seed=3)
    assert [len(p) for p in parts] == [70, 10, 20]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    with pytest.raises(UserError):
        data.split_classes(2, (0.0, 0.5, 0.5), seed=0)


def test_kanji_subset_is_cached_deterministic_and_split(tmp_path, monkeypatch):
    monkeypatch.setenv("NTK_BRIDGE_CACHE", str(tmp_path))
    config = data.KanjiConfig(seed=5, samples_per_class=4, max_classes=30)
    first = data.load_kanji(config)
    cached = list(tmp_path.glob("kanji_r*.npz"))
    assert len(cached) == 1
    again = data.load_kanji(config)
    for split in data.SPLITS:
        np.testing.assert_array_equal(first.splits[split], again.splits[split])
    assert first.summary() == {"train": (21, 4), "val": (3, 4), "test": (6, 4)}
    chars = [set(first.class_names[s]) for s in data.SPLITS]
    assert sum(map(len, chars)) == len(set().union(*chars)) == 30
    assert "KanjiVG" in first.credit and "Creative Commons" in first.credit
    other = data.load_kanji(data.KanjiConfig(seed=6, samples_per_class=4, max_classes=30))
    assert len(list(tmp_path.glob("kanji_r*.npz"))) == 2
    assert not np.array_equal(first.splits["train"], other.splits["train"])
