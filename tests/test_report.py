"""ntk_bridge.report: every varying grid dimension is a column, no two rows look alike."""
import numpy as np
import pytest

from ntk_bridge import sweep as sw
from ntk_bridge.report import DIMENSIONS, fmt, markdown, summary_markdown, sweep_tables

SMALL = dict(depths=(1, 2, 4), inner_times=(0.1, 1.0), mtl_data=("all", "query"), train_tasks=3, test_tasks=2,
             support=3, query=4, dim=5)


@pytest.fixture(scope="module")
def df(tmp_path_factory):
    return sw.run_sweep(sw.SweepConfig.of(**SMALL), str(tmp_path_factory.mktemp("run")), figures=False)


def shown(table):
    return [tuple(fmt(r[c]) for c in table.columns) for _, r in table.frame.iterrows()]


def test_varying_dimensions_are_columns_and_rows_are_distinct(df):
    tables = sweep_tables(df)
    assert [t.title.split(":")[0] for t in tables] == ["gap to MTL vs depth", "test error against the no-transfer baseline"]
    for t in tables:
        rows = shown(t)
        assert len(rows) == len(set(rows)), t.title
        headers = set(t.columns.values())
        assert {DIMENSIONS["inner_time"], DIMENSIONS["mtl_data"]} <= headers, t.title
        assert DIMENSIONS["width"] not in headers and "width inf" in t.note  # constant: said once
    slopes = tables[0]
    # one row per (GBML method, inner time, MTL data): 2 x 2 x 2
    assert len(slopes.frame) == 8
    baseline = tables[1]
    # MTL once per MTL data (not per inner time), ANIL and MAML once per inner time (not per MTL data)
    assert sorted(shown(baseline))[0][0] == "anil"
    counts = baseline.frame["method"].value_counts().to_dict()
    assert counts == {"mtl": 2, "anil": 2, "maml": 2}


def test_summary_has_the_same_tables_as_the_console(df):
    text = summary_markdown(df, "ntk-bridge sweep", sw.SweepConfig().to_dict())
    for t in sweep_tables(df):
        assert markdown(t) in text
    # each slope row against the ok rows directly: the median gap over test tasks per depth, its
    # least-squares log-log slope and its first and last values
    ok = df[df["status"] == "ok"]
    for (m, tau, data), g in ok[ok["method"].isin(["anil", "maml"])].groupby(["method", "inner_time", "mtl_data"]):
        med = g.groupby("depth")["gap_to_mtl_rel"].median().sort_index()
        slope = np.polyfit(np.log(med.index.to_numpy(float)), np.log(med.to_numpy()), 1)[0]
        row = f"| {m} | {tau:.3g} | {data} | {slope:.3g} |"
        assert row in text, row
        assert f"| {med.iloc[0]:.3g} | {med.iloc[-1]:.3g} |" in text.split(row, 1)[1].split("\n", 1)[0], row
