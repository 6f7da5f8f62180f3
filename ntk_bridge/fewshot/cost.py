"""How long ``ntk-bridge fewshot`` will run, estimated from its sizes before anything trains.

Every training run (method x shot setting x training seed) is counted to its caps: the plateau rule
usually stops a run earlier, so the estimate is an upper bound of the training and a fair figure for
the rest. One run costs

* compiling its outer step once per (method, shot setting): :data:`COMPILE_SECONDS`;
* ``steps`` outer steps (the step cap, or as many as the time cap allows, whichever is smaller;
  with a time cap alone, the cap itself), each ``c_m + k_m * images * macs``
  seconds, where ``images`` is the images of one outer step (``meta_batch`` episodes of
  ``ways * (shots + train_queries)`` images, or a task set's episodes as they are), ``macs`` the
  body's multiply-adds per image (:func:`body_macs`) and ``c_m, k_m`` the method's constants
  (:data:`STEP_COST`; the forward and backward pass of the body dominates every method's step, MAML's
  second-order inner step adds about a fifth at these sizes);
* ``checkpoints + 1`` validations of ``val_episodes`` episodes and one test of ``test_episodes``
  episodes, each episode ``e_m + f * images * macs`` seconds (:data:`EPISODE_COST`: MTL's
  logistic regression in scikit-learn is most of its ``e_m``).

The constants were measured on this project's 2-core development machine (2 BLAS threads, jax
0.5.3, a load average of 2 to 10 from other jobs) by training each method for 20 outer steps on
kanji (28 x 28 pixels, 300 classes, 5-way 1-shot, the methods' default meta-batches and queries: 160
images per step) with Conv-4 bodies of 32 and 64 channels (``macs`` 2.63 and 10.07 million) and
testing it twice on 20 episodes. ``c_m`` and ``k_m`` solve the two widths' CPU-seconds per step
(``time.process_time``, all threads; the wall clock under that load ran 1.2 to 4.6 times longer,
so the CPU clock is the stable figure); the measured CPU ms per step:

=========  ==========  ==========  =======  =========
method     32 ch       64 ch       c_m (s)  k_m (s)
=========  ==========  ==========  =======  =========
MTL        144         432         0.042    2.4e-10
ANIL       130         377         0.043    2.1e-10
MAML       177         489         0.067    2.6e-10
R2D2       136         423         0.035    2.4e-10
ProtoNet   131         405         0.034    2.3e-10
=========  ==========  ==========  =======  =========

(``benchmarks/bench_fewshot.py``, pinned to one core, measured 148 to 184 CPU ms per step at 32
channels.) A test episode of the 32-channel bodies took 32 to 90 ms of wall time (MTL's logistic
regression the most): ``f = 3e-10`` s per image multiply-add and ``e_m`` the rest; compilation
(outer step and scorer) 3 to 40 s per method, MAML's the longest (:data:`COMPILE_SECONDS`). The
estimate is in seconds of CPU time, about the wall time of an unloaded machine: a loaded one runs
longer. It is an order of magnitude; what matters is that a run of hours is not started unasked
(:data:`ntk_bridge.budget.LONG_SECONDS`). Checked against real runs in ``docs/fewshot.md``.
"""
from __future__ import annotations

import math

__all__ = ["body_macs", "run_seconds", "estimate", "dataset_estimate", "episodes_estimate", "STEP_COST", "EPISODE_COST",
           "FORWARD_PER_MAC", "COMPILE_SECONDS"]

#: ``method: (c_m seconds per outer step, k_m seconds per image multiply-add)`` (measured, see above).
STEP_COST = {"mtl": (0.042, 2.4e-10), "anil": (0.043, 2.1e-10), "maml": (0.067, 2.6e-10), "r2d2": (0.035, 2.4e-10),
             "protonet": (0.034, 2.3e-10)}
#: ``method: e_m`` seconds per test or validation episode besides its forward passes (measured, see above).
EPISODE_COST = {"mtl": 0.027, "anil": 0.005, "maml": 0.005, "r2d2": 0.005, "protonet": 0.005}
#: ``f``: seconds per image multiply-add of a test or validation episode's forward passes.
FORWARD_PER_MAC = 3e-10
#: Seconds to compile one method's outer step and its scorer (measured; MAML's is the longest).
COMPILE_SECONDS = {"mtl": 6.0, "anil": 10.0, "maml": 40.0, "r2d2": 5.0, "protonet": 6.0}


def body_macs(model, image_shape) -> int:
    """Multiply-adds of the body's forward pass on one image of ``image_shape`` ``(H, W, ch)``
    (:class:`~ntk_bridge.fewshot.models.ModelConfig`): Conv-4 blocks ``H_b W_b 9 c_in c_out``, each
    halving the side (``ceil``); an MLP ``d w + (depth - 1) w^2``."""
    h, w, c = (int(s) for s in image_shape)
    if model.arch == "mlp":
        return h * w * c * model.width + (model.depth - 1) * model.width ** 2
    total = 0
    for _ in range(model.depth):
        total += h * w * 9 * c * model.width
        h, w, c = math.ceil(h / 2), math.ceil(w / 2), model.width
    return total


def run_seconds(method, config, macs: int, step_images: int, val_images: int, test_images: int) -> dict:
    """Seconds of one training run of ``method`` (:class:`~ntk_bridge.fewshot.methods.MethodConfig`)
    under ``config``'s caps (:class:`~ntk_bridge.fewshot.experiment.FewShotConfig`): ``train``,
    ``validate``, ``test`` (see the module docstring; ``*_images``: images of one episode, or of one
    outer step for ``step_images``)."""
    c, k = STEP_COST[method.method]
    e = EPISODE_COST[method.method]
    step = c + k * step_images * macs
    train = step * config.max_steps if config.max_steps else math.inf
    if config.budget_seconds:
        train = min(train, float(config.budget_seconds))
    episode = lambda images: e + FORWARD_PER_MAC * images * macs  # noqa: E731
    return dict(train=train, validate=(config.checkpoints + 1) * config.val_episodes * episode(val_images),
                test=config.test_episodes * episode(test_images), step=step)


def estimate(config, image_shape, step_images, val_images, test_images) -> dict:
    """Seconds of the whole comparison of ``config`` on images of ``image_shape``: the sum over shot
    settings, methods and seeds of :func:`run_seconds`, plus each (method, shot setting)'s
    compilation. ``step_images(method, shots)``, ``val_images(shots)``, ``test_images(shots)``:
    images of one outer step, one validation episode, one test episode. Returns ``seconds``,
    ``runs`` and ``train_seconds`` (the outer steps alone)."""
    macs = body_macs(config.model, image_shape)
    seconds = train = 0.0
    for shots in config.shots:
        for method in config.methods:
            one = run_seconds(method, config, macs, step_images(method, shots), val_images(shots), test_images(shots))
            per_seed = one["train"] + one["validate"] + one["test"]
            seconds += COMPILE_SECONDS[method.method] + len(config.seeds) * per_seed
            train += len(config.seeds) * one["train"]
    return dict(seconds=seconds, train_seconds=train, runs=len(config.shots) * len(config.methods) * len(config.seeds))


def dataset_estimate(config, image_shape, samples_per_class: int) -> dict:
    """:func:`estimate` of a run on a dataset's splits (validation episodes have ``min(15, samples -
    shots)`` queries per class, as :class:`~ntk_bridge.fewshot.train.SplitSource` draws them)."""
    ways = config.ways
    return estimate(config, image_shape,
                    lambda m, shots: m.meta_batch * ways * (shots + m.train_queries),
                    lambda shots: ways * (shots + max(1, min(15, samples_per_class - shots))),
                    lambda shots: ways * (shots + config.test_queries))


def episodes_estimate(config, episodes) -> dict:
    """:func:`estimate` of a run on a task set's episodes
    (:class:`~ntk_bridge.fewshot.on_tasks.TaskEpisodes`): every episode as it is."""
    size = lambda ep: int(ep.support_x.shape[1] + ep.query_x.shape[1])  # noqa: E731
    return estimate(config, episodes.image_shape, lambda m, shots: m.meta_batch * size(episodes.train),
                    lambda shots: size(episodes.val), lambda shots: size(episodes.test))
