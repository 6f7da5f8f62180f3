"""Image data on the ground floor: the sweep's image task families and the few-shot wing read it alike.

* :mod:`~ntk_bridge.datasets.render` -- Omniglot-style handwriting drawn from KanjiVG strokes;
* :mod:`~ntk_bridge.datasets.loaders` -- datasets as ``uint8 [classes, samples, H, W, ch]`` per split
  (kanji, Omniglot and mini-ImageNet from disk, scikit-learn digits), the rendered kanji cached;
* :mod:`~ntk_bridge.datasets.episodes` -- seeded N-way K-shot episodes of one split.

It imports only the ground floor (:mod:`ntk_bridge.errors`, :mod:`ntk_bridge.runtime`,
:mod:`ntk_bridge.runs`), never :mod:`ntk_bridge.families` or :mod:`ntk_bridge.fewshot`, which both
import it.
"""

__all__ = ["DATASETS", "NATIVE_SIZE"]

#: Datasets ``ntk-bridge fewshot --dataset`` knows (:func:`ntk_bridge.datasets.loaders.load_dataset`).
DATASETS = ("kanji", "omniglot", "mini-imagenet", "digits")
#: Their native image side in pixels.
NATIVE_SIZE = {"kanji": 28, "omniglot": 28, "mini-imagenet": 84, "digits": 8}
