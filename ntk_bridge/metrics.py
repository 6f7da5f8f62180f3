"""One schema for every results table, one status vocabulary, one row builder.

:data:`COLUMNS` documents every column of ``results.csv`` once (the README's table is checked
against it by a test); :data:`STATUSES` is the only list of row statuses, used by the closed forms
(infinite width), the finite-width comparison and the few-shot path; :func:`prediction_rows` turns
the predictions of one grid cell into rows, whichever path made them.

Norms are per test task: ``||A||`` is the Frobenius norm of the task's ``[m_q, k]`` query
predictions (``numpy.linalg.norm``, evaluated task by task so that a row's numbers do not depend
on how many other rows are computed with it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ntk_bridge import axes, methods
from ntk_bridge.csvtext import Rows

__all__ = ["Column", "COLUMNS", "NAMES", "STATUSES", "OK", "DEFINED", "status_of", "with_metrics_status",
           "with_mtl_status", "relative",
           "rms", "accuracy", "prediction_columns", "prediction_rows", "empty_table"]


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of ``results.csv``: its name, type (``str``, ``int``, ``float``) and meaning."""

    name: str
    kind: str
    meaning: str


#: The grid's axes as columns of ``results.csv``: depth first, then the others in the grid's order.
_AXES_AS_COLUMNS = (axes.DEPTH, *(axis for axis in axes.AXES if axis is not axes.DEPTH))

COLUMNS: tuple[Column, ...] = (
    Column("method", "str", "`mtl`, `anil`, `maml`, `fomaml`, `baseline` (head fine-tuned on an untrained body)"),
    *(Column(axis.column, axis.kind, axis.meaning) for axis in _AXES_AS_COLUMNS),
    Column("seed", "int", "network seed (finite widths; 0 for closed forms)"),
    Column("network", "str", "network index for finite widths (`ensemble` = ensemble mean); `mean` for closed forms"),
    Column("test_task", "int", "index of the unseen task"),
    Column("pred_rms", "float", "`||F|| / sqrt(#entries)` on the task's query set"),
    Column("gap_to_mtl_rel", "float", "`||F_method - F_MTL|| / ||F_MTL||` on the task's query set"),
    Column("gap_to_mtl_abs", "float", "`||F_method - F_MTL|| / sqrt(#entries)`"),
    Column("gap_to_baseline_rel", "float", "`||F_method - F_baseline|| / ||F_baseline||`"),
    Column("test_mse", "float", "mean squared error against `test_query_y` (empty without labels)"),
    Column("test_accuracy", "float", "classification accuracy on the task's queries: argmax of the prediction vs "
                                     "argmax of `test_query_y` (labels with `k >= 2` outputs, e.g. centred one-hot; "
                                     "empty otherwise)"),
    Column("dist_to_infinite_rel", "float", "finite widths: `||F - F_inf|| / ||F_inf||`, the closed form with the "
                                            "same discrete steps (0 for closed forms)"),
    Column("dist_to_linearized_rel", "float", "finite widths: distance to the trained linearised twin"),
    Column("status", "str", "see the status vocabulary"),
    Column("ridge_rel", "float", "the largest ridge among the method's solves, relative to the largest eigenvalue"),
    Column("min_eig_rel", "float", "the smallest relative eigenvalue among its solves (negative: not PSD)"),
    Column("cond", "float", "the largest condition number among its solves (an iterative outer solve: among its "
                            "per-task solves)"),
    Column("solve_residual", "float", "relative residual of an iterative outer solve (`--solver cg`; empty for "
                                      "dense solves)"),
    Column("tasks", "str", "task family, or the task file's stem"),
    Column("task_seed", "int", "seed of the generated task set"),
    Column("mode", "str", "`mean` (closed forms), `centred` or `raw` (finite networks)"),
    Column("cell", "str", "the cell's cache key"),
    Column("inner_steps", "int", "finite widths: inner steps of the discrete schedule followed"),
    Column("finetune_steps", "int", "finite widths: fine-tuning steps"),
    Column("outer_steps", "int", "finite widths: outer steps (an `outer_time` of `inf` becomes `--outer-steps` "
                                 "steps of size `1/lambda_max`)"),
    Column("outer_time_used", "float", "finite widths: the outer time of those steps"),
    Column("linearized_to_infinite_rel", "float", "finite widths: the linearised twin's distance to the closed form "
                                                  "(the width error alone)"),
    Column("infinite_gap_to_mtl_rel", "float", "finite widths: `gap_to_mtl_rel` of the closed forms under the same "
                                               "discrete schedule"),
    Column("train_loss_rel", "float", "finite widths: final / initial training loss"),
    Column("dtype", "str", "finite widths: `float64` or `float32`"),
    Column("param", "str", "finite networks and the muP limit: parameterisation `ntk` or `mup` (`--param`; rows of "
                           "width `mup` are the muP limit); empty for the NTK closed forms (width `inf`)"),
    Column("kernel_movement", "float", "finite networks and the muP limit: `||Theta_T - Theta_0||_F / "
                                       "||Theta_0||_F` of the trained network's empirical NTK on the test tasks' "
                                       "points (empty for closed forms and ensembles)"),
)
#: Column names in ``results.csv`` order.
NAMES = [c.name for c in COLUMNS]

OK = "ok"
#: Every row status, on every path. ``mtl_<status>``: the method's own numbers are fine, but MTL's
#: prediction (the reference of every gap) has ``<status>``.
STATUSES = {
    OK: "no numerical trouble",
    "ridge": "a solve needed a ridge (an infinite-time solve of a near-singular kernel)",
    "not_psd": "a kernel had an eigenvalue below -1e-9 times its largest",
    "nonfinite": "NaN or inf in the predictions (their metrics are empty)",
    "not_converged": "an iterative outer solve stopped above its tolerance (`solve_residual`)",
    "degenerate": "a relative metric is undefined (0/0: MTL's or the baseline's prediction is zero on the task, "
                  "e.g. all-zero labels); the metric is empty, the row is kept out of fits and figures",
    "diverged": "a finite network's training or test-time adaptation diverged (its metrics are empty; a few-shot "
                "run stops, its best checkpoint is tested)",
    "linearized_diverged": "the network trained, its linearised twin diverged (twin metrics are empty)",
    "mtl_<status>": "the method's numbers are fine but MTL's, against which its gaps are measured, have <status>",
}


def status_of(diag, psd_tol: float = 1e-9) -> str:
    """The status of a closed form's :class:`~ntk_bridge.predictors.Diagnostics`: ``'ok'``, or the
    first problem found: ``'nonfinite'``, ``'not_psd'`` (an eigenvalue below ``-psd_tol`` x the
    largest, or negative curvature met by an iterative solve), ``'ridge'``, ``'not_converged'`` (an
    iterative solve's residual above its tolerance)."""
    if not diag.finite:
        return "nonfinite"
    if diag.min_eig_rel < -psd_tol:
        return "not_psd"
    if diag.ridge_rel > 0:
        return "ridge"
    if getattr(diag, "residual", math.nan) > getattr(diag, "tolerance", math.inf):
        return "not_converged"
    return OK


#: The metrics every row with predictions defines (a NaN among them on a row without trouble is 0/0:
#: ``degenerate``); ``dist_to_infinite_rel`` is defined on finite-width rows as well.
DEFINED = ("pred_rms", "gap_to_mtl_rel", "gap_to_mtl_abs", "gap_to_baseline_rel", "dist_to_infinite_rel")


def with_metrics_status(frame: pd.DataFrame) -> pd.Series:
    """The rows' statuses after looking at their metrics: an ``ok`` row with a NaN among the
    :data:`DEFINED` metrics present in ``frame`` (or a NaN ``test_mse`` where some row of the frame
    has one) is ``degenerate``."""
    cols = {c: frame[c].to_numpy() for c in (*DEFINED, "test_mse", "status") if c in frame}
    return pd.Series(_with_metrics_status(cols), index=frame.index, name="status")


def _with_metrics_status(cols: Mapping[str, np.ndarray]) -> np.ndarray:
    """:func:`with_metrics_status` on columns as arrays (``status`` among them)."""
    status = np.asarray(cols["status"], dtype=object)
    undefined = np.zeros(len(status), dtype=bool)
    for c in DEFINED:
        if c in cols:
            undefined |= np.isnan(np.asarray(cols[c], dtype=np.float64))
    if "test_mse" in cols:
        mse = np.isnan(np.asarray(cols["test_mse"], dtype=np.float64))
        if not mse.all():
            undefined |= mse
    return np.where((status == OK) & undefined, "degenerate", status).astype(object)


def with_mtl_status(status: str, mtl_status: str) -> str:
    """A row's status given MTL's: its own trouble first, else MTL's as ``mtl_<status>``."""
    if status == OK and mtl_status != OK:
        return f"mtl_{mtl_status}"
    return status


def _matrices(a: np.ndarray) -> int:
    """How many ``[m_q, k]`` matrices ``a [..., m_q, k]`` holds."""
    return int(np.prod(a.shape[:-2], dtype=np.int64))


def _norms(a: np.ndarray) -> np.ndarray:
    """Frobenius norm of each ``[m_q, k]`` matrix of ``a [..., m_q, k]``: ``[...]``. One batched
    ``matmul`` of each flattened matrix with itself, which is BLAS's ``dot`` per matrix, the same bits
    as ``numpy.linalg.norm`` of each (tested against that loop), without a Python call per matrix."""
    flat = np.ascontiguousarray(a, dtype=np.float64).reshape(_matrices(a), a.shape[-2] * a.shape[-1])
    return np.sqrt(np.matmul(flat[:, None, :], flat[:, :, None])[:, 0, 0]).reshape(a.shape[:-2])


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``||a - b|| / ||b||`` per task (NaN where ``||b|| = 0``): ``[..., m_q, k] -> [...]``."""
    num, den = _norms(a - b), _norms(np.broadcast_to(b, a.shape))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def rms(a: np.ndarray) -> np.ndarray:
    """``||a|| / sqrt(#entries)`` per task."""
    return _norms(a) / math.sqrt(a.shape[-2] * a.shape[-1])


def _mse(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean squared error per ``[m_q, k]`` matrix (numpy's pairwise sum along each flattened matrix)."""
    d = a - y
    return np.mean(d.reshape(_matrices(d), d.shape[-2] * d.shape[-1]) ** 2, axis=1).reshape(d.shape[:-2])


def accuracy(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fraction of queries whose predicted class (argmax over the ``k >= 2`` outputs) is the label's
    (argmax of ``y``), per task: ``[..., m_q, k] -> [...]``; NaN for ``k < 2`` or non-finite predictions."""
    a = np.asarray(a, np.float64)
    y = np.broadcast_to(y, a.shape)
    if a.shape[-1] < 2:
        return np.full(a.shape[:-2], np.nan)
    hit = np.argmax(a, axis=-1) == np.argmax(y, axis=-1)
    out = np.mean(hit, axis=-1)
    return np.where(np.all(np.isfinite(a), axis=(-2, -1)), out, np.nan)


def empty_table() -> pd.DataFrame:
    return pd.DataFrame(columns=NAMES)


#: Metrics left empty on rows whose prediction is broken (``nonfinite``, ``diverged``).
_EMPTY_WHEN_BROKEN = ("pred_rms", "gap_to_mtl_rel", "gap_to_mtl_abs", "gap_to_baseline_rel", "test_mse",
                      "test_accuracy")


def prediction_columns(
    values: Mapping[str, np.ndarray],
    status: Mapping[str, Sequence[str]],
    y: np.ndarray | None,
    networks: Sequence,
    constants: Mapping[str, object],
    extra: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    diagnostics: Mapping[str, object] | None = None,
    report: Sequence[str] | None = None,
) -> Rows:
    """The rows of one grid cell, one per (method, network, test task), as columns
    (:class:`ntk_bridge.csvtext.Rows`; :func:`prediction_rows` is their DataFrame in the :data:`NAMES` schema).

    Args:
      values: ``{method: [R, M, m_q, k]}`` predictions on the test queries of ``R`` networks (the
        closed forms' mean predictor is one "network"); must hold MTL and the baseline, the
        references of the gaps (of the same network).
      status: ``{method: [R]}`` each network's own status (:data:`STATUSES`); MTL's is inherited as
        ``mtl_<status>`` (:func:`with_mtl_status`).
      y: ``[M, m_q, k]`` test labels, or ``None``.
      networks: the ``R`` network labels (``'mean'``, ``0, 1, ...``, ``'ensemble'``).
      constants: columns equal on every row of the cell (depth, times, ...).
      extra: ``{method: {column: [R, M]}}`` further per-row metrics (finite widths).
      diagnostics: ``{method: Diagnostics}`` of the closed forms (``ridge_rel``, ``min_eig_rel``,
        ``cond``).
      report: the methods to write rows for (default: every method in ``values``).

    A row whose status is ``nonfinite`` or ``diverged`` has empty metrics; an ``ok`` row with an
    undefined metric is ``degenerate`` (:func:`with_metrics_status`).
    """
    mtl, base = values[methods.MTL.name], values[methods.BASELINE.name]
    mtl_status = list(status[methods.MTL.name])
    parts = []
    for method in (report if report is not None else list(values)):
        v = values[method]
        R, M = v.shape[:2]
        own = [with_mtl_status(s, ms) for s, ms in zip(status[method], mtl_status)]
        n = R * M
        cols = {
            "method": np.full(n, method, dtype=object),
            "network": np.repeat(np.array(list(networks), dtype=object), M),
            "test_task": np.tile(np.arange(M), R),
            "pred_rms": rms(v).ravel(),
            "gap_to_mtl_rel": relative(v, mtl).ravel(),
            "gap_to_mtl_abs": (_norms(v - mtl) / math.sqrt(v.shape[-2] * v.shape[-1])).ravel(),
            "gap_to_baseline_rel": relative(v, base).ravel(),
            "test_mse": _mse(v, y[None]).ravel() if y is not None else np.full(n, np.nan),
            "test_accuracy": accuracy(v, y[None]).ravel() if y is not None else np.full(n, np.nan),
            "status": np.repeat(np.array(own, dtype=object), M),
        }
        for name, arr in (extra or {}).get(method, {}).items():
            cols[name] = np.asarray(arr, dtype=np.float64).ravel()
        diag = (diagnostics or {}).get(method)
        if diag is not None:
            for name, value in (("ridge_rel", diag.ridge_rel), ("min_eig_rel", diag.min_eig_rel), ("cond", diag.cond),
                                ("solve_residual", getattr(diag, "residual", np.nan))):
                cols[name] = np.full(n, value, dtype=np.float64)
        cols["status"] = _with_metrics_status(cols)
        empty = np.isin(cols["status"], ["nonfinite", "diverged"])
        if empty.any():
            for col in _EMPTY_WHEN_BROKEN:
                cols[col] = np.where(empty, np.nan, cols[col])
        parts.append(cols)
    # the columns of every method joined as arrays, then one DataFrame (a frame per method and a
    # concat cost more than the metrics themselves)
    names = list(dict.fromkeys(c for p in parts for c in p))
    total = sum(len(p["method"]) for p in parts)
    joined = {}
    for c in names:
        pieces = [p[c] if c in p else np.full(len(p["method"]), np.nan) for p in parts]
        joined[c] = np.concatenate(pieces) if pieces else np.empty(0)
    joined.update(constants)  # one value of every row
    return Rows(total, joined, NAMES)


def prediction_rows(*args, **kwargs) -> pd.DataFrame:
    """The rows of one grid cell (:func:`prediction_columns`, same arguments) as a DataFrame in the
    :data:`NAMES` schema."""
    return prediction_columns(*args, **kwargs).frame()
