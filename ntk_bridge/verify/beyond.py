"""Claim C7, closeness beyond the kernel regime (docs/theory.md §8): per family and GBML method, the
GBML-MTL gap in the muP limit of the one-hidden-layer linear network against the gap in its NTK limit,
and the muP limit's transfer benefit over the no-transfer baseline.

For every family and task seed of the panel two ordinary sweeps run (cached under
``runs/beyond/``): ``--width mup`` and ``--width inf``, both ``--depth 1 --activation linear``,
methods MTL, ANIL and MAML, at one finite outer time (:data:`OUTER_TIME`; the linear NTK has rank
``d``, so an infinite-time solve would need a ridge) and the panel's largest inner time. Per replicate
(task seed; test task when the panel has one seed) the gap is the median over test tasks of
``gap_to_mtl_rel``, the ratio ``gap_muP / gap_NTK``; the benefit is ``1 - MSE / MSE_baseline``
(regression) or ``accuracy - accuracy_baseline`` (classification), median over test tasks.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge.results import ok_rows
from ntk_bridge.settings import ALL, LEARNED

__all__ = ["C7_RULE", "OUTER_TIME", "METHODS", "beyond_configs", "c7_rows", "beyond_claims"]

C7_RULE = ("per family and method: holds if the 95% CI of the ratio gap(muP limit) / gap(NTK limit) lies at or "
           "below 1 (GBML and MTL at least as close once features are learned) and the muP limit's transfer "
           "benefit has its 95% CI above 0 (closeness of useful predictors); fails if the ratio's CI lies above 1 "
           "and the benefit's above 0 (useful predictors drift apart); inconclusive otherwise")
#: Outer time ``eta t`` of both limits: images (kanji, omniglot) 1, regression families 5.
OUTER_TIME = {"image": 1.0, "regression": 5.0}
#: The GBML methods C7 compares with MTL.
METHODS = (registry.ANIL.name, registry.MAML.name)


def beyond_configs(panel) -> dict[tuple[str, int, str], object]:
    """``{(family, seed, limit): SweepConfig}`` with ``limit`` ``'mup'`` or ``'ntk'``."""
    from ntk_bridge.config import IMAGE_FAMILIES, SweepConfig

    out = {}
    for family in panel.families:
        time = OUTER_TIME["image" if family.name in IMAGE_FAMILIES else "regression"]
        for seed in panel.seeds:
            for limit, width in (("mup", "mup"), ("ntk", math.inf)):
                out[(family.name, seed, limit)] = SweepConfig.of(
                    family=family.name, task_seed=seed, depths=(1,), widths=(width,), activation="linear",
                    methods=("mtl",) + METHODS, inner_times=(max(panel.inner_times),), mtl_data=(ALL,),
                    outer_times=(time,), linearized=False, **dict(family.sizes))
    return out


def _mean_ci(values) -> tuple[float, float, float, int]:
    from scipy import special

    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else math.nan), math.nan, math.nan, len(v)
    half = float(special.stdtrit(len(v) - 1, 0.975)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()), float(v.mean()) - half, float(v.mean()) + half, len(v)


def _per_replicate(frame: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per task seed (or test task): the median gap and benefit of ``method``."""
    d = ok_rows(frame)
    classify = d["test_accuracy"].notna().any()
    base = d[d["method"] == "baseline"].set_index(["task_seed", "test_task"])
    g = d[d["method"] == method].set_index(["task_seed", "test_task"])
    if classify:
        benefit = g["test_accuracy"] - base["test_accuracy"].groupby(level=0).transform("mean").reindex(g.index)
    else:
        benefit = 1 - g["test_mse"] / base["test_mse"].groupby(level=0).transform("mean").reindex(g.index)
    return pd.DataFrame({"gap": g["gap_to_mtl_rel"], "benefit": benefit}).reset_index()


def c7_rows(frames: dict[tuple[str, int, str], pd.DataFrame]) -> list[dict]:
    """The C7 condition rows (``claims.csv`` columns) from the limits' results."""
    rows = []
    families = list(dict.fromkeys(f for f, _, _ in frames))
    for family in families:
        seeds = sorted({s for f, s, _ in frames if f == family})
        mup = pd.concat([frames[(family, s, "mup")] for s in seeds], ignore_index=True)
        ntk = pd.concat([frames[(family, s, "ntk")] for s in seeds], ignore_index=True)
        by = "task_seed" if len(seeds) > 1 else "test_task"
        for method in METHODS:
            a, b = _per_replicate(mup, method), _per_replicate(ntk, method)
            ga, gb = a.groupby(by)["gap"].median(), b.groupby(by)["gap"].median()
            ratio = (ga / gb).dropna()
            benefit = a.groupby(by)["benefit"].median()
            r, rlo, rhi, n = _mean_ci(ratio.to_numpy())
            bm, blo, bhi, _ = _mean_ci(benefit.to_numpy())
            useful = np.isfinite(blo) and blo > 0
            verdict = ("holds" if useful and np.isfinite(rhi) and rhi <= 1 else
                       "fails" if useful and np.isfinite(rlo) and rlo > 1 else "inconclusive")
            rows.append(dict(claim="C7", tasks=str(mup["tasks"].iloc[0]), method=method, mtl_data=ALL, test_head=LEARNED,
                             inner_time=float(mup["inner_time"].iloc[0]), depths="1", estimate=r, ci95_low=rlo,
                             ci95_high=rhi, n=n,
                             quality=f"gap muP {ga.mean():.3g} vs NTK {gb.mean():.3g}; muP benefit {bm:.3g} "
                                     f"[{blo:.3g}, {bhi:.3g}]",
                             verdict=verdict,
                             detail=("muP-limit gap / NTK-limit gap (mean over replicates); the muP limit "
                                     + ("transfers" if useful else "does not transfer significantly"))))
    return rows


def beyond_claims(panel, out: str, progress_factory=None, executor=None) -> pd.DataFrame:
    """Run (or reuse) the C7 sweeps of ``panel`` under ``out/runs/beyond`` and return its rows; on an
    executor all of them in one submission (:func:`ntk_bridge.sweep.run_sweeps`), under one progress."""
    from ntk_bridge.sweep import SweepJob, run_sweep, run_sweeps

    configs = beyond_configs(panel)
    names = {spec: f"{os.path.basename(spec[0])}_{spec[1]}_{spec[2]}" for spec in configs}
    if executor is not None:
        jobs = [SweepJob(cfg, os.path.join(out, "runs", "beyond", names[spec]), figures=False)
                for spec, cfg in configs.items()]
        progress = progress_factory(f"C7: {len(jobs)} sweeps") if progress_factory is not None else None
        try:
            return pd.DataFrame(c7_rows(dict(zip(configs, run_sweeps(jobs, executor, progress)))))
        finally:
            if progress is not None and hasattr(progress, "stop"):
                progress.stop()
    frames = {}
    for spec, cfg in configs.items():
        progress = progress_factory(f"C7 {names[spec]}") if progress_factory is not None else None
        try:
            frames[spec] = run_sweep(cfg, os.path.join(out, "runs", "beyond", names[spec]), figures=False,
                                     progress=progress)
        finally:
            if progress is not None and hasattr(progress, "stop"):
                progress.stop()
    return pd.DataFrame(c7_rows(frames))
