"""``ntk-bridge verify``: the claims' statistics and rules on synthetic rows whose answers are known
in closed form, then a small panel end to end (claims, report, self-contained page, resume) and the
command line."""
import base64
import math
import re

import numpy as np
import pandas as pd
import pytest

from ntk_bridge import methods as registry
from ntk_bridge.cli import main
from ntk_bridge.families import subspace_tasks
from ntk_bridge.verify import Family, Panel, run_verify
from ntk_bridge.verify.claims import (OVERALL, RULES, VERDICTS, benefit_table, claims_table, gap_medians, overall,
                                     verdict_matrix)


DEPTHS = [1, 2, 4, 8, 16]
TIMES = [0.01, 0.1, 1.0]
SEEDS = range(5)
#: Per-seed multiplicative jitter, symmetric so that means are exact.
JITTER = np.array([-2, -1, 0, 1, 2]) * 0.01


def synthetic_rows(gap, mse, tasks="A", test_tasks=3) -> pd.DataFrame:
    """Rows shaped like a sweep's results: ``gap(L, s)`` for ANIL and MAML (MAML's is half), test MSE
    ``mse(method, L)`` (the baseline's is 1), each seed's values scaled by ``1 + JITTER[seed]``, every
    test task of a seed alike except for a small spread around the seed's value."""
    rows = []
    for seed in SEEDS:
        j = 1 + JITTER[seed]
        for L in DEPTHS:
            for t in range(test_tasks):
                spread = 1 + 0.001 * (t - (test_tasks - 1) / 2)  # the median is the middle task
                common = dict(tasks=tasks, task_seed=seed, test_task=t, depth=L, width=math.inf, status="ok",
                              test_head="learned", mtl_data="query")
                for s in TIMES:  # as in a sweep, every method has rows in every cell
                    rows.append(dict(common, method="mtl", inner_time=s, gap_to_mtl_rel=0.0,
                                     test_mse=mse("mtl", L) * j))
                    rows.append(dict(common, method="baseline", inner_time=s, gap_to_mtl_rel=1.0, test_mse=1.0))
                    g = gap(L, s) * j * spread
                    rows.append(dict(common, method="anil", inner_time=s, gap_to_mtl_rel=g,
                                     test_mse=mse("anil", L) * j))
                    rows.append(dict(common, method="maml", inner_time=s, gap_to_mtl_rel=g / 2,
                                     test_mse=mse("maml", L) * j))
    return pd.DataFrame(rows)


def bound_shaped(L, s):
    return 1.0 / L + 0.5 * s


def useful_to_4(method, L):
    return 0.5 if L <= 4 else 1.0


@pytest.fixture(scope="module")
def shaped():
    return synthetic_rows(bound_shaped, useful_to_4)


def test_gap_medians_are_per_seed_medians_over_test_tasks(shaped):
    med = gap_medians(shaped, "anil")
    assert len(med) == len(SEEDS) * len(DEPTHS) * len(TIMES)
    naive = {}
    for (seed, L, s), g in shaped[shaped["method"] == "anil"].groupby(["task_seed", "depth", "inner_time"]):
        naive[(seed, L, s)] = float(np.median(g["gap_to_mtl_rel"]))
    for _, r in med.iterrows():
        assert r["gap_to_mtl_rel"] == pytest.approx(naive[(r["rep"], r["depth"], r["inner_time"])], rel=1e-14)


def test_depth_slope_and_its_interval_over_seeds(shaped):
    claims = claims_table(shaped)
    c1 = claims[(claims["claim"] == "C1") & (claims["inner_time"] == 0.01)].iloc[0]
    # each seed's slope is the same (a common factor), so the CI collapses onto the slope of
    # log(1/L + 0.005) on log L over the depths
    expected = np.polyfit(np.log(DEPTHS), np.log([bound_shaped(L, 0.01) for L in DEPTHS]), 1)[0]
    assert c1["estimate"] == pytest.approx(expected, rel=1e-9)
    assert c1["n"] == len(SEEDS)
    assert c1["verdict"] == "holds"
    c5 = claims[(claims["claim"] == "C5") & (claims["inner_time"] == 0.01)].iloc[0]
    assert c5["estimate"] == pytest.approx(expected, rel=1e-9)  # MAML's gap is half of ANIL's


def test_inner_time_fit_recovers_a_and_b(shaped):
    c2 = claims_table(shaped).query("claim == 'C2'").iloc[0]
    # gap = (1/L + 0.5 s)(1 + jitter): per seed a and b scale by (1 + jitter), whose mean is 1
    assert c2["estimate"] == pytest.approx(0.5, rel=1e-9)
    assert c2["ci95_low"] < 0.5 < c2["ci95_high"]
    assert "R^2 = 1.00" in c2["quality"]
    assert c2["verdict"] == "holds"


def test_bound_constant_is_the_largest_ratio(shaped):
    c3 = claims_table(shaped).query("claim == 'C3'").iloc[0]
    # the mean over seeds of gap / (s + 1/L) is (1/L + s/2) / (1/L + s) (the median task has spread 1)
    expected = max(bound_shaped(L, s) / (s + 1 / L) for L in DEPTHS for s in TIMES)
    assert c3["estimate"] == pytest.approx(expected, rel=1e-9)
    assert c3["verdict"] == "holds"


def test_benefit_and_the_depth_up_to_which_it_is_significant(shaped):
    b = benefit_table(shaped)
    mtl = b[(b["method"] == "mtl") & (b["inner_time"] == 0.01)].set_index("depth")
    for L in DEPTHS:
        # 1 - 0.5 (1 + j) averaged over the symmetric jitter
        assert mtl.loc[L, "benefit"] == pytest.approx(0.5 if L <= 4 else 0.0, abs=1e-12)
    assert mtl.loc[4, "ci95_low"] > 0 and mtl.loc[8, "ci95_low"] < 0 < mtl.loc[8, "ci95_high"]
    claims = claims_table(shaped)
    c6 = claims[(claims["claim"] == "C6") & (claims["method"] == "mtl")].iloc[0]
    assert c6["verdict"] == "holds" and "up to depth 4" in c6["detail"]
    c1 = claims[(claims["claim"] == "C1") & (claims["inner_time"] == 0.01)].iloc[0]
    assert c1["useful_up_to_depth"] == 4


def test_a_gap_that_grows_with_depth_fails_and_the_summary_says_where():
    rows = pd.concat([synthetic_rows(bound_shaped, useful_to_4, tasks="A"),
                      synthetic_rows(lambda L, s: 0.1 * math.sqrt(L) + s, lambda m, L: 1.2, tasks="B")])
    claims = claims_table(rows)
    c1 = claims[claims["claim"] == "C1"].set_index(["tasks", "inner_time"])["verdict"]
    assert (c1.loc["A"] == "holds").all() and (c1.loc["B"] == "fails").all()
    assert claims.query("claim == 'C3' and tasks == 'B'")["verdict"].iloc[0] == "fails"
    b6 = claims.query("claim == 'C6' and tasks == 'B'")
    assert len(b6) and (b6["verdict"] == "fails").all()  # worse than no transfer everywhere
    summary = overall(claims).set_index("claim")
    assert summary.loc["C1", "verdict"] == "depends"
    assert summary.loc["C1", "where"] == "holds on A; fails on B"
    matrix = verdict_matrix(claims, "C1").set_index("tasks")
    assert matrix.loc["A", "verdict"] == "holds (all 3)" and matrix.loc["B", "verdict"] == "fails (all 3)"


def _seed_slopes(rows: pd.DataFrame, spread: float) -> pd.DataFrame:
    """``rows`` with every GBML gap times ``L^(spread (seed - 2))``: the seeds' depth slopes are
    ``-2 spread .. 2 spread`` around the gap's own, their mean unchanged and their 95% CI widened."""
    gbml = rows["method"].isin(["anil", "maml"])
    factor = rows["depth"].astype(float) ** (spread * (rows["task_seed"] - 2))
    return rows.assign(gap_to_mtl_rel=rows["gap_to_mtl_rel"].where(~gbml, rows["gap_to_mtl_rel"] * factor))


def test_inconclusive_conditions_make_an_inconclusive_claim_not_a_failing_one():
    # C1 and C5: a flat gap whose per-seed slopes are -0.2 .. 0.2, so every CI contains 0; family B as A
    # but with a gap that falls (decided: holds)
    flat = _seed_slopes(synthetic_rows(lambda L, s: 0.3 + 0 * L, useful_to_4, tasks="A"), 0.1)
    falls = synthetic_rows(bound_shaped, useful_to_4, tasks="B")
    claims = claims_table(pd.concat([flat, falls]))
    for claim in ("C1", "C5"):
        a = claims.query(f"claim == '{claim}' and tasks == 'A'")
        assert (a["ci95_low"] < 0).all() and (a["ci95_high"] > 0).all()
        assert (a["verdict"] == "inconclusive").all()
    summary = overall(claims[claims["tasks"] == "A"]).set_index("claim")
    assert summary.loc["C1", "verdict"] == summary.loc["C5", "verdict"] == "inconclusive"
    assert summary.loc["C5", "fails"] == 0 and summary.loc["C5", "inconclusive"] == len(TIMES)
    both = overall(claims).set_index("claim")
    assert both.loc["C5", "verdict"] == "depends"
    assert both.loc["C5", "where"] == "holds on B; inconclusive on A"
    assert "fail" not in both.loc["C5", "where"]


def test_a_claim_whose_interval_cannot_be_formed_is_not_decided():
    # two depths: C3's trend over the deeper half is one depth, so no replicate has a slope (old rule: holds)
    rows = synthetic_rows(bound_shaped, useful_to_4)
    rows = rows[rows["depth"].isin([1, 2])]
    c3 = claims_table(rows).query("claim == 'C3'")
    assert (c3["verdict"] == "no data").all()
    assert overall(claims_table(rows)).set_index("claim").loc["C3", "verdict"] == "inconclusive"
    # one replicate: every claim is "no data", none decided
    one = synthetic_rows(bound_shaped, useful_to_4, test_tasks=1)
    one = one[one["task_seed"] == 0]
    assert set(claims_table(one)["verdict"]) == {"no data"}
    assert set(overall(claims_table(one))["verdict"]) == {"inconclusive"}
    assert "no data" in RULES["every"] and "inconclusive" in RULES["overall"]


def _finite_rows(exponent, noise, widths=(64, 128, 256, 512, 1024, 2048), networks=2) -> pd.DataFrame:
    """Finite-width rows whose distance is ``w^exponent`` times a fixed per-network, per-width factor
    ``exp(noise * z)`` (z: a fixed pattern of +-1, +-0.5)."""
    z = np.array([1.0, -1.0, 0.5, -0.5, -1.0, 1.0, -0.5, 0.5, 1.0, -1.0, 0.5, -0.5])
    rows, i = [], 0
    for w in widths:
        for net in range(networks):
            rows.append(dict(tasks="A", method="mtl", depth=1, mode="centred", width=float(w), seed=0, network=net,
                             status="ok", dist_to_infinite_rel=w ** exponent * math.exp(noise * z[i % len(z)])))
            i += 1
    return pd.DataFrame(rows)


@pytest.mark.parametrize("exponent, noise, verdict", [
    (-0.5, 0.02, "holds"),         # a tight CI around -1/2
    (-0.43, 0.6, "inconclusive"),  # contains -1/2 but also -1/4 (the old rule said holds)
    (-0.3, 0.02, "fails"),         # excludes -1/2 (the old rule said "weaker")
])
def test_c4_holds_only_when_its_interval_tells_minus_half_from_its_neighbours(shaped, exponent, noise, verdict):
    c4 = claims_table(shaped, _finite_rows(exponent, noise)).query("claim == 'C4'").iloc[0]
    assert c4["n"] == 12 and c4["verdict"] == verdict, c4.to_dict()
    if verdict == "inconclusive":
        assert c4["ci95_low"] < -0.5 < -0.25 < c4["ci95_high"]


def test_one_task_set_takes_its_statistics_over_test_tasks():
    rows = synthetic_rows(bound_shaped, useful_to_4, test_tasks=6)
    rows = rows[rows["task_seed"] == 0]
    c1 = claims_table(rows).query("claim == 'C1'").iloc[0]
    assert c1["n"] == 6


# -- end to end -------------------------------------------------------------------------------------
# the sizes of test_cli's sweeps, so that the suite compiles these programs once
SIZES = (("train_tasks", 3), ("test_tasks", 2), ("support", 3), ("query", 4), ("dim", 5))
TINY = Panel("tiny", families=(Family("subspace", SIZES), Family("common", SIZES)), seeds=(0, 1), depths=(1, 2, 4),
             inner_times=(0.1, 1.0),
             finite=tuple(dict(SIZES, family="subspace", mtl_data=("query",), test_heads=("learned",),
                               inner_times=(0.5,), methods=("mtl", "anil"), seeds=2, depths=(1,), widths=(8.0, 16.0),
                               outer_steps=3).items()))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("verify")
    return run_verify(TINY, str(out), command="test"), out


def test_panel_end_to_end(tiny_run):
    result, out = tiny_run
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["claim"]) == {"C1", "C2", "C3", "C4", "C5", "C6", "C7"}
    assert set(claims.query("claim == 'C7'")["tasks"]) == {"subspace", "common"}  # per family, ANIL and MAML
    assert len(claims.query("claim == 'C7'")) == 2 * 2
    assert set(claims.query("claim == 'C1'")["tasks"]) == {"subspace", "common"}
    assert set(claims["verdict"]) <= set(VERDICTS)
    # every condition of the panel: families x MTL data x protocols x inner times
    assert len(claims.query("claim == 'C1'")) == 2 * 2 * 2 * 2
    verdicts = pd.read_csv(out / "verdicts.csv")
    assert list(verdicts["claim"]) == ["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
    assert set(verdicts["verdict"]) <= set(OVERALL)
    for name in ("report.md", "report.html", "gaps.csv", "benefit.csv", "panel.json", "c1_gap_vs_depth.png"):
        assert (out / name).exists(), name
    for fam in ("subspace", "common"):
        for seed in (0, 1):
            assert (out / "runs" / f"{fam}-s{seed}" / "results.csv").exists()
    # the figures the report links exist
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", (out / "report.md").read_text()):
        assert (out / link).exists(), link


def test_report_page_is_self_contained(tiny_run):
    _, out = tiny_run
    page = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing fetched from elsewhere
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) >= 4
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    for claim in ("C1", "C2", "C3", "C4", "C5", "C6", "C7"):
        assert f">{claim} " in page


def test_rerun_recomputes_nothing_and_writes_the_same_claims(tiny_run, tmp_path):
    result, out = tiny_run
    before = (out / "claims.csv").read_bytes()
    cells = sorted(p.stat().st_mtime_ns for p in (out / "runs").rglob("cells/*"))
    again = run_verify(TINY, str(out), command="test")
    assert (out / "claims.csv").read_bytes() == before
    assert sorted(p.stat().st_mtime_ns for p in (out / "runs").rglob("cells/*")) == cells
    pd.testing.assert_frame_equal(again.verdicts, result.verdicts)


def test_claims_follow_the_rows_of_the_runs(tiny_run):
    """C1's estimate is recomputed here from the runs' own results.csv files."""
    result, out = tiny_run
    frames = [pd.read_csv(p) for p in sorted((out / "runs").glob("*-s*/results.csv"))]
    rows = pd.concat(frames)
    rows = rows[(rows["method"] == "anil") & (rows["tasks"] == "common") & (rows["mtl_data"] == "query")
                & (rows["test_head"] == "reset") & (rows["inner_time"] == 0.1) & (rows["status"] == "ok")]
    slopes = []
    for _, g in rows.groupby("task_seed"):
        med = g.groupby("depth")["gap_to_mtl_rel"].median()
        slopes.append(np.polyfit(np.log(med.index.to_numpy(float)), np.log(med.to_numpy()), 1)[0])
    c1 = result.claims.query("claim == 'C1' and tasks == 'common' and mtl_data == 'query' and "
                             "test_head == 'reset' and inner_time == 0.1").iloc[0]
    assert c1["estimate"] == pytest.approx(np.mean(slopes), rel=1e-10)


class _OneStream:
    """An executor computing units in this process, as a Dask worker would (each unit's task set built
    from its config), that records every ``map_units`` call."""

    def __init__(self):
        self.calls = []

    def map_units(self, units):
        from ntk_bridge import build
        from ntk_bridge.sweep import iter_unit

        units = list(units)
        self.calls.append(units)
        for unit in reversed(units):  # completion order is not submission order
            yield from iter_unit(unit, build.task_set(unit.config))


def test_an_executor_gets_the_whole_panel_in_one_submission_and_gives_the_same_bytes(tiny_run, tmp_path):
    """The in-process panel's folders with one cell file of every sweep deleted: on an executor the missing
    cells of all the sweeps (the finite panel's too) go out in one submission and come back byte for byte."""
    import shutil

    from ntk_bridge.verify.panel import run_panel, sweeps

    _, out = tiny_run
    labels = [label for label, _, _ in sweeps(TINY)] + ["finite"]  # (runs/beyond: C7's runs, not the panel's)
    for label in labels:
        shutil.copytree(out / "runs" / label, tmp_path / "runs" / label)
        (tmp_path / "runs" / label / "results.csv").unlink()
        sorted((tmp_path / "runs" / label / "cells").iterdir())[0].unlink()
    executor = _OneStream()
    infinite, finite = run_panel(TINY, str(tmp_path), executor=executor)
    assert len(executor.calls) == 1  # one submission for every sweep
    assert len({u.config for u in executor.calls[0]}) == len(labels)
    assert sum(len(u.cells) for u in executor.calls[0]) == len(labels)  # only the missing cells
    files = sorted(p.relative_to(out) for label in labels for p in (out / "runs" / label).rglob("*.csv"))
    assert len(files) > 2 * len(labels)
    for rel in files:  # every cell file and results.csv, byte for byte
        assert (tmp_path / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert set(infinite["tasks"]) == {"subspace", "common"} and len(finite) > 0
    again = _OneStream()
    run_panel(TINY, str(tmp_path), executor=again)
    assert again.calls == []  # a rerun finds every cell and submits nothing


# -- the command line ---------------------------------------------------------------------------------
def test_verify_on_a_tasks_file(tmp_path, capsys):
    path = tmp_path / "mine.npz"
    subspace_tasks(seed=3, n_train=3, n_test=3, n_support=3, n_query=4, dim=5).save(path)
    out = tmp_path / "v"
    code = main(["verify", "--quick", "--no-finite", "--tasks", str(path), "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    claims = pd.read_csv(out / "claims.csv")
    assert set(claims["claim"]) == {"C1", "C2", "C3", "C5", "C6", "C7"}  # no finite panel: no C4
    assert set(claims["tasks"]) == {"mine"}
    assert (claims.query("claim == 'C1'")["n"] == 3).all()  # statistics over the file's 3 test tasks
    assert "C1 depth" in printed.out and "report.html" in printed.out


def test_verify_refuses_a_task_file_with_one_test_task(tmp_path, capsys):
    path = tmp_path / "one.npz"
    subspace_tasks(seed=3, n_train=3, n_test=1, n_support=3, n_query=4, dim=5).save(path)
    code = main(["verify", "--quick", "--no-finite", "--tasks", str(path), "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error:") and "1 test task" in err and "at least 2" in err
    assert not (tmp_path / "v" / "verdicts.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "nosuch.npz"], "file not found"),
    (["--tasks", "subspace,nosuch"], "nosuch is not a task family"),
    (["--tasks", ","], "give a task file or a comma list"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--workers", "2", "--scheduler", "tcp://h:1"], "either --scheduler or --workers"),
])
def test_verify_user_errors(argv, message, tmp_path, capsys):
    code = main(["verify", "--out", str(tmp_path / "v"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_families_select_the_panel():
    from ntk_bridge.verify import QUICK
    from ntk_bridge.verify.panel import select

    panel = select(QUICK, "linear,kanji")
    assert [f.name for f in panel.families] == ["linear", "kanji"] and panel.seeds == QUICK.seeds
    assert dict(panel.families[1].sizes)["dim"] == 49


def test_quick_and_full_panels_are_what_the_issue_promises():
    from ntk_bridge.verify import FULL, QUICK

    assert len(FULL.seeds) >= 5 and {"subspace", "linear", "sinusoid", "common", "kanji"} == {
        f.name for f in FULL.families}
    for panel in (FULL, QUICK):
        assert set(panel.test_heads) == {"learned", "reset"} and set(panel.mtl_data) == {"all", "query"}
        assert registry.MAML.name in panel.methods
        assert len(panel.inner_times) >= 2 and dict(panel.finite)["widths"]
