"""Figures drawn in a second process while the caller goes on.

A sweep's figure takes about a second to draw and half a second to import matplotlib for; on the critical
path of the main job that is a sixth of its time. :class:`Drawer` starts one worker process (``spawn``: a
fresh interpreter, no JAX, no state copied from the caller) that imports matplotlib and the figure modules
while the caller computes; the caller then hands it ``(plot, table, path prefix)`` and writes its own files
while the worker draws, and waits for it at the end. The files are the same as when drawn in-process (each
written atomically by :func:`ntk_bridge.figures.style.save`); an error of a drawing is raised to the caller
by :meth:`Drawer.wait`, and a worker that died is replaced by drawing in the caller's process.

Like every ``spawn`` worker, it imports the caller's main module: a script that starts a sweep with
``draw_aside`` must keep its work under ``if __name__ == "__main__":`` (the ``ntk-bridge`` command, ``python -m
ntk_bridge.cli`` and ``python -c`` need nothing), or the worker would run the script again.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

import pandas as pd

__all__ = ["Drawer"]


def _ready() -> None:
    """The worker's start: matplotlib (Agg) and the figure modules imported before the first drawing."""
    from ntk_bridge import figures

    figures.style.pyplot()


class Drawer:
    """One worker process drawing figures (see the module docstring); a context manager that shuts the
    worker down on leaving, also on an error or an interrupt."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_ready)
        self._pool.submit(int)  # start the worker now: it imports while the caller computes
        self._pending: list = []

    def draw(self, plot: Callable[[pd.DataFrame, str], object], table: pd.DataFrame, path_prefix: str) -> None:
        """Have ``plot(table, path_prefix)`` run in the worker (``plot`` a module-level function)."""
        try:
            future = self._pool.submit(plot, table, path_prefix)
        except BrokenProcessPool:
            future = None
        self._pending.append((plot, table, path_prefix, future))

    def wait(self) -> None:
        """Wait for every drawing handed over; raise the first one's error. A drawing the worker could not
        make because it died (killed, out of memory) is made here instead."""
        pending, self._pending = self._pending, []
        for plot, table, path_prefix, future in pending:
            try:
                if future is None:
                    raise BrokenProcessPool
                future.result()
            except BrokenProcessPool:
                plot(table, path_prefix)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "Drawer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
