"""Meta-training of one few-shot method until its plateau rule stops it, with validation checkpoints.

One outer step draws ``meta_batch`` training episodes and takes one optimizer step on the mean of
the per-episode losses (the method object's :meth:`~ntk_bridge.fewshot.methods.FewShotMethod.episode_loss`,
``jit``-compiled ahead of time so that compilation is timed separately). Optimizers and schedules:
:mod:`ntk_bridge.fewshot.optim`.

Clock: ``train_seconds`` counts episode sampling and outer steps only; compilation and validation
are timed apart (``compile_seconds``, ``eval_seconds``). ``train_cpu_seconds`` is the same interval
in this process's CPU seconds over all its threads (``time.process_time``): on a shared machine the
fairer measure of a method's cost, since other jobs slow the wall clock of whichever method happens
to run beside them. A time cap (``budget_seconds``) is measured on ``TrainConfig.clock``.

Stopping: a run ends at the first of (a) its plateau rule, (b) ``max_steps`` outer steps, (c)
``budget_seconds`` of training on the clock, (d) divergence. Validation checkpoints fall at every
``1 / checkpoints`` of the run's progress, progress being the larger of ``steps / max_steps`` and
``train_seconds / budget_seconds`` (either may be absent), plus one before the first step; with a
step cap alone they fall at fixed steps, so the run is reproducible on any machine. At each
checkpoint the validation accuracy (fixed episodes of the meta-validation split, the method's own
test-time adaptation) is recorded and the best parameters are kept. Plateau rule: after
``plateau_patience`` checkpoints without improvement the learning rate is multiplied by
``plateau_factor`` (with ``schedule="cosine"`` it is left alone); a further plateau after
``max_lr_drops`` such events ends the run (``stopped="converged"``). Divergence: a training loss
that is not finite or exceeds ``divergence_factor`` times the larger of the first step's loss and
``log(ways)`` (the loss of uniform guessing) ends the run with ``status="diverged"``; the best
checkpoint so far is kept and tested.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import jax
import numpy as np
import optax

from ntk_bridge.datasets.episodes import Episodes, check_episode_shape, fixed_episodes
from ntk_bridge.datasets.loaders import FewShotDataset
from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.evaluate import accuracies, episode_scorer, mean_ci95
from ntk_bridge.fewshot.methods import MethodConfig, default_method_config  # noqa: F401  (re-exported)
from ntk_bridge.fewshot.models import FewShotNet, ModelConfig, Params
from ntk_bridge.fewshot.optim import make_optimizer, set_learning_rate

#: Episode streams (see :func:`~ntk_bridge.datasets.episodes.fixed_episodes`).
VAL_STREAM, TEST_STREAM = 1, 2
CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class TrainConfig:
    """The run's caps, validation schedule and plateau rule (see the module docstring).

    ``budget_seconds = 0`` means no time cap (then ``max_steps`` is required).
    """

    budget_seconds: float = 0.0
    max_steps: int | None = None
    checkpoints: int = 60
    val_episodes: int = 50
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    max_lr_drops: int = 1
    seed: int = 0
    clock: str = "cpu"
    divergence_factor: float = 10.0

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise UserError(f"clock must be 'wall' or 'cpu', got {self.clock!r}")
        if not np.isfinite(self.budget_seconds) or self.budget_seconds < 0:
            raise UserError(f"the time budget must be a finite number >= 0, got {self.budget_seconds}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"the step cap must be a positive integer, got {self.max_steps}")
        if self.budget_seconds == 0 and not self.max_steps:
            raise UserError("a training run needs a positive time budget or a step cap")
        if self.checkpoints < 1 or self.val_episodes < 1 or self.plateau_patience < 1 or self.max_lr_drops < 0:
            raise UserError("checkpoints, validation episodes and plateau patience must be positive")
        if not 0 < self.plateau_factor < 1 or not self.divergence_factor > 1:
            raise UserError("plateau_factor must lie in (0, 1) and divergence_factor exceed 1")


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
      params: parameters of the best validation checkpoint (numpy leaves).
      history: one dict per checkpoint: ``step, train_seconds, train_cpu_seconds, train_loss,
        train_accuracy, val_accuracy, val_ci95, lr`` (loss and accuracy: means over the outer steps
        since the previous checkpoint, on the training episodes' queries; MTL: on its merged tasks).
      steps, train_seconds, train_cpu_seconds, compile_seconds, eval_seconds: totals (wall-clock
        seconds except ``train_cpu_seconds``; ``compile_seconds`` is near 0 when an earlier run of the
        same setting compiled the step, see :func:`compiled_step`).
      stopped: ``"converged"``, ``"max_steps"``, ``"budget"`` or ``"diverged"``.
      status: ``"ok"`` or ``"diverged"`` (:data:`ntk_bridge.metrics.STATUSES`).
    """

    params: Params
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    compile_seconds: float = 0.0
    eval_seconds: float = 0.0
    stopped: str = "budget"
    status: str = "ok"

    @property
    def best(self) -> dict:
        """The checkpoint with the highest validation accuracy (earliest among ties)."""
        return max(self.history, key=lambda r: (r["val_accuracy"], -r["step"]))

    def first_reaching(self, target: float) -> dict | None:
        """The first checkpoint with validation accuracy ``>= target`` (None if none)."""
        return next((r for r in self.history if r["val_accuracy"] >= target), None)

    def seconds_to(self, target: float, clock: str = "cpu") -> float:
        """Training seconds (on ``clock``) at the first checkpoint reaching ``target`` (inf if none)."""
        hit = self.first_reaching(target)
        return float("inf") if hit is None else hit["train_seconds" if clock == "wall" else "train_cpu_seconds"]


def make_net(model: ModelConfig, config: MethodConfig, ways: int, n_train_classes: int, input_shape: tuple[int, ...]) -> FewShotNet:
    """The method's network: MTL's head has one row per meta-training class, ANIL's and MAML's
    ``ways`` rows, R2D2 and ProtoNet none (a 1-output head that their parameters drop)."""
    return FewShotNet(model, config.spec.head_outputs(ways, n_train_classes), tuple(input_shape))


def make_outer_step(config: MethodConfig, net: FewShotNet, optimizer: optax.GradientTransformation, ways: int) -> Callable:
    """``step(params, opt_state, batch) -> (params, opt_state, loss, accuracy)`` (not yet jitted);
    ``batch`` is one :meth:`~ntk_bridge.fewshot.methods.FewShotMethod.training_batch`."""
    method = config.spec

    def batch_loss(params, batch):
        losses, accs = method.over_episodes(lambda *ep: method.episode_loss(net, params, config, ways, *ep), *batch)
        return losses.mean(), accs.mean()

    def step(params, opt_state, batch):
        (loss, acc), grads = jax.value_and_grad(batch_loss, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    return step


def snapshot(params: Params) -> Params:
    """A copy of ``params`` in numpy arrays that own their memory. ``jax.device_get`` alone is not a copy on
    the CPU: its arrays can view the device buffers, and a step whose executable JAX loaded from its persistent
    compilation cache writes its donated inputs in place even then (jax 0.5.3), so a best-checkpoint snapshot
    taken that way became the later parameters (``tests/fewshot/test_train.py``)."""
    return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), jax.device_get(params))


@functools.lru_cache(maxsize=16)
def compiled_step(config: MethodConfig, net: FewShotNet, ways: int, max_steps: int | None, batch_spec: tuple) -> tuple:
    """``(optimizer, compiled outer step)`` for batches of ``batch_spec`` (``((shape, dtype), ...)``),
    compiled once per setting and reused by every seed (parameters and optimizer state are donated)."""
    optimizer = make_optimizer(config, max_steps)
    params = jax.eval_shape(lambda: config.spec.init_params(net, jax.random.PRNGKey(0)))
    state = jax.eval_shape(optimizer.init, params)
    batch = tuple(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in batch_spec)
    step = jax.jit(make_outer_step(config, net, optimizer, ways), donate_argnums=(0, 1))
    return optimizer, step.lower(params, state, batch).compile()


class SplitSource:
    """Training and validation episodes drawn from a dataset's splits (the default source):
    fresh meta-training episodes at every step (:meth:`FewShotMethod.training_batch`), fixed
    validation episodes of the meta-validation split (stream ``VAL_STREAM``, up to 15 queries per
    class)."""

    def __init__(self, data: FewShotDataset):
        self.train_images, self.val_images = data.splits["train"], data.splits["val"]
        self.n_train_classes = self.train_images.shape[0]
        self.image_shape = data.image_shape

    def check(self, config: MethodConfig, ways: int, shots: int) -> None:
        check_episode_shape(self.train_images, ways, shots, config.train_queries)
        check_episode_shape(self.val_images, ways, shots, 1)

    def training_batch(self, config: MethodConfig, ways: int, shots: int, rng: np.random.Generator) -> tuple:
        return config.spec.training_batch(config, self.train_images, ways, shots, rng)

    def validation(self, run: TrainConfig, ways: int, shots: int) -> Iterable[Episodes]:
        queries = min(15, self.val_images.shape[1] - shots)
        return fixed_episodes(self.val_images, ways, shots, queries, run.val_episodes, run.seed, VAL_STREAM)


class FixedSource:
    """Training and validation episodes given once (a task set's: ``ntk-bridge fewshot --tasks-of``).

    Each outer step meta-trains on ``meta_batch`` of the training episodes, drawn without
    replacement within the step (with replacement when there are fewer episodes than that), as
    they are: their support and query sizes replace ``MethodConfig.train_queries``; MTL merges
    support and query and has one head row per ``classes`` entry (the caller gives every training
    episode its own rows: one head per task). Every checkpoint validates on all of ``val``.
    """

    def __init__(self, train: Episodes, val: Episodes, image_shape: tuple[int, ...]):
        self.train, self.val = train, val
        self.n_train_classes = int(train.classes.max()) + 1
        self.image_shape = tuple(image_shape)

    def check(self, config: MethodConfig, ways: int, shots: int) -> None:
        for name, ep in (("training", self.train), ("validation", self.val)):
            if ep.support_x.shape[1] != ways * shots or ep.classes.shape[1] != ways or ep.n_episodes < 1:
                raise UserError(f"the {name} episodes are not {ways}-way {shots}-shot")

    def training_batch(self, config: MethodConfig, ways: int, shots: int, rng: np.random.Generator) -> tuple:
        n = self.train.n_episodes
        pick = rng.choice(n, size=config.meta_batch, replace=config.meta_batch > n)
        ep = self.train
        if config.spec.merged:
            return (np.concatenate([ep.support_x[pick], ep.query_x[pick]], axis=1),
                    np.concatenate([ep.support_y[pick], ep.query_y[pick]], axis=1), ep.classes[pick])
        return ep.support_x[pick], ep.support_y[pick], ep.query_x[pick], ep.query_y[pick]

    def validation(self, run: TrainConfig, ways: int, shots: int) -> Iterable[Episodes]:
        return chunks(self.val)


def chunks(episodes: Episodes, size: int = 50) -> Iterator[Episodes]:
    """``episodes`` in batches of at most ``size`` (bounded memory when scoring)."""
    for start in range(0, episodes.n_episodes, size):
        part = slice(start, start + size)
        yield Episodes(episodes.support_x[part], episodes.support_y[part], episodes.query_x[part],
                       episodes.query_y[part], episodes.classes[part])


def train(
    config: MethodConfig,
    run: TrainConfig,
    model: ModelConfig,
    data: FewShotDataset | SplitSource | FixedSource,
    ways: int,
    shots: int,
    on_step: Callable[[int, float, float], None] | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
) -> tuple[FewShotNet, TrainResult]:
    """Train one method for ``ways``-way ``shots``-shot tasks on ``data``: a dataset (its
    meta-training split, :class:`SplitSource`) or an episode source (:class:`FixedSource`).

    ``on_step(steps, seconds on the run's clock, loss)`` is called after every outer step and
    ``on_checkpoint(record)`` after every validation checkpoint (for progress displays).
    Returns the network and the :class:`TrainResult` (best-validation parameters).
    """
    method = config.spec
    source = SplitSource(data) if isinstance(data, FewShotDataset) else data
    source.check(config, ways, shots)
    net = make_net(model, config, ways, source.n_train_classes, source.image_shape)
    params = method.init_params(net, jax.random.PRNGKey(run.seed))
    rng = np.random.default_rng([run.seed, 1])
    score = episode_scorer(net, config)
    result = TrainResult(params=snapshot(params))
    explode = float("inf")  # set from the first step's loss

    tic = time.perf_counter()
    spec = tuple((a.shape, str(a.dtype)) for a in source.training_batch(config, ways, shots, np.random.default_rng(0)))
    optimizer, step = compiled_step(config, net, ways, run.max_steps, spec)
    opt_state = optimizer.init(params)
    result.compile_seconds = time.perf_counter() - tic

    best_acc, since_best, plateaus, lr = -1.0, 0, 0, config.lr
    loss_sum = acc_sum = 0.0
    n_since = next_checkpoint = 0

    def spent() -> float:
        return result.train_seconds if run.clock == "wall" else result.train_cpu_seconds

    def progress() -> float:
        fractions = [spent() / run.budget_seconds] if run.budget_seconds > 0 else []
        if run.max_steps:
            fractions.append(result.steps / run.max_steps)
        return max(fractions)

    while True:
        diverged = result.stopped == "diverged"
        if diverged or progress() >= next_checkpoint / run.checkpoints or progress() >= 1.0:
            tic = time.perf_counter()
            val_acc = val_ci = float("nan")
            if not diverged:
                val_acc, val_ci = mean_ci95(accuracies(score, params, source.validation(run, ways, shots)))
            result.eval_seconds += time.perf_counter() - tic
            record = {
                "step": result.steps, "train_seconds": result.train_seconds,
                "train_cpu_seconds": result.train_cpu_seconds,
                "train_loss": loss_sum / n_since if n_since else float("nan"),
                "train_accuracy": acc_sum / n_since if n_since else float("nan"),
                "val_accuracy": val_acc, "val_ci95": val_ci, "lr": lr,
            }
            if not diverged:
                result.history.append(record)
            loss_sum = acc_sum = 0.0
            n_since = 0
            if val_acc > best_acc:  # NaN (non-finite outputs) never counts as better
                best_acc, since_best = val_acc, 0
                result.params = snapshot(params)
            elif not diverged:
                since_best += 1
            if on_checkpoint is not None and not diverged:
                on_checkpoint(record)
            if diverged:
                result.status = "diverged"
                break
            next_checkpoint = int(np.floor(progress() * run.checkpoints + 1e-9)) + 1
            if progress() >= 1.0:
                result.stopped = "max_steps" if run.max_steps and result.steps >= run.max_steps else "budget"
                break
            if since_best >= run.plateau_patience:
                if plateaus >= run.max_lr_drops:
                    result.stopped = "converged"
                    break
                plateaus, since_best = plateaus + 1, 0
                if config.schedule == "plateau":
                    lr *= run.plateau_factor
                    set_learning_rate(opt_state, lr)

        tic, cpu_tic = time.perf_counter(), time.process_time()
        batch = source.training_batch(config, ways, shots, rng)
        params, opt_state, loss, acc = step(params, opt_state, batch)
        loss, acc = float(loss), float(acc)  # waits for the step: honest timing
        result.train_seconds += time.perf_counter() - tic
        result.train_cpu_seconds += time.process_time() - cpu_tic
        result.steps += 1
        if result.steps == 1 and np.isfinite(loss):
            explode = run.divergence_factor * max(loss, float(np.log(ways)))
        if not np.isfinite(loss) or loss > explode:
            result.stopped = "diverged"
            continue
        loss_sum, acc_sum, n_since = loss_sum + loss, acc_sum + acc, n_since + 1
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
    """Per-episode accuracies ``[episodes]`` on a split's fixed episodes (stream ``TEST_STREAM``;
    NaN where the network's outputs were not finite) and the seconds they took."""
    tic = time.perf_counter()
    stream = fixed_episodes(images, ways, shots, queries, episodes, seed, TEST_STREAM)
    acc = accuracies(episode_scorer(net, config), params, stream)
    return acc, time.perf_counter() - tic
