"""Few-shot path: first-order MTL against ANIL and MAML on N-way K-shot classification.

Data flows one way, one module per step:

* :mod:`~ntk_bridge.fewshot.render` -- Omniglot-style handwriting drawn from KanjiVG strokes;
* :mod:`~ntk_bridge.fewshot.data` -- datasets as ``uint8 [classes, samples, H, W, ch]`` per split
  (kanji, Omniglot and mini-ImageNet from disk, scikit-learn digits);
* :mod:`~ntk_bridge.fewshot.episodes` -- seeded N-way K-shot episodes;
* :mod:`~ntk_bridge.fewshot.models` -- Conv-4 / MLP bodies as neural-tangents ``stax`` triples;
* :mod:`~ntk_bridge.fewshot.methods` -- MTL, ANIL and MAML objectives and inner loops;
* :mod:`~ntk_bridge.fewshot.train` -- budgeted training with validation checkpoints;
* :mod:`~ntk_bridge.fewshot.evaluate` -- test-time adaptation, accuracy with 95% intervals, the
  raw-pixel nearest-neighbour baseline;
* :mod:`~ntk_bridge.fewshot.experiment` -- the comparison under one budget, tidy tables;
* :mod:`~ntk_bridge.fewshot.report` -- files, the accuracy-vs-time figure, the printed table;
* :mod:`~ntk_bridge.fewshot.command` -- the ``ntk-bridge fewshot`` command.

Networks run in float32 (parameters and data are cast explicitly) although ``import ntk_bridge``
enables float64.
"""

__all__ = ["DATASETS", "NATIVE_SIZE"]

#: Datasets ``ntk-bridge fewshot --dataset`` knows (:func:`ntk_bridge.fewshot.data.load_dataset`).
DATASETS = ("kanji", "omniglot", "mini-imagenet", "digits")
#: Their native image side in pixels.
NATIVE_SIZE = {"kanji": 28, "omniglot": 28, "mini-imagenet": 84, "digits": 8}
