"""Meta-training of MTL, ANIL and MAML under a wall-clock budget, with validation checkpoints.

One outer step draws ``meta_batch`` training episodes and takes one optimizer step on the mean of
the per-episode losses (:mod:`ntk_bridge.fewshot.methods`, ``vmap`` over episodes, ``jit``-compiled
ahead of time so that compilation is timed separately). Optimizers follow the paper: RAdam for MTL,
Adam for the meta-learners, learning rate 1e-3 for both, reduced on plateau.

Clock: ``train_seconds`` counts episode sampling and outer steps only; compilation and validation
are timed apart (``compile_seconds``, ``eval_seconds``). The budget is measured on
``TrainConfig.clock``: ``"wall"`` (wall-clock seconds, ``time.perf_counter``) or ``"cpu"`` (this
process's CPU seconds over all its threads, ``time.process_time``; on a shared machine this is
the fairer measure of a method's cost, since other jobs slow the wall clock of whichever method
happens to run beside them). Both clocks are always recorded (``train_seconds``,
``train_cpu_seconds``). Validation checkpoints fall at every
``1 / checkpoints`` of the run's progress, progress being the larger of ``train_seconds / budget``
and ``steps / max_steps``, plus one before the first step. At each checkpoint the validation
accuracy (fixed episodes of the meta-validation split, the method's own test-time adaptation) is
recorded; the best parameters are kept. Reduce-on-plateau: after ``plateau_patience`` checkpoints
without improvement the learning rate is multiplied by ``plateau_factor``; a further plateau after
``max_lr_drops`` reductions ends the run early ("converged"), freeing the rest of its budget.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.data import FewShotDataset
from ntk_bridge.fewshot.episodes import Episodes, check_episode_shape, fixed_episodes, sample_episodes
from ntk_bridge.fewshot.evaluate import Adaptation, accuracies, episode_scorer, mean_ci95
from ntk_bridge.fewshot.methods import METHODS, meta_loss, mtl_loss, over_episodes
from ntk_bridge.fewshot.models import FewShotNet, ModelConfig, Params

#: Episode streams (see :func:`~ntk_bridge.fewshot.episodes.fixed_episodes`).
VAL_STREAM, TEST_STREAM = 1, 2


@dataclass(frozen=True)
class MethodConfig:
    """Hyper-parameters of one method.

    Attributes:
      method: ``"mtl"``, ``"anil"`` or ``"maml"``.
      optimizer: ``"radam"`` or ``"adam"``.
      lr: outer learning rate.
      meta_batch: episodes per outer step.
      train_queries: query images per class in training episodes (MTL merges them with the support).
      inner_lr, inner_steps: inner loop during meta-training (ANIL/MAML).
      test_inner_steps: inner steps at test time (ANIL/MAML).
      logistic_c: ``C`` of MTL's test-time logistic regression.
    """

    method: str
    optimizer: str
    lr: float = 1e-3
    meta_batch: int = 4
    train_queries: int = 15
    inner_lr: float = 0.4
    inner_steps: int = 1
    test_inner_steps: int = 3
    logistic_c: float = 3.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.optimizer not in ("radam", "adam"):
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose radam or adam")
        if self.meta_batch < 1 or self.inner_steps < 0 or self.test_inner_steps < 0 or self.lr <= 0:
            raise UserError(f"bad {self.method} settings: {self}")

    @property
    def adaptation(self) -> Adaptation:
        return Adaptation(self.method, self.inner_lr, self.test_inner_steps, self.logistic_c)


def default_method_config(method: str, **overrides: Any) -> MethodConfig:
    """Defaults, and why (measured on kanji, 5-way 1-shot, Conv-4 width 32 with LayerNorm, 240 outer steps):

    * MTL: RAdam, lr 1e-3, as the paper. Batches of 16 tasks with 4 images per class (``shots``
      plus 3 more, merged) instead of 4 tasks with ``shots + 15``: the same 320 images per step, but
      four times as many head rows updated, which matters with about 1,000 training classes
      (validation 73% against 67%). Note RAdam's built-in warm-up: its rectified step is about
      0.2x Adam's at step 100 and 0.34x at step 240, so short budgets handicap it (Adam: 87%,
      try ``--set mtl.optimizer=adam``).
    * ANIL: Adam 1e-3; inner loop on the head with step 0.4, 5 steps in training and 10 at test
      (the head-only loop is cheap); 4 tasks of ``shots + 15`` images per class.
    * MAML: Adam 1e-3; MAML's Omniglot inner loop (step 0.4, 1 step); 1 step at test as well,
      since 3 steps of 0.4 diverged without batch normalisation (validation at chance).
    """
    base = {
        "mtl": MethodConfig("mtl", "radam", meta_batch=16, train_queries=3),
        "anil": MethodConfig("anil", "adam", inner_steps=5, test_inner_steps=10),
        "maml": MethodConfig("maml", "adam", inner_steps=1, test_inner_steps=1),
    }
    if method not in base:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return replace(base[method], **overrides)


@dataclass(frozen=True)
class TrainConfig:
    """The run's budget and validation schedule (see the module docstring)."""

    budget_seconds: float
    max_steps: int | None = None
    checkpoints: int = 20
    val_episodes: int = 100
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    max_lr_drops: int = 2
    seed: int = 0
    clock: str = "wall"

    def __post_init__(self) -> None:
        if self.clock not in ("wall", "cpu"):
            raise UserError(f"clock must be 'wall' or 'cpu', got {self.clock!r}")


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
      params: parameters of the best validation checkpoint (numpy leaves).
      history: one dict per checkpoint: ``step, train_seconds, train_cpu_seconds, train_loss,
        train_accuracy, val_accuracy, val_ci95, lr`` (loss and accuracy: means over the outer steps
        since the previous checkpoint, on the training episodes' queries; MTL: on its merged tasks).
      steps, train_seconds, train_cpu_seconds, compile_seconds, eval_seconds: totals (wall-clock
        seconds except ``train_cpu_seconds``).
      stopped: ``"budget"``, ``"max_steps"`` or ``"converged"``.
    """

    params: Params
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    compile_seconds: float = 0.0
    eval_seconds: float = 0.0
    stopped: str = "budget"

    @property
    def best(self) -> dict:
        """The checkpoint with the highest validation accuracy (earliest among ties)."""
        return max(self.history, key=lambda r: (r["val_accuracy"], -r["step"]))

    def seconds_to(self, target: float, clock: str = "wall") -> float:
        """Training seconds (on ``clock``) at the first checkpoint with validation accuracy
        ``>= target`` (inf if none)."""
        key = "train_seconds" if clock == "wall" else "train_cpu_seconds"
        times = [r[key] for r in self.history if r["val_accuracy"] >= target]
        return min(times) if times else float("inf")


def make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """``radam`` or ``adam`` with an injectable float32 learning rate (for reduce-on-plateau)."""
    factory = {"radam": optax.radam, "adam": optax.adam}[name]
    return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(learning_rate=lr)


def make_net(model: ModelConfig, method: str, ways: int, n_train_classes: int, input_shape: tuple[int, ...]) -> FewShotNet:
    """MTL's head has one row per meta-training class; ANIL's and MAML's have ``ways`` rows."""
    return FewShotNet(model, n_train_classes if method == "mtl" else ways, tuple(input_shape))


def make_outer_step(config: MethodConfig, net: FewShotNet, optimizer: optax.GradientTransformation) -> Callable:
    """``step(params, opt_state, batch) -> (params, opt_state, loss, accuracy)`` (not yet jitted).

    ``batch`` is ``(x [B, n, H, W, ch], y [B, n], classes [B, ways])`` for MTL (support and query
    merged) and ``(support_x, support_y, query_x, query_y)`` for ANIL/MAML.
    """
    def batch_loss(params, batch):
        if config.method == "mtl":

            def one(x, y, classes):
                return mtl_loss(net, params, x, y, classes)

        else:

            def one(sx, sy, qx, qy):
                return meta_loss(config.method, net, params, sx, sy, qx, qy, config.inner_lr, config.inner_steps)

        losses, accs = over_episodes(config.method, one, *batch)
        return losses.mean(), accs.mean()

    def step(params, opt_state, batch):
        (loss, acc), grads = jax.value_and_grad(batch_loss, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    return step


def training_batch(config: MethodConfig, images: np.ndarray, ways: int, shots: int, rng: np.random.Generator) -> tuple:
    """One meta-batch of training episodes in the layout :func:`make_outer_step` expects."""
    if config.method == "mtl":
        ep = sample_episodes(images, ways, shots + config.train_queries, 0, config.meta_batch, rng)
        return ep.support_x, ep.support_y, ep.classes
    ep: Episodes = sample_episodes(images, ways, shots, config.train_queries, config.meta_batch, rng)
    return ep.support_x, ep.support_y, ep.query_x, ep.query_y


def train(
    config: MethodConfig,
    run: TrainConfig,
    model: ModelConfig,
    data: FewShotDataset,
    ways: int,
    shots: int,
    on_step: Callable[[int, float, float], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
) -> tuple[FewShotNet, TrainResult]:
    """Train one method on ``data``'s meta-training split for ``ways``-way ``shots``-shot tasks.

    ``on_step(steps, seconds on the run's clock, loss)`` is called after every outer step and
    ``on_checkpoint(record)`` after every validation checkpoint (for progress displays).
    Returns the network and the :class:`TrainResult` (best-validation parameters).
    """
    if run.budget_seconds <= 0 and not run.max_steps:
        raise UserError("a training run needs a positive time budget or a step limit")
    train_images, val_images = data.splits["train"], data.splits["val"]
    check_episode_shape(train_images, ways, shots, config.train_queries)
    check_episode_shape(val_images, ways, shots, 1)
    val_queries = min(15, val_images.shape[1] - shots)
    net = make_net(model, config.method, ways, train_images.shape[0], data.image_shape)
    params = net.init(jax.random.PRNGKey(run.seed))
    optimizer = make_optimizer(config.optimizer, config.lr)
    opt_state = optimizer.init(params)
    rng = np.random.default_rng([run.seed, 1])
    score = episode_scorer(net, config.adaptation)
    result = TrainResult(params=jax.device_get(params))

    tic = time.perf_counter()
    step = jax.jit(make_outer_step(config, net, optimizer), donate_argnums=(0, 1))
    step = step.lower(params, opt_state, training_batch(config, train_images, ways, shots, rng)).compile()
    result.compile_seconds = time.perf_counter() - tic

    best_acc, since_best, drops, lr = -1.0, 0, 0, config.lr
    loss_sum = acc_sum = 0.0
    n_since = 0
    next_checkpoint = 0

    def spent() -> float:
        return result.train_seconds if run.clock == "wall" else result.train_cpu_seconds

    def progress() -> float:
        fractions = [spent() / run.budget_seconds] if run.budget_seconds > 0 else []
        if run.max_steps:
            fractions.append(result.steps / run.max_steps)
        return max(fractions)

    while True:
        if progress() >= next_checkpoint / run.checkpoints or progress() >= 1.0:
            tic = time.perf_counter()
            val_acc, val_ci = mean_ci95(
                accuracies(score, params, fixed_episodes(val_images, ways, shots, val_queries, run.val_episodes, run.seed, VAL_STREAM))
            )
            result.eval_seconds += time.perf_counter() - tic
            record = {
                "step": result.steps,
                "train_seconds": result.train_seconds,
                "train_cpu_seconds": result.train_cpu_seconds,
                "train_loss": loss_sum / n_since if n_since else float("nan"),
                "train_accuracy": acc_sum / n_since if n_since else float("nan"),
                "val_accuracy": val_acc,
                "val_ci95": val_ci,
                "lr": lr,
            }
            result.history.append(record)
            loss_sum = acc_sum = 0.0
            n_since = 0
            if val_acc > best_acc:
                best_acc, since_best = val_acc, 0
                result.params = jax.device_get(params)
            else:
                since_best += 1
            if on_checkpoint is not None:
                on_checkpoint(record)
            next_checkpoint = int(np.floor(progress() * run.checkpoints)) + 1
            if progress() >= 1.0:
                result.stopped = "max_steps" if run.max_steps and result.steps >= run.max_steps else "budget"
                break
            if since_best >= run.plateau_patience:
                if drops >= run.max_lr_drops:
                    result.stopped = "converged"
                    break
                drops, since_best, lr = drops + 1, 0, lr * run.plateau_factor
                opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)

        tic, cpu_tic = time.perf_counter(), time.process_time()
        batch = training_batch(config, train_images, ways, shots, rng)
        params, opt_state, loss, acc = step(params, opt_state, batch)
        loss, acc = float(loss), float(acc)  # waits for the step: honest timing
        result.train_seconds += time.perf_counter() - tic
        result.train_cpu_seconds += time.process_time() - cpu_tic
        result.steps += 1
        loss_sum, acc_sum, n_since = loss_sum + loss, acc_sum + acc, n_since + 1
        if not np.isfinite(loss):
            raise FloatingPointError(f"{config.method}: training loss became {loss} at step {result.steps}")
        if on_step is not None:
            on_step(result.steps, spent(), loss)
    return net, result


def evaluate_split(
    net: FewShotNet,
    config: MethodConfig,
    params: Params,
    images: np.ndarray,
    ways: int,
    shots: int,
    episodes: int,
    seed: int,
    queries: int = 15,
) -> tuple[np.ndarray, float]:
    """Per-episode accuracies ``[episodes]`` on a split's fixed episodes (stream ``TEST_STREAM``) and
    the seconds they took."""
    tic = time.perf_counter()
    stream = fixed_episodes(images, ways, shots, queries, episodes, seed, TEST_STREAM)
    acc = accuracies(episode_scorer(net, config.adaptation), params, stream)
    return acc, time.perf_counter() - tic
