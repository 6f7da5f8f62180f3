"""What a command will cost, estimated from its sizes before anything is allocated, and refused when
it does not fit the machine or would run for hours unasked.

Every size that drives memory or time is known before any data exists: a generated family's from its
options (``--train-tasks``, ``--support``, ``--query``, ``--test-tasks``, ``--dim``; image families
also downsample every rendered class to ``sqrt(dim) x sqrt(dim)`` pixels), a task file's from the
headers of its ``.npy`` members (:func:`npz_shapes`: ``numpy.lib.format`` reads a shape and dtype
without the data), the grid's from ``--depth``, ``--width``, the times, ``--seeds``. From them
:func:`estimate` gives one peak-memory and one time figure for a sweep (an order of magnitude, from
constants measured on a 2-core machine: ``README.md``, "Guarantees"), and :func:`check_feasible`
refuses, in one line saying what it would need,

* a grid above :data:`MAX_CELLS` cells, conv and resnet kernels on images above :data:`MAX_CONV_SIDE`
  pixels a side,
* a peak above the memory available (:func:`available_memory`),
* a run above :data:`LONG_SECONDS` unless the user said ``--yes``.

``ntk-bridge verify`` sums its panel's sweeps (:func:`ntk_bridge.verify.panel.panel_estimate`) and
checks them the same way, before the first one starts.
"""
from __future__ import annotations

import dataclasses
import math
import os
import zipfile

import numpy as np

from ntk_bridge import axes, build, convnets
from ntk_bridge import solvers as _solvers
from ntk_bridge.errors import UserError, require
from ntk_bridge.tasks import IMAGE_KEY, REQUIRED_KEYS, Layout
from ntk_bridge.config import finite_width

__all__ = ["MAX_CELLS", "LONG_SECONDS", "available_memory", "npz_shapes", "PlannedTasks", "planned_tasks",
           "estimate", "check_feasible", "check_long", "check_memory", "size_text", "n_cells", "MAX_CONV_SIDE", "duration"]

#: Largest number of cells one sweep may plan (a documented cap: a longer grid is almost surely a typo).
MAX_CELLS = 200_000
#: A command estimated to run longer than this (seconds) starts only with ``--yes``.
LONG_SECONDS = 3600.0
#: Memory of the libraries once loaded (JAX, XLA, neural-tangents, pandas; measured).
LIBRARIES_BYTES = 400 * 2 ** 20
#: Largest image side the conv and resnet kernels take (a documented cap: their XLA programs were reported
#: to fail to dispatch at 150 x 150 pixels after most of a minute; the kanji renders are 28 x 28).
MAX_CONV_SIDE = 64
#: Copies of the ``P x d`` inputs a kernel pass holds at its peak (about 3 measured at ``d = 10^6``; XLA's
#: buffers grow with the size, so the estimate keeps a margin).
INPUT_COPIES = 8
#: Seconds per multiply-add of finite-network training on 2 cores (an order of magnitude).
SECONDS_PER_FLOP = 5e-10
#: Samples per class of the rendered kanji; classes of the image families (:mod:`ntk_bridge.families`).
_IMAGE_CLASSES = {"kanji": (300, 20), "omniglot": (1623, 20)}
#: Ways of the image families' episodes (:func:`ntk_bridge.families.kanji_tasks`: their outputs).
IMAGE_WAYS = 5


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` of ``/proc/meminfo``, else the
    physical memory), ``None`` when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def size_text(n: float) -> str:
    """``1536`` -> ``'1.5 KB'``."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def duration(seconds: float) -> str:
    """``3600`` -> ``'60 minutes'``: how every estimate is said (``fewshot`` says its own in these words)."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:,.0f} days"


def npz_shapes(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]] | None:
    """``{key: (shape, dtype)}`` of the arrays of a ``.npz`` file, read from each member's ``.npy``
    header (no data is read), or ``None`` when the file is not a readable archive of ``.npy``
    members (:func:`ntk_bridge.tasks.load_tasks` then says what is wrong)."""
    try:
        with zipfile.ZipFile(path) as archive:
            out = {}
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    continue
                with archive.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    reader = {(1, 0): np.lib.format.read_array_header_1_0,
                              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if reader is None:
                        return None
                    shape, _, dtype = reader(fh)
                out[name[:-4]] = (tuple(int(s) for s in shape), np.dtype(dtype))
            return out
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, TypeError, SyntaxError):
        return None


@dataclasses.dataclass(frozen=True)
class PlannedTasks:
    """The sizes of a task set before it exists (what :func:`estimate` reads from a ``TaskSet``).

    Attributes:
      name: the family or the file's stem.
      layout: tasks and points per task (``None`` when a task file's shapes are not a task set's:
        reading it will say why).
      dim: input dimension ``d``.
      image_shape: ``(H, W, C)`` of image tasks, else ``None``.
      source_bytes: memory to build or read the task set (a file's arrays as float64; an image
        family's classes downsampled to ``sqrt(dim) x sqrt(dim)`` floats).
      n_outputs: outputs ``k`` of the networks (the targets' last axis; the ways of image episodes).
    """

    name: str
    layout: Layout | None
    dim: int
    image_shape: tuple[int, ...] | None = None
    source_bytes: int = 0
    n_outputs: int = 1


def _file_tasks(path: str) -> PlannedTasks:
    stem = os.path.splitext(os.path.basename(path))[0]
    shapes = npz_shapes(path)
    if shapes is None:
        return PlannedTasks(stem, None, 0)
    source = sum(8 * math.prod(shape) for shape, _ in shapes.values())
    x = [shapes.get(k, ((),))[0] for k in ("train_support_x", "train_query_x", "test_support_x", "test_query_x")]
    if any(len(s) != 3 for s in x) or any(k not in shapes for k in REQUIRED_KEYS):
        return PlannedTasks(stem, None, 0, source_bytes=source)
    image = None
    if IMAGE_KEY in shapes and math.prod(shapes[IMAGE_KEY][0]) == 3:
        try:
            with np.load(path, allow_pickle=False) as data:
                image = tuple(int(v) for v in np.asarray(data[IMAGE_KEY]).reshape(-1))
        except (OSError, ValueError, TypeError):
            image = None
    layout = Layout(x[0][0], x[0][1], x[1][1], x[2][0], x[2][1], x[3][1])
    y = shapes["train_support_y"][0]
    return PlannedTasks(stem, layout, int(x[0][2]), image, source, int(y[-1]) if len(y) == 3 else 1)


def planned_tasks(config) -> PlannedTasks:
    """The :class:`PlannedTasks` of a :class:`~ntk_bridge.config.SweepConfig`'s task set, from its
    options or its task file's headers."""
    t = config.tasks
    if not t.generated:
        return _file_tasks(t.family)
    layout = Layout(int(t.train_tasks), int(t.support), int(t.query), int(t.test_tasks), int(t.support),
                    int(t.query))
    image, source, outputs = None, 0, 1
    if t.family in _IMAGE_CLASSES:
        side = math.isqrt(int(t.dim))
        classes, samples = _IMAGE_CLASSES[t.family]
        image, source, outputs = (side, side, 1), 2 * 8 * classes * samples * int(t.dim), IMAGE_WAYS
    return PlannedTasks(t.family, layout, int(t.dim), image, source, outputs)


def n_cells(grid) -> int:
    """Cells of a :class:`~ntk_bridge.config.GridConfig` (:func:`ntk_bridge.sweep.plan` makes one per
    combination of the values of every axis: :func:`ntk_bridge.axes.n_cells`)."""
    return axes.n_cells(grid)


def estimate(config, tasks) -> dict:
    """Peak memory (bytes) and time (seconds, an order of magnitude) of a sweep, before anything is
    allocated, from the sizes that drive them; ``tasks`` is a ``TaskSet`` or a :class:`PlannedTasks`.

    The kernel pass (:func:`ntk_bridge.convnets.pass_estimate`: for the fully connected network about
    11 ``P^2`` float64 numbers and ``4e-8 P^2`` seconds per depth), the inputs (a few ``P x d``
    copies, :data:`INPUT_COPIES`, and their ``P^2 d`` Gram matrix), the outer solves of every method and cell
    (:func:`ntk_bridge.solvers.solve_estimate`: the dense path holds a few copies of its training
    kernels, ``N n_q`` and ``N (n' + n)`` square, and takes ``2e-3 + 3e-9 n^3`` seconds), the data
    source (:attr:`PlannedTasks.source_bytes`), finite networks about 20 copies of their parameters
    (a fully connected network of depth ``L`` and width ``n``: ``n d + (L - 1) n^2 + n k``) and, per
    network, outer step and training point, 6 multiply-adds per parameter (:data:`SECONDS_PER_FLOP`), and
    the kernel movement of every trained network (:func:`ntk_bridge.finite.movement.movement_bytes` on the
    test points, blocks of its Jacobian; two empirical kernels of ``P_test^2 k`` multiply-adds per
    parameter), plus 400 MB of libraries (measured on a 2-core machine).
    """
    lay, grid = tasks.layout, config.grid
    if lay is None:
        return dict(points=0, memory_bytes=int(getattr(tasks, "source_bytes", 0)), seconds=0.0, cells=n_cells(grid))
    P, d = lay.n_points, int(tasks.dim)
    arch = build.architecture(config, tasks)
    solvers = _solvers.grid_solvers(config.numerics.solver, lay, grid.outer_times, grid.mtl_data)
    solve_memory, solve_seconds = _solvers.solve_estimate(solvers, lay)
    pass_memory, pass_seconds = convnets.pass_estimate(arch, P, len(grid.depths), max(grid.depths))
    memory = (pass_memory + solve_memory + LIBRARIES_BYTES + INPUT_COPIES * 8 * P * d
              + int(getattr(tasks, "source_bytes", 0)))
    cells = n_cells(grid)
    seconds = pass_seconds + 2e-9 * P * P * d + cells * (len(grid.methods) + 1) * solve_seconds
    finite = [w for w in grid.widths if finite_width(w)]
    if finite:
        from ntk_bridge.finite.movement import movement_bytes

        k, L, test_points = int(getattr(tasks, "n_outputs", 1)), max(grid.depths), lay.sizes[2] + lay.sizes[3]
        if config.model.arch == "fc":
            params = [int(w) * (d + (L - 1) * int(w) + k) for w in finite]
        else:
            params = [int(9 * w * w * L + w * d) for w in finite]
        memory += 8 * 20 * int(max(params)) + max(movement_bytes(test_points, k, p) for p in params)
        networks = (cells // len(grid.widths)) * (len(grid.methods) + 1) * int(config.finite.seeds)
        trainings = networks * (2 if config.finite.linearized else 1) * int(config.finite.outer_steps)
        seconds += trainings * sum(1e-4 + SECONDS_PER_FLOP * 6 * p * (lay.sizes[0] + lay.sizes[1]) for p in params)
        seconds += networks * sum(2 * SECONDS_PER_FLOP * test_points ** 2 * k * p for p in params)
    return dict(points=P, memory_bytes=int(memory), seconds=float(seconds), cells=cells)


def check_memory(need: int, what: str, memory: int | None = None) -> None:
    """``UserError`` (one line) when ``need`` bytes exceed the available memory."""
    memory = available_memory() if memory is None else memory
    require(memory is None or need <= memory,
            f"{what} needs about {size_text(need)} of memory and this machine has {size_text(memory)} available: "
            "use fewer or smaller tasks")


def check_long(seconds: float, what: str, yes: bool) -> None:
    """``UserError`` (one line) when ``seconds`` exceed :data:`LONG_SECONDS` and the user did not say ``--yes``."""
    if not yes and seconds > LONG_SECONDS:
        raise UserError(f"{what} would take about {duration(seconds)} (an estimate): pass --yes to start it "
                        "anyway, or make it smaller")


def check_feasible(config, tasks=None, memory: int | None = None, yes: bool = True) -> dict:
    """Refuse (``UserError``, one line saying what it would need) a sweep whose grid exceeds
    :data:`MAX_CELLS`, whose estimated peak memory exceeds the machine's (``memory`` bytes, default
    :func:`available_memory`), or, unless ``yes``, that would run longer than :data:`LONG_SECONDS`.
    ``tasks``: a ``TaskSet``, or ``None`` for the :func:`planned_tasks` (nothing loaded). Returns the
    :func:`estimate`."""
    tasks = planned_tasks(config) if tasks is None else tasks
    if not config.tasks.generated:  # the file's own arrays first: the rest is moot if they do not fit
        check_memory(int(getattr(tasks, "source_bytes", 0)), f"reading the task file {config.tasks.family}", memory)
    shape = getattr(tasks, "image_shape", None)
    require(config.model.arch == "fc" or shape is None or max(shape[:2]) <= MAX_CONV_SIDE,
            f"--arch {config.model.arch}: images of {shape[0] if shape else 0} x {shape[1] if shape else 0} pixels are "
            f"above the maximum of {MAX_CONV_SIDE} x {MAX_CONV_SIDE} for the conv and resnet kernels (--dim)")
    est = estimate(config, tasks)
    require(est["cells"] <= MAX_CELLS, f"the grid has {est['cells']:,} cells, above the maximum of {MAX_CELLS:,} "
            "per sweep: split it into several sweeps (they can share a --out folder)")
    where = f"this sweep ({est['cells']:,} cells, kernels over {est['points']:,} points)" if est["points"] else \
        f"reading the task file {config.tasks.family}"
    check_memory(est["memory_bytes"], where, memory)
    check_long(est["seconds"], where, yes)
    return est
