"""ntk_bridge.results: rate fits against scipy and exact power laws, slopes and baseline tables from
synthetic rows whose answers are known."""
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from ntk_bridge.results import baseline_table, depth_ranges, depth_slopes, fit_power_law, width_exponents


def test_fit_power_law_matches_scipy_and_recovers_a_known_exponent(rng):
    x = np.repeat([64.0, 128, 256, 512, 1024], 8)
    y = 3.0 * x ** -0.5 * np.exp(0.1 * rng.standard_normal(x.size))
    p, lo, hi, n = fit_power_law(x, y)
    ref = scipy.stats.linregress(np.log(x), np.log(y))
    half = scipy.stats.t.ppf(0.975, x.size - 2) * ref.stderr
    assert n == x.size
    np.testing.assert_allclose([p, lo, hi], [ref.slope, ref.slope - half, ref.slope + half], rtol=1e-12)
    assert lo < -0.5 < hi
    # non-finite and non-positive points are dropped; too few points give NaN
    p2, _, _, n2 = fit_power_law(np.append(x, [1.0, 2.0]), np.append(y, [np.nan, -1.0]))
    assert n2 == x.size and p2 == pytest.approx(p)
    assert math.isnan(fit_power_law([1.0, 2.0], [1.0, 0.5])[1])
    assert math.isnan(fit_power_law([1.0], [1.0])[0])


def rows(gap_of_depth, method="anil", status="ok", **fixed):
    base = dict(width=math.inf, inner_time=0.1, finetune_time=1.0, outer_time=math.inf, mtl_data="all", test_head="learned",
                network="mean", test_mse=np.nan)
    base.update(fixed)
    return [dict(base, method=method, depth=L, test_task=t, gap_to_mtl_rel=gap_of_depth(L) * (1 + 0.1 * t),
                 status=status) for L in (1, 2, 4, 8, 16) for t in range(3)]


def test_depth_slopes_of_exact_power_laws_and_flagged_rows_left_out():
    df = pd.DataFrame(rows(lambda L: 2.0 / L) + rows(lambda L: 0.3 * L ** -0.5, inner_time=1.0)
                      + rows(lambda L: 5.0, method="maml", status="ridge"))
    s = depth_slopes(df).set_index("inner_time")
    assert s.loc[0.1, "slope"] == pytest.approx(-1.0, abs=1e-12)
    assert s.loc[1.0, "slope"] == pytest.approx(-0.5, abs=1e-12)
    assert set(depth_slopes(df)["method"]) == {"anil"}  # the flagged MAML rows enter no fit


def test_baseline_table_and_depth_ranges():
    assert depth_ranges([2, 3, 4, 8, 9, 12]) == "2..4, 8..9, 12" and depth_ranges([]) == "none"
    # ranges are of consecutive integers: depths 2 and 4 of a geometric grid are listed apart
    mse = {1: 0.5, 2: 0.3, 4: 0.1, 8: 0.35, 16: 0.2}
    df = pd.DataFrame([dict(method=m, depth=L, test_task=0, width=math.inf, inner_time=0.1, finetune_time=1.0,
                            outer_time=math.inf, mtl_data="all", test_head="learned", network="mean", status="ok",
                            test_mse=(mse[L] if m == "anil" else 0.32))
                       for m in ("anil", "baseline") for L in mse])
    (row,) = baseline_table(df).to_dict("records")
    assert row["depths_beating_baseline"] == "2, 4, 16" and row["deepest_beating_baseline"] == 16
    assert row["mse_min_depth"] == 0.5 and row["baseline_max_depth"] == 0.32


def test_width_exponents_of_an_exact_power_law_one_point_per_network():
    df = pd.DataFrame([dict(method="mtl", depth=1, mode="centred", width=w, seed=0, network=net, test_task=t,
                            status="ok",
                            dist_to_infinite_rel=1e9 if net == "ensemble" else (1 + net) * w ** -0.5 * (1 + 0.01 * t))
                       for w in (64, 128, 256) for net in (0, 1, "ensemble") for t in range(2)])  # ensembles: not fitted
    (fit,) = width_exponents(df).to_dict("records")
    assert fit["n"] == 6  # 3 widths x 2 networks, the test tasks of a network averaged
    # each network's points lie on its own exact line: the pooled slope is still -1/2
    assert fit["exponent"] == pytest.approx(-0.5, abs=1e-12)
