"""The panel of ``ntk-bridge verify``: task families x task seeds x the grid, run through the sweep
machinery (one cached, resumable run folder per family and seed, in-process or on Dask), and a small
finite-width panel; the rows of every run gathered into one table.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

import pandas as pd

from ntk_bridge import build
from ntk_bridge import methods as registry
from ntk_bridge.config import SweepConfig
from ntk_bridge.settings import LEARNED, MTL_DATA_VALUES, QUERY, TEST_HEADS

__all__ = ["FAMILIES", "FULL", "QUICK", "Family", "Panel", "panel_for_file", "run_panel", "select", "with_archs",
           "sweeps", "panel_estimate"]


@dataclasses.dataclass(frozen=True)
class Family:
    """One task family of the panel and its sizes (the ``TaskConfig`` fields)."""

    name: str
    sizes: tuple[tuple[str, int], ...] = ()

    def config(self, panel: "Panel", seed: int, arch: str = "fc") -> SweepConfig:
        return SweepConfig.of(family=self.name, task_seed=seed, depths=panel.depths, inner_times=panel.inner_times,
                              mtl_data=panel.mtl_data, test_heads=panel.test_heads, methods=panel.methods,
                              arch=arch, **dict(self.sizes))

    def has_images(self) -> bool:
        """Whether ``conv`` and ``resnet`` apply (an image family, or a task file with ``image_shape``)."""
        from ntk_bridge.config import IMAGE_FAMILIES

        if self.name in IMAGE_FAMILIES:
            return True
        return self.name.endswith(".npz") and build.task_set(SweepConfig.of(family=self.name)).image_shape is not None


@dataclasses.dataclass(frozen=True)
class Panel:
    """What ``verify`` computes: every family at every seed over the grid, and the finite panel
    (``finite``: flat :class:`~ntk_bridge.config.SweepConfig` fields of one finite-width sweep).
    ``archs``: the architectures (:mod:`ntk_bridge.convnets`); ``conv`` and ``resnet`` run on the
    image families only, each as a condition of its own (``tasks`` = ``kanji/conv``)."""

    name: str
    families: tuple[Family, ...]
    seeds: tuple[int, ...]
    depths: tuple[int, ...]
    inner_times: tuple[float, ...]
    mtl_data: tuple[str, ...] = MTL_DATA_VALUES
    test_heads: tuple[str, ...] = TEST_HEADS
    methods: tuple[str, ...] = registry.DEFAULT_SWEEP
    finite: tuple[tuple[str, object], ...] = ()
    archs: tuple[str, ...] = ("fc",)

    def describe(self) -> dict:
        extra = {} if self.archs == ("fc",) else dict(archs=list(self.archs))  # the default report is unchanged
        return dict(**extra,
                    name=self.name, families=[f.name for f in self.families], seeds=list(self.seeds),
                    depths=list(self.depths), inner_times=list(self.inner_times), mtl_data=list(self.mtl_data),
                    test_heads=list(self.test_heads), methods=list(self.methods),
                    finite={k: (list(v) if isinstance(v, tuple) else v) for k, v in self.finite})


_SMALL_FINITE = dict(family="subspace", train_tasks=4, test_tasks=4, support=4, query=6, dim=8, mtl_data=(QUERY,),
                     test_heads=(LEARNED,), inner_times=(0.5,), methods=(registry.MTL.name, registry.ANIL.name),
                     seeds=2, linearized=False)

#: Every generated family as the panels run it (sizes other than the defaults).
FAMILIES = {"subspace": Family("subspace"), "linear": Family("linear"), "sinusoid": Family("sinusoid", (("dim", 2),)),
            "common": Family("common"), "kanji": Family("kanji", (("dim", 49),))}

#: The full panel: five families (two without transfer by design, one of real images), five seeds.
FULL = Panel(
    "full",
    families=tuple(FAMILIES.values()),
    seeds=(0, 1, 2, 3, 4),
    depths=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
    inner_times=(0.01, 0.1, 1.0),
    finite=tuple(dict(_SMALL_FINITE, depths=(1, 2), widths=(64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0),
                      outer_steps=100).items()),
)
#: The quick panel (CI): three families, three seeds, a coarser grid.
QUICK = Panel(
    "quick",
    families=(FAMILIES["subspace"], FAMILIES["common"], FAMILIES["kanji"]),
    seeds=(0, 1, 2),
    depths=(1, 2, 4, 8, 16, 32),
    inner_times=(0.01, 1.0),
    finite=tuple(dict(_SMALL_FINITE, depths=(1,), widths=(32.0, 64.0, 128.0), outer_steps=40).items()),
)


def panel_for_file(path: str, base: Panel) -> Panel:
    """``base``'s grid on one task file (one 'family', no seeds to vary: statistics are then taken over
    its test tasks), and the finite panel on the same file."""
    finite = dict(base.finite)
    for key in ("family", "train_tasks", "test_tasks", "support", "query", "dim"):
        finite.pop(key, None)
    finite["family"] = path
    return dataclasses.replace(base, name=f"{base.name} on {os.path.basename(path)}", families=(Family(path),),
                               seeds=(0,), finite=tuple(finite.items()))


def select(panel: Panel, tasks: str) -> Panel:
    """``panel`` restricted to the families of ``tasks`` (a comma list of generated families, each
    run at the panel's seeds), or ``panel``'s grid on one ``.npz`` task file (:func:`panel_for_file`)."""
    from ntk_bridge.errors import UserError

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise UserError("--tasks: give a task file or a comma list of families")
    files = [n for n in names if n not in FAMILIES]
    if not files:
        return dataclasses.replace(panel, families=tuple(FAMILIES[n] for n in dict.fromkeys(names)))
    if len(names) > 1:
        raise UserError(f"--tasks: {', '.join(files)} is not a task family ({', '.join(FAMILIES)}); a task file "
                        "is given alone")
    from ntk_bridge import budget

    config = SweepConfig.of(family=names[0])
    budget.check_memory(budget.planned_tasks(config).source_bytes, f"reading the task file {names[0]}")
    tasks = build.task_set(config)  # one clear line for a missing or malformed file
    if tasks.layout.n_test < 2:
        raise UserError(f"--tasks {names[0]}: {tasks.layout.n_test} test task; verify takes its statistics over "
                        "the test tasks of a task file and needs at least 2")
    return panel_for_file(names[0], panel)


def with_archs(panel: Panel, archs: str) -> Panel:
    """``panel`` over the architectures of ``archs`` (a comma list of ``fc``, ``conv``, ``resnet``);
    ``conv`` and ``resnet`` need an image family in the panel (``UserError`` otherwise)."""
    from ntk_bridge import ranges
    from ntk_bridge.convnets import ARCHS
    from ntk_bridge.errors import require

    chosen = tuple(ranges.parse_choices(archs, "--arch", ARCHS))
    require(len(chosen) > 0, "--arch: give a comma list of fc, conv, resnet")
    image = [a for a in chosen if a != "fc"]
    require(not image or any(f.has_images() for f in panel.families),
            f"--arch {','.join(image)}: the panel has no image tasks (kanji, omniglot, or a task file with "
            "image_shape)")
    return dataclasses.replace(panel, archs=chosen)


def _family_label(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0] if name.endswith(".npz") else name


def _run(run_sweep, config: SweepConfig, run_dir: str, executor, progress) -> pd.DataFrame:
    try:
        return run_sweep(config, run_dir, executor=executor, progress=progress, figures=False)
    finally:
        if progress is not None and hasattr(progress, "stop"):
            progress.stop()


def sweeps(panel: Panel) -> list[tuple[str, SweepConfig, str]]:
    """``(label, config, arch)`` of every infinite-width sweep of ``panel``, in the order they run."""
    out = []
    for family in panel.families:
        for seed in panel.seeds if "fc" in panel.archs else ():
            out.append((f"{_family_label(family.name)}-s{seed}", family.config(panel, seed), "fc"))
        for arch in [a for a in panel.archs if a != "fc"]:
            if not family.has_images():
                continue
            for seed in panel.seeds:
                out.append((f"{_family_label(family.name)}-{arch}-s{seed}", family.config(panel, seed, arch), arch))
    return out


def panel_estimate(panel: Panel, finite: bool = True) -> dict:
    """The :func:`ntk_bridge.budget.estimate` of the whole panel, from its sizes alone (nothing is
    built or read): the largest peak memory of its sweeps (they run one after another) and the sum of
    their times and cells."""
    from ntk_bridge import budget

    configs = [config for _, config, _ in sweeps(panel)]
    if finite and panel.finite:
        configs.append(SweepConfig.of(**dict(panel.finite)))
    ests = [budget.estimate(c, budget.planned_tasks(c)) for c in configs]
    return dict(memory_bytes=max(e["memory_bytes"] for e in ests), seconds=sum(e["seconds"] for e in ests),
                cells=sum(e["cells"] for e in ests), points=max(e["points"] for e in ests), sweeps=len(ests))


def run_panel(panel: Panel, out: str, executor=None, progress_factory: Callable[[str], object] | None = None,
              finite: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every sweep of ``panel`` under ``out`` (``<out>/runs/<family>-s<seed>/`` and
    ``<out>/runs/finite/``; each cached and resumable) and return ``(infinite rows, finite rows)``;
    the ``tasks`` and ``task_seed`` columns say which family and seed a row belongs to.

    In-process the sweeps run one after another, each with its own progress (``progress_factory(label)``).
    With an executor every pending unit of every sweep is submitted at once
    (:func:`ntk_bridge.sweep.run_sweeps`), so ``--workers N`` / ``--scheduler`` keep every worker busy across
    the panel, under one progress (``progress_factory('panel: N sweeps')``); the rows are the same."""
    from ntk_bridge.sweep import SweepJob, run_sweep, run_sweeps

    labelled = [(label, config, arch) for label, config, arch in sweeps(panel)]
    if finite and panel.finite:
        labelled.append(("finite", SweepConfig.of(**dict(panel.finite)), None))
    jobs = [SweepJob(config, os.path.join(out, "runs", label), figures=False) for label, config, _ in labelled]
    if executor is None:
        tables = [_run(run_sweep, job.config, job.run_dir, None,
                       progress_factory(label if arch is not None else "finite widths") if progress_factory else None)
                  for job, (label, _, arch) in zip(jobs, labelled)]
    else:
        progress = progress_factory(f"panel: {len(jobs)} sweeps") if progress_factory else None
        try:
            tables = run_sweeps(jobs, executor, progress)
        finally:
            if progress is not None and hasattr(progress, "stop"):
                progress.stop()
    frames = [rows if arch == "fc" else rows.assign(tasks=rows["tasks"].astype(str) + f"/{arch}")
              for rows, (_, _, arch) in zip(tables, labelled) if arch is not None]
    infinite = pd.concat(frames, ignore_index=True)
    finite_rows = tables[-1] if finite and panel.finite else pd.DataFrame()
    return infinite, finite_rows
