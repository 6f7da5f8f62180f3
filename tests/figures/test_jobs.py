"""``ntk-bridge figures --jobs N``: figures made in worker processes, grouped so that figures sharing a run
folder share a worker, with the files of one process."""
import os

import pytest

from ntk_bridge.cli import main
from ntk_bridge.paper_figures import FIGURES, _groups, make_figures


def test_groups_put_the_fewshot_comparison_first_and_shared_run_folders_together():
    groups = _groups(list(FIGURES))
    assert groups[0] == ("fewshot",) and ("distance_vs_width", "finite_gap_vs_depth") in groups
    assert sorted(n for g in groups for n in g) == sorted(FIGURES)
    assert _groups(["finite_gap_vs_depth", "gap_vs_depth"]) == [("finite_gap_vs_depth",), ("gap_vs_depth",)]


def test_jobs_below_one_is_one_line_exit_2(capsys, tmp_path):
    assert main(["figures", "--quick", "--jobs", "0", "--out", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "--jobs" in err[0]


@pytest.mark.slow  # two quick figures twice, once in two spawned workers (about 30 s): pytest -m slow, in .ci/run
def test_figures_made_in_two_processes_are_the_figures_made_in_one(tmp_path):
    only = ["gap_vs_inner_time", "kernel_degeneracy"]
    one = make_figures(str(tmp_path / "one"), True, only, str(tmp_path / "runs1"), log=lambda m: None)
    two = make_figures(str(tmp_path / "two"), True, only, str(tmp_path / "runs2"), log=lambda m: None, jobs=2)
    assert list(one) == list(two) == only
    for name in only:
        for a, b in zip(one[name], two[name]):
            assert os.path.basename(a) == os.path.basename(b)
            assert open(a, "rb").read() == open(b, "rb").read(), a
