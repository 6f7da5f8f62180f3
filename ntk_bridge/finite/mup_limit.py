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

__all__ = ["MUP", "has_limit", "check_limit", "limit_architecture", "mup_limit_run", "limit_rows"]

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


def limit_rows(cells, keys, tasks: TaskSet, arch, training, methods, rcond: float):
    """``(key, rows)`` of a sweep's muP-limit cells (width ``'mup'``) for MTL, the baseline and ``methods``
    (``rcond``: the ridge floor of the discretisation): the limit trained under the discrete schedule the finite
    networks of depth 1 follow (:func:`~ntk_bridge.finite.schedule.discretise` with the NTK of the same
    network), one row per method and test task in the :data:`ntk_bridge.metrics.COLUMNS` schema
    (``network = 'mean'``, ``mode = 'mean'``: the limit is deterministic and its initial output is 0).
    ``arch`` and ``training`` are the sweep's built architecture and training settings
    (:func:`ntk_bridge.build.architecture`, :func:`ntk_bridge.build.training`)."""
    from ntk_bridge import methods as registry
    from ntk_bridge import metrics
    from ntk_bridge.finite.schedule import discretise
    from ntk_bridge.kernels import kernels_by_depth

    methods = registry.ordered((registry.MTL.name, registry.BASELINE.name) + tuple(methods))
    kernels = next(kernels_by_depth(tasks.all_points(), depths=[1], architecture=arch))
    M = tasks.layout.n_test
    for cell, key in zip(cells, keys):
        dcfg = discretise(cell.predictor_config(rcond), kernels.ntk, tasks, training)
        run = mup_limit_run(tasks, dcfg, methods, arch, training)
        extra = {m: dict(kernel_movement=np.repeat(run.kernel_movement[m], M)[None],
                         train_loss_rel=np.repeat(run.train_loss_rel[m], M)[None]) for m in methods}
        constants = dict(depth=1, width=MUP, inner_time=cell.inner_time, finetune_time=cell.finetune_time,
                         outer_time=cell.outer_time, outer_time_used=dcfg.outer_time, mtl_data=cell.mtl_data,
                         test_head=cell.test_head, inner_steps=dcfg.inner_steps, finetune_steps=dcfg.finetune_steps,
                         outer_steps=dcfg.outer_steps, seed=0, dist_to_infinite_rel=0.0, tasks=tasks.name,
                         task_seed=cell.task_seed, mode="mean", dtype=training.dtype, param=MUP, cell=key)
        yield key, metrics.prediction_rows(
            {m: run.finite[m] for m in methods},
            {m: ["diverged" if run.diverged[m][0] else metrics.OK] for m in methods},
            tasks.test_query_y, ["mean"], constants, extra=extra, report=methods)
