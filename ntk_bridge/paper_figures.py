"""``ntk-bridge figures``: regenerate every figure in ``figures/`` from the sweep and few-shot machinery.

Each figure is computed into a resumable run folder under ``runs/figures/<mode>/<name>`` (the sweep
cache: a rerun reuses finished cells), then drawn from its table and written as
``figures/<name>.png``, ``.pdf`` and ``.csv`` (the table it was drawn from). ``--quick`` uses smaller
grids (a few minutes on 2 cores); the full mode denser ones (the sweep figures about 17 minutes on 2
cores, the few-shot comparison, five methods to their plateaus over three seeds, about 45 minutes of one
core; all of it about 30 minutes with ``--jobs 2`` on 2 cores).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Callable

import numpy as np

from ntk_bridge import build
from ntk_bridge import figures as figs
from ntk_bridge import methods as registry
from ntk_bridge.sweep import SweepConfig, run_sweep
from ntk_bridge.settings import ALL, LEARNED, QUERY

__all__ = ["FIGURES", "make_figures", "grids", "conv_configs", "conv_network_settings", "feature_configs",
           "regimes_configs"]

@dataclasses.dataclass(frozen=True)
class Grids:
    depth: SweepConfig
    inner_time: SweepConfig
    width: dict  # SweepConfig arguments (finite widths)
    degeneracy_depths: tuple[int, ...]
    fewshot: dict  # settings of the few-shot figure (:func:`ntk_bridge.fewshot.figure.figure_config`)
    conv: dict  # architecture -> SweepConfig of conv_gap_vs_depth (:func:`conv_configs`)
    conv_networks: dict  # settings of its trained networks on the conv sweep's episodes (:func:`conv_network_settings`)


def grids(quick: bool) -> Grids:
    """The configurations behind the figures (quick or full)."""
    if quick:
        depth = SweepConfig.of(depths=tuple(range(2, 33)), inner_times=(0.01, 0.1, 1.0))
        inner = SweepConfig.of(depths=(2, 8, 32), inner_times=tuple(np.round(np.geomspace(1e-3, 10, 9), 6)))
        width = dict(depths=(1, 2), widths=(64.0, 128.0, 256.0, 512.0), inner_times=(0.5,),
                     mtl_data=(QUERY,), train_tasks=4, test_tasks=4, support=4, query=6, dim=8, seeds=2,
                     outer_steps=100)
        return Grids(depth, inner, width, tuple(range(1, 65)), dict(quick=True), conv_configs(True),
                     conv_network_settings(True))
    depth = SweepConfig.of(depths=tuple(range(1, 129)), inner_times=(0.01, 0.1, 1.0))
    inner = SweepConfig.of(depths=(2, 8, 32, 128), inner_times=tuple(np.round(np.geomspace(1e-3, 10, 17), 6)))
    # widths to 512: width 1024 at depth 4 alone would take about 10 minutes of the 30 on 2 cores
    width = dict(depths=(1, 2, 3, 4), widths=(64.0, 128.0, 256.0, 512.0), inner_times=(0.5,),
                 mtl_data=(QUERY,), train_tasks=4, test_tasks=4, support=4, query=6, dim=8, seeds=2,
                 outer_steps=100)
    return Grids(depth, inner, width, tuple(range(1, 257)), dict(quick=False), conv_configs(False),
                 conv_network_settings(False))


def _fig_gap_vs_depth(g: Grids, run_root: str, out: str) -> list[str]:
    df = run_sweep(g.depth, os.path.join(run_root, "gap_vs_depth"))
    table = figs.gap_vs_depth_table(df)
    paths = figs.plot_gap_vs_depth(table, os.path.join(out, "gap_vs_depth"))
    paths += figs.plot_test_error_vs_depth(table, os.path.join(out, "test_error_vs_depth"))
    return paths


def _fig_gap_vs_inner_time(g: Grids, run_root: str, out: str) -> list[str]:
    df = run_sweep(g.inner_time, os.path.join(run_root, "gap_vs_inner_time"))
    return figs.plot_gap_vs_inner_time(figs.gap_vs_inner_time_table(df), os.path.join(out, "gap_vs_inner_time"))


def _fig_distance_vs_width(g: Grids, run_root: str, out: str) -> list[str]:
    """The width sweep (cached; shared with finite_gap_vs_depth)."""
    df = run_sweep(SweepConfig.of(**g.width), os.path.join(run_root, "distance_vs_width"))
    return figs.plot_distance_vs_width(figs.distance_vs_width_table(df), os.path.join(out, "distance_vs_width"))


def _fig_finite_gap_vs_depth(g: Grids, run_root: str, out: str) -> list[str]:
    df = run_sweep(SweepConfig.of(**g.width), os.path.join(run_root, "distance_vs_width"))
    return figs.plot_finite_gap_vs_depth(figs.finite_gap_vs_depth_table(df), os.path.join(out, "finite_gap_vs_depth"))


def _fig_kernel_degeneracy(g: Grids, run_root: str, out: str) -> list[str]:
    from ntk_bridge.diagnostics import kernel_degeneracy_table

    table = kernel_degeneracy_table(build.task_set(SweepConfig()), g.degeneracy_depths)
    return figs.plot_kernel_degeneracy(table, os.path.join(out, "kernel_degeneracy"))


def _fig_fewshot(g: Grids, run_root: str, out: str) -> list[str]:
    """The few-shot comparison (:func:`ntk_bridge.fewshot.figure.make_fewshot_figure`: a step budget,
    so a rerun takes the same steps; its run folder is reused), with the tables it is drawn from."""
    from pathlib import Path

    from ntk_bridge.fewshot.figure import make_fewshot_figure

    return make_fewshot_figure(Path(run_root) / "fewshot", out, quick=g.fewshot["quick"])


def conv_configs(quick: bool) -> dict[str, SweepConfig]:
    """The sweeps behind ``conv_gap_vs_depth``: kanji 5-way 1-shot episodes with 15 queries (3 per
    class), 7 x 7 pixels, closed forms of the fully connected, convolutional and residual networks
    (docs/theory.md §7). Quick: 10 training and 5 test episodes, depths to 8 (about a minute on 2
    cores); full: 25 and 15, depths to 12."""
    sizes = dict(family="kanji", dim=49, support=5, query=15, mtl_data=(ALL,), inner_times=(0.1, 1.0),
                 test_heads=(LEARNED,), methods=(registry.ANIL.name, registry.MAML.name))
    if quick:
        sizes.update(train_tasks=10, test_tasks=5, depths=(1, 2, 3, 4, 6, 8))
    else:
        sizes.update(train_tasks=25, test_tasks=15, depths=(1, 2, 3, 4, 6, 8, 12))
    return {arch: SweepConfig.of(arch=arch, **sizes) for arch in ("fc", "conv", "resnet")}


def conv_network_settings(quick: bool) -> dict:
    """The trained networks of ``conv_gap_vs_depth`` (``ntk-bridge fewshot --tasks-of`` the conv
    sweep): Conv-4 bodies (the few-shot path's default) trained on the sweep's training episodes
    with a step cap, so a rerun takes the same steps. Full: the five methods over three seeds,
    1,000 steps; quick: MTL, ANIL and MAML, one seed, 60 steps."""
    from ntk_bridge.fewshot.methods import ANIL, MAML, METHODS, MTL, default_method_config

    names = tuple(m.name for m in (MTL, ANIL, MAML)) if quick else tuple(METHODS)
    return dict(methods=tuple(default_method_config(n) for n in names), seeds=(0,) if quick else (0, 1, 2),
                max_steps=60 if quick else 1000, checkpoints=4 if quick else 20)


def _fig_conv_gap_vs_depth(g: Grids, run_root: str, out: str) -> list[str]:
    """Gap to MTL and accuracy against depth for fc / conv / resnet kernels on kanji episodes, and
    the few-shot networks trained and tested on the same episodes."""
    import pandas as pd

    from ntk_bridge.fewshot.experiment import config_for, run_on_tasks
    from ntk_bridge.bridge import load_run_tasks
    from ntk_bridge.figures.conv import conv_gap_vs_depth_table, plot_conv_gap_vs_depth

    runs = {arch: os.path.join(run_root, f"conv_gap_vs_depth_{arch}") for arch in g.conv}
    frames = {arch: run_sweep(cfg, runs[arch], figures=False) for arch, cfg in g.conv.items()}
    networks = os.path.join(run_root, "conv_gap_vs_depth_networks")
    episodes, sweep, record = load_run_tasks(runs["conv"])
    # each run trained once and saved (ntk_bridge.fewshot.store: keyed by settings, data, versions and format)
    run_on_tasks(config_for(episodes, **g.conv_networks), episodes, sweep, record, networks, figure=False,
                 run=runs["conv"])
    trained = pd.read_csv(os.path.join(networks, "episodes.csv"))
    styles = _network_styles(trained["method"].unique())
    table = conv_gap_vs_depth_table(frames, chance=1.0 / 5, networks=trained, order=list(styles))
    return plot_conv_gap_vs_depth(table, os.path.join(out, "conv_gap_vs_depth"), network_styles=styles)


def _network_styles(names) -> dict[str, tuple[str, str]]:
    """``{method: (label, colour)}`` of trained few-shot networks in registry order, then the raw-pixel
    baseline, coloured as the few-shot registry colours them (the closed forms' colours where they share a method)."""
    from ntk_bridge.fewshot.methods import METHODS as NETWORKS
    from ntk_bridge.fewshot.on_tasks import networks_first

    return {m: (NETWORKS[m].label if m in NETWORKS else "1-NN pixels",
                NETWORKS[m].color if m in NETWORKS else "0.5") for m in networks_first(names)}


#: Methods of the feature-learning figure: the finite networks (TP4's FO-MAML beside ANIL and MTL), the limits.
_FEATURE_NETWORKS = (registry.MTL.name, registry.ANIL.name, registry.FOMAML.name)
_FEATURE_LIMITS = (registry.MTL.name, registry.ANIL.name, registry.MAML.name)


def feature_configs(quick: bool) -> dict[str, SweepConfig]:
    """The sweeps behind ``feature_learning_vs_width`` (docs/theory.md §8): kanji 5-way 1-shot episodes
    (15 queries, 7 x 7 pixels) for finite muP linear networks (3 seeds) and the muP limit (``mup``), the
    NTK closed forms of the linear and ReLU networks (``ntk_*``); and per family the muP and NTK limits of
    the linear network for the closeness panel (``closeness:<family>:<limit>``). Quick: widths 8..128,
    10 training and 5 test episodes, subspace and kanji; full: widths 8..2048, 25 and 15 episodes, every
    regression family. Outer time 1 on kanji, 5 on the regression families."""
    # a finite outer time, the same for every limit and width (steps of 1/lambda_max: 181 on kanji, 160 on
    # subspace): the linear network's NTK has rank d, and its infinite-time solves would need a ridge
    kanji = dict(family="kanji", dim=49, support=5, query=15, train_tasks=10 if quick else 25,
                 test_tasks=5 if quick else 15, outer_times=(1.0,))
    common = dict(depths=(1,), inner_times=(0.5,), mtl_data=(ALL,), linearized=False)
    widths = (8.0, 32.0, 128.0) if quick else (8.0, 32.0, 128.0, 512.0, 2048.0)
    out = {"mup": SweepConfig.of(**kanji, **common, widths=widths + ("mup",), param="mup", activation="linear",
                                 methods=_FEATURE_NETWORKS, seeds=3),
           "ntk_linear": SweepConfig.of(**kanji, **common, widths=(math.inf,), activation="linear",
                                        methods=_FEATURE_LIMITS),
           "ntk_relu": SweepConfig.of(**kanji, **common, widths=(math.inf,), methods=_FEATURE_LIMITS)}
    families = ("subspace", "kanji") if quick else ("subspace", "linear", "sinusoid", "common", "kanji")
    for family in families:
        sizes = kanji if family == "kanji" else dict(family=family, test_tasks=10 if quick else 20, outer_times=(5.0,))
        for limit, width in (("mup", "mup"), ("ntk", math.inf)):
            out[f"closeness:{family}:{limit}"] = SweepConfig.of(**sizes, **common, widths=(width,), activation="linear",
                                                                methods=_FEATURE_LIMITS)
    return out


def _fig_feature_learning_vs_width(g: Grids, run_root: str, out: str) -> list[str]:
    from ntk_bridge.figures.feature import (accuracy_vs_width_table, closeness_table, feature_learning_table,
                                            plot_feature_learning_vs_width)

    cfgs = feature_configs(g.fewshot["quick"])
    frames = {name: run_sweep(cfg, os.path.join(run_root, "feature_learning_vs_width", name.replace(":", "_")),
                              figures=False) for name, cfg in cfgs.items()}
    accuracy = accuracy_vs_width_table(frames["mup"], frames["ntk_linear"], frames["ntk_relu"],
                                       tuple(reversed(_FEATURE_NETWORKS)))
    families = list(dict.fromkeys(n.split(":")[1] for n in frames if n.startswith("closeness:")))
    pairs = {f: (frames[f"closeness:{f}:mup"], frames[f"closeness:{f}:ntk"]) for f in families}
    table = feature_learning_table(accuracy, closeness_table(pairs, _FEATURE_LIMITS[1:]))
    return plot_feature_learning_vs_width(table, os.path.join(out, "feature_learning_vs_width"), "kanji 5-way")


def regimes_configs(quick: bool) -> dict[str, SweepConfig]:
    """The sweeps behind ``finite_regimes_vs_width``: finite ReLU networks in the NTK and the muP
    parameterisation (``{param: SweepConfig}``) with the NTK closed form (``width inf``), MTL and ANIL on
    ``subspace`` (the width figure's small tasks: 4 training and 4 test tasks, 4 + 6 points, ``d = 8``; MTL on
    the queries, ``lambda*tau = 0.5``, 100 outer steps), 2 networks per width. Full: depths 1..4, widths
    64..1024 (9.6 and 5.9 minutes measured with the two sweeps side by side on 2 cores); quick: depths 1, 2,
    widths 64, 256, one network, 30 outer steps."""
    sizes = dict(family="subspace", dim=8, train_tasks=4, test_tasks=4, support=4, query=6, inner_times=(0.5,),
                 mtl_data=(QUERY,), methods=(registry.MTL.name, registry.ANIL.name), linearized=False)
    if quick:
        sizes.update(depths=(1, 2), widths=(64.0, 256.0, math.inf), seeds=1, outer_steps=30)
    else:
        sizes.update(depths=(1, 2, 3, 4), widths=(64.0, 128.0, 256.0, 512.0, 1024.0, math.inf), seeds=2,
                     outer_steps=100)
    return {param: SweepConfig.of(param=param, **sizes) for param in ("ntk", "mup")}


def _fig_finite_regimes_vs_width(g: Grids, run_root: str, out: str) -> list[str]:
    from ntk_bridge.figures.regimes import finite_regimes_table, plot_finite_regimes_vs_width

    frames = {param: run_sweep(cfg, os.path.join(run_root, f"finite_regimes_vs_width_{param}"), figures=False)
              for param, cfg in regimes_configs(g.fewshot["quick"]).items()}
    return plot_finite_regimes_vs_width(finite_regimes_table(frames), os.path.join(out, "finite_regimes_vs_width"),
                                        "ANIL")


FIGURES: dict[str, Callable] = {
    "gap_vs_depth": _fig_gap_vs_depth,
    "gap_vs_inner_time": _fig_gap_vs_inner_time,
    "kernel_degeneracy": _fig_kernel_degeneracy,
    "distance_vs_width": _fig_distance_vs_width,
    "finite_gap_vs_depth": _fig_finite_gap_vs_depth,
    "fewshot": _fig_fewshot,
    "conv_gap_vs_depth": _fig_conv_gap_vs_depth,
    "feature_learning_vs_width": _fig_feature_learning_vs_width,
    "finite_regimes_vs_width": _fig_finite_regimes_vs_width,
}


#: Figures that share a run folder, made one after the other in one process under ``--jobs`` (the second
#: then finds the first one's cells); the longest (the few-shot comparison) first, so that it starts at once
#: (when its training runs are still to do, they go first, one by one, and the figure after them).
_TOGETHER = (("fewshot",), ("distance_vs_width", "finite_gap_vs_depth"))

#: Figures whose work comes in one long piece (minutes in full mode, ``docs/figures.md``): under ``--jobs`` they
#: start before the few-shot comparison's fifteen training runs, which then fill the workers evenly, the short
#: figures last. Started after the runs, the long pieces left one worker idle for minutes at the end.
_LONG = ("distance_vs_width", "finite_regimes_vs_width", "feature_learning_vs_width", "conv_gap_vs_depth")


def _order(groups: list[tuple], fewshot_runs: bool) -> tuple[list[tuple], list[tuple]]:
    """``(long, short)``: the groups submitted before the few-shot training runs (those with a figure of
    :data:`_LONG`) and after them, the few-shot figure left out while its runs are still to train."""
    todo = [g for g in groups if not (fewshot_runs and g == ("fewshot",))]
    long = [g for g in todo if set(g) & set(_LONG)]
    return long, [g for g in todo if g not in long]


def _make(names: tuple, quick: bool, run_root: str, out: str) -> tuple[dict[str, list[str]], float]:
    """Make ``names`` one after the other (one worker's share under ``--jobs``); returns their paths and the
    seconds it took."""
    started, g = time.perf_counter(), grids(quick)
    return {name: FIGURES[name](g, run_root, out) for name in names}, time.perf_counter() - started


def _groups(names: list[str]) -> list[tuple]:
    """``names`` in groups for the workers: those of :data:`_TOGETHER` together, each other figure alone."""
    groups = [tuple(n for n in group if n in names) for group in _TOGETHER]
    grouped = {n for group in groups for n in group}
    return [group for group in groups if group] + [(n,) for n in names if n not in grouped]


def make_figures(out: str = "figures", quick: bool = False, only: list[str] | None = None,
                 run_root: str | None = None, log: Callable[[str], None] = print, jobs: int = 1
                 ) -> dict[str, list[str]]:
    """Regenerate the figures (all, or ``only`` those named) into ``out``; returns their paths.

    The figures are made in ``jobs`` worker processes (``spawn``), **each pinned to one core**: XLA sizes its
    thread pool by the cores a process may use, and the networks trained for the few-shot comparison and
    ``conv_gap_vs_depth`` round differently with different pool sizes, so one core per worker gives their
    numbers on any machine (the closed forms' and the sweeps' do not depend on it). Only a process that may
    use one core anyway makes them in itself when ``jobs = 1``. Each figure's sweeps and training runs happen
    in one worker, figures sharing a run folder in the same one, and the few-shot comparison's training runs
    (methods x seeds) one by one, before its figure is drawn from them. The files are the same for every
    ``jobs`` (every figure is computed from its own cached, deterministic runs), apart from the few-shot
    figure's measured times."""
    mode = "quick" if quick else "full"
    run_root = run_root or os.path.join("runs", "figures", mode)
    os.makedirs(out, exist_ok=True)
    names = [name for name in FIGURES if not only or name in only]
    from ntk_bridge import runtime

    if jobs <= 1 and len(runtime.usable_cores()) == 1:
        g = grids(quick)
        written = {}
        for name in names:
            log(f"figure {name} ({mode})")
            written[name] = FIGURES[name](g, run_root, out)
        return written
    from concurrent.futures import FIRST_COMPLETED, wait

    from ntk_bridge.fewshot import figure as fewshot

    fewshot_dir = os.path.join(run_root, "fewshot")
    runs = fewshot.runs_to_train(fewshot_dir, quick) if "fewshot" in names else []
    if runs:
        fewshot.load_data(quick)  # rendered once here, not by every worker at once
    made, groups = {}, _groups(names)
    # the long figures first, then the few-shot comparison's training runs, each on its own, then the short
    # figures; the few-shot figure is drawn once its runs are saved
    long, short = _order(groups, bool(runs))
    jobs = max(1, min(jobs, len(long) + len(runs) + len(short)))  # no worker without work
    with runtime.one_core_pool(jobs) as pool:  # one core's numbers on any machine, a heap that keeps what it frees
        futures = {pool.submit(_make, g, quick, run_root, out): g for g in long}
        trains = {pool.submit(fewshot.train_run, fewshot_dir, quick, m, seed): (m, seed) for m, seed in runs}
        futures.update({pool.submit(_make, g, quick, run_root, out): g for g in short})
        log(f"figures ({mode}) in {jobs} process{'es' if jobs > 1 else ''} of one core each: "
            + "; ".join(", ".join(g) for g in long) + ("; " if long else "")
            + (f"{len(runs)} few-shot training runs; " if runs else "")
            + "; ".join(", ".join(g) for g in futures.values() if g not in long))
        pending = set(trains) | set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future in trains:
                        log("few-shot run {} seed {} trained in {:.0f} s ({} of {})".format(
                            *trains[future], future.result(), sum(f.done() for f in trains), len(trains)))
                        if all(f.done() for f in trains) and ("fewshot",) not in futures.values():
                            last = pool.submit(_make, ("fewshot",), quick, run_root, out)
                            futures[last] = ("fewshot",)
                            pending.add(last)
                    else:
                        paths, seconds = future.result()
                        made.update(paths)
                        log(f"made {', '.join(futures[future])} in {seconds:.0f} s")
        except BaseException:
            for future in list(trains) + list(futures):
                future.cancel()
            raise
    return {name: made[name] for name in names}
