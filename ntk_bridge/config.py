"""The configuration of a sweep: nested frozen dataclasses, the one source of truth.

Every field that the command line sets carries its option in its metadata (:func:`option`): the
flag, the help text, how the typed text is parsed and the default as typed. The grid's axes
(:data:`ntk_bridge.axes.AXES`: depths, widths, the times, MTL data, test heads) make their fields of
:class:`GridConfig` (:meth:`ntk_bridge.axes.Axis.option`: the flag and the parser are the axis's).
``ntk-bridge sweep`` builds its options from these (:func:`cli_option`) and its config from them part
by part, keyword by keyword (:meth:`GridConfig.from_text` parses the grid's texts); validation errors
name the option the user typed, and ``tests/test_config.py`` checks that every option of the command
is a field here, every field with an option is on the command, and every option reaches its field.

A :class:`SweepConfig` is hashable and serialisable (:meth:`SweepConfig.to_dict`); the parts that
determine a cell's numbers enter its cache key (:func:`ntk_bridge.sweep.cell_context`).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Iterator

from ntk_bridge import axes
from ntk_bridge import methods as registry
from ntk_bridge import ranges, runtime
from ntk_bridge.axes import MAX_DEPTH, MAX_WIDTH, MUP_WIDTH  # noqa: F401  (re-exported)
from ntk_bridge.errors import UserError, require
from ntk_bridge.fields import PANELS, flag, option, parameter, typer_option  # noqa: F401  (re-exported)
from ntk_bridge.settings import ALL, LEARNED, MTL_DATA_VALUES, QUERY, RESET

__all__ = ["GridConfig", "TaskConfig", "ModelConfig", "FiniteConfig", "NumericsConfig", "SweepConfig", "option", "flag",
           "typer_option", "PANELS", "TASK_FAMILIES", "IMAGE_FAMILIES", "ARCHS", "READOUTS", "SOLVERS", "PARAMS",
           "ACTIVATIONS", "MUP_WIDTH", "finite_width"]

#: Generated task families (:data:`ntk_bridge.families.GENERATORS`); anything else must be a ``.npz`` file.
TASK_FAMILIES = ("subspace", "linear", "sinusoid", "common", "kanji", "omniglot")
#: Families whose inputs are images (:data:`ntk_bridge.families.IMAGE_FAMILIES`).
IMAGE_FAMILIES = ("kanji", "omniglot")
#: Architectures and readouts (:mod:`ntk_bridge.convnets`), outer solvers (:mod:`ntk_bridge.solvers`).
ARCHS, READOUTS, SOLVERS = ("fc", "conv", "resnet"), ("flatten", "gap"), ("auto", "dense", "cholesky", "cg")
#: Parameterisations and activations of the fully connected network (:data:`ntk_bridge.kernels.PARAMS`).
PARAMS, ACTIVATIONS = ("ntk", "mup"), ("relu", "linear")


def finite_width(w) -> bool:
    """Whether a grid width is a finite network's (not ``inf``, the NTK limit, nor ``mup``, the muP limit)."""
    return not isinstance(w, str) and math.isfinite(w)


def _tuple(parser, option_name, *args):
    return lambda text: tuple(parser(text, option_name, *args))


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The grid: every combination of the values of its axes (every field but ``methods``;
    :data:`ntk_bridge.axes.AXES`) is one cell."""

    depths: tuple[int, ...] = axes.DEPTH.option(
        "Depths (hidden layers): '2..32', '1..128:x2' (geometric), '1..10:3' (step), or '1,2,4,8'.",
        tuple(range(2, 33)), "2..32")
    widths: tuple[float, ...] = axes.WIDTH.option(
        "Widths: 'inf' (closed-form infinite-width predictors, the NTK limit), 'mup' (the muP limit of "
        "the one-hidden-layer linear network: --depth 1 --activation linear) and/or finite widths trained by gradient "
        "descent, e.g. '64..1024:x2'.", (math.inf,), "inf")
    inner_times: tuple[float, ...] = axes.INNER_TIME.option(
        "Inner-loop time lambda*tau of ANIL/MAML meta-training (comma list).", (0.01, 0.1, 1.0), "0.01,0.1,1")
    finetune_times: tuple[float, ...] = axes.FINETUNE_TIME.option(
        "Test-time fine-tuning time s_hat (comma list).", (1.0,), "1")
    outer_times: tuple[float, ...] = axes.OUTER_TIME.option(
        "Outer (meta-)training time eta*t; 'inf' (= 'auto') trains to convergence: closed forms at "
        "t = inf, finite networks for --outer-steps steps of size 1/lambda_max.", (math.inf,), "auto")
    methods: tuple[str, ...] = option(
        "--methods", f"Comma list of methods among {', '.join(registry.SWEEPABLE)} (fomaml: finite widths only); the "
        "no-transfer baseline is always computed.", registry.DEFAULT_SWEEP, ",".join(registry.DEFAULT_SWEEP),
        _tuple(ranges.parse_choices, "--methods", registry.SWEEPABLE))
    mtl_data: tuple[str, ...] = axes.MTL_DATA.option(
        f"MTL training data, comma list of: '{ALL}' (support+query merged, the paper's MTL), '{QUERY}' "
        "(the same data as ANIL's outer loss).", MTL_DATA_VALUES, ",".join(MTL_DATA_VALUES))
    test_heads: tuple[str, ...] = axes.TEST_HEAD.option(
        f"How ANIL's and MAML's test-time adaptation starts, comma list of: '{LEARNED}' (from the "
        f"meta-learned network), '{RESET}' (the head reset to its initial value, from the trained body, as MTL's "
        "always is: the paper's protocol as reported).", (LEARNED,), LEARNED)

    def __post_init__(self):
        require(len(self.depths) > 0 and min(self.depths) >= 1, "--depth: depths must be >= 1")
        require(max(self.depths) <= MAX_DEPTH, f"--depth: {max(self.depths)} is above the maximum of {MAX_DEPTH}")
        numeric = [w for w in self.widths if w != MUP_WIDTH]
        require(len(self.widths) > 0 and all(not isinstance(w, str) and w >= 1 for w in numeric),
                "--width: widths must be >= 1 (or inf, mup)")
        require(all(w <= MAX_WIDTH or math.isinf(w) for w in numeric),
                f"--width: widths above the maximum of {MAX_WIDTH}")
        for axis in (axes.INNER_TIME, axes.FINETUNE_TIME):
            values = axis.of(self)
            require(not any(math.isnan(v) for v in values), f"{axis.flag}: a time is not a number")
            require(len(values) > 0 and all(v >= 0 for v in values), f"{axis.flag}: times must be >= 0")
        require(len(self.outer_times) > 0 and all(v > 0 for v in self.outer_times), "--outer-time: times must be > 0")
        bad = [m for m in self.methods if m not in registry.SWEEPABLE]
        require(not bad, f"--methods: unknown method(s) {', '.join(bad)}; choose from {', '.join(registry.SWEEPABLE)}")
        steps_only = [m for m in self.methods if registry.get(m).closed_form_needs_steps]
        require(not steps_only or any(w == MUP_WIDTH or finite_width(w) for w in self.widths),
                f"--methods: {', '.join(steps_only)} has a closed form in discrete time only, so it needs a finite "
                "--width (whose cells follow discrete steps)")
        for axis in (a for a in axes.AXES if a.values is not None):  # the enumerated axes
            bad = [v for v in axis.of(self) if v not in axis.values]
            require(axis.of(self) and not bad, f"{axis.flag}: use {' and/or '.join(map(repr, axis.values))}, "
                    f"got {', '.join(bad)}")

    @classmethod
    def from_text(cls, **texts: str) -> "GridConfig":
        """A grid from its options as typed, keyed by field name (``GridConfig.from_text(depths="2..32",
        widths="inf", ...)``; a field not given keeps its default): each text is parsed by its field's
        parser (its axis's, :meth:`ntk_bridge.axes.Axis.parse`), in the order of the fields, then validated."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(texts) - set(fields)
        if unknown:
            raise TypeError(f"unknown GridConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**{name: f.metadata["parse"](texts[name]) for name, f in fields.items() if name in texts})


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """The task set: a generated family (sizes and seed apply) or a ``.npz`` file."""

    family: str = option("--tasks", "Task family: subspace (shared low-rank teachers), linear (independent "
                         "teachers), sinusoid, common (a shared teacher plus task teachers, tanh link), kanji "
                         "(5-way episodes of rendered handwriting; --dim a square number of pixels, --support and "
                         "--query multiples of 5), omniglot (the same episodes of your Omniglot copy, --data-dir), "
                         "or a .npz task file.", "subspace")
    train_tasks: int = option("--train-tasks", "Number of training tasks N (generated tasks).", 10)
    support: int = option("--support", "Support points per task.", 5)
    query: int = option("--query", "Query points per task.", 10)
    test_tasks: int = option("--test-tasks", "Number of unseen test tasks.", 20)
    dim: int = option("--dim", "Input dimension d (inputs on the sphere ||x||^2 = d).", 16)
    task_seed: int = option("--task-seed", "Seed of the generated task set.", 0)
    data_dir: str | None = option("--data-dir", "Folder of your Omniglot copy (--tasks omniglot): "
                                  "DIR/images_background/... and DIR/images_evaluation/....", None)

    def __post_init__(self):
        if os.path.isdir(self.family):
            raise UserError(f"--tasks: {self.family} is a folder, not a .npz task file")
        if self.family not in TASK_FAMILIES:
            if self.family.endswith(".npz") or os.sep in self.family:
                require(os.path.isfile(self.family), f"--tasks: file not found: {self.family}")
            else:
                raise UserError(f"--tasks: unknown task family {self.family!r}; use "
                                f"{', '.join(TASK_FAMILIES)} or a .npz file")
        for name in ("train_tasks", "support", "query", "test_tasks", "dim"):
            require(int(getattr(self, name)) >= 1, f"{flag(TaskConfig, name)} must be >= 1")
        if self.family in IMAGE_FAMILIES:
            side = math.isqrt(int(self.dim))
            require(side * side == int(self.dim) and side >= 2,
                    f"--dim: the {self.family} family needs a square number of pixels (49 = 7 x 7, 196 = 14 x 14), "
                    f"got {self.dim}")
            require(self.support % 5 == 0 and self.query % 5 == 0,
                    f"--support, --query: {self.family} tasks are 5-way: use multiples of 5")
        if self.family == "omniglot":
            require(self.data_dir is not None, "--data-dir: --tasks omniglot reads your copy of Omniglot: pass "
                    "--data-dir DIR (DIR/images_background/<alphabet>/<character>/*.png, DIR/images_evaluation/...)")
            require(os.path.isdir(self.data_dir), f"--data-dir: {self.data_dir} is not a folder")
        if self.family in ("subspace", "sinusoid"):
            require(int(self.dim) >= 2, f"--dim: the {self.family} family needs --dim >= 2 ("
                    + ("its teachers span a rank-2 subspace)" if self.family == "subspace"
                       else "the input and a constant coordinate)"))

    @property
    def generated(self) -> bool:
        return self.family in TASK_FAMILIES


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network (:class:`ntk_bridge.kernels.Architecture`): fully connected, convolutional or residual."""

    arch: str = option("--arch", "Architecture: fc (L hidden layers Dense -> Relu, the theorem's network), conv "
                       "(L blocks Conv 3x3 -> Relu), resnet (a stem Conv and L residual blocks); conv and resnet "
                       "need image tasks (--tasks kanji, omniglot, or a task file with image_shape); --width is "
                       "their number of channels.", "fc", choices=ARCHS)
    readout: str = option("--readout", "Readout of conv and resnet: flatten (Flatten -> Dense; kernels O(P^2 HW) "
                          "per layer) or gap (global average pooling -> Dense; O(P^2 (HW)^2) per layer).", "flatten",
                          choices=READOUTS)
    param: str = option("--param", "Parameterisation of the finite fully connected networks: ntk (the NTK "
                        "parameterisation, whose limit is --width inf) or mup (maximal update, Yang & Hu: features "
                        "move at every width; its limit is --width mup). The closed forms are the NTK limit.",
                        "ntk", choices=PARAMS)
    activation: str = option("--activation", "Activation of the fully connected hidden layers: relu or linear "
                             "(the identity; hidden W_std 1 so that K(x, x) = 1 as for relu).", "relu",
                             choices=ACTIVATIONS)

    def __post_init__(self):
        require(self.arch in ARCHS, f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        require(self.readout in READOUTS, f"--readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")
        require(self.param in PARAMS, f"--param must be one of {', '.join(PARAMS)}, got {self.param!r}")
        require(self.activation in ACTIVATIONS,
                f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        require(self.arch == "fc" or (self.param, self.activation) == ("ntk", "relu"),
                f"--param mup and --activation linear are for the fully connected network (--arch fc), not "
                f"--arch {self.arch}")


@dataclasses.dataclass(frozen=True)
class FiniteConfig:
    """How finite networks are trained and compared (:class:`ntk_bridge.finite.TrainingConfig`)."""

    seeds: int = option("--seeds", "Networks per finite-width cell (independent initialisations; an "
                        "ensemble-mean row is added).", 1)
    finite_mode: str = option("--finite-mode", "Finite networks: 'centred' (f - f0 vs the mean predictor) or 'raw' (f vs "
                       "the full-f0 closed form).", "centred", choices=("centred", "raw"))
    outer_steps: int = option("--outer-steps", "Finite networks with an infinite outer time: outer gradient steps of "
                              "size 1/lambda_max(Theta) (the closed forms they are compared with take the same "
                              "steps).", 300, panel="Solver")
    finite_dtype: str = option("--finite-dtype", "Finite networks: 'float64' (exact comparisons) or 'float32' (faster "
                        "matrix products; the closed forms stay float64).", "float64", choices=("float64", "float32"),
                        panel="Solver")
    linearized: bool = option("--linearized/--no-linearized", "Finite networks: also train each network's linearised "
                              "twin (dist_to_linearized_rel, linearized_to_infinite_rel; about doubles the cost).",
                              True, panel="Solver")

    def __post_init__(self):
        require(int(self.seeds) >= 1, "--seeds must be >= 1")
        require(self.finite_mode in ("centred", "raw"), "--finite-mode must be 'centred' or 'raw'")
        require(int(self.outer_steps) >= 1, "--outer-steps must be >= 1")
        require(self.finite_dtype in ("float64", "float32"), "--finite-dtype must be 'float64' or 'float32'")


@dataclasses.dataclass(frozen=True)
class NumericsConfig:
    """Settings of the dense linear algebra (part of every cell's key)."""

    blas_threads: int = option("--blas-threads", "Threads of the BLAS/LAPACK behind the dense solves (part of every "
                               "cell's cache key: results are exact for one count).", runtime.DEFAULT_BLAS_THREADS,
                               panel="Execution")
    rcond: float = 1e-10  # relative ridge floor of infinite-time solves (reported whenever used)
    solver: str = option("--solver", "Outer solves of MTL and GBML: dense (eigh, every outer time), cholesky "
                         "(the meta-kernel and MTL kernel formed from their per-task blocks, one Cholesky "
                         "factorisation), cg (block-Jacobi preconditioned conjugate gradients from the per-task "
                         "blocks, nothing n x n formed, relative residual 1e-10); cholesky and cg need --outer-time "
                         "inf. auto: dense below 1,500 training queries (or MTL points), else cholesky, or cg when "
                         "3 n^2 numbers would not fit in half the available memory.", "auto", choices=SOLVERS)

    def __post_init__(self):
        require(int(self.blas_threads) >= 1, "--blas-threads must be >= 1")
        require(self.solver in SOLVERS, f"--solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        require(0 < self.rcond < 1, f"rcond must be in (0, 1), got {self.rcond!r}")


#: The help panel of each part's options (a field's own ``panel`` takes precedence).
PART_PANELS = {"grid": "Grid", "tasks": "Tasks", "model": "Model", "finite": "Model", "numerics": "Solver"}

_PARTS = {"grid": GridConfig, "tasks": TaskConfig, "model": ModelConfig, "finite": FiniteConfig,
          "numerics": NumericsConfig}


def json_number(v):
    """JSON-friendly: ``inf`` as the string ``"inf"``."""
    return "inf" if isinstance(v, float) and math.isinf(v) else v


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: the grid and everything that defines its cells.

    Build one from flat field names with :meth:`of` (``SweepConfig.of(depths=(2, 4), dim=8,
    family="linear")``), or from the parts. ``finite`` applies to finite-width cells only; infinite-width cells are the mean
    predictor (no network seed).
    """

    grid: GridConfig = GridConfig()
    tasks: TaskConfig = TaskConfig()
    model: ModelConfig = ModelConfig()
    finite: FiniteConfig = FiniteConfig()
    numerics: NumericsConfig = NumericsConfig()

    def __post_init__(self):
        if MUP_WIDTH in self.grid.widths:
            require(self.grid.depths == (1,) and self.model.activation == "linear" and self.model.arch == "fc",
                    "--width mup: the muP limit is computed for the one-hidden-layer linear network only: use "
                    "--depth 1 --activation linear (got --depth "
                    f"{','.join(map(str, self.grid.depths))} --activation {self.model.activation} --arch {self.model.arch})")
        family = self.tasks.family
        require(self.model.arch == "fc" or family in IMAGE_FAMILIES or family not in TASK_FAMILIES,
                f"--arch {self.model.arch} needs image tasks: --tasks kanji, omniglot, or a task file with the key "
                f"image_shape (the {family} family has flat inputs)")

    @classmethod
    def of(cls, **flat) -> "SweepConfig":
        """A config from flat field names (each name belongs to exactly one part)."""
        parts = {}
        for part, klass in _PARTS.items():
            names = {f.name for f in dataclasses.fields(klass)}
            kw = {k: v for k, v in flat.items() if k in names}
            parts[part] = klass(**kw)
        unknown = set(flat) - {f.name for klass in _PARTS.values() for f in dataclasses.fields(klass)}
        if unknown:
            raise TypeError(f"unknown SweepConfig field(s): {', '.join(sorted(unknown))}")
        return cls(**parts)

    def replace(self, **flat) -> "SweepConfig":
        """A copy with flat fields changed."""
        parts = {}
        for part, klass in _PARTS.items():
            names = {f.name for f in dataclasses.fields(klass)}
            kw = {k: v for k, v in flat.items() if k in names}
            parts[part] = dataclasses.replace(getattr(self, part), **kw)
        return SweepConfig(**parts)

    @staticmethod
    def options() -> Iterator[tuple[str, dataclasses.Field]]:
        """``(part, field)`` of every field set by a command-line option."""
        for part, klass in _PARTS.items():
            for f in dataclasses.fields(klass):
                if "flag" in f.metadata:
                    yield part, f

    def to_dict(self) -> dict:
        out = {}
        for part in _PARTS:
            d = dataclasses.asdict(getattr(self, part))
            out[part] = {k: ([json_number(x) for x in v] if isinstance(v, tuple) else json_number(v)) for k, v in d.items()}
        return out


def cli_option(part: str, name: str):
    """``typer.Option`` of field ``name`` of the sweep's part ``part`` (:func:`typer_option`)."""
    return typer_option(_PARTS[part], name, PART_PANELS[part])
