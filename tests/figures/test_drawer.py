"""Figures drawn in a second process (ntk_bridge.figures.drawer): the same files as in-process, its errors
raised to the caller, a dead worker replaced by drawing in-process, and a sweep drawn aside as drawn in place."""
import os
import signal

import pandas as pd
import pytest

from ntk_bridge import figures as figs
from ntk_bridge.figures.drawer import Drawer


@pytest.fixture(scope="module")
def table(tiny_sweep):
    _, run, _ = tiny_sweep
    return figs.gap_vs_depth_table(pd.read_csv(os.path.join(run, "results.csv")))


def _files(prefix):
    return {ext: open(f"{prefix}.{ext}", "rb").read() for ext in ("png", "pdf", "csv")}


def test_a_figure_drawn_aside_is_the_figure_drawn_in_place(tmp_path, table):
    figs.plot_gap_vs_depth(table, str(tmp_path / "here"))
    with Drawer() as drawer:
        drawer.draw(figs.plot_gap_vs_depth, table, str(tmp_path / "aside"))
        drawer.wait()
    assert _files(tmp_path / "aside") == _files(tmp_path / "here")


def test_an_error_of_a_drawing_is_raised_by_wait(tmp_path):
    with Drawer() as drawer:
        drawer.draw(figs.plot_gap_vs_depth, pd.DataFrame({"x": [1.0]}), str(tmp_path / "bad"))
        with pytest.raises(KeyError):
            drawer.wait()


def test_a_dead_worker_is_replaced_by_drawing_here(tmp_path, table):
    with Drawer() as drawer:
        os.kill(drawer.pid, signal.SIGKILL)
        drawer.draw(figs.plot_gap_vs_depth, table, str(tmp_path / "after"))
        drawer.wait()
    figs.plot_gap_vs_depth(table, str(tmp_path / "here"))
    assert _files(tmp_path / "after") == _files(tmp_path / "here")


def test_a_sweep_drawn_aside_writes_what_it_writes_in_place(tmp_path, monkeypatch, tiny_sweep):
    from ntk_bridge.sweep import run
    from ntk_bridge.figures import drawer

    started = []
    monkeypatch.setattr(drawer, "ASIDE_SECONDS", 0.0)
    monkeypatch.setattr(drawer.Drawer, "__init__", lambda self, real=drawer.Drawer.__init__: started.append(1)
                        or real(self))
    config = tiny_sweep[0]
    run.run_sweep(config, str(tmp_path / "aside"), draw_aside=True)
    run.run_sweep(config, str(tmp_path / "here"))
    assert started == [1]
    for name in ("results.csv", "gap_vs_depth.png", "gap_vs_depth.pdf", "gap_vs_depth.csv"):
        assert (tmp_path / "aside" / name).read_bytes() == (tmp_path / "here" / name).read_bytes(), name


def test_leaving_ends_the_worker_at_once_and_a_later_drawing_is_still_made(tmp_path, table):
    import time

    drawer = Drawer()
    drawer.draw(figs.plot_gap_vs_depth, table, str(tmp_path / "first"))
    drawer.wait()
    pid = drawer.pid
    t = time.perf_counter()
    drawer.close()
    assert time.perf_counter() - t < 0.2
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped
    assert _files(tmp_path / "first")["csv"]


def test_the_pdf_written_by_a_forked_child_is_the_pdf_written_here(tmp_path, table, monkeypatch):
    from ntk_bridge.figures import style

    figs.plot_gap_vs_depth(table, str(tmp_path / "here"))
    monkeypatch.setattr(style, "split_formats", True)
    figs.plot_gap_vs_depth(table, str(tmp_path / "split"))
    assert _files(tmp_path / "split") == _files(tmp_path / "here")
    # a child that fails leaves the PDF to the parent
    parent, real = os.getpid(), style._savefig

    def failing_in_the_child(fig, path, dpi):
        if os.getpid() != parent:
            raise OSError("disk full")
        real(fig, path, dpi)

    monkeypatch.setattr(style, "_savefig", failing_in_the_child)
    figs.plot_gap_vs_depth(table, str(tmp_path / "fallback"))
    assert _files(tmp_path / "fallback") == _files(tmp_path / "here")
