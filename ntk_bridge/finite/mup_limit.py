r"""The muP infinite-width limit of the one-hidden-layer linear network, for every method with a
finite-width trainer (MTL, ANIL, MAML, FO-MAML, the baseline), docs/theory.md §8.

The limit is the width-``(d + k)`` network ``f(x) = d^{-1/2} x A B`` of :func:`ntk_bridge.finite.mup.limit_network`
trained by exactly the program that trains finite networks (:func:`ntk_bridge.finite.training.train_networks`):
the same losses, inner loops, outer steps and test-time adaptation, under the same discrete schedule.
It is deterministic (its initialisation is) and costs one network of width ``d + k``: MTL's heads all
start at the same readout ``B_0``, so they share its ``k`` columns of the representation and add none.
Its initial output is exactly 0, so the centred and the raw networks are the same predictor.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ntk_bridge.errors import require
from ntk_bridge.finite.mup import limit_network, limit_width
from ntk_bridge.finite.schedule import TrainingConfig
from ntk_bridge.finite.training import FiniteRun, train_networks
from ntk_bridge.kernels import Architecture
from ntk_bridge.predictors import PredictorConfig
from ntk_bridge.tasks import TaskSet

__all__ = ["MUP", "has_limit", "check_limit", "limit_architecture", "mup_limit_run"]

#: The ``--width`` token of the muP limit (and the ``param`` of its rows).
MUP = "mup"


def has_limit(depth: int, architecture: Architecture) -> bool:
    """Whether the muP limit of this network is computable here: one hidden layer, linear, fully connected."""
    return int(depth) == 1 and architecture.activation == "linear" and architecture.arch == "fc"


def check_limit(depth: int, architecture: Architecture) -> None:
    """``UserError`` unless :func:`has_limit`."""
    require(has_limit(depth, architecture),
            "the muP limit (width 'mup') is computed for the one-hidden-layer linear network only: use --depth 1 "
            f"--activation linear (got depth {depth}, activation {architecture.activation}, arch {architecture.arch})")


def limit_architecture(architecture: Architecture, tasks: TaskSet) -> Architecture:
    """The architecture of the limit's rows: ``param='mup'``, width ``d + k``."""
    return dataclasses.replace(architecture, param="mup", width=limit_width(tasks.dim, tasks.n_outputs),
                               n_outputs=tasks.n_outputs)


def mup_limit_run(tasks: TaskSet, config: PredictorConfig, methods: Sequence[str],
                  architecture: Architecture = Architecture(activation="linear", hidden_w_std=1.0),
                  training: TrainingConfig = TrainingConfig()) -> FiniteRun:
    """Train the muP limit for ``methods`` under the *discrete* ``config``
    (:func:`~ntk_bridge.finite.schedule.discretise` it with the NTK of the same network, as the finite
    networks are). Returns a :class:`~ntk_bridge.finite.training.FiniteRun` of one network (no
    linearised twin: the limit's linearisation is the NTK limit, ``width inf``).

    The standard deviations are the architecture's hidden and readout ``W_std``.
    """
    check_limit(1, architecture)
    arch = limit_architecture(architecture, tasks)
    net = limit_network(tasks.n_outputs, float(arch.hidden_w_std), float(arch.readout_w_std))
    run = train_networks(tasks, 1, arch.width, config, methods, seed=0, n_networks=1, mode="raw", architecture=arch,
                         training=dataclasses.replace(training, linearized=False), network=net)
    require(bool(np.all(run.f0 == 0)), "the muP limit's initial output must be exactly 0")
    return run
