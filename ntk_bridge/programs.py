"""Jitted programs traced once per machine, not once per process.

JAX's persistent compilation cache (:func:`ntk_bridge.runtime.enable_compilation_cache`) gives a later
process the compiled executable of a program, but only after that process has traced the Python function
and lowered it to StableHLO to work out the cache key: for the closed forms of the main job that was 0.1 to
0.3 s per program, under the GIL, in every run (about 0.5 s of a warm main job of 5 s). :func:`call` keeps
the lowered program instead: the first process exports it (:func:`jax.export.export`: its StableHLO and the
structure of its inputs and outputs), writes it to ``cache_dir('programs')``, and every later process loads
that file and calls it, so nothing is traced; the executable still comes from the compilation cache.

**The same numbers.** A program is always called as the exported one, in the process that exports it as
in every process that loads it, and XLA compiles the same StableHLO to the same executable: the numbers are
bit-identical to a plain ``jax.jit`` call (``tests/test_programs.py`` compares them in fresh processes, and
the main job's ``results.csv`` is byte-identical).

**Keys.** A file is named by the SHA-256 of everything its program depends on: the function's module and
name, its static arguments (``repr``), the structure, shapes and dtypes of its array arguments, JAX's and
jaxlib's versions, the backend, the x64 flag, and a fingerprint of ntk_bridge's source (every ``.py`` file of
the package), so a change of code or of JAX is a new key, never a stale program. Each file carries a
SHA-256 of its contents and is written atomically (:func:`ntk_bridge.runs.atomic_write`); a damaged or
unreadable file is exported again and rewritten. ``NTK_BRIDGE_JAX_CACHE=0`` turns this off together with
the compilation cache (every call is then a plain ``jax.jit`` call).

**The CPU only.** On another backend (a GPU) every call is a plain ``jax.jit`` call, as before: loading
exported programs there (cuSOLVER's kernels instead of LAPACK's) has not been tested.

**LAPACK.** A loaded program's ``eigh`` and ``solve`` are calls into jaxlib's LAPACK kernels, whose function
pointers jaxlib fills in only while it lowers such an operation: before the first loaded program runs, a
2 x 2 ``eigh`` is lowered (not run), or the kernels would be called through null pointers.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import threading

__all__ = ["call", "register", "folder"]

_HEADER = re.compile(rb"^# ntk_bridge program v(\d+) sha256=([0-9a-f]{64})\n")
_FORMAT = 1
_LOCK = threading.Lock()
_LOADED: dict = {}  # {key: jax.export.Exported} of this process
_REGISTERED: set = set()


def register(*types) -> None:
    """Let programs whose inputs or outputs hold these ``NamedTuple`` types be written to disk (once per type)."""
    from jax import export

    for t in types:
        if t not in _REGISTERED:
            export.register_namedtuple_serialization(t, serialized_name=f"{t.__module__}.{t.__qualname__}")
            _REGISTERED.add(t)


def folder() -> str | None:
    """Where the programs are kept, or ``None`` when they are not (``NTK_BRIDGE_JAX_CACHE=0``, or the folder
    cannot be created)."""
    from ntk_bridge.runtime import program_cache

    return program_cache("programs")


@functools.cache
def _source_fingerprint() -> str:
    """SHA-256 over the package's ``.py`` files (their paths and contents)."""
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for base, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(base, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as fh:
                digest.update(fh.read() + b"\0")
    return digest.hexdigest()


def _key(fn, args: tuple, static: dict) -> str | None:
    """The program's key (see the module docstring), or ``None`` when an argument is not an array."""
    import jax
    import jaxlib

    leaves, tree = jax.tree_util.tree_flatten(args)
    if not all(hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves):
        return None
    text = repr((jax.__version__, jaxlib.__version__, jax.default_backend(), bool(jax.config.jax_enable_x64),
                 _source_fingerprint(), fn.__module__, fn.__qualname__, sorted(static.items()), str(tree),
                 [(tuple(x.shape), str(x.dtype)) for x in leaves]))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _lapack_ready() -> None:
    """Have jaxlib fill in its LAPACK kernels' pointers (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.jit(jnp.linalg.eigh).lower(np.eye(2))


def _load(path: str):
    from jax import export

    from ntk_bridge.runs import verified_body

    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError:
        return None
    checked = verified_body(blob, _HEADER, _FORMAT, 2)
    if checked is None:
        return None
    try:
        return export.deserialize(bytearray(checked[1]))
    except Exception:  # a file of another JAX that slipped past the key: export it again
        return None


def _save(path: str, exported) -> None:
    from ntk_bridge.runs import atomic_write

    try:
        blob = bytes(exported.serialize())
    except ValueError:  # an input or output type not registered (:func:`register`): kept in this process only
        return
    header = b"# ntk_bridge program v%d sha256=%s\n" % (_FORMAT, hashlib.sha256(blob).hexdigest().encode())
    try:
        atomic_write(path, header + blob)
    except OSError:  # a read-only or full cache: the program is still used here
        pass


def _exported(fn, args: tuple, static: dict, where: str):
    key = _key(fn, args, static)
    if key is None:
        return None
    with _LOCK:  # one export per key; tracing holds the GIL anyway, the compilation is outside the lock
        exp = _LOADED.get(key)
        if exp is None:
            from jax import export

            path = os.path.join(where, f"{key}.bin")
            exp = _load(path)
            if exp is None:
                exp = export.export(fn)(*args, **static)
                _save(path, exp)
            _LOADED[key] = exp
        return exp


def call(fn, args: tuple, static: dict):
    """``fn(*args, **static)`` for a ``jax.jit``-ed ``fn`` whose ``static`` arguments are static: through the
    exported program kept on disk (see the module docstring) on the CPU, else as a plain call."""
    import jax

    where = folder() if jax.default_backend() == "cpu" else None
    exp = None if where is None else _exported(fn, args, static, where)
    if exp is None:
        return fn(*args, **static)
    _lapack_ready()
    return exp.call(*args)
