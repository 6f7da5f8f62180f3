"""Few-shot datasets: images grouped by class, in disjoint meta-train / meta-validation / meta-test splits.

Every loader returns a :class:`FewShotDataset` whose split ``name`` holds a uint8 array
``[C, S, H, W, ch]``: ``C`` classes, ``S`` samples per class (the same for every class; loaders cut
each class to the smallest count), ink / intensity in 0..255. Classes never appear in two splits.

* ``kanji``: handwriting rendered from KanjiVG strokes (:mod:`ntk_bridge.datasets.render`), cached as
  ``.npz`` under :func:`cache_dir`; a seeded split of the characters (70/10/20%).
* ``omniglot``: the official folder layout ``images_background/<alphabet>/<character>/*.png`` and
  ``images_evaluation/...``; background characters for meta-training, the evaluation alphabets split
  (seeded) into meta-validation (a quarter of them) and meta-test.
* ``mini-imagenet``: the common pickle layout ``mini-imagenet-cache-{train,val,test}.pkl``.
* ``digits``: scikit-learn's 8x8 digits, a seeded 4/3/3 split of the ten digits (sanity set, at most
  3-way).
"""
from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ntk_bridge.datasets import DATASETS, NATIVE_SIZE, render
from ntk_bridge.errors import UserError

SPLITS = ("train", "val", "test")

KANJIVG_CREDIT = (
    "Stroke data: KanjiVG (https://kanjivg.tagaini.net), copyright (C) 2009/2010/2011 Ulrich Apel, "
    "licensed under Creative Commons Attribution-Share Alike 3.0 "
    "(http://creativecommons.org/licenses/by-sa/3.0/). The rendered images are an adaptation of "
    "KanjiVG and are under the same licence."
)


@dataclass(frozen=True)
class FewShotDataset:
    """Images by class for each split.

    Attributes:
      name: dataset name.
      splits: ``{"train" | "val" | "test": uint8 [C, S, H, W, ch]}``.
      class_names: ``{split: (name of class 0, name of class 1, ...)}``.
      credit: attribution text for the data (empty when the user supplied it).
    """

    name: str
    splits: dict[str, np.ndarray]
    class_names: dict[str, tuple[str, ...]]
    credit: str = ""

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, ch)``."""
        return tuple(self.splits["train"].shape[2:])

    def summary(self) -> dict[str, tuple[int, int]]:
        """``{split: (classes, samples per class)}``."""
        return {s: tuple(a.shape[:2]) for s, a in self.splits.items()}


def cache_dir() -> Path:
    """ntk_bridge's cache folder (:func:`ntk_bridge.runtime.cache_dir`: ``$NTK_BRIDGE_CACHE``, else
    ``$XDG_CACHE_HOME/ntk_bridge``, else ``~/.cache/ntk_bridge``), created on demand."""
    from ntk_bridge.runtime import cache_dir as root

    folder = Path(root())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the cache folder {folder} ({exc.strerror or exc}); set NTK_BRIDGE_CACHE "
                        "to a writable folder") from None
    return folder


def _read_render_cache(path: Path, config: "KanjiConfig") -> tuple[np.ndarray, np.ndarray] | None:
    """The cached ``(images, codepoints)`` if ``path`` holds a complete entry for ``config``
    (uint8 ``[C, samples, size, size]``, one distinct codepoint per class; the archive's CRCs checked
    while reading), else ``None``: a missing, cut short, altered or foreign file is never trusted."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            images, codepoints = stored["images"], stored["codepoints"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    size, samples = config.image_size, config.samples_per_class
    ok = (images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (samples, size, size)
          and codepoints.ndim == 1 and codepoints.dtype.kind in "iu" and len(codepoints) == len(images) > 0
          and len(np.unique(codepoints)) == len(codepoints))
    return (images, codepoints.astype(np.int64)) if ok else None


def split_classes(n_classes: int, fractions: tuple[float, float, float], seed: int) -> list[np.ndarray]:
    """A seeded partition of ``range(n_classes)`` into three index arrays with the given fractions.

    Sizes are ``round(f * n)`` for validation and test (at least one class each when ``f > 0``);
    the training split takes the rest.
    """
    order = np.random.default_rng([seed, 7]).permutation(n_classes)
    n_val = max(int(round(fractions[1] * n_classes)), int(fractions[1] > 0))
    n_test = max(int(round(fractions[2] * n_classes)), int(fractions[2] > 0))
    n_train = n_classes - n_val - n_test
    if n_train < 1:
        raise UserError(f"{n_classes} classes are too few to split with fractions {fractions}")
    return [np.sort(order[:n_train]), np.sort(order[n_train : n_train + n_val]), np.sort(order[n_train + n_val :])]


def _checked(dataset: FewShotDataset) -> FewShotDataset:
    for split, images in dataset.splits.items():
        if images.ndim != 5 or images.dtype != np.uint8 or images.shape[1] < 2:
            raise UserError(f"{dataset.name}/{split}: expected uint8 [C, S>=2, H, W, ch], got {images.dtype} {images.shape}")
    return dataset


# --------------------------------------------------------------------------------------- kanji
@dataclass(frozen=True)
class KanjiConfig:
    """What the rendered kanji dataset depends on (all of it is in the cache key)."""

    seed: int = 0
    samples_per_class: int = 20
    max_strokes: int = 8
    image_size: int = 28
    scripts: tuple[str, ...] = ("kanji", "kana")
    duplicate_threshold: float = 0.9
    max_classes: int | None = None
    warp: render.WarpConfig = render.WarpConfig()

    def cache_key(self) -> str:
        payload = {"renderer": render.RENDERER_VERSION, "kanjivg": render.kanjivg_version(), **asdict(self)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def render_kanji(config: KanjiConfig, progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render (or read from the cache) every character: ``(images uint8 [C, S, H, W], codepoints [C])``.

    Characters: base KanjiVG glyphs of the chosen scripts with at most ``max_strokes`` strokes, near
    duplicates dropped (:func:`render.drop_near_duplicates`), then, if ``max_classes`` is set, a
    seeded subset of that many. ``progress(done, total)`` is called while rendering.
    """
    path = cache_dir() / f"kanji_r{render.RENDERER_VERSION}_{config.cache_key()}.npz"
    cached = _read_render_cache(path, config)
    if cached is not None:
        return cached
    codepoints = render.drop_near_duplicates(
        render.list_characters(config.max_strokes, config.scripts), config.duplicate_threshold, config.image_size
    )
    if config.max_classes is not None:
        pick = np.random.default_rng([config.seed, 11]).permutation(len(codepoints))[: config.max_classes]
        codepoints = [codepoints[i] for i in np.sort(pick)]
    images = np.empty((len(codepoints), config.samples_per_class, config.image_size, config.image_size), np.uint8)
    for i, codepoint in enumerate(codepoints):
        images[i] = render.render_character(codepoint, config.samples_per_class, config.seed, config.image_size, config.warp)
        if progress is not None:
            progress(i + 1, len(codepoints))
    _write_render_cache(path, images, np.asarray(codepoints, np.int64))
    return images, np.asarray(codepoints, np.int64)


def _write_render_cache(path: Path, images: np.ndarray, codepoints: np.ndarray) -> None:
    """Replace the cache entry atomically (:func:`ntk_bridge.runs.atomic_write`: a crash never leaves
    a part); a cache that cannot be written (a full disk, a read-only folder) only costs the next run
    the rendering again."""
    import io

    from ntk_bridge.runs import atomic_write

    buf = io.BytesIO()
    np.savez_compressed(buf, images=images, codepoints=codepoints)
    try:
        atomic_write(str(path), buf.getvalue())
    except OSError:
        pass


def load_kanji(
    config: KanjiConfig = KanjiConfig(),
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    progress: Callable[[int, int], None] | None = None,
) -> FewShotDataset:
    """Rendered KanjiVG handwriting with a seeded class split (``config.seed`` seeds both)."""
    images, codepoints = render_kanji(config, progress)
    parts = split_classes(len(codepoints), fractions, config.seed)
    return _checked(
        FewShotDataset(
            name="kanji",
            splits={s: images[idx][..., None] for s, idx in zip(SPLITS, parts)},
            class_names={s: tuple(chr(c) for c in codepoints[idx]) for s, idx in zip(SPLITS, parts)},
            credit=KANJIVG_CREDIT,
        )
    )


# ------------------------------------------------------------------------------------ omniglot
OMNIGLOT_LAYOUT = (
    "expected DIR/images_background/<alphabet>/<character>/*.png and DIR/images_evaluation/<alphabet>/"
    "<character>/*.png (the unzipped official Omniglot archives; DIR/omniglot-py/... is accepted too)"
)


def _omniglot_root(data_dir: Path) -> Path:
    for root in (data_dir, data_dir / "omniglot-py"):
        if (root / "images_background").is_dir() and (root / "images_evaluation").is_dir():
            return root
    raise UserError(f"Omniglot not found in {data_dir}: {OMNIGLOT_LAYOUT}")


def _read_omniglot_half(folder: Path, image_size: int) -> dict[str, dict[str, list[np.ndarray]]]:
    """``{alphabet: {character: [uint8 [image_size, image_size], ...]}}``, ink 255 on 0."""
    half: dict[str, dict[str, list[np.ndarray]]] = {}
    for alphabet in sorted(p for p in folder.iterdir() if p.is_dir()):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            images = []
            for png in sorted(character.glob("*.png")):
                with Image.open(png) as im:
                    gray = im.convert("L").resize((image_size, image_size), Image.BOX)
                images.append(255 - np.asarray(gray, np.uint8))
            if images:
                half.setdefault(alphabet.name, {})[character.name] = images
    if not half:
        raise UserError(f"no PNG images under {folder}: {OMNIGLOT_LAYOUT}")
    return half


def _stack_classes(classes: dict[str, list[np.ndarray]], where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """``uint8 [C, S, ...]`` with ``S`` the smallest class size (each class cut to ``S``)."""
    smallest = min(len(v) for v in classes.values())
    if smallest < 2:
        raise UserError(f"{where}: every class needs at least 2 images")
    names = tuple(sorted(classes))
    return np.stack([np.stack(classes[n][:smallest]) for n in names]), names


def load_omniglot(data_dir: Path | str, image_size: int = 28, seed: int = 0, val_fraction: float = 0.25) -> FewShotDataset:
    """Omniglot from the official folder layout, images box-filtered to ``image_size`` and inverted.

    Meta-train: every background character (964). Meta-validation / meta-test: the evaluation
    alphabets, a seeded ``val_fraction`` of them for validation and the rest for test, so that no
    alphabet is shared by validation and test.
    """
    root = _omniglot_root(Path(data_dir))
    background = _read_omniglot_half(root / "images_background", image_size)
    evaluation = _read_omniglot_half(root / "images_evaluation", image_size)
    alphabets = sorted(evaluation)
    if len(alphabets) < 2:
        raise UserError(f"{root / 'images_evaluation'}: need at least 2 alphabets to split validation from test")
    order = np.random.default_rng([seed, 13]).permutation(len(alphabets))
    n_val = min(max(1, int(round(val_fraction * len(alphabets)))), len(alphabets) - 1)
    groups = {  # class names: half/alphabet/character
        "train": {f"images_background/{a}/{c}": v for a, chars in background.items() for c, v in chars.items()},
        "val": {f"images_evaluation/{alphabets[i]}/{c}": v for i in order[:n_val] for c, v in evaluation[alphabets[i]].items()},
        "test": {f"images_evaluation/{alphabets[i]}/{c}": v for i in order[n_val:] for c, v in evaluation[alphabets[i]].items()},
    }
    splits, names = {}, {}
    for split, classes in groups.items():
        images, names[split] = _stack_classes(classes, f"omniglot/{split}")
        splits[split] = images[..., None]
    return _checked(FewShotDataset("omniglot", splits, names))


# ------------------------------------------------------------------------------- mini-ImageNet
MINI_IMAGENET_LAYOUT = (
    "expected DIR/mini-imagenet-cache-train.pkl, DIR/mini-imagenet-cache-val.pkl and "
    "DIR/mini-imagenet-cache-test.pkl, each a pickled dict with 'image_data' (uint8 [N, 84, 84, 3]) "
    "and 'class_dict' ({class name: [indices into image_data]})"
)


def load_mini_imagenet(data_dir: Path | str, image_size: int = 84) -> FewShotDataset:
    """mini-ImageNet from the common pickle layout (the published Ravi & Larochelle split).

    The pickles are trusted input (unpickling runs code): only load files you made or downloaded
    yourself. Images are resized with a box filter when ``image_size != 84``.
    """
    data_dir = Path(data_dir)
    paths = {s: data_dir / f"mini-imagenet-cache-{s}.pkl" for s in SPLITS}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise UserError(f"mini-ImageNet not found in {data_dir} (missing {', '.join(missing)}): {MINI_IMAGENET_LAYOUT}")
    splits, names = {}, {}
    for split, path in paths.items():
        with open(path, "rb") as handle:
            stored = pickle.load(handle)
        if not isinstance(stored, dict) or not {"image_data", "class_dict"} <= set(stored):
            raise UserError(f"{path}: wrong content; {MINI_IMAGENET_LAYOUT}")
        data = np.asarray(stored["image_data"])
        if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
            raise UserError(f"{path}: image_data is {data.dtype} {data.shape}; {MINI_IMAGENET_LAYOUT}")
        if image_size != data.shape[1]:
            data = np.stack([np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BOX)) for im in data])
        classes = {name: list(data[np.asarray(idx, int)]) for name, idx in stored["class_dict"].items()}
        splits[split], names[split] = _stack_classes(classes, f"mini-imagenet/{split}")
    return _checked(FewShotDataset("mini-imagenet", splits, names))


# ------------------------------------------------------------------------------------- digits
def load_digits_dataset(seed: int = 0) -> FewShotDataset:
    """scikit-learn's 8x8 digits (1,797 images, intensities 0..16 scaled to 0..255), ten classes split
    4/3/3 by a seeded permutation: a small sanity set for at most 3-way tasks."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    by_class = {str(d): list(images[digits.target == d]) for d in range(10)}
    stacked, labels = _stack_classes(by_class, "digits")
    order = np.random.default_rng([seed, 17]).permutation(10)
    parts = [np.sort(order[:4]), np.sort(order[4:7]), np.sort(order[7:])]
    return _checked(
        FewShotDataset(
            name="digits",
            splits={s: stacked[idx][..., None] for s, idx in zip(SPLITS, parts)},
            class_names={s: tuple(labels[i] for i in idx) for s, idx in zip(SPLITS, parts)},
            credit="scikit-learn's copy of the UCI Optical Recognition of Handwritten Digits data (Alpaydin & Kaynak).",
        )
    )


@dataclass(frozen=True)
class DataSpec:
    """Which dataset to load and how (the arguments of :func:`load_dataset`); :meth:`check` validates
    them without rendering or reading any image."""

    name: str = "kanji"
    data_dir: str | None = None
    data_seed: int = 0
    image_size: int | None = None
    max_classes: int | None = None

    def check(self) -> None:
        """Raise :class:`UserError` for a bad name, size or class count, or a data folder without
        the expected layout (checked by file names only)."""
        check_data_source(self.name, self.data_dir, self.image_size, self.max_classes)

    def load(self, progress: Callable[[int, int], None] | None = None) -> "FewShotDataset":
        return load_dataset(self.name, self.data_dir, self.data_seed, self.image_size, self.max_classes, progress)


def check_data_source(name: str, data_dir: Path | str | None = None, image_size: int | None = None,
                      max_classes: int | None = None) -> None:
    """The checks of :func:`load_dataset` that need no image: name, sizes, the data folder's layout."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    size = image_size or NATIVE_SIZE[name]
    if size < 4:
        raise UserError(f"image size must be at least 4, got {size}")
    if max_classes is not None and name != "kanji":
        raise UserError("--max-classes applies to the kanji dataset only")
    if max_classes is not None and max_classes < 3:
        raise UserError(f"--max-classes must be at least 3 (one class per split), got {max_classes}")
    if name == "digits" and image_size not in (None, 8):
        raise UserError("digits are 8x8; leave the image size at its default")
    if name in ("kanji", "digits"):
        return
    layout = OMNIGLOT_LAYOUT if name == "omniglot" else MINI_IMAGENET_LAYOUT
    if data_dir is None:
        raise UserError(f"dataset {name!r} is read from disk: pass --data-dir ({layout})")
    if not Path(data_dir).is_dir():
        raise UserError(f"data dir {data_dir} does not exist; {layout}")
    if name == "omniglot":
        _omniglot_root(Path(data_dir))
    else:
        missing = [f"mini-imagenet-cache-{s}.pkl" for s in SPLITS if not (Path(data_dir) / f"mini-imagenet-cache-{s}.pkl").is_file()]
        if missing:
            raise UserError(f"mini-ImageNet not found in {data_dir} (missing {', '.join(missing)}): {MINI_IMAGENET_LAYOUT}")


def load_dataset(
    name: str,
    data_dir: Path | str | None = None,
    seed: int = 0,
    image_size: int | None = None,
    max_classes: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FewShotDataset:
    """Load a dataset by name (:data:`DATASETS`); ``seed`` fixes rendering and class splits.

    ``data_dir`` is required for ``omniglot`` and ``mini-imagenet`` and ignored otherwise;
    ``image_size`` defaults to :data:`NATIVE_SIZE`; ``max_classes`` (kanji only) renders a seeded
    subset of the characters, for quick runs.
    """
    check_data_source(name, data_dir, image_size, max_classes)
    size = image_size or NATIVE_SIZE[name]
    if name == "kanji":
        return load_kanji(KanjiConfig(seed=seed, image_size=size, max_classes=max_classes), progress=progress)
    if name == "digits":
        return load_digits_dataset(seed)
    if name == "omniglot":
        return load_omniglot(data_dir, size, seed)
    return load_mini_imagenet(data_dir, size)
