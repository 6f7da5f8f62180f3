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

Generators put every input on the sphere ``||x||^2 = d`` (docs/theory.md §2) and are deterministic given
their seed.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Iterable

import numpy as np

from ntk_bridge.errors import UserError, require

__all__ = [
    "TaskSet",
    "Layout",
    "subspace_tasks",
    "linear_tasks",
    "sinusoid_tasks",
    "make_tasks",
    "GENERATORS",
    "load_tasks",
    "save_tasks",
]

REQUIRED_KEYS = ("train_support_x", "train_support_y", "train_query_x", "train_query_y",
                 "test_support_x", "test_support_y", "test_query_x")
OPTIONAL_KEYS = ("test_query_y",)


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

    def __post_init__(self):
        for key in REQUIRED_KEYS:
            object.__setattr__(self, key, _as_array(key, getattr(self, key), 3))
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
        """A SHA-256 of the arrays (for cache keys and provenance)."""
        import hashlib
        h = hashlib.sha256()
        for key, arr in self.arrays().items():
            h.update(key.encode())
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> None:
        save_tasks(self, path)


def save_tasks(tasks: TaskSet, path: str | os.PathLike) -> None:
    """Write ``tasks`` to ``path`` as ``.npz`` with the documented keys."""
    np.savez(path, **tasks.arrays())


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
    except UserError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        reason = "it holds Python objects, which are never loaded" if "pickle" in str(exc) else str(exc)
        raise UserError(f"tasks file {path} is not a readable .npz file ({reason})") from None
    try:
        return TaskSet(**arrays, name=os.path.splitext(os.path.basename(path))[0])
    except UserError as exc:
        raise UserError(f"tasks file {path}: {exc}") from None


# -- generators --------------------------------------------------------------------------------

def _sphere(rng: np.random.Generator, shape: Iterable[int], dim: int) -> np.ndarray:
    x = rng.standard_normal((*shape, dim))
    return x / np.linalg.norm(x, axis=-1, keepdims=True) * np.sqrt(dim)


def _check_sizes(n_train, n_test, n_support, n_query, dim):
    for name, v in (("n_train", n_train), ("n_test", n_test), ("n_support", n_support),
                    ("n_query", n_query), ("dim", dim)):
        require(isinstance(v, (int, np.integer)) and v >= 1, f"{name} must be a positive integer, got {v!r}")


def _teacher_tasks(rng, teachers, n_train, n_test, n_support, n_query, dim, noise, name):
    """Linear teachers ``y = x @ w / sqrt(d)`` (+ noise); ``teachers`` has shape ``[N + M, d, k]``."""
    n_tasks = n_train + n_test
    xs = _sphere(rng, (n_tasks, n_support + n_query), dim)
    ys = np.einsum("tpd,tdk->tpk", xs, teachers) / np.sqrt(dim)
    ys = ys + noise * rng.standard_normal(ys.shape)
    sx, qx = xs[:, :n_support], xs[:, n_support:]
    sy, qy = ys[:, :n_support], ys[:, n_support:]
    return TaskSet(sx[:n_train], sy[:n_train], qx[:n_train], qy[:n_train],
                   sx[n_train:], sy[n_train:], qx[n_train:], qy[n_train:], name=name)


def subspace_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5,
                   n_query: int = 10, dim: int = 16, rank: int = 2, shared: float = 0.75,
                   n_outputs: int = 1, noise: float = 0.0) -> TaskSet:
    """Shared-subspace linear regression (the default task family: transfer is possible).

    A shared orthonormal basis ``B [d, r]`` and a shared coefficient ``mu ~ N(0, I_r)`` are drawn
    once; task ``t`` has teacher ``w_t = sqrt(d / r) B c_t`` with
    ``c_t = sqrt(shared) mu + sqrt(1 - shared) z_t``, ``z_t ~ N(0, I_r)`` (so ``E||w_t||^2 = d``),
    and labels ``y = x . w_t / sqrt(d) + noise * N(0, 1)``, ``x`` uniform on the sphere
    ``||x||^2 = d`` (so ``Var y ~ 1``).

    ``shared`` is the fraction of a teacher's variance common to all tasks. Infinite-width learners
    do not move their features, so they can only transfer a common part of the function: with
    ``shared = 0`` no method beats the no-transfer baseline; with the default 0.75 all of them do at
    small depth, and drift toward it as depth grows.
    """
    _check_sizes(n_train, n_test, n_support, n_query, dim)
    require(1 <= rank <= dim, f"rank must be in 1..dim={dim}, got {rank!r}")
    require(0 <= shared <= 1, f"shared must be in [0, 1], got {shared!r}")
    require(noise >= 0, f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    mu = rng.standard_normal((1, rank, n_outputs))
    coef = np.sqrt(shared) * mu + np.sqrt(1 - shared) * rng.standard_normal((n_train + n_test, rank, n_outputs))
    teachers = np.sqrt(dim / rank) * np.einsum("dr,trk->tdk", basis, coef)
    return _teacher_tasks(rng, teachers, n_train, n_test, n_support, n_query, dim, noise, "subspace")


def linear_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5,
                 n_query: int = 10, dim: int = 16, n_outputs: int = 1, noise: float = 0.0) -> TaskSet:
    """Independent linear teachers ``w_t ~ N(0, I_d)`` per task: nothing to transfer but the input
    distribution. Labels ``y = x . w_t / sqrt(d) + noise``, ``x`` on the sphere ``||x||^2 = d``."""
    _check_sizes(n_train, n_test, n_support, n_query, dim)
    require(noise >= 0, f"noise must be >= 0, got {noise!r}")
    rng = np.random.default_rng(seed)
    teachers = rng.standard_normal((n_train + n_test, dim, n_outputs))
    return _teacher_tasks(rng, teachers, n_train, n_test, n_support, n_query, dim, noise, "linear")


SINUSOID_OFFSET = 2.5


def sinusoid_embed(x: np.ndarray, dim: int = 2) -> np.ndarray:
    """Embed scalar inputs ``x`` on the sphere ``||e||^2 = dim``: ``e = sqrt(dim) u / ||u||`` with
    ``u = (x, c, 0, ..., 0)``, ``c = 2.5``.

    A bias-free ReLU NTK sees only angles and norms, so raw 1-D inputs would collapse to two
    directions; the constant coordinate turns ``x in [-5, 5]`` into distinct angles (+-63 degrees).
    """
    x = np.asarray(x, dtype=np.float64)
    u = np.zeros(x.shape + (dim,))
    u[..., 0] = x
    u[..., 1] = SINUSOID_OFFSET
    return u / np.linalg.norm(u, axis=-1, keepdims=True) * np.sqrt(dim)


def sinusoid_tasks(seed: int = 0, n_train: int = 10, n_test: int = 20, n_support: int = 5,
                   n_query: int = 10, dim: int = 2) -> TaskSet:
    """MAML's sinusoid regression: ``y = A sin(x - phi)``, ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``,
    ``x ~ U[-5, 5]``; inputs embedded by :func:`sinusoid_embed` (``dim >= 2``). Predicting 0 gives
    an expected MSE of about 4.25."""
    _check_sizes(n_train, n_test, n_support, n_query, dim)
    require(dim >= 2, f"sinusoid tasks need dim >= 2 (x and a constant coordinate), got {dim}")
    rng = np.random.default_rng(seed)
    n_tasks = n_train + n_test
    amp = rng.uniform(0.1, 5.0, (n_tasks, 1))
    phase = rng.uniform(0.0, np.pi, (n_tasks, 1))
    x = rng.uniform(-5.0, 5.0, (n_tasks, n_support + n_query))
    y = (amp * np.sin(x - phase))[..., None]
    e = sinusoid_embed(x, dim)
    s, q = slice(0, n_support), slice(n_support, None)
    return TaskSet(e[:n_train, s], y[:n_train, s], e[:n_train, q], y[:n_train, q],
                   e[n_train:, s], y[n_train:, s], e[n_train:, q], y[n_train:, q], name="sinusoid")


GENERATORS = {"subspace": subspace_tasks, "linear": linear_tasks, "sinusoid": sinusoid_tasks}


def make_tasks(kind: str, seed: int = 0, **sizes) -> TaskSet:
    """A generated task set by name (``subspace``, ``linear``, ``sinusoid``) or a ``.npz`` path."""
    if kind in GENERATORS:
        return GENERATORS[kind](seed=seed, **sizes)
    if kind.endswith(".npz") or os.path.sep in kind:
        return load_tasks(kind)
    raise UserError(f"unknown tasks {kind!r}: use one of {', '.join(GENERATORS)} or a .npz file")
