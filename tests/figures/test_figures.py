"""ntk_bridge.figures: tables equal to quartiles computed directly, each closed form counted once,
figures written with their tables, plain tick labels on log axes."""
import math

import numpy as np
import pandas as pd
import pytest

from ntk_bridge import figures as figs


def test_gap_vs_depth_table_is_quartiles_of_the_ok_rows_and_plots(tmp_path, rng):
    rows = pd.DataFrame([dict(method=m, mtl_data="all", test_head="learned", inner_time=0.1, finetune_time=1.0, outer_time=math.inf,
                              depth=L, width=math.inf, network="mean", test_task=t, status="ok",
                              gap_to_mtl_rel=float(rng.uniform(0.1, 1)), test_mse=float(rng.uniform(0.1, 1)))
                         for m in ("mtl", "anil", "baseline") for L in (1, 2, 4) for t in range(7)])
    rows.loc[0, "status"] = "ridge"  # flagged rows never reach a figure's table
    table = figs.gap_vs_depth_table(rows)
    ok = rows[rows["status"] == "ok"]
    for (m, L), g in ok.groupby(["method", "depth"]):
        r = table[(table["method"] == m) & (table["depth"] == L)].iloc[0]
        assert r["n"] == len(g)
        np.testing.assert_allclose([r["gap_to_mtl_rel_q25"], r["gap_to_mtl_rel_q50"], r["gap_to_mtl_rel_q75"]],
                                   np.quantile(g["gap_to_mtl_rel"], [0.25, 0.5, 0.75]), rtol=1e-12)
    paths = figs.plot_gap_vs_depth(table, str(tmp_path / "gap"))
    assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "pdf", "csv"]
    assert all((tmp_path / f"gap.{ext}").stat().st_size > 0 for ext in ("png", "pdf", "csv"))
    # the CSV read back is the table (to the 6 significant digits it is written with)
    back = pd.read_csv(tmp_path / "gap.csv")
    assert list(back.columns) == list(table.columns) and len(back) == len(table)
    for c in table.columns:
        if pd.api.types.is_numeric_dtype(table[c]):
            np.testing.assert_allclose(back[c], table[c], rtol=1e-5, err_msg=c)
        else:
            assert list(back[c].astype(str)) == list(table[c].astype(str)), c


def test_log_axes_have_plain_tick_labels():
    plt = figs.style.pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [0.02, 0.1, 0.5])
    figs.log_y(ax)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert labels and not any("$" in label or "times" in label for label in labels), labels


def test_finite_gap_table_counts_each_closed_form_once():
    """Centred networks share one closed form per test task; raw networks each have their own."""
    rows = []
    for mode in ("centred", "raw"):
        for width in (16, 32):
            for net in (0, 1):
                for task in (0, 1):
                    own = 0.1 * (task + 1) + (0.01 * (net + 1) + 0.001 * width if mode == "raw" else 0.0)
                    rows.append(dict(method="anil", mtl_data="query", test_head="learned", inner_time=0.1, finetune_time=1.0,
                                     outer_time=float("inf"), depth=1, width=width, network=net, test_task=task,
                                     mode=mode, status="ok", gap_to_mtl_rel=0.5, infinite_gap_to_mtl_rel=own))
    df = pd.DataFrame(rows)
    centred = figs.finite_gap_vs_depth_table(df[df["mode"] == "centred"])
    assert centred["infinite_gap_to_mtl_rel_q25"].iloc[0] == pytest.approx(0.125)  # quartile of {0.1, 0.2}
    raw = df[df["mode"] == "raw"]
    table = figs.finite_gap_vs_depth_table(raw)
    assert table["infinite_gap_to_mtl_rel_q50"].iloc[0] == pytest.approx(raw["infinite_gap_to_mtl_rel"].median())


@pytest.mark.parametrize("quick", [True, False])
def test_every_figure_has_its_grid_and_one_signature(quick):
    """The figure registry's settings build for both modes (nothing is computed), and every figure
    is called the same way, so ``make_figures`` has no special case."""
    import inspect

    from ntk_bridge.paper_figures import FIGURES, grids

    g = grids(quick)
    assert set(g.conv) == {"fc", "conv", "resnet"}
    assert all(cfg.model.arch == arch and cfg.tasks.family == "kanji" for arch, cfg in g.conv.items())
    if quick:
        assert len(g.conv["fc"].grid.depths) < len(grids(False).conv["fc"].grid.depths)
    for name, fn in FIGURES.items():
        assert list(inspect.signature(fn).parameters) == ["g", "run_root", "out"], name


def test_finite_regimes_table_is_quartiles_of_individual_networks_and_plots(tmp_path, rng):
    from ntk_bridge.figures.regimes import finite_regimes_table, plot_finite_regimes_vs_width
    from ntk_bridge.results import width_exponents

    cols = ("gap_to_mtl_rel", "kernel_movement", "dist_to_infinite_rel", "test_mse")

    def rows(param):
        out = []
        for L in (1, 2):
            for w, nets in ((64.0, ("0", "1", "ensemble")), (256.0, ("0", "1", "ensemble")), (math.inf, ("mean",))):
                for net in nets:
                    for t in range(3):
                        out.append(dict(method="anil", depth=L, width=w, network=net, seed=0, test_task=t, status="ok",
                                        **{c: float(rng.uniform(0.1, 1)) for c in cols}))
        return pd.DataFrame(out)

    frames = {"ntk": rows("ntk"), "mup": rows("mup")}
    frames["mup"].loc[0, "status"] = "diverged"  # flagged rows never reach the table
    table = finite_regimes_table(frames)
    for param, df in frames.items():
        ok = df[(df["status"] == "ok") & ~df["network"].isin(["ensemble", "mean"])]
        for (L, w), g in ok.groupby(["depth", "width"]):
            row = table[(table["param"] == param) & (table["source"] == "finite") & (table["depth"] == L)
                        & (table["width"] == w)]
            for c in cols:
                assert row[f"{c}_q50"].iloc[0] == pytest.approx(g[c].median())
        fit = width_exponents(df, metric="kernel_movement", by=("depth",))
        got = table[(table["param"] == param) & (table["source"] == "finite")].groupby("depth")[
            "kernel_movement_exponent"].first()
        assert np.allclose(got.sort_index().to_numpy(), fit.sort_values("depth")["exponent"].to_numpy())
        lim = table[(table["param"] == param) & (table["source"] == "ntk_limit")]
        assert set(lim["width"]) == {math.inf} and len(lim) == 2
    paths = plot_finite_regimes_vs_width(table, str(tmp_path / "regimes"), "ANIL")
    assert all(p.endswith(ext) for p, ext in zip(paths, (".png", ".pdf", ".csv")))


def test_closeness_by_schedule_takes_each_schedule_s_rows(rng):
    from ntk_bridge.figures.feature import closeness_by_schedule

    rows = []
    for width in ("mup", "inf"):
        for t in range(5):
            rows.append(dict(method="baseline", width=width, inner_time=np.nan, outer_time=np.nan, test_task=t,
                             status="ok", test_mse=1.0, gap_to_mtl_rel=0.0, test_accuracy=np.nan))
            for ot in (1.0, 5.0):
                rows.append(dict(method="mtl", width=width, inner_time=np.nan, outer_time=ot, test_task=t, status="ok",
                                 test_mse=0.5, gap_to_mtl_rel=0.0, test_accuracy=np.nan))
                for lt in (0.1, 1.0):
                    bad = width == "mup" and ot == 5.0 and lt == 0.1
                    rows.append(dict(method="anil", width=width, inner_time=lt, outer_time=ot, test_task=t,
                                     status="diverged" if bad else "ok", test_mse=float(rng.uniform(0.1, 0.9)),
                                     gap_to_mtl_rel=float(rng.uniform(0.1, 0.9)), test_accuracy=np.nan))
    df = pd.DataFrame(rows)
    table = closeness_by_schedule(df).set_index(["inner_time", "outer_time"])
    assert len(table) == 4
    for (lt, ot), row in table.iterrows():
        for width, col in (("mup", "gap_mup"), ("inf", "gap_ntk")):
            g = df[(df["method"] == "anil") & (df["width"] == width) & (df["inner_time"] == lt)
                   & (df["outer_time"] == ot)]
            if (g["status"] == "ok").all():
                assert row[col] == pytest.approx(g["gap_to_mtl_rel"].median())
                assert row[col.replace("gap", "benefit")] == pytest.approx(np.median(1 - g["test_mse"]))
            else:
                assert np.isnan(row[col]) and row["mup_status"] == "diverged"
        assert row["mtl_benefit_mup"] == pytest.approx(0.5)
