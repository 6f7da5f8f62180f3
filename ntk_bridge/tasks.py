"""Task sets: training tasks (support + query), test tasks, generators and ``.npz`` files.

Shapes follow the notation of docs/theory.md §2. ``N`` training tasks, each with a support set of ``n_s`` points
and a query set of ``n_q`` points; ``M`` test tasks with ``m_s`` support and ``m_q`` query points;
inputs of dimension ``d``; labels of dimension ``k``:

==================  =====================  ==========================================
key                 shape                  meaning
==================  =====================  ==========================================
train_support_x     ``[N, n_s, d]``        support inputs ``X'_i``
train_support_y     ``[N, n_s, k]``        support labels ``Y'_i``
train_query_x       ``[N, n_q, d]``        query inputs ``X_i``
train_query_y       ``[N, n_q, k]``        query labels ``Y_i``
test_support_x      ``[M, m_s, d]``        support inputs of the unseen tasks
test_support_y      ``[M, m_s, k]``        their labels
test_query_x        ``[M, m_q, d]``        query inputs where predictions are made
test_query_y        ``[M, m_q, k]``        optional; needed for test errors
==================  =====================  ==========================================

Labels of shape ``[tasks, points]`` are read as ``k = 1``. A ``.npz`` file with exactly these keys
(``test_query_y`` optional, any float dtype, no NaN/inf) is a valid task file for
``ntk-bridge sweep --tasks FILE.npz``.

Images stay images: a task set of pictures carries ``image_shape = (H, W, C)`` beside its flat
inputs (``d = H W C``, each point's pixels in row-major ``H, W, C`` order), which convolutional
architectures reshape to (:mod:`ntk_bridge.convnets`); in a task file it is the optional key
``image_shape`` (three integers).

**The kernels' range.** The NTK and NNGP recursions multiply the squared norms of two points
(``q = ||x||^2 / d``; ``q = 1`` on the sphere ``||x||^2 = d``), so ``q^2`` must stay a normal float64.
Measured on the fully connected network (depths 1 and 32, inputs scaled by powers of two, against the
exact ``c^2 Theta(x)`` of a homogeneous kernel): bit-for-bit exact for ``q`` from ``4.8e-153`` to
``3.4e153``, ``3.6e-4`` relative error at ``q = 1.2e-153`` and 64% at ``7.5e-155`` (the products
underflow) and NaN from ``1.3e154`` (they overflow). Between those the arccos recursion sees
only ratios and loses nothing to the scale. A task set whose points have ``q`` outside
:data:`SAFE_SQUARED_NORM` (or a zero point's exact ``q = 0`` aside) is refused with one line: the
bounds keep 50 orders of magnitude from the measured edges for the per-pixel covariances of
``conv`` and ``resnet`` and the bias terms of custom layers.

The generated families are in :mod:`ntk_bridge.families`.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from ntk_bridge.errors import UserError, require

__all__ = ["TaskSet", "Layout", "load_tasks", "save_tasks", "on_sphere", "REQUIRED_KEYS", "OPTIONAL_KEYS",
           "SAFE_SQUARED_NORM", "IMAGE_KEY"]

REQUIRED_KEYS = ("train_support_x", "train_support_y", "train_query_x", "train_query_y",
                 "test_support_x", "test_support_y", "test_query_x")
OPTIONAL_KEYS = ("test_query_y",)
#: Optional key of a task file: ``(H, W, C)`` of image inputs (``d = H W C``).
IMAGE_KEY = "image_shape"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Sizes of a task set and the order of its points in the stacked kernel matrices.

    Points are stacked as ``[train supports (N*n_s); train queries (N*n_q); test supports (M*m_s);
    test queries (M*m_q)]``, each task's points contiguous, tasks in order.
    """

    n_train: int
    n_support: int
    n_query: int
    n_test: int
    m_support: int
    m_query: int

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        return (self.n_train * self.n_support, self.n_train * self.n_query,
                self.n_test * self.m_support, self.n_test * self.m_query)

    @property
    def n_points(self) -> int:
        return sum(self.sizes)

    def slices(self) -> dict[str, slice]:
        """Row/column ranges of the four point groups in the stacked matrices."""
        names = ("train_support", "train_query", "test_support", "test_query")
        out, start = {}, 0
        for name, size in zip(names, self.sizes):
            out[name] = slice(start, start + size)
            start += size
        return out


#: The squared norms per dimension ``||x||^2 / d`` the kernels compute exactly with (module docstring).
SAFE_SQUARED_NORM = (1e-100, 1e100)


def _log10_squared_norms(x: np.ndarray) -> np.ndarray:
    """``log10(||x||^2 / d)`` per point of ``x [..., d]``, without under- or overflow (``-inf`` for 0)."""
    scale = np.max(np.abs(x), axis=-1)
    safe = np.where(scale > 0, scale, 1.0)
    inner = np.sum((x / safe[..., None]) ** 2, axis=-1) / x.shape[-1]
    with np.errstate(divide="ignore"):
        return np.where(scale > 0, 2 * np.log10(safe) + np.log10(np.where(scale > 0, inner, 1.0)), -np.inf)


def _check_range(name: str, x: np.ndarray) -> None:
    """``UserError`` for a point whose ``||x||^2 / d`` lies outside :data:`SAFE_SQUARED_NORM` (0 is exact)."""
    lq = _log10_squared_norms(x)
    lo, hi = np.log10(SAFE_SQUARED_NORM[0]), np.log10(SAFE_SQUARED_NORM[1])
    bad = np.isfinite(lq) & ((lq < lo) | (lq > hi))
    if bad.any():
        task, point = (int(i) for i in np.argwhere(bad)[0])
        raise UserError(f"{name}: task {task} point {point} has ||x||^2/d = 1e{lq[task, point]:.0f}, outside the "
                        f"range the kernels compute exactly ({SAFE_SQUARED_NORM[0]:g} to {SAFE_SQUARED_NORM[1]:g}: "
                        "beyond it products of squared norms under- or overflow); rescale the inputs, e.g. to "
                        "||x||^2 = d")


def _as_array(name: str, value, ndim: int) -> np.ndarray:
    raw = np.asarray(value)
    require(raw.dtype.kind in "biuf", f"{name} must hold real numbers, got dtype {raw.dtype} "
            + ("(complex values are not cast to real)" if raw.dtype.kind == "c" else ""))
    try:
        arr = raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{name} must be a numeric array ({exc})") from None
    if ndim == 3 and arr.ndim == 2 and name.endswith("_y"):
        arr = arr[..., None]
    require(arr.ndim == ndim, f"{name} must have {ndim} dimensions [tasks, points, "
            f"{'dim' if name.endswith('_x') else 'outputs'}], got shape {arr.shape}")
    require(arr.size > 0, f"{name} is empty (shape {arr.shape})")
    require(bool(np.all(np.isfinite(arr))), f"{name} contains NaN or inf")
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class TaskSet:
    """Training and test tasks, validated on construction (see the module docstring for shapes).

    Raises ``UserError`` (a ``ValueError``) naming the offending argument for wrong shapes,
    mismatched task counts, or NaN/inf values.
    """

    train_support_x: np.ndarray
    train_support_y: np.ndarray
    train_query_x: np.ndarray
    train_query_y: np.ndarray
    test_support_x: np.ndarray
    test_support_y: np.ndarray
    test_query_x: np.ndarray
    test_query_y: np.ndarray | None = None
    name: str = "tasks"
    image_shape: tuple[int, int, int] | None = None

    def __post_init__(self):
        for key in REQUIRED_KEYS:
            object.__setattr__(self, key, _as_array(key, getattr(self, key), 3))
            if key.endswith("_x"):
                _check_range(key, getattr(self, key))
        if self.test_query_y is not None:
            object.__setattr__(self, "test_query_y", _as_array("test_query_y", self.test_query_y, 3))
        d = self.train_support_x.shape[2]
        k = self.train_support_y.shape[2]
        pairs = [("train_support", self.train_support_x, self.train_support_y),
                 ("train_query", self.train_query_x, self.train_query_y),
                 ("test_support", self.test_support_x, self.test_support_y)]
        if self.test_query_y is not None:
            pairs.append(("test_query", self.test_query_x, self.test_query_y))
        for prefix, x, y in pairs:
            require(x.shape[:2] == y.shape[:2], f"{prefix}_y has shape {y.shape} but {prefix}_x has "
                    f"shape {x.shape}: the [tasks, points] dimensions must agree")
        for key in ("train_query_x", "test_support_x", "test_query_x"):
            require(getattr(self, key).shape[2] == d, f"{key} has input dimension "
                    f"{getattr(self, key).shape[2]}, train_support_x has {d}")
        for key in ("train_query_y", "test_support_y") + (("test_query_y",) if self.test_query_y is not None else ()):
            require(getattr(self, key).shape[2] == k, f"{key} has {getattr(self, key).shape[2]} outputs, "
                    f"train_support_y has {k}")
        require(self.train_query_x.shape[0] == self.train_support_x.shape[0],
                f"train_query_x has {self.train_query_x.shape[0]} tasks but train_support_x has "
                f"{self.train_support_x.shape[0]}")
        require(self.test_query_x.shape[0] == self.test_support_x.shape[0],
                f"test_query_x has {self.test_query_x.shape[0]} tasks but test_support_x has "
                f"{self.test_support_x.shape[0]}")
        if self.image_shape is not None:
            shape = np.asarray(self.image_shape)
            require(shape.shape == (3,) and shape.dtype.kind in "iu" and bool(np.all(shape >= 1)),
                    f"image_shape must be three positive integers (H, W, C), got {self.image_shape!r}")
            shape = tuple(int(v) for v in shape)
            require(int(np.prod(shape)) == d, f"image_shape {shape} has {int(np.prod(shape))} pixels, the inputs "
                    f"have dimension {d}")
            object.__setattr__(self, "image_shape", shape)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        return Layout(self.train_support_x.shape[0], self.train_support_x.shape[1],
                      self.train_query_x.shape[1], self.test_support_x.shape[0],
                      self.test_support_x.shape[1], self.test_query_x.shape[1])

    @property
    def dim(self) -> int:
        return self.train_support_x.shape[2]

    @property
    def n_outputs(self) -> int:
        return self.train_support_y.shape[2]

    def all_points(self) -> np.ndarray:
        """Every input stacked in :class:`Layout` order: ``[P, d]``."""
        return np.concatenate([a.reshape(-1, self.dim) for a in
                               (self.train_support_x, self.train_query_x,
                                self.test_support_x, self.test_query_x)])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: getattr(self, k) for k in REQUIRED_KEYS}
        if self.test_query_y is not None:
            out["test_query_y"] = self.test_query_y
        return out

    def fingerprint(self) -> str:
        """A SHA-256 of the arrays and of the image shape if any (for cache keys and provenance)."""
        import hashlib
        h = hashlib.sha256()
        for key, arr in self.arrays().items():
            h.update(key.encode())
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        if self.image_shape is not None:
            h.update(f"{IMAGE_KEY}{self.image_shape}".encode())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        save_tasks(self, path)


def save_tasks(tasks: TaskSet, path: str | os.PathLike) -> None:
    """Write ``tasks`` to ``path`` as ``.npz`` with the documented keys (and ``image_shape`` if set)."""
    extra = {} if tasks.image_shape is None else {IMAGE_KEY: np.asarray(tasks.image_shape, np.int64)}
    np.savez(path, **tasks.arrays(), **extra)


def load_tasks(path: str | os.PathLike) -> TaskSet:
    """Read a task file (``.npz`` with the documented keys). Raises ``UserError`` with one clear line."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"tasks file {path} is a folder, not a .npz file")
    if not os.path.isfile(path):
        raise UserError(f"tasks file not found: {path}")
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle
        raise UserError(f"tasks file {path} is not a .npz file (a numpy archive: numpy.savez, TaskSet.save)")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                raise UserError(f"tasks file {path} lacks key(s) {', '.join(missing)}; expected "
                                f"{', '.join(REQUIRED_KEYS)} and optional test_query_y")
            arrays = {k: data[k] for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in keys}
            if IMAGE_KEY in keys:
                arrays[IMAGE_KEY] = tuple(np.asarray(data[IMAGE_KEY]).reshape(-1))
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = "it holds Python objects, which are never loaded" if "pickle" in str(exc) else str(exc)
        raise UserError(f"tasks file {path} is not a readable .npz file ({reason})") from None
    try:
        return TaskSet(**arrays, name=os.path.splitext(os.path.basename(path))[0])
    except UserError as exc:
        raise UserError(f"tasks file {path}: {exc}") from None


def on_sphere(x: np.ndarray) -> np.ndarray:
    """Each row of ``x [..., d]`` scaled to the sphere ``||x||^2 = d`` (docs/theory.md §2)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True) * np.sqrt(x.shape[-1])
