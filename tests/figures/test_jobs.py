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


def test_the_long_figures_go_before_the_fewshot_runs_and_the_short_ones_after():
    from ntk_bridge.paper_figures import _LONG, _order

    groups = _groups(list(FIGURES))
    long, short = _order(groups, fewshot_runs=True)
    assert ("fewshot",) not in long + short  # drawn once its runs are saved
    assert sorted(n for g in long + short for n in g) == sorted(set(FIGURES) - {"fewshot"})
    assert {n for g in long for n in g} >= set(_LONG) and not {n for g in short for n in g} & set(_LONG)
    assert ("distance_vs_width", "finite_gap_vs_depth") in long  # a run folder's figures stay together
    assert ("fewshot",) in _order(groups, fewshot_runs=False)[1]  # its runs saved already: a short figure


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


#: The few-shot figure's measured columns: the only ones allowed to differ between two trainings of a run.
_MEASURED = ("seconds", "cpu_s_", "step_cost")


def _tiny_figure_config(quick=False):
    import dataclasses

    from ntk_bridge.datasets.loaders import DataSpec
    from ntk_bridge.fewshot.experiment import FewShotConfig
    from ntk_bridge.fewshot.methods import default_method_config
    from ntk_bridge.fewshot.models import ModelConfig

    methods = tuple(dataclasses.replace(default_method_config(m), meta_batch=2, train_queries=2)
                    for m in ("mtl", "anil", "protonet"))
    return (FewShotConfig(ways=3, shots=(1,), methods=methods, seeds=(0, 1), max_steps=4, checkpoints=2,
                          val_episodes=2, test_episodes=8, model=ModelConfig("mlp", 16, 1)), DataSpec("digits"))


def test_fewshot_runs_trained_one_by_one_are_the_runs_the_figure_trains_in_one_go(tmp_path, monkeypatch):
    """What ``figures --jobs N`` does with the few-shot comparison, in-process: each (method, seed) run trained on
    its own by ``train_run`` and then found by ``make_fewshot_figure``, against the figure trained in one go."""
    import json

    import pandas as pd

    from ntk_bridge.fewshot import figure as fewshot

    monkeypatch.setattr(fewshot, "figure_config", _tiny_figure_config)
    split, whole = tmp_path / "split", tmp_path / "whole"
    runs = fewshot.runs_to_train(split)
    assert runs == [("mtl", 0), ("anil", 0), ("protonet", 0), ("mtl", 1), ("anil", 1), ("protonet", 1)]
    for method, seed in reversed(runs):  # any order
        fewshot.train_run(split, False, method, seed)
    with pytest.raises(ValueError, match="no run 'maml'"):
        fewshot.train_run(split, False, "maml", 0)
    fewshot.make_fewshot_figure(split, tmp_path / "out_split", log=lambda m: None)
    fewshot.make_fewshot_figure(whole, tmp_path / "out_whole", log=lambda m: None)
    assert json.loads((split / "config.json").read_text())["reused_runs"] == len(runs)
    assert "reused_runs" not in json.loads((whole / "config.json").read_text())
    assert fewshot.runs_to_train(split) == []
    for name in ("fewshot_results.csv", "fewshot_summary.csv", "fewshot_accuracy_vs_time.csv"):
        a, b = pd.read_csv(tmp_path / "out_split" / name), pd.read_csv(tmp_path / "out_whole" / name)
        assert list(a.columns) == list(b.columns)
        exact = [c for c in a.columns if not any(m in c for m in _MEASURED)]
        assert len(exact) > 5
        pd.testing.assert_frame_equal(a[exact], b[exact], check_exact=True)


@pytest.mark.slow  # the quick few-shot figure twice (about 2.5 min): pytest -m slow, in .ci/run
def test_the_quick_fewshot_figure_trained_in_two_processes_is_the_one_trained_in_one(tmp_path):
    import pandas as pd

    one = make_figures(str(tmp_path / "one"), True, ["fewshot"], str(tmp_path / "runs1"), log=lambda m: None)
    lines = []
    two = make_figures(str(tmp_path / "two"), True, ["fewshot"], str(tmp_path / "runs2"), log=lines.append, jobs=2)
    assert sum("few-shot run" in line and "trained" in line for line in lines) == 5, lines
    for a, b in zip(one["fewshot"], two["fewshot"]):
        if a.endswith(".csv"):
            x, y = pd.read_csv(a), pd.read_csv(b)
            exact = [c for c in x.columns if not any(m in c for m in _MEASURED)]
            pd.testing.assert_frame_equal(x[exact], y[exact], check_exact=True)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="the platform cannot pin a process")
def test_figure_workers_are_pinned_to_one_core_each():
    """XLA sizes its thread pool by a process's cores, and the trained networks' numbers depend on that size:
    a figure worker starts on one core (``make_figures``' initializer)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ntk_bridge import runtime

    context = multiprocessing.get_context("spawn")
    cores = context.SimpleQueue()
    core = runtime.usable_cores()[-1]
    cores.put(core)
    with ProcessPoolExecutor(1, mp_context=context, initializer=runtime._one_core, initargs=(cores,)) as pool:
        assert pool.submit(os.sched_getaffinity, 0).result() == {core}
    with runtime.one_core_pool(2) as pool:  # the pool make_figures and fewshot --jobs use: the cores in turn
        got = sorted(min(a) for a in pool.map(_affinity_after, [2, 2]))
    assert got == sorted(runtime.usable_cores()[:2] if len(runtime.usable_cores()) > 1 else runtime.usable_cores() * 2)


def _affinity_after(seconds):
    import time

    time.sleep(seconds)  # both workers busy at once, so each task lands on its own worker
    return os.sched_getaffinity(0)


def test_one_job_on_one_core_makes_the_figures_in_this_process(monkeypatch, tmp_path):
    from ntk_bridge import paper_figures, runtime

    made_in = []
    monkeypatch.setitem(paper_figures.FIGURES, "kernel_degeneracy", lambda g, runs, out: made_in.append(os.getpid()) or [])
    monkeypatch.setattr(runtime, "usable_cores", lambda: [3])
    made = paper_figures.make_figures(str(tmp_path), True, ["kernel_degeneracy"], str(tmp_path / "runs"), log=print)
    assert made == {"kernel_degeneracy": []} and made_in == [os.getpid()]
