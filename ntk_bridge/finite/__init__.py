r"""Finite-width networks trained by gradient descent, and their linearisations, against the
closed forms (docs/theory.md §4, and §5 rung 3).

The networks are built from the same ``stax`` layers as the infinite-width kernels
(:meth:`ntk_bridge.kernels.Architecture.network`): one model, both worlds. Every method has a
*linearised* twin trained by exactly the same code on ``f_lin(theta, x) = f0(x) + J(x) (theta -
theta0)``, so that the width error (finite kernel vs infinite kernel) and the linearisation error
(the kernel moving during training) can be told apart.

One idea per module:

* :mod:`~ntk_bridge.finite.schedule` -- the discrete schedule (:func:`discretise`, :class:`TrainingConfig`);
* :mod:`~ntk_bridge.finite.networks` -- the network split into body and readout, its linearisation;
* :mod:`~ntk_bridge.finite.objectives` -- what each method optimises and how it adapts at test
  time, one :class:`~ntk_bridge.finite.objectives.Trainer` per method;
* :mod:`~ntk_bridge.finite.training` -- gradient descent of a batch of networks, :func:`train_networks`;
* :mod:`~ntk_bridge.finite.comparison` -- one grid cell against the closed forms (:func:`finite_cell`).

Example::

    from ntk_bridge.families import subspace_tasks
    from ntk_bridge.finite import finite_cell
    rows = finite_cell(subspace_tasks(n_train=4, n_test=3), depth=2, width=256, n_networks=2)
"""
from ntk_bridge.finite.comparison import finite_cell, infinite_predictions
from ntk_bridge.finite.networks import init_networks
from ntk_bridge.finite.schedule import MODES, TrainingConfig, discretise
from ntk_bridge.finite.training import FINITE_METHODS, FiniteRun, release_programs, train_networks

__all__ = ["FINITE_METHODS", "MODES", "TrainingConfig", "FiniteRun", "discretise", "init_networks",
           "train_networks", "infinite_predictions", "finite_cell", "release_programs"]
