"""The options of ``ntk-bridge fewshot``: one frozen dataclass, the one source of truth.

Every field carries its option in its metadata (:func:`ntk_bridge.config.option`: flag, help,
default as typed, help panel), as the sweep's configuration does; ``ntk-bridge fewshot`` builds its
options from these (:func:`fewshot_option`), and ``tests/fewshot/test_fewshot_command.py`` checks that every
option of the command is a field here and every field is on the command.

A flag means one thing in every command: the few-shot network's body is ``--body``, ``--channels``
and ``--blocks`` (``sweep``'s ``--arch``, ``--width`` and ``--depth`` are the kernel's network), its
training seeds ``--train-seeds`` (``sweep``'s ``--seeds`` are networks per finite-width cell). The
old spellings are refused with a hint (:data:`RENAMED`).
"""
from __future__ import annotations

import dataclasses

from ntk_bridge.config import option, typer_option
from ntk_bridge.datasets import DATASETS
from ntk_bridge.fewshot import METHOD_NAMES

__all__ = ["FewShotOptions", "QUICK", "RENAMED", "fewshot_option", "FIELD_NAMES"]

#: What ``--quick`` sets (a smoke run of a few minutes on 2 cores).
QUICK = {"shots": "1", "max_steps": 60, "budget_minutes": 0.0, "train_seeds": 1, "test_episodes": 100,
         "val_episodes": 20, "checkpoints": 4, "max_classes": 300}

#: Flags of ``fewshot`` renamed so that a flag means one thing in every command: old -> new.
RENAMED = {"--arch": "--body", "--width": "--channels", "--depth": "--blocks", "--seeds": "--train-seeds"}

_SET_HELP = ("Override a method setting, e.g. --set mtl.optimizer=adam --set mtl.warmup_steps=100 --set "
             "maml.inner_lr=0.1 (fields: optimizer radam|adam, lr, warmup_steps, schedule plateau|cosine, meta_batch, "
             "train_queries, inner_lr, inner_steps, test_inner_steps, logistic_c; METHOD may be 'all').")


@dataclasses.dataclass(frozen=True)
class FewShotOptions:
    """What ``ntk-bridge fewshot`` is told, as typed (text lists are parsed by the command)."""

    # grid: what is run
    methods: str = option("--methods", f"Comma-separated methods from {', '.join(METHOD_NAMES)}, run in this order.",
                          ",".join(METHOD_NAMES), panel="Grid")
    shots: str = option("--shots", "Comma-separated support images per class; one run per value.", "1,5",
                        panel="Grid")
    train_seeds: int = option("--train-seeds", "Training seeds per method and shot setting (--seed, --seed+1, ...); "
                              "each has its own validation and test episodes, shared by all methods.", 1, panel="Grid")
    seed: int = option("--seed", "First training seed.", 0, panel="Grid")
    # tasks: the data and the episodes
    dataset: str = option("--dataset", "Dataset (nothing is downloaded; omniglot and mini-imagenet need --data-dir).",
                          "kanji", choices=DATASETS, panel="Tasks")
    data_dir: str | None = option("--data-dir", "Folder of an omniglot or mini-imagenet copy you already have.", None,
                                  panel="Tasks")
    ways: int = option("--ways", "Classes per task (at least 2).", 5, panel="Tasks")
    data_seed: int = option("--data-seed", "Seed of the kanji rendering and of the class splits.", 0, panel="Tasks")
    test_episodes: int = option("--test-episodes", "Meta-test episodes per shot setting and seed (the same for every "
                                "method).", 1000, panel="Tasks")
    test_queries: int = option("--test-queries", "Query images per class in test episodes.", 15, panel="Tasks")
    val_episodes: int = option("--val-episodes", "Validation episodes per checkpoint.", 50, panel="Tasks")
    train_queries: int | None = option("--train-queries", "Query images per class in training episodes for every "
                                       "method (default: MTL 3, merged with the support; the others 7).", None,
                                       panel="Tasks")
    image_size: int | None = option("--image-size", "Resize images to this side (default: the dataset's own).", None,
                                    panel="Tasks")
    max_classes: int | None = option("--max-classes", "kanji only: render a seeded subset of this many characters.",
                                     None, panel="Tasks")
    tasks_of: str | None = option(
        "--tasks-of", "A sweep's run folder over image tasks (ntk-bridge sweep --tasks kanji ...): train on its task "
        "set's training episodes, test on its test episodes, and write closed_forms.csv (every closed form's accuracy "
        "beside every network's, paired over the same test episodes). The task set gives the ways, shots, test "
        "episodes and queries; --dataset, --ways, --shots, --test-episodes, --test-queries and the data options are "
        "not used.", None, panel="Tasks", metavar="RUN")
    val_tasks: int | None = option(
        "--val-tasks", "--tasks-of a task file: training tasks held out for validation (default a fifth). kanji and "
        "omniglot sweeps validate on --val-episodes episodes of the dataset's validation classes instead.", None,
        panel="Tasks")
    # model: the network trained
    body: str = option("--body", "Body of the network: conv4 or mlp.", "conv4", choices=("conv4", "mlp"),
                       panel="Model")
    channels: int = option("--channels", "Channels per conv block (or MLP hidden units).", 32, panel="Model")
    blocks: int = option("--blocks", "Conv blocks (or MLP hidden layers).", 4, panel="Model")
    layer_norm: bool = option("--layer-norm/--no-layer-norm", "LayerNorm over each example's feature map before each "
                              "ReLU.", True, panel="Model")
    parameterization: str = option("--parameterization", "standard or ntk (neural-tangents' meaning).", "standard",
                                   choices=("standard", "ntk"), panel="Model")
    # solver: how each method is trained and when it stops
    max_steps: int | None = option("--max-steps", "Outer-step cap per run (the plateau rule usually stops a run "
                                   "before). With --budget-minutes 0 a run is reproducible.", 3000, panel="Solver")
    budget_minutes: float = option("--budget-minutes", "Time cap per run on --clock, in minutes (0: none). Validation, "
                                   "testing and compilation are extra.", 0.0, panel="Solver")
    clock: str = option("--clock", "Clock of --budget-minutes: cpu (process CPU seconds; fairer on a shared machine) "
                        "or wall.", "cpu", choices=("cpu", "wall"), panel="Solver")
    checkpoints: int = option("--checkpoints", "Validation checkpoints over the caps (every max-steps/checkpoints "
                              "steps).", 60, panel="Solver")
    patience: int = option("--patience", "Plateau rule: checkpoints without a new best validation accuracy before the "
                           "learning rate is halved; the second such plateau ends the run.", 2, panel="Solver")
    meta_batch: int | None = option("--meta-batch", "Episodes per outer step for every method (default: MTL 8, the "
                                    "others 4).", None, panel="Solver")
    set_: tuple[str, ...] = option("--set", _SET_HELP, (), panel="Solver")
    # execution and output
    quick: bool = option("--quick", "Smoke run: sets " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
                         + " (max_classes for kanji only).", False, panel="Execution")
    jobs: int | None = option("--jobs", "Train the runs (methods x shots x seeds) in N worker processes of one core "
                              "each, side by side; the numbers are one core's on any machine, the same for every N and "
                              "as under taskset -c 1 (XLA's threads round differently with more cores). Default: in "
                              "this process, on the cores it may use.", None, panel="Execution", metavar="N")
    yes: bool = option("--yes", "Start even when the few-shot run is estimated to take more than an hour (without it "
                       "such a run is refused, with the estimate; the estimate counts every run to its caps).", False,
                       panel="Execution")
    out: str | None = option("--out", "Output folder (default ntk_bridge_runs/fewshot-DATASET-TIMESTAMP). Each finished "
                             "training run is saved there (trained/): rerunning the same command into it resumes.", None,
                             panel="Output")


#: The command function's parameter names (``set_`` for ``--set``).
FIELD_NAMES = tuple(f.name for f in dataclasses.fields(FewShotOptions))


def fewshot_option(name: str):
    """``typer.Option`` of field ``name`` of :class:`FewShotOptions`."""
    if name == "set_":  # a repeatable option: typer wants a list default
        import typer

        f = next(f for f in dataclasses.fields(FewShotOptions) if f.name == name)
        return typer.Option([], "--set", help=f.metadata["help"], rich_help_panel=f.metadata["panel"])
    return typer_option(FewShotOptions, name)
