"""Rows that say what they are, through ``ntk-bridge sweep``: undefined metrics are ``degenerate``
(never ``ok`` with a NaN), inputs outside the kernels' exact range are refused, a cell file that
belongs to another cell is recomputed, and ``--solver auto`` is resolved once, when the sweep plans.
"""
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from ntk_bridge import build, kernels, solvers
from ntk_bridge.cli import main
from ntk_bridge.families import subspace_tasks
from ntk_bridge.metrics import DEFINED, STATUSES
from ntk_bridge.runs import RunFolder
from ntk_bridge.tasks import SAFE_SQUARED_NORM

SMALL = ["--train-tasks", "3", "--test-tasks", "2", "--support", "3", "--query", "4", "--dim", "5"]


def _run(capsys, argv):
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _task_file(path, x_scale=1.0, zero_labels=False):
    t = subspace_tasks(seed=3, n_train=3, n_test=2, n_support=3, n_query=4, dim=5)
    arrays = {k: (v * x_scale if k.endswith("_x") else np.zeros_like(v) if zero_labels else v)
              for k, v in t.arrays().items()}
    np.savez(path, **arrays)  # as a user writes a task file
    return path


# -- undefined metrics --------------------------------------------------------------------------------

def test_all_zero_labels_give_degenerate_rows_not_ok_ones_and_no_traceback(tmp_path, capsys):
    path = _task_file(tmp_path / "zero.npz", zero_labels=True)
    out = tmp_path / "run"
    code, stdout, stderr = _run(capsys, ["sweep", "--tasks", str(path), "--depth", "1,2", "--inner-time", "0.1",
                                         "--out", str(out)])
    assert code == 0, stderr
    assert "Traceback" not in stderr
    df = pd.read_csv(out / "results.csv")
    ok = df[df["status"] == "ok"]
    assert not ok[list(DEFINED)].isna().any().any()  # no ok row with a NaN metric
    # every prediction is 0, so every relative gap is 0/0: all rows degenerate, counted in the report
    assert (df["status"] == "degenerate").all() and df["gap_to_mtl_rel"].isna().all()
    assert "degenerate" in STATUSES
    assert f"degenerate: {len(df)}" in (out / "summary.md").read_text()


# -- the kernels' range -------------------------------------------------------------------------------

@pytest.mark.parametrize("q", [SAFE_SQUARED_NORM[0], SAFE_SQUARED_NORM[1]])
def test_the_kernels_are_exact_at_the_edges_of_the_accepted_range(q):
    """The fully connected kernels are homogeneous of degree 2 (b_std = 0): ``Theta(c x) = c^2 Theta(x)``.
    A power-of-two ``c`` makes the scaling itself exact."""
    x = subspace_tasks(seed=1, n_train=2, n_test=1, n_support=3, n_query=3, dim=6).all_points()
    c = 2.0 ** round(math.log2(q) / 2)
    ref = {k.depth: k for k in kernels.kernels_by_depth(x, depths=[1, 16])}
    for k in kernels.kernels_by_depth(x * c, depths=[1, 16]):
        np.testing.assert_allclose(k.ntk / c ** 2, ref[k.depth].ntk, rtol=1e-12, atol=0)
        np.testing.assert_allclose(k.readout / c ** 2, ref[k.depth].readout, rtol=1e-12, atol=0)


def test_the_kernels_are_wrong_past_the_measured_edge():
    """What the refusal protects from: at ``||x||^2/d = 2^-520`` the products of squared norms underflow."""
    x = subspace_tasks(seed=1, n_train=2, n_test=1, n_support=3, n_query=3, dim=6).all_points()
    c = 2.0 ** -260
    ref = next(kernels.kernels_by_depth(x, depths=[1]))
    got = next(kernels.kernels_by_depth(x * c, depths=[1]))
    assert np.max(np.abs(got.ntk / c ** 2 - ref.ntk)) / np.max(np.abs(ref.ntk)) > 1e-2


@pytest.mark.parametrize("scale", [1e-150, 1e60])
def test_inputs_outside_the_kernels_range_are_refused_with_one_line(tmp_path, capsys, scale):
    path = _task_file(tmp_path / "scaled.npz", x_scale=scale)
    code, _, stderr = _run(capsys, ["sweep", "--tasks", str(path), "--depth", "1", "--out", str(tmp_path / "run")])
    assert code == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("error:") and "outside the range the kernels compute exactly" in stderr
    assert not (tmp_path / "run" / "results.csv").exists()


def test_inputs_inside_the_range_and_zero_points_are_accepted(tmp_path, capsys):
    t = subspace_tasks(seed=3, n_train=3, n_test=2, n_support=3, n_query=4, dim=5)
    arrays = t.arrays()
    arrays["test_query_x"] = arrays["test_query_x"].copy()
    arrays["test_query_x"][0, 0] = 0.0  # a zero point: its kernel entries are exactly 0
    np.savez(tmp_path / "ok.npz", **{k: (v * 1e-30 if k.endswith("_x") else v) for k, v in arrays.items()})
    code, _, stderr = _run(capsys, ["sweep", "--tasks", str(tmp_path / "ok.npz"), "--depth", "1", "--inner-time", "0.1",
                                    "--out", str(tmp_path / "run"), "--no-figures"])
    assert code == 0, stderr


# -- a cell file under another cell's key -------------------------------------------------------------

def test_a_cell_copied_over_another_cells_file_is_recomputed(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["sweep", "--depth", "1..3", "--inner-time", "0.1", "--mtl-data", "all", "--out", str(out),
            "--no-figures", *SMALL]
    code, _, stderr = _run(capsys, argv)
    assert code == 0, stderr
    fresh = (out / "results.csv").read_bytes()
    by_depth = {int(pd.read_csv(p, comment="#")["depth"].iloc[0]): p for p in (out / "cells").glob("*.csv")}
    shutil.copyfile(by_depth[1], by_depth[3])  # a valid file, header and SHA-256 intact, under depth 3's key
    assert RunFolder(out).read_cell(by_depth[3].stem) is None
    code, _, stderr = _run(capsys, argv)
    assert code == 0, stderr
    assert len([line for line in stderr.splitlines() if "damaged cell file(s)" in line]) == 1  # the usual note
    assert "1 damaged files recomputed" in stderr
    assert (out / "results.csv").read_bytes() == fresh
    df = pd.read_csv(out / "results.csv")
    assert sorted(df["depth"].unique()) == [1, 2, 3] and not df.duplicated(["method", "depth", "test_task"]).any()


def test_a_cell_whose_rows_have_other_grid_fields_is_damaged(tmp_path):
    folder = RunFolder(tmp_path)
    rows = pd.DataFrame({"depth": [2, 2], "width": [math.inf, math.inf], "cell": ["k", "k"], "x": [0.5, 0.25]})
    folder.write_cell("k", rows)
    assert folder.read_cell("k", {"depth": 2, "width": math.inf}) is not None
    assert folder.read_cell("k", {"depth": 3, "width": math.inf}) is None
    folder.write_cell("other", rows)  # rows that name cell k in the file of cell "other"
    assert folder.read_cell("other") is None


# -- --solver auto resolved once ----------------------------------------------------------------------

def test_auto_is_resolved_once_when_the_sweep_plans(tmp_path, capsys, monkeypatch):
    """Free memory that drops after planning must not switch the solves from the planned ``cholesky``
    (what the cache keys say) to ``cg``: the auto run's results are the explicit cholesky run's, bit for bit."""
    import os

    monkeypatch.setattr(solvers, "AUTO_MIN_SIZE", 1)
    real_sysconf, planning = os.sysconf, [True]

    def sysconf(name):
        if name == "SC_AVPHYS_PAGES":
            return (1 << 30) if planning[0] else 1  # 4 TiB of free pages while planning, then one
        return real_sysconf(name)

    real_pass = kernels.kernels_by_depth

    def kernel_pass(*args, **kwargs):
        planning[0] = False
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(os, "sysconf", sysconf)
    monkeypatch.setattr(kernels, "kernels_by_depth", kernel_pass)
    argv = ["sweep", "--depth", "1,2", "--inner-time", "0.1", "--mtl-data", "all", "--no-figures", *SMALL]
    code, _, stderr = _run(capsys, [*argv, "--solver", "auto", "--out", str(tmp_path / "auto")])
    assert code == 0, stderr
    assert planning[0] is False  # the solves ran after memory dropped
    planning[0] = True
    code, _, stderr = _run(capsys, [*argv, "--solver", "cholesky", "--out", str(tmp_path / "cholesky")])
    assert code == 0, stderr
    auto = pd.read_csv(tmp_path / "auto" / "results.csv")
    assert auto["solve_residual"].isna().all()  # no iterative solve
    assert (tmp_path / "auto" / "results.csv").read_bytes() == (tmp_path / "cholesky" / "results.csv").read_bytes()


def test_units_carry_the_planned_solvers_to_workers():
    from ntk_bridge import distributed, sweep as sw

    config = sw.SweepConfig.of(depths=(1, 2), inner_times=(0.1, 1.0), mtl_data=("all",), train_tasks=3, test_tasks=2,
                               support=3, query=4, dim=5)
    tasks = build.task_set(config)
    plan = solvers.solver_plan("auto", tasks.layout, (math.inf,), ("all",), memory=1 << 40)
    _, cells, keys = sw.plan(config, tasks, plan)
    units = distributed.split_units(sw.make_units(config, cells, keys, plan), min_units=4)
    assert len(units) >= 2 and all(u.solvers == plan for u in units)
