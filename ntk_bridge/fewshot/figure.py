"""The committed few-shot figure: its run settings and the files it puts into ``figures/``.

:func:`figure_config` gives the settings (full: the README's measurement, the same as
``ntk-bridge fewshot --dataset kanji --ways 5 --shots 1 --methods mtl,anil,maml,r2d2,protonet --train-seeds 3 --yes``
with every other option at its default; quick: a smoke-sized run). Both use a step cap and no time
cap, so a rerun takes the same steps and draws the same curves. :func:`make_fewshot_figure` runs
:func:`~ntk_bridge.fewshot.experiment.run_fewshot` into a run folder (once; an existing
``results.csv`` is reused) and copies the figure and the tables behind it into ``out``. Its training runs
are independent: :func:`runs_to_train` lists them and :func:`train_run` trains one into the run folder, so
that ``ntk-bridge figures --jobs N`` trains them in N processes before :func:`make_fewshot_figure` finds
them saved (the same rows, curves and accuracies; only the measured seconds differ from run to run):

* ``fewshot_accuracy_vs_time.png`` / ``.pdf`` -- the figure;
* ``fewshot_accuracy_vs_time.csv`` -- the validation curves it is drawn from (``curves.csv``);
* ``fewshot_results.csv`` -- one row per method, shots and seed (``results.csv``);
* ``fewshot_summary.csv`` -- the same over seeds (``summary.csv``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from ntk_bridge.datasets.loaders import DataSpec
from ntk_bridge.fewshot.experiment import FewShotConfig, Progress, run_fewshot
from ntk_bridge.fewshot.methods import METHODS, default_method_config
from ntk_bridge.fewshot.report import FIGURE

#: Run-folder file -> name in ``figures/``.
FIGURE_FILES = {f"{FIGURE}.png": "fewshot_accuracy_vs_time.png", f"{FIGURE}.pdf": "fewshot_accuracy_vs_time.pdf",
                "curves.csv": "fewshot_accuracy_vs_time.csv", "results.csv": "fewshot_results.csv",
                "summary.csv": "fewshot_summary.csv"}


def figure_config(quick: bool = False) -> tuple[FewShotConfig, DataSpec]:
    """``(config, data)`` of the committed figure (``quick``: a run of a few minutes)."""
    methods = tuple(default_method_config(name) for name in METHODS)
    if quick:
        return (FewShotConfig(ways=5, shots=(1,), methods=methods, seeds=(0,), max_steps=60, checkpoints=4,
                              val_episodes=20, test_episodes=100), DataSpec("kanji", max_classes=300))
    return FewShotConfig(ways=5, shots=(1,), methods=methods, seeds=(0, 1, 2)), DataSpec("kanji")


def make_fewshot_figure(run_dir: str | os.PathLike, out: str | os.PathLike, quick: bool = False,
                        progress: Progress | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Run the figure's comparison into ``run_dir`` unless it holds a ``results.csv``, redraw the
    figure from its tables, and copy :data:`FIGURE_FILES` into ``out``; returns the written paths."""
    from ntk_bridge.fewshot.report import plot_accuracy_vs_cost

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "results.csv").exists():
        config, data = figure_config(quick)
        log(f"few-shot run into {run_dir}")
        run_fewshot(config, data, run_dir, progress, figure=False)
    plot_accuracy_vs_cost(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source, name in FIGURE_FILES.items():
        shutil.copyfile(run_dir / source, out / name)
        written.append(str(out / name))
    return written


def runs_to_train(run_dir: str | os.PathLike, quick: bool = False) -> list[tuple[str, int]]:
    """The ``(method, seed)`` training runs of the figure's comparison, in the order :func:`make_fewshot_figure`
    trains them, or none when ``run_dir`` already holds its ``results.csv``."""
    return [] if (Path(run_dir) / "results.csv").exists() else _runs(figure_config(quick)[0])


def _runs(config: FewShotConfig) -> list[tuple[str, int]]:
    return [(m.method, seed) for seed in config.seeds for m in config.methods]


def load_data(quick: bool = False):
    """The figure's dataset (rendered once into the cache, then read from it)."""
    return figure_config(quick)[1].load()


def train_run(run_dir: str | os.PathLike, quick: bool, method: str, seed: int) -> float:
    """Train and test one run of the figure's comparison and save it in ``run_dir`` (a run saved there already
    is kept): the run :func:`make_fewshot_figure` would train, under the same key, so that it finds it. Returns
    the seconds it took (wall clock)."""
    import time

    from ntk_bridge.fewshot.experiment import train_one

    started = time.perf_counter()
    config, data = figure_config(quick)
    if (method, seed) not in _runs(config):
        raise ValueError(f"the few-shot figure has no run {method!r} with seed {seed}")
    train_one(config, data, run_dir, config.shots[0], seed, method)
    return time.perf_counter() - started
