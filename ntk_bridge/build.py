"""What a sweep's configuration describes, built: the task set, the architecture, the training settings.

:mod:`ntk_bridge.config` only describes (its parts are plain frozen dataclasses of names and numbers);
the objects they stand for are made here, by the commands that use them. The heavy modules
(:mod:`ntk_bridge.families`, :mod:`ntk_bridge.kernels`, :mod:`ntk_bridge.finite`) are imported when
an object is built, not when a config is.
"""

from __future__ import annotations

from ntk_bridge.errors import require

__all__ = ["task_set", "architecture", "training"]


def task_set(config, seed: int | None = None):
    """The :class:`~ntk_bridge.tasks.TaskSet` of ``config`` (a :class:`~ntk_bridge.config.SweepConfig`
    or its :class:`~ntk_bridge.config.TaskConfig`): generated with ``seed`` (default its ``task_seed``)
    or read from its ``.npz`` file."""
    from ntk_bridge.tasks import load_tasks
    from ntk_bridge.families import GENERATORS

    spec = getattr(config, "tasks", config)
    if not spec.generated:
        return load_tasks(spec.family)
    sizes = dict(n_train=spec.train_tasks, n_test=spec.test_tasks, n_support=spec.support, n_query=spec.query,
                 dim=spec.dim)
    if spec.family == "omniglot":
        sizes["data_dir"] = spec.data_dir
    return GENERATORS[spec.family](seed=spec.task_seed if seed is None else seed, **sizes)


def architecture(config, tasks=None):
    """The :class:`~ntk_bridge.kernels.Architecture` of ``config`` (a ``SweepConfig`` or its
    :class:`~ntk_bridge.config.ModelConfig`) for ``tasks`` (conv and resnet take their ``image_shape``;
    ``UserError`` for tasks without one). The ``fc`` one is the default ``Architecture()`` (finite
    widths and outputs are set per cell)."""
    from ntk_bridge.kernels import Architecture

    model = getattr(config, "model", config)
    if model.arch == "fc":
        if (model.param, model.activation) == ("ntk", "relu"):
            return Architecture()
        std = dict(hidden_w_std=1.0) if model.activation == "linear" else {}
        return Architecture(param=model.param, activation=model.activation, **std)
    shape = None if tasks is None else tasks.image_shape
    require(shape is not None, f"--arch {model.arch} needs image tasks: --tasks kanji, omniglot, or a task file "
            "with the key image_shape" + ("" if tasks is None else f" ({tasks.name} tasks have flat inputs)"))
    return Architecture(arch=model.arch, image_shape=shape, spatial_readout=model.readout)


def training(config):
    """:class:`ntk_bridge.finite.TrainingConfig` of ``config`` (a ``SweepConfig`` or its
    :class:`~ntk_bridge.config.FiniteConfig`)."""
    from ntk_bridge.finite import TrainingConfig

    finite = getattr(config, "finite", config)
    return TrainingConfig(outer_steps=int(finite.outer_steps), dtype=finite.finite_dtype,
                          linearized=bool(finite.linearized))
