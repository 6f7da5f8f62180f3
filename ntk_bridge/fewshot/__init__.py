"""Few-shot path: first-order MTL against ANIL, MAML, R2D2 and ProtoNet on N-way K-shot classification.

Data flows one way, one module per step:

* :mod:`ntk_bridge.datasets` (below this wing, shared with the sweep's image families) -- the kanji
  renderer, the loaders (``uint8 [classes, samples, H, W, ch]`` per split) and seeded N-way K-shot
  episodes;
* :mod:`~ntk_bridge.fewshot.models` -- Conv-4 / MLP bodies as neural-tangents ``stax`` triples;
* :mod:`~ntk_bridge.fewshot.methods` -- one object per method (objective, adaptation, needs) in the
  registry ``METHODS``;
* :mod:`~ntk_bridge.fewshot.optim` -- optimizers, warm-up and learning-rate schedules;
* :mod:`~ntk_bridge.fewshot.train` -- training to a plateau (or a step / time cap) with validation
  checkpoints;
* :mod:`~ntk_bridge.fewshot.evaluate` -- test-time adaptation, accuracy with 95% intervals, the
  raw-pixel nearest-neighbour baseline;
* :mod:`~ntk_bridge.fewshot.experiment` -- every method x shots x seed under the same rules, tidy
  tables, time-to-accuracy; :func:`~ntk_bridge.fewshot.experiment.run_fewshot` writes a run folder;
* :mod:`~ntk_bridge.fewshot.report` -- files, the accuracy-vs-cost figure, the printed tables;
* :mod:`~ntk_bridge.fewshot.command` -- the ``ntk-bridge fewshot`` command.

Result rows carry the house's statuses (:data:`ntk_bridge.metrics.STATUSES`): ``ok``, ``diverged``
(training loss non-finite or above 10 times the larger of its first value and ``log(ways)``; the run
stopped and its best checkpoint tested), ``nonfinite`` (NaN/inf network outputs at test).

Networks run in float32 (parameters and data are cast explicitly) although ``import ntk_bridge``
enables float64.
"""

__all__ = ["METHOD_NAMES"]

#: Names of the methods in :data:`ntk_bridge.fewshot.methods.METHODS` (kept equal by an assertion
#: there; listed here so the command's ``--help`` needs no JAX).
METHOD_NAMES = ("mtl", "anil", "maml", "r2d2", "protonet")
