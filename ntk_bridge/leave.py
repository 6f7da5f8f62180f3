"""How the ``ntk-bridge`` command ends its process: without the interpreter's teardown when nothing is left
running.

Once a command has returned, every file it wrote is complete (each through
:func:`ntk_bridge.runs.atomic_write`, a closed file renamed into place) and its output is printed. What
``sys.exit`` would still do is tear the interpreter down: free JAX's runtime and compiled programs, the
hundred thousand objects of numpy, pandas and neural-tangents, and join the idle threads of the pools the
command used; on the main job that was about a quarter of a second, a twentieth of its time. :func:`leave`
flushes the standard streams and ends the process with :func:`os._exit` instead, but only when no child
process and no thread that is not an idle pool worker is still alive; otherwise (a Dask cluster that has
not finished closing, a thread of a library) it ends the ordinary way. Only the console script calls it:
``ntk_bridge.cli.main`` called from Python (the tests, a notebook) returns as before.
"""
from __future__ import annotations

import os
import sys
import threading

__all__ = ["leave"]

#: Name prefixes of threads that may be cut short: the idle workers of ``concurrent.futures`` thread pools
#: (``runtime.concurrently``'s included), which the interpreter would only join.
_POOL_THREADS = ("ThreadPoolExecutor", "ntk_bridge")


def _quiet() -> bool:
    """Whether nothing else runs: no live child process, no live non-daemon thread but the main one and idle
    pool workers."""
    import multiprocessing

    if multiprocessing.active_children():
        return False
    return all(t is threading.main_thread() or t.daemon or t.name.startswith(_POOL_THREADS)
               for t in threading.enumerate())


def leave(code: int) -> None:
    """End the process with exit status ``code`` (see the module docstring)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or broken stream: let the ordinary exit deal with it
        sys.exit(code)
    if _quiet():
        os._exit(code)
    sys.exit(code)
