"""Figures drawn in a second process while the caller goes on.

A sweep's figure takes about a second to draw and half a second to import matplotlib for; on the critical
path of the main job that is a sixth of its time. :class:`Drawer` starts one worker process (``spawn``: a
fresh interpreter, no JAX, no state copied from the caller) that imports matplotlib and the figure modules
while the caller computes; the caller then hands it ``(plot, table, path prefix)`` and writes its own files
while the worker draws, and waits for it at the end. The files are the same as when drawn in-process (each
written atomically by :func:`ntk_bridge.figures.style.save`); an error of a drawing is raised to the caller
by :meth:`Drawer.wait`, and a worker that died is replaced by drawing in the caller's process.

The worker talks to the caller over one pipe (no queue, no semaphore), and :meth:`Drawer.close` ends it at
once (``SIGKILL``: it is idle then, or drawing something nobody waits for any more, and every file it writes
is written atomically): leaving costs nothing, where a process pool's orderly shutdown made the command wait
about 0.3 s for the worker's interpreter to tear itself down.

Like every ``spawn`` worker, it imports the caller's main module: a script that starts a sweep with
``draw_aside`` must keep its work under ``if __name__ == "__main__":`` (the ``ntk-bridge`` command, ``python -m
ntk_bridge.cli`` and ``python -c`` need nothing), or the worker would run the script again.
"""
from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Drawer", "ASIDE_SECONDS"]

#: Estimated seconds of computation from which a sweep's figures are drawn by a :class:`Drawer`
#: (``ntk_bridge.sweep.run_sweep(draw_aside=True)``, the command line): its start, about a second of one
#: core, then hides behind the sweep; below it a tiny sweep would only pay for the start.
ASIDE_SECONDS = 3.0


def _serve(conn) -> None:
    """The worker: matplotlib (Agg) and the figure modules imported first, then ``(plot, table, prefix)``
    drawn in the order received, each answered ``(True, None)`` or ``(False, error)``; ``None`` or a closed
    pipe ends it."""
    from ntk_bridge.figures import depth, style, width  # noqa: F401  (what a sweep's figures draw with)

    style.pyplot()
    style.split_formats = True  # PNG and PDF at once: this process has nothing else to do
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        plot, table, prefix = job
        try:
            plot(table, prefix)
            answer = (True, None)
        except Exception as exc:  # raised to the caller by wait()
            answer = (False, exc)
        try:
            conn.send(answer)
        except Exception:  # an error that does not pickle: its text
            conn.send((False, RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}")))


class Drawer:
    """One worker process drawing figures (see the module docstring); a context manager that ends the
    worker on leaving, also on an error or an interrupt."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, theirs = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(theirs,), daemon=True, name="ntk_bridge-drawer")
        self._process.start()  # it imports while the caller computes
        theirs.close()
        self._pending: list = []  # (plot, table, prefix, handed to the worker)
        self._broken = False

    @property
    def pid(self) -> int | None:
        """The worker's process id."""
        return self._process.pid

    def draw(self, plot: Callable[[pd.DataFrame, str], object], table: pd.DataFrame, path_prefix: str) -> None:
        """Have ``plot(table, path_prefix)`` run in the worker (``plot`` a module-level function)."""
        sent = False
        if not self._broken:
            try:
                self._conn.send((plot, table, path_prefix))
                sent = True
            except OSError:  # the worker died
                self._broken = True
        self._pending.append((plot, table, path_prefix, sent))

    def wait(self) -> None:
        """Wait for every drawing handed over; raise the first one's error. A drawing the worker could not
        make because it died (killed, out of memory) is made here instead."""
        pending, self._pending = self._pending, []
        error = None
        for plot, table, path_prefix, sent in pending:
            ok, exc = self._answer() if sent else (None, None)
            if ok is None:  # never handed over, or the worker died before answering
                plot(table, path_prefix)
            elif not ok and error is None:
                error = exc
        if error is not None:
            raise error

    def _answer(self):
        if self._broken:
            return None, None
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._broken = True
            return None, None

    def close(self) -> None:
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._conn.close()

    def __enter__(self) -> "Drawer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
