"""The process's numerical runtime: float64, no TensorFlow, BLAS threads, the compilation cache.

Everything here changes how (or how fast) numbers are computed in this process, so it lives in one
place:

* **float64.** ``import ntk_bridge`` turns on ``jax_enable_x64`` (every kernel computation is float64;
  the gaps of interest are below float32 noise). If JAX is not imported yet this is done through the
  ``JAX_ENABLE_X64`` environment variable, which JAX reads when it is first imported, so that
  ``import ntk_bridge`` (and ``ntk-bridge --help``) does not pay JAX's start-up.
* **No TensorFlow.** ``import neural_tangents`` runs ``from . import experimental``, whose
  ``empirical_tf`` module imports TensorFlow, tf2jax and jax2tf (5-10 s and about 600 MB, plus
  TensorFlow's C++ log lines on the console). ntk_bridge never uses that module.
  :func:`defer_neural_tangents_experimental` (called by ``import ntk_bridge``, before anything
  imports neural-tangents) puts a stand-in for ``neural_tangents.experimental`` in ``sys.modules``
  that imports the real module only when one of its attributes is used. This is the only place
  where ntk_bridge reaches into a third-party package's import; neural-tangents is pinned to 0.6.5,
  and ``tests/test_runtime.py`` checks that TensorFlow is absent after a sweep, a finite-width cell
  and a few-shot step, and that ``neural_tangents.experimental.empirical_ntk_fn_tf`` still resolves.
  (``importlib.util.LazyLoader`` cannot do this: the import system reads ``__spec__`` of a module
  it finds in ``sys.modules``, and a lazy module loads on that access.)
* **Shapes worked out once per layer.** Every eager call of a neural-tangents layer's ``kernel_fn``
  works out the shapes of its finite network by tracing it (``_set_shapes``, ``jax.eval_shape`` of
  the layer's ``init_fn`` and ``apply_fn``), about three quarters of a one-pass kernel computation's
  time. The shapes depend only on the layer and on the input kernel's shapes and dtype, which are the
  same at every depth of a pass. Inside :func:`shapes_once` (the kernel pass,
  :func:`ntk_bridge.kernels.kernels_by_depth`) they are worked out once per layer and input shape and
  then reused; nothing numerical is touched (the kernels are bit-identical, ``tests/test_kernels.py``).
  It replaces ``neural_tangents._src.stax.requirements._set_shapes`` with a wrapper that consults a
  memo of the current thread's pass and otherwise calls the original: the second place where
  ntk_bridge reaches into neural-tangents (pinned to 0.6.5), checked by ``tests/test_runtime.py``.
* **Programs compiled side by side.** :func:`concurrently` makes the jitted calls of several methods
  on a few threads: JAX traces under the GIL but XLA compiles and runs without it, so the first call
  of each program (the compilation, most of a cold main job's predictor time) uses every core.
  :func:`started` starts such calls and returns the wait for them, so the caller's own Python (the sweep's
  rows and cell files of the previous depth) runs while XLA computes.
* **BLAS threads.** JAX's CPU ``eigh`` and ``solve`` call scipy's LAPACK, whose OpenBLAS rounds
  differently with different thread counts. :func:`blas_threads` fixes the count (threadpoolctl)
  for a block of work; sweeps record it in ``config.json`` and in every cell's cache key.
* **Worker processes of one core each** (:func:`one_core_pool`). XLA sizes its CPU thread pool by the cores a
  process may use, and a network trained with one thread rounds differently from one trained with two: the
  few-shot networks' steps to their plateau and accuracies move with the machine. A worker pinned to one core
  before JAX starts gives one core's numbers on any machine (those of ``taskset -c 1``), so ``ntk-bridge figures``
  and ``ntk-bridge fewshot --jobs N`` train there. The closed forms and the sweeps do not depend on it.
* **A heap that keeps what it frees** (:func:`steady_heap`, glibc only). XLA's CPU runtime allocates each
  execution's working memory anew and frees it after; glibc serves a block above 32 MiB (and, on a thread
  with its own arena, above 64 MiB at most) by ``mmap`` and returns it at ``free``, so every training step
  of a few-shot network maps about 75 MB afresh, and the kernel zeroes it page by page: a fifth of a
  training process's time went to page faults. One arena, no ``mmap`` and no trimming keep the freed
  blocks for the next step. Nothing numerical changes (the same runs give the same numbers, bit for bit,
  ``tests/test_runtime.py``); memory stays at its peak until the process ends, so only processes that
  train networks on one core call it (the workers of :func:`one_core_pool`, ``ntk-bridge fewshot`` on one core).
* **Compilation cache.** :func:`enable_compilation_cache` points JAX's persistent compilation cache
  at ``<cache>/jax`` (:func:`cache_dir`), so a second run of a given shape does not recompile.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
import threading
import types

__all__ = ["prepare", "defer_neural_tangents_experimental", "shapes_once", "concurrently", "started", "side_by_side", "cache_dir", "program_cache", "enable_compilation_cache",
           "blas_threads", "current_blas_threads", "steady_heap", "usable_cores", "one_core_pool", "check_blas_threads", "device_line", "DEFAULT_BLAS_THREADS"]

#: BLAS threads for a sweep's dense linear algebra unless the user asks for another count. One
#: thread is the fastest here: a sweep's matrices are 100-300 points square, where a second OpenBLAS
#: thread only adds synchronisation (``benchmarks/README.md``, "BLAS threads").
DEFAULT_BLAS_THREADS = 1

_EXPERIMENTAL = "neural_tangents.experimental"


def defer_neural_tangents_experimental() -> None:
    """Make ``neural_tangents.experimental`` (and with it TensorFlow) load only on first use.

    A no-op when neural-tangents is already imported (then it is too late) or not installed.
    """
    if "neural_tangents" in sys.modules or _EXPERIMENTAL in sys.modules:
        return
    root = importlib.util.find_spec("neural_tangents")
    if root is None or not root.submodule_search_locations:
        return
    path = os.path.join(list(root.submodule_search_locations)[0], "experimental")
    init = os.path.join(path, "__init__.py")
    if not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location(_EXPERIMENTAL, init, submodule_search_locations=[path])
    stub = types.ModuleType(_EXPERIMENTAL, "Stand-in for neural_tangents.experimental: imports the real "
                                           "module (and TensorFlow) when one of its attributes is used.")
    stub.__path__ = [path]
    stub.__file__ = spec.origin
    stub.__spec__ = spec
    stub.__package__ = _EXPERIMENTAL

    def load():
        if sys.modules.get(_EXPERIMENTAL) is stub:
            real = importlib.util.module_from_spec(spec)
            sys.modules[_EXPERIMENTAL] = real
            try:
                spec.loader.exec_module(real)
            except BaseException:
                sys.modules[_EXPERIMENTAL] = stub
                raise
            parent = sys.modules.get("neural_tangents")
            if parent is not None:
                parent.experimental = real
        return sys.modules[_EXPERIMENTAL]

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(load(), attr)

    stub.__getattr__ = __getattr__
    sys.modules[_EXPERIMENTAL] = stub


_SHAPES = threading.local()


@contextlib.contextmanager
def shapes_once(memo: dict | None = None):
    """Within the block, each neural-tangents layer works out its output shapes once per input shape
    and dtype in this thread (see the module docstring), keeping them in ``memo`` (pass the same dict
    to several blocks to share it); the kernels are unchanged."""
    from neural_tangents._src.stax import requirements
    from neural_tangents._src.utils.kernel import Kernel

    original = requirements._set_shapes
    if not getattr(original, "_ntk_bridge_memo", False):
        def set_shapes(init_fn, apply_fn, in_kernel, out_kernel, **kwargs):
            shapes, key = getattr(_SHAPES, "memo", None), None
            if shapes is not None and isinstance(in_kernel, Kernel) and isinstance(out_kernel, Kernel):
                key = (init_fn, apply_fn, in_kernel.shape1, in_kernel.shape2, in_kernel.nngp.dtype,
                       tuple(sorted(kwargs.items())))
                try:
                    known = shapes.get(key)
                except TypeError:  # an unhashable keyword argument
                    known = key = None
                if known is not None:
                    return out_kernel.replace(shape1=known[0], shape2=known[1])
            out = original(init_fn, apply_fn, in_kernel, out_kernel, **kwargs)
            if key is not None:
                shapes[key] = (out.shape1, out.shape2)
            return out

        set_shapes._ntk_bridge_memo = True
        requirements._set_shapes = set_shapes
    outer = getattr(_SHAPES, "memo", None)
    _SHAPES.memo = {} if memo is None else memo
    try:
        yield
    finally:
        _SHAPES.memo = outer


@functools.cache
def _pool():
    """The threads of :func:`concurrently`: as many as this process may use cores."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max(1, len(usable_cores())), thread_name_prefix="ntk_bridge")


def concurrently(calls: dict) -> dict:
    """``{name: call()}`` for ``calls`` (``{name: function of no arguments}``), the calls made on up to as
    many threads as this process may use cores when there are several (see the module docstring); an
    exception of a call is raised here. In the calling thread alone under ``jax.disable_jit()``, a setting
    of that thread which the others would not see."""
    if len(calls) < 2:
        return {name: call() for name, call in calls.items()}
    return started(calls)()


def started(calls: dict):
    """Start ``calls`` (``{name: function of no arguments}``) on :func:`concurrently`'s threads and return a
    function that waits for them and returns ``{name: result}``, so that the caller can do other work (its
    Python, while XLA computes without the GIL) in between; in the calling thread at once where
    :func:`concurrently` would not use the threads (``jax.disable_jit()``, a call from inside the pool)."""
    if not side_by_side():
        done = {name: call() for name, call in calls.items()}
        return lambda: done
    futures = {name: _pool().submit(call) for name, call in calls.items()}
    return lambda: {name: future.result() for name, future in futures.items()}


def side_by_side() -> bool:
    """Whether :func:`started` runs its calls on the threads (not under ``jax.disable_jit()``, and never from
    inside the pool, which would wait on itself)."""
    jax = sys.modules.get("jax")
    return not ((jax is not None and jax.config.jax_disable_jit)
                or threading.current_thread().name.startswith("ntk_bridge"))


def usable_cores() -> list[int]:
    """The cores this process may use (all of them where the platform cannot say)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _one_core(cores) -> None:
    """A worker's start (:func:`one_core_pool`): pinned to the next core of the queue ``cores`` before JAX makes its
    thread pool (where the platform cannot pin a process, the worker keeps every core), with :func:`steady_heap`."""
    core = cores.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    steady_heap()


def one_core_pool(jobs: int):
    """A ``ProcessPoolExecutor`` of ``jobs`` fresh (``spawn``) worker processes, each pinned to one core, the cores
    of this process taken in turn, with a heap that keeps what it frees (see the module docstring). Code that
    submits to it must be importable by the workers (a script needs an ``if __name__ == "__main__":`` guard)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context, cores = multiprocessing.get_context("spawn"), usable_cores()
    queue = context.SimpleQueue()  # a core for each worker, in turn
    for i in range(max(jobs, 1)):
        queue.put(cores[i % len(cores)])
    return ProcessPoolExecutor(max(jobs, 1), mp_context=context, initializer=_one_core, initargs=(queue,))


def _enable_x64() -> None:
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_enable_x64", True)
    else:
        os.environ["JAX_ENABLE_X64"] = "1"


def prepare() -> None:
    """What ``import ntk_bridge`` does: float64 on, TensorFlow deferred, TensorFlow's C++ logs off
    (should anything load it after all)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    defer_neural_tangents_experimental()
    _enable_x64()


#: glibc's ``mallopt`` parameters (``malloc.h``).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def steady_heap() -> bool:
    """Make this process's ``malloc`` keep the memory it frees for reuse: one arena for every thread, no
    ``mmap`` for large blocks, no trimming (see the module docstring). Call it before JAX starts its threads
    (a thread that already has an arena keeps it). Returns whether it took effect: ``False`` where the C
    library is not glibc."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)))


def cache_dir(*parts: str) -> str:
    """ntk_bridge's cache folder: ``$NTK_BRIDGE_CACHE``, else ``$XDG_CACHE_HOME/ntk_bridge``, else
    ``~/.cache/ntk_bridge``; ``parts`` are joined below it (nothing is created)."""
    root = os.environ.get("NTK_BRIDGE_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "ntk_bridge")
    return os.path.join(root, *parts)


def program_cache(name: str) -> str | None:
    """``cache_dir(name)``, created, for programs kept across processes (JAX's compiled ones, ntk_bridge's
    exported ones: :mod:`ntk_bridge.programs`); ``None`` when ``NTK_BRIDGE_JAX_CACHE=0`` or it cannot be created."""
    if os.environ.get("NTK_BRIDGE_JAX_CACHE", "1") == "0":
        return None
    folder = cache_dir(name)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    return folder


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at ``cache_dir('jax')`` (every program, however
    quick to compile). Returns the folder, or ``None`` when it cannot be created (then JAX compiles
    as usual) or ``NTK_BRIDGE_JAX_CACHE=0``. JAX keys entries by program, JAX/XLA version, backend and
    flags, so a stale entry is never used; loading one gives the same executable, bit for bit."""
    folder = program_cache("jax")
    if folder is None:
        return None
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return jax.config.jax_compilation_cache_dir


def _load_lapack() -> None:
    # JAX's CPU LAPACK (eigh, solve) calls scipy's OpenBLAS, which is loaded only by the first JAX
    # linalg call or an import of scipy.linalg: load it now, or a thread limit would miss it.
    import scipy.linalg  # noqa: F401


def current_blas_threads() -> int:
    """The largest thread count among the loaded BLAS libraries (after loading JAX's LAPACK)."""
    from threadpoolctl import threadpool_info

    _load_lapack()
    counts = [int(lib["num_threads"]) for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return max(counts) if counts else 1


def check_blas_threads(n: int) -> None:
    """``UserError`` (one line naming ``--blas-threads``) unless the BLAS libraries accept ``n`` threads."""
    from ntk_bridge.errors import UserError

    try:
        with blas_threads(n):
            pass
    except RuntimeError:
        raise UserError(f"--blas-threads: the BLAS libraries here run at most {current_max_blas_threads()} "
                        f"threads, not the {n} requested") from None


def current_max_blas_threads() -> int:
    """The largest thread count the loaded BLAS libraries accept (their limit when asked for more)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    _load_lapack()
    with threadpool_limits(limits=1 << 16, user_api="blas"):
        counts = [int(lib["num_threads"]) for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return min(counts) if counts else 1


@contextlib.contextmanager
def blas_threads(n: int):
    """Run the block with every loaded BLAS library (numpy's, scipy's: JAX's LAPACK) at ``n`` threads.

    Raises ``RuntimeError`` if the libraries do not accept the limit (results would then not be the
    ones recorded under that thread count).
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    _load_lapack()
    with threadpool_limits(limits=int(n), user_api="blas"):
        got = {int(lib["num_threads"]) for lib in threadpool_info() if lib.get("user_api") == "blas"}
        if got and got != {int(n)}:
            raise RuntimeError(f"the BLAS libraries run {sorted(got)} threads, not the {n} requested")
        yield


def device_line(blas: int | None = None) -> str:
    """What a command says on stderr before it computes: JAX's platform and devices, and the BLAS
    threads of the dense solves (``blas``: the count a sweep fixes for its cells; ``None``: the
    sweeps' default beside what the loaded BLAS would use). Imports JAX."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    threads = f"{blas}" if blas is not None else (f"{DEFAULT_BLAS_THREADS} in the sweeps' solves "
                                                   f"({current_blas_threads()} elsewhere)")
    return (f"device: {devices[0].platform} x{len(devices)} ({', '.join(kinds)}; jax {jax.__version__}), "
            f"BLAS threads: {threads}")
