"""The discrete schedule finite networks follow: step counts and sizes (docs/theory.md §2, §5).

A time ``t`` done in ``S`` steps uses the step ``t / S``. :func:`discretise` turns a
:class:`~ntk_bridge.predictors.PredictorConfig` into the discrete one the networks follow, by this
rule (``Theta`` = the *infinite-width* NTK of the depth):

* inner / fine-tuning loops keep the user's times (``inner_time`` ``s = lambda tau`` and
  ``finetune_time`` are the theorem's quantities and mean the same at every depth); when their
  ``*_steps`` are unset, the number of steps is the smallest with
  ``lambda * lambda_max(Theta(X', X')) <= max_inner_step`` over every support set (``Theta``
  bounds both ANIL's ``K`` and MAML's ``Theta``).
* outer loop: ``outer_time = inf`` (the closed forms' default) becomes ``outer_steps`` steps of size
  ``eta = outer_step / lambda_max(Theta(train, train))`` over every training point (supports and
  queries). ``lambda_max`` grows like ``L + 1`` (and like the number of points), so the step shrinks
  with depth and every method's training kernel (``Theta_MTL``, ``Phi``, each below ``Theta`` in
  norm) is stable. A finite ``outer_time`` is kept, with ``outer_steps`` from the config or from
  the same bound.

The closed forms used for comparison are the *discrete* ones with exactly these times and steps.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from ntk_bridge.errors import require
from ntk_bridge.operators import block, own
from ntk_bridge.predictors import PredictorConfig
from ntk_bridge.tasks import TaskSet

__all__ = ["MODES", "TrainingConfig", "discretise", "check_discrete"]

#: How finite networks are compared with the closed forms: ``centred`` (``f - f0`` against the mean
#: predictor) or ``raw`` (``f`` against the full-``f0`` closed form of the network's own ``f0``).
MODES = ("centred", "raw")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How finite networks are trained, beyond the times of a :class:`PredictorConfig`.

    Attributes:
      outer_steps: outer steps when the config leaves ``outer_steps`` unset.
      outer_step: ``eta * lambda_max(Theta(train, train))`` when ``outer_time = inf`` (stable below 2
        for the linearised network; 1 converges the bulk of the spectrum fastest).
      max_inner_step: the largest ``lambda * lambda_max(Theta(X', X'))`` of an inner or fine-tuning
        step when the number of steps is chosen automatically.
      divergence_factor: a loss above this factor times its initial value counts as diverged.
      dtype: ``'float64'`` (default, exact comparisons) or ``'float32'`` (matrix products measured
        about 6x faster on a 2-core CPU; the width errors measured here, above 1e-3, are far above
        float32 round-off; the closed forms stay float64).
      linearized: also train the linearised twin of every network (doubles the cost, roughly).
      batching: how the networks of one call share the compiled program: ``'vmap'`` (batched
        arrays), ``'map'`` (``lax.map``, one network after the other) or ``'auto'``: ``'map'`` on
        CPU, where XLA's batched matrix products measured 1-3x slower than a loop of plain ones
        (``benchmarks/bench_finite.py``), ``'vmap'`` on accelerators.
    """

    outer_steps: int = 300
    outer_step: float = 1.0
    max_inner_step: float = 0.5
    divergence_factor: float = 1e3
    dtype: str = "float64"
    linearized: bool = True
    batching: str = "auto"

    def __post_init__(self):
        require(int(self.outer_steps) >= 1, f"outer_steps must be >= 1, got {self.outer_steps!r}")
        require(math.isfinite(self.outer_step) and self.outer_step > 0,
                f"outer_step must be > 0, got {self.outer_step!r}")
        require(math.isfinite(self.max_inner_step) and self.max_inner_step > 0,
                f"max_inner_step must be > 0, got {self.max_inner_step!r}")
        require(self.divergence_factor > 1, f"divergence_factor must be > 1, got {self.divergence_factor!r}")
        require(self.dtype in ("float64", "float32"), f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        require(self.batching in ("auto", "vmap", "map"),
                f"batching must be 'auto', 'vmap' or 'map', got {self.batching!r}")

    def resolved_batching(self) -> str:
        if self.batching != "auto":
            return self.batching
        return "map" if jax.default_backend() == "cpu" else "vmap"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _top_eig(blocks: np.ndarray) -> float:
    """Largest eigenvalue over a batch of symmetric blocks ``[..., n, n]``."""
    blocks = np.asarray(blocks, dtype=np.float64)
    return float(np.max(np.linalg.eigvalsh(0.5 * (blocks + np.swapaxes(blocks, -1, -2)))))


def discretise(config: PredictorConfig, Theta, tasks: TaskSet,
               training: TrainingConfig = TrainingConfig()) -> PredictorConfig:
    """The discrete, finite-time :class:`PredictorConfig` that finite networks follow.

    Args:
      config: the user's config (times; steps may be unset; ``outer_time`` may be ``inf``).
      Theta: the infinite-width NTK ``[P, P]`` over ``tasks.all_points()`` at the network's depth.
      tasks: the task set.
      training: step-size rule (see the module docstring).

    Returns a config with every ``*_steps`` set and a finite ``outer_time``: use it for the closed
    forms too, so both sides take exactly the same steps.
    """
    require(config.inner_l2 is None, "finite networks train the inner loop by gradient steps; "
            "inner_l2 (an l2 inner problem at optimum) has no finite-network counterpart here")
    require(config.mtl_heads == "shared", "finite MTL networks initialise every head to the same w0 "
            "(mtl_heads='shared'); 'independent' is not supported here")
    lay = tasks.layout
    sl = lay.slices()
    Theta = np.asarray(Theta, dtype=np.float64)
    require(Theta.shape == (lay.n_points, lay.n_points),
            f"Theta must be [{lay.n_points}, {lay.n_points}] over tasks.all_points(), got {Theta.shape}")
    train = np.r_[sl["train_support"], sl["train_query"]]

    def steps_for(time, steps, top):
        if steps is not None:
            return int(steps)
        return max(1, int(math.ceil(time * top / training.max_inner_step - 1e-12)))

    inner_steps = steps_for(config.inner_time, config.inner_steps,
                            _top_eig(own(block(Theta, sl["train_support"], sl["train_support"], lay.n_train, lay.n_train))))
    finetune_steps = steps_for(config.finetune_time, config.finetune_steps,
                               _top_eig(own(block(Theta, sl["test_support"], sl["test_support"], lay.n_test, lay.n_test))))
    top_outer = _top_eig(Theta[np.ix_(train, train)])
    if math.isinf(config.outer_time):  # (PredictorConfig allows no outer_steps with an infinite time)
        outer_steps = int(training.outer_steps)
        outer_time = outer_steps * training.outer_step / top_outer
    else:
        outer_time = float(config.outer_time)
        outer_steps = int(config.outer_steps) if config.outer_steps is not None else \
            max(1, int(math.ceil(outer_time * top_outer / training.outer_step - 1e-12)))
    return dataclasses.replace(config, inner_steps=inner_steps, finetune_steps=finetune_steps,
                               outer_time=float(outer_time), outer_steps=outer_steps)



def check_discrete(config: PredictorConfig) -> None:
    """Finite networks follow a discrete config (every ``*_steps`` set, a finite outer time)."""
    require(config.discrete, "finite networks need a discrete config with a finite outer_time: use discretise()")
    require(config.mtl_heads == "shared", "finite networks support neither inner_l2 nor mtl_heads='independent'")

