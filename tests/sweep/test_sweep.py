"""The sweep: cache (atomic cells, resume, no duplicates), determinism, CSV schema, and the
closed-form numbers it writes."""
import math
import os

import numpy as np
import pandas as pd
import pytest

from ntk_bridge import build, sweep as sw
from ntk_bridge.predictors import PredictorConfig, predict
from ntk_bridge.results import depth_slopes
from ntk_bridge.metrics import NAMES
from ntk_bridge.runs import RunFolder

SMALL = dict(depths=(1, 2, 3, 5), inner_times=(0.1, 1.0), mtl_data=("all",), train_tasks=3, test_tasks=2, support=3,
             query=4, dim=5)


def test_schema_and_values_match_predictors(tmp_path):
    cfg = sw.SweepConfig.of(**SMALL)
    df = sw.run_sweep(cfg, str(tmp_path))
    assert list(df.columns) == NAMES
    # 4 depths x 2 inner times x 4 methods (mtl, anil, maml, baseline) x 2 test tasks
    assert len(df) == 4 * 2 * 4 * 2
    assert set(df["status"]) == {"ok"}
    tasks = build.task_set(cfg)
    out = predict(tasks, 3, PredictorConfig(inner_time=1.0))
    row = df[(df.depth == 3) & (df.inner_time == 1.0) & (df.method == "anil") & (df.test_task == 1)].iloc[0]
    f, g = out["anil"].values[1], out["mtl"].values[1]
    assert row.gap_to_mtl_rel == pytest.approx(np.linalg.norm(f - g) / np.linalg.norm(g), rel=1e-12)
    assert row.gap_to_mtl_abs == pytest.approx(np.linalg.norm(f - g) / np.sqrt(f.size), rel=1e-12)
    assert row.test_mse == pytest.approx(np.mean((f - tasks.test_query_y[1]) ** 2), rel=1e-12)
    assert row.pred_rms == pytest.approx(np.linalg.norm(f) / np.sqrt(f.size), rel=1e-12)
    b = out["baseline"].values[1]
    assert row.gap_to_baseline_rel == pytest.approx(np.linalg.norm(f - b) / np.linalg.norm(b), rel=1e-12)
    assert (df[df.method == "mtl"]["gap_to_mtl_rel"] == 0).all()


def test_rerun_skips_finished_cells_and_is_deterministic(tmp_path, monkeypatch):
    cfg = sw.SweepConfig.of(**SMALL)
    first = sw.run_sweep(cfg, str(tmp_path / "a"))
    calls = []
    monkeypatch.setattr(RunFolder, "write_cell", lambda *a, **k: calls.append(a))
    again = sw.run_sweep(cfg, str(tmp_path / "a"))
    assert calls == []  # nothing recomputed or rewritten
    pd.testing.assert_frame_equal(first, again)
    monkeypatch.undo()
    other = sw.run_sweep(cfg, str(tmp_path / "b"))
    assert first.drop(columns=[]).to_csv(index=False) == other.to_csv(index=False)  # same seed, same numbers


def test_interrupted_run_resumes_without_duplicates(tmp_path, monkeypatch):
    cfg = sw.SweepConfig.of(**SMALL)
    real_write = RunFolder.write_cell
    written = []

    def flaky(folder, key, rows):
        if len(written) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the 4th cell is being written
        real_write(folder, key, rows)
        written.append(key)

    monkeypatch.setattr(RunFolder, "write_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        sw.run_sweep(cfg, str(tmp_path))
    monkeypatch.undo()
    cells = [f for f in os.listdir(tmp_path / "cells")]
    assert len(cells) == 3 and all(f.endswith(".csv") for f in cells)  # no partial files left
    resumed = sw.run_sweep(cfg, str(tmp_path))
    assert len(os.listdir(tmp_path / "cells")) == 8
    key_cols = ["method", "depth", "inner_time", "test_task", "network"]
    assert not resumed.duplicated(key_cols).any()
    fresh = sw.run_sweep(cfg, str(tmp_path / "fresh"))
    assert resumed.to_csv(index=False) == fresh.to_csv(index=False)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        RunFolder(tmp_path).write_cell("abc", pd.DataFrame([dict(method="mtl")]))
    assert os.listdir(tmp_path / "cells") == []


def test_changing_the_grid_reuses_common_cells(tmp_path):
    cfg = sw.SweepConfig.of(**SMALL)
    sw.run_sweep(cfg, str(tmp_path))
    bigger = sw.SweepConfig.of(**dict(SMALL, depths=(1, 2, 3, 5, 8)))
    _, cells, keys = sw.plan(bigger)
    done = [k for k in keys if RunFolder(tmp_path).read_cell(k) is not None]
    assert len(done) == 8 and len(keys) == 10
    df = sw.run_sweep(bigger, str(tmp_path))
    assert sorted(df.depth.unique()) == [1, 2, 3, 5, 8]
    # a different task set gives different keys
    other = sw.SweepConfig.of(**dict(SMALL, task_seed=1))
    assert set(sw.plan(other)[2]).isdisjoint(keys)


def test_flagged_rows_are_reported_not_hidden(tmp_path):
    # MAML with query = support at s = inf has Phi = 0: the solve needs a ridge / is degenerate.
    from ntk_bridge.families import subspace_tasks
    t = subspace_tasks(seed=0, n_train=3, n_test=2, n_support=4, n_query=4, dim=5)
    same = type(t)(t.train_support_x, t.train_support_y, t.train_support_x, t.train_support_y,
                   t.test_support_x, t.test_support_y, t.test_query_x, t.test_query_y)
    path = tmp_path / "same.npz"
    same.save(path)
    cfg = sw.SweepConfig.of(depths=(1, 2), inner_times=(math.inf,), family=str(path))
    df = sw.run_sweep(cfg, str(tmp_path / "run"))
    maml = df[df.method == "maml"]
    assert (maml.status != "ok").all()
    assert set(maml.status) <= {"ridge", "not_psd", "nonfinite"}
    slopes = depth_slopes(df)
    assert slopes.empty or "maml" not in set(slopes["method"])  # flagged rows never enter fits


@pytest.mark.slow  # trains the finite cells twice, shared and alone (about 18 s): in .ci/run
def test_finite_cells_of_one_width_and_depth_share_runs_and_match_cells_run_alone(tmp_path):
    small = dict(SMALL, depths=(1, 2), widths=(24.0,), methods=("mtl", "anil"), mtl_data=("all", "query"),
                 seeds=2, outer_steps=10)
    cfg = sw.SweepConfig.of(**small)
    tasks, cells, keys = sw.plan(cfg)
    units = sw.make_units(cfg, cells, keys)
    assert len(units) == 2 and all(len(u.cells) == 4 for u in units)  # one unit per depth
    together = sw.run_sweep(cfg, str(tmp_path / "a"))
    assert set(together["status"]) == {"ok"} and set(together["dtype"]) == {"float64"}
    alone = [sw.run_sweep(sw.SweepConfig.of(**dict(small, inner_times=(s,), mtl_data=(d,))), str(tmp_path / f"{s}{d}"))
             for s in small["inner_times"] for d in small["mtl_data"]]
    alone = sw.sort_results(pd.concat(alone, ignore_index=True))
    pd.testing.assert_frame_equal(together, alone)
    # the training settings are part of a finite cell's key, not of an infinite cell's
    other = sw.plan(sw.SweepConfig.of(**dict(small, outer_steps=11, widths=(24.0, math.inf))))[2]
    assert not set(keys) & set(other)
    inf_a = sw.plan(sw.SweepConfig.of(**dict(SMALL, outer_steps=11)))[2]
    assert inf_a == sw.plan(sw.SweepConfig.of(**SMALL))[2]


def test_blas_threads_are_part_of_the_key_and_a_resume_under_another_count_recomputes(tmp_path, monkeypatch):
    one = sw.SweepConfig.of(**dict(SMALL, blas_threads=1))
    two = sw.SweepConfig.of(**dict(SMALL, blas_threads=2))
    assert set(sw.plan(one)[2]).isdisjoint(sw.plan(two)[2])
    sw.run_sweep(one, str(tmp_path))
    written = []
    real = RunFolder.write_cell

    def record(folder, key, rows):
        written.append(key)
        real(folder, key, rows)

    monkeypatch.setattr(RunFolder, "write_cell", record)
    df = sw.run_sweep(two, str(tmp_path))
    assert sorted(written) == sorted(sw.plan(two)[2])  # every cell recomputed, none mixed in
    assert set(df["cell"]) == set(sw.plan(two)[2])


def test_the_python_api_writes_the_run_folder_the_cli_writes(tmp_path, capsys):
    from ntk_bridge.cli import main

    cfg = sw.SweepConfig.of(**SMALL)
    sw.run_sweep(cfg, str(tmp_path / "api"))
    args = ["sweep", "--depth", "1,2,3,5", "--inner-time", "0.1,1", "--mtl-data", "all", "--train-tasks", "3",
            "--test-tasks", "2", "--support", "3", "--query", "4", "--dim", "5", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    for name in ("results.csv", "config.json", "summary.md", "gap_vs_depth.png", "gap_vs_depth.pdf",
                 "gap_vs_depth.csv"):
        assert (tmp_path / "api" / name).is_file() and (tmp_path / "cli" / name).is_file(), name
    for name in ("results.csv", "gap_vs_depth.csv"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    api = (tmp_path / "api" / "summary.md").read_text()
    cli = (tmp_path / "cli" / "summary.md").read_text()
    assert api == cli.replace(f"Command: `ntk-bridge {' '.join(args)}`\n\n", "")


def test_a_rerun_with_nothing_new_does_not_redraw_the_figure(tmp_path):
    cfg = sw.SweepConfig.of(**SMALL)
    sw.run_sweep(cfg, str(tmp_path))
    png = tmp_path / "gap_vs_depth.png"
    stamp = png.stat().st_mtime_ns
    sw.run_sweep(cfg, str(tmp_path))
    assert png.stat().st_mtime_ns == stamp
    sw.run_sweep(sw.SweepConfig.of(**dict(SMALL, depths=(1, 2, 3, 5, 6))), str(tmp_path))
    assert png.stat().st_mtime_ns != stamp  # a new depth: a new table, a new figure


def test_the_first_depths_programs_compiled_on_stand_in_kernels_give_the_same_bits(monkeypatch):
    """``infinite_rows`` compiles the first depth's programs on identity kernels while the kernel pass runs:
    the rows equal those of a run without that warm-up, each computed from freshly compiled programs."""
    import jax

    import ntk_bridge.predictors as predictors
    from ntk_bridge.sweep import compute

    cfg = sw.SweepConfig.of(**SMALL)
    tasks, cells, keys = sw.plan(cfg)
    arch = build.architecture(cfg, tasks)
    stand_ins, real = [], predictors.predict_from_kernels

    def counted(ntk, *args, **kwargs):
        stand_ins.append(np.array_equal(ntk, np.eye(len(ntk))))
        return real(ntk, *args, **kwargs)

    monkeypatch.setattr(predictors, "predict_from_kernels", counted)

    def rows(warm_up):
        jax.clear_caches()
        stand_ins.clear()
        out = [(k, r.csv()) for k, r in compute.infinite_rows(cells, keys, tasks, arch, cfg.grid.methods,
                                                               cfg.numerics.rcond, {}, "auto", warm_up=warm_up)]
        return out, sum(stand_ins)

    (plain, none), (warmed, some) = rows(False), rows(True)
    assert none == 0 and some > 0  # the warm-up ran, on stand-ins
    assert warmed == plain
