"""ntk_bridge.metrics: the row builder against direct computations, the status rules, the schema."""
import numpy as np
import pytest

from ntk_bridge.metrics import NAMES, STATUSES, prediction_rows, status_of, with_mtl_status
from ntk_bridge.predictors import Diagnostics


def test_rows_equal_direct_computations(rng):
    R, M, q, k = 3, 4, 5, 2
    values = {m: rng.standard_normal((R, M, q, k)) for m in ("mtl", "baseline", "anil")}
    y = rng.standard_normal((M, q, k))
    status = {m: ["ok"] * R for m in values}
    rows = prediction_rows(values, status, y, [0, 1, "ensemble"], dict(depth=3, width=64.0), report=("anil",))
    assert list(rows.columns) == NAMES and len(rows) == R * M and set(rows["method"]) == {"anil"}
    r = rows[(rows["network"] == 1) & (rows["test_task"] == 2)].iloc[0]
    v, g, b = values["anil"][1, 2], values["mtl"][1, 2], values["baseline"][1, 2]
    assert r["gap_to_mtl_rel"] == pytest.approx(np.sqrt(np.sum((v - g) ** 2) / np.sum(g ** 2)), rel=1e-13)
    assert r["gap_to_baseline_rel"] == pytest.approx(np.sqrt(np.sum((v - b) ** 2) / np.sum(b ** 2)), rel=1e-13)
    assert r["gap_to_mtl_abs"] == pytest.approx(np.sqrt(np.mean((v - g) ** 2)), rel=1e-13)
    assert r["pred_rms"] == pytest.approx(np.sqrt(np.mean(v ** 2)), rel=1e-13)
    assert r["test_mse"] == pytest.approx(np.mean((v - y[2]) ** 2), rel=1e-13)
    assert (r["depth"], r["width"]) == (3, 64.0)
    # every row against a loop over (network, test task) with numpy's Frobenius norm
    v, g = values["anil"], values["mtl"]
    loop_rel = [np.linalg.norm(v[i, j] - g[i, j]) / np.linalg.norm(g[i, j]) for i in range(R) for j in range(M)]
    loop_rms = [np.linalg.norm(v[i, j]) / np.sqrt(q * k) for i in range(R) for j in range(M)]
    np.testing.assert_allclose(rows["gap_to_mtl_rel"], loop_rel, rtol=1e-13)
    np.testing.assert_allclose(rows["pred_rms"], loop_rms, rtol=1e-13)


@pytest.mark.parametrize("shape", [(620, 10, 1), (3, 20, 15, 5), (1, 2000, 10), (0, 4, 2)])
def test_batched_norms_and_mse_are_the_per_matrix_loop_bit_for_bit(shape, rng):
    """The vectorised per-task metrics equal one numpy call per matrix exactly (the numbers of every
    earlier results table came from that loop)."""
    from ntk_bridge.metrics import _mse, _norms

    a, y = 3.7 * rng.standard_normal(shape), rng.standard_normal(shape)
    flat, fy = a.reshape(-1, *shape[-2:]), y.reshape(-1, *shape[-2:])
    loop_norm = np.array([np.linalg.norm(x) for x in flat]).reshape(shape[:-2])
    loop_mse = np.array([float(np.mean((x - t) ** 2)) for x, t in zip(flat, fy)]).reshape(shape[:-2])
    assert np.array_equal(_norms(a), loop_norm)
    assert np.array_equal(_mse(a, y), loop_mse)


def test_status_rules():
    ok = Diagnostics(0.1, 0.0, 10.0, True)
    assert status_of(ok) == "ok"
    assert status_of(ok._replace(finite=False)) == "nonfinite"
    assert status_of(ok._replace(min_eig_rel=-1e-6)) == "not_psd"
    assert status_of(ok._replace(ridge_rel=1e-10)) == "ridge"
    assert with_mtl_status("ok", "diverged") == "mtl_diverged"
    assert with_mtl_status("ridge", "diverged") == "ridge"  # its own trouble comes first
    assert "mtl_<status>" in STATUSES


def test_a_row_inherits_mtls_trouble_and_bad_rows_have_no_numbers(rng):
    R, M = 2, 3
    values = {m: rng.standard_normal((R, M, 4, 1)) for m in ("mtl", "baseline", "anil")}
    values["anil"][1] = np.nan
    status = {"mtl": ["diverged", "ok"], "baseline": ["ok", "ok"], "anil": ["ok", "diverged"]}
    rows = prediction_rows(values, status, None, [0, 1], {}, report=("anil",)).set_index(["network", "test_task"])
    assert set(rows.loc[0, "status"]) == {"mtl_diverged"} and set(rows.loc[1, "status"]) == {"diverged"}
    assert rows.loc[1, ["pred_rms", "gap_to_mtl_rel", "test_mse"]].isna().all().all()
    assert rows.loc[0, "pred_rms"].notna().all()
