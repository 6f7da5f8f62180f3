"""Kernel degeneracy with depth (docs/theory.md §3.6: why 1/L, and the deep limits).

Under the default architecture on the sphere ``||x||^2 = d``: ``K(x,x)/Theta(x,x) = 1/(L+1)``;
``Theta(x,x')/Theta(x,x) -> 1/4`` for ``x != x'`` (slowly, ~log L / L); the readout correlation
``rho = K(x,x')`` tends to 1 with ``1 - rho ~ c / L^2`` (``c`` near ``9 pi^2 / 2``), so support
kernels ``K(X',X')`` become nearly rank one and their condition number grows like ``L^2``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ntk_bridge.kernels import Architecture, kernels_by_depth
from ntk_bridge.tasks import TaskSet

__all__ = ["kernel_degeneracy_table"]


def kernel_degeneracy_table(tasks: TaskSet, depths: Sequence[int], architecture: Architecture | None = None
                            ) -> pd.DataFrame:
    """One row per depth: diagonal ratio, normalised off-diagonal NTK (mean/min/max),
    ``(1 - rho) L^2`` (median over pairs), condition numbers of the training support kernels
    (median over tasks) — from one kernel pass over the task set's training points."""
    lay = tasks.layout
    sl = lay.slices()
    n = sl["train_query"].stop  # training supports and queries
    x = tasks.all_points()[:n]
    off = ~np.eye(n, dtype=bool)
    rows = []
    for k in kernels_by_depth(x, depths=depths, architecture=architecture):
        diag_t, diag_k = np.diag(k.ntk), np.diag(k.readout)
        norm = k.ntk / np.sqrt(np.outer(diag_t, diag_t))
        rho = k.readout / np.sqrt(np.outer(diag_k, diag_k))
        s = sl["train_support"]
        sup_k = k.readout[s, s].reshape(lay.n_train, lay.n_support, lay.n_train, lay.n_support)
        sup_t = k.ntk[s, s].reshape(lay.n_train, lay.n_support, lay.n_train, lay.n_support)
        idx = np.arange(lay.n_train)
        cond_k = np.linalg.cond(sup_k[idx, :, idx, :])
        cond_t = np.linalg.cond(sup_t[idx, :, idx, :])
        rows.append(dict(depth=k.depth, k_over_theta_diag=float(np.median(diag_k / diag_t)),
                         ntk_offdiag_normalised_mean=float(norm[off].mean()),
                         ntk_offdiag_normalised_min=float(norm[off].min()),
                         ntk_offdiag_normalised_max=float(norm[off].max()),
                         one_minus_rho_median=float(np.median(1 - rho[off])),
                         one_minus_rho_times_L2=float(np.median(1 - rho[off]) * k.depth ** 2),
                         cond_support_K_median=float(np.median(cond_k)),
                         cond_support_theta_median=float(np.median(cond_t))))
    return pd.DataFrame(rows)
