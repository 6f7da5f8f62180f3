"""One grid cell of finite networks against the closed forms under the same discrete schedule
(docs/theory.md §4, and §5 rung 3): training runs shared between cells, the closed forms, the rows.

Centred and raw networks (``mode``): a *centred* network is ``f_c(theta) = f(theta) - f(theta0)``,
trained and evaluated as such (it has the gradients of ``f`` and starts at 0); at infinite width it
follows the mean predictor (``f0 = None``). A *raw* network follows the full-``f0`` closed form with
its own ``f0`` (evaluated at every stacked point, infinite-width kernels). Centring is implemented
exactly as training ``f`` on the labels ``Y + f0(X)`` and reporting ``f - f0`` at the test queries.
"""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge import metrics
from ntk_bridge.errors import require
from ntk_bridge.finite.networks import architecture_for
from ntk_bridge.finite.schedule import MODES, TrainingConfig, discretise
from ntk_bridge.finite.training import FiniteRun, check_methods, train_networks
from ntk_bridge.kernels import Architecture, DepthKernels, kernels_by_depth
from ntk_bridge.predictors import SETTING_FIELDS, PredictorConfig, predict_from_kernels
from ntk_bridge.tasks import TaskSet

__all__ = ["infinite_predictions", "mup_reference", "finite_cell"]


def infinite_predictions(kernels: DepthKernels, tasks: TaskSet, config: PredictorConfig,
                         methods: Sequence[str], mode: str = "centred", f0: np.ndarray | None = None):
    """Infinite-width closed forms matching :func:`~ntk_bridge.finite.training.train_networks`' output.

    Centred: the mean predictor (``f0 = None``), one ``[M, m_q, k]`` per method, broadcast to the
    ``S`` networks. Raw: the full-``f0`` form with each network's own ``f0 [S, P, k]``.
    Returns ``({method: [S, M, m_q, k]}, {method: status})`` (:func:`ntk_bridge.metrics.status_of`,
    the first trouble over networks).
    """
    methods = check_methods(methods)
    require(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    require(f0 is not None, "f0 [S, P, k] is needed (its leading axis gives the number of networks)")
    S = f0.shape[0]
    values = {m: [] for m in methods}
    status = {m: metrics.OK for m in methods}
    for f0_j in ([None] if mode == "centred" else [f0[j] for j in range(S)]):
        out = predict_from_kernels(kernels.ntk, kernels.readout, tasks, config, methods, f0_j)
        for m in methods:
            values[m].append(out[m].values)
            s = metrics.status_of(out[m].diagnostics)
            status[m] = s if status[m] == metrics.OK else status[m]
    out = {m: np.broadcast_to(np.stack(v), (S, *v[0].shape)) if len(v) == 1 else np.stack(v)
           for m, v in values.items()}
    return out, status


def mup_reference(tasks: TaskSet, depth: int, arch: Architecture, cfg: PredictorConfig, methods: Sequence[str],
                  training: TrainingConfig, S: int):
    """The muP limit (:func:`ntk_bridge.finite.mup_limit.mup_limit_run`) of finite muP networks where it is
    computable, else NaN (no limit here; :func:`finite_cell` then measures them against the NTK closed form).
    Returns ``({method: [S, M, m_q, k]}, {method: status})`` like :func:`infinite_predictions`."""
    from ntk_bridge.finite.mup_limit import has_limit, mup_limit_run

    lay = tasks.layout
    shape = (S, lay.n_test, lay.m_query, tasks.n_outputs)
    if not has_limit(depth, arch):
        return {m: np.full(shape, np.nan) for m in methods}, {m: metrics.OK for m in methods}
    run = mup_limit_run(tasks, cfg, methods, arch, training)
    # a diverged limit is reported on its own rows (width 'mup'); here its NaN leaves the distances empty
    return {m: np.broadcast_to(run.finite[m], shape) for m in methods}, {m: metrics.OK for m in methods}


def _with_ensemble(x: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Append the ensemble mean over networks (NaN if any network failed): ``[S, ...] -> [S+1, ...]``."""
    mean = np.mean(x, axis=0, keepdims=True)
    if np.any(bad):
        mean = np.full_like(mean, np.nan)
    return np.concatenate([x, mean], axis=0)


def _config_fields(method: str) -> tuple[str, ...]:
    """The fields of a discrete config that a method's training depends on (its registry entry)."""
    m = registry.get(method)
    return tuple(f for setting, fields in SETTING_FIELDS.items() if m.depends(setting) for f in fields)


def _train_shared(cache: dict | None, tasks: TaskSet, depth: int, width: int, cfg: PredictorConfig,
                  methods: tuple, seed: int, n_networks: int, mode: str, arch: Architecture,
                  training: TrainingConfig) -> FiniteRun:
    """:func:`train_networks`, reusing from ``cache`` every method already trained with the same
    networks and the config fields it depends on (:func:`_config_fields`). The compiled programs and
    inputs are the same, so a reused run is bit-identical to a fresh one."""
    if cache is None:
        return train_networks(tasks, depth, width, cfg, methods, seed, n_networks, mode, arch, training)
    common = (tasks.fingerprint(), json.dumps(arch.describe(), sort_keys=True, default=str), int(depth),
              int(width), int(seed), int(n_networks), mode, training)

    def key(method):
        return common + (method,) + tuple(getattr(cfg, f) for f in _config_fields(method))

    missing = tuple(m for m in methods if key(m) not in cache)
    if missing:
        run = train_networks(tasks, depth, width, cfg, missing, seed, n_networks, mode, arch, training)
        for m in missing:
            cache[key(m)] = dict(f0=run.f0, params0=run.params0, finite=run.finite[m],
                                 linearized=run.linearized.get(m), diverged=run.diverged[m],
                                 linearized_diverged=run.linearized_diverged.get(m), history=run.history[m],
                                 train_loss_rel=run.train_loss_rel[m], kernel_movement=run.kernel_movement[m])
    parts = {m: cache[key(m)] for m in methods}

    def pick(field):
        return {m: p[field] for m, p in parts.items() if p[field] is not None}

    first = parts[methods[0]]
    return FiniteRun(cfg, mode, pick("finite"), pick("linearized"), pick("diverged"), pick("linearized_diverged"),
                     pick("history"), pick("train_loss_rel"), first["f0"], first["params0"], pick("kernel_movement"))


def finite_cell(
    tasks: TaskSet,
    depth: int,
    width: int,
    config: PredictorConfig = PredictorConfig(),
    methods: Sequence[str] = registry.DEFAULT_SWEEP,
    seed: int = 0,
    n_networks: int = 1,
    mode: str = "centred",
    architecture: Architecture | None = None,
    training: TrainingConfig = TrainingConfig(),
    kernels: DepthKernels | None = None,
    cache: dict | None = None,
) -> pd.DataFrame:
    """Train finite networks for one (depth, width) cell and compare them with the closed forms.

    ``config`` is discretised by :func:`~ntk_bridge.finite.schedule.discretise`: the finite networks,
    their linearisations and the infinite-width closed forms all follow the resulting steps. MTL and
    the baseline are always trained (every gap is measured against them), but rows are written only
    for ``methods``. ``kernels`` (the infinite-width ``DepthKernels`` of this depth over
    ``tasks.all_points()``) may be passed to skip recomputing them. ``cache`` (a dict, initially
    empty, kept by the caller across the cells of one depth and width) lets cells share training
    runs: a method is trained once for all the values of the settings it does not depend on
    (:mod:`ntk_bridge.methods`) -- a grid of 3 inner times x 2 MTL data trains 9 runs instead of 24,
    with bit-identical results.

    Returns one row per (method, network, test task) in the :data:`ntk_bridge.metrics.COLUMNS`
    schema: networks ``0..S-1`` and ``'ensemble'`` (the mean of the networks' predictions, compared
    with the mean of their closed forms, i.e. the closed form at the mean ``f0``). ``inner_time``,
    ``finetune_time``, ``outer_time`` are the config's (an infinite outer time stays ``inf``);
    ``outer_time_used`` and the ``*_steps`` columns are the discrete schedule followed. Gaps are against MTL and the
    baseline of the same network; ``dist_to_infinite_rel`` against the closed form of the same method and
    network (muP networks: against their muP limit where it is computable, the one-hidden-layer linear network,
    else against the NTK closed form); ``dist_to_linearized_rel`` against the network's trained linearised twin,
    ``linearized_to_infinite_rel`` the twin's distance to the closed form (the width error alone);
    ``infinite_gap_to_mtl_rel`` the closed forms' own gap; ``train_loss_rel`` final / initial training loss (NaN
    for the baseline). ``status``: ``'diverged'`` (metrics empty), ``'linearized_diverged'``, the closed form's
    status, or MTL's as ``mtl_<status>``.
    """
    methods = check_methods(methods)
    require(mode in MODES, f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    arch = architecture_for(architecture, width, tasks.n_outputs)
    if kernels is None:
        kernels = next(kernels_by_depth(tasks.all_points(), depths=[int(depth)], architecture=arch))
    require(kernels.depth in (int(depth), -1), f"kernels are of depth {kernels.depth}, the cell has depth {depth}")
    cfg = discretise(config, kernels.ntk, tasks, training)
    mtl, base = registry.MTL.name, registry.BASELINE.name
    needed = tuple(dict.fromkeys((mtl, base) + methods))
    run = _train_shared(cache, tasks, depth, width, cfg, needed, int(seed), int(n_networks), mode, arch, training)
    S, M = int(n_networks), tasks.layout.n_test
    from ntk_bridge.finite.mup_limit import has_limit

    if arch.param == "mup" and has_limit(depth, arch):
        infinite, inf_status = mup_reference(tasks, depth, arch, cfg, needed, training, S)
    else:
        infinite, inf_status = infinite_predictions(kernels, tasks, cfg, needed, mode, run.f0)
    values, status, extra = {}, {}, {}
    for method in needed:
        bad = np.append(run.diverged[method], np.any(run.diverged[method]))
        F = _with_ensemble(run.finite[method], run.diverged[method])
        F_inf = np.concatenate([infinite[method], np.mean(infinite[method], axis=0, keepdims=True)])
        F_inf_mtl = np.concatenate([infinite[mtl], np.mean(infinite[mtl], axis=0, keepdims=True)])
        if training.linearized:
            lin_bad = np.append(run.linearized_diverged[method], np.any(run.linearized_diverged[method]))
            F_lin = _with_ensemble(run.linearized[method], run.linearized_diverged[method])
            dist_lin, lin_inf = metrics.relative(F, F_lin), metrics.relative(F_lin, F_inf)
        else:
            lin_bad = np.zeros(S + 1, bool)
            dist_lin = lin_inf = np.full((S + 1, M), np.nan)
        values[method] = F
        status[method] = np.where(bad, "diverged", np.where(lin_bad, "linearized_diverged", inf_status[method]))
        extra[method] = dict(dist_to_infinite_rel=metrics.relative(F, F_inf), dist_to_linearized_rel=dist_lin,
                             linearized_to_infinite_rel=lin_inf,
                             infinite_gap_to_mtl_rel=metrics.relative(F_inf, F_inf_mtl),
                             train_loss_rel=np.repeat(np.append(run.train_loss_rel[method], np.nan), M).reshape(S + 1, M),
                             kernel_movement=np.repeat(np.append(run.kernel_movement[method], np.nan), M).reshape(S + 1, M))
    constants = dict(depth=int(depth), width=int(width), inner_time=config.inner_time,
                     finetune_time=config.finetune_time, outer_time=config.outer_time,
                     outer_time_used=cfg.outer_time, test_head=config.test_head, inner_steps=cfg.inner_steps,
                     finetune_steps=cfg.finetune_steps, outer_steps=cfg.outer_steps, mtl_data=cfg.mtl_data,
                     mode=mode, dtype=training.dtype, seed=int(seed), param=arch.param)
    return metrics.prediction_rows(values, status, tasks.test_query_y, list(range(S)) + ["ensemble"], constants,
                                   extra=extra, report=methods)
