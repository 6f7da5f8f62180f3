"""Claim C7's rule (ntk_bridge.verify.beyond) on rows built by hand: the ratio of the limits' gaps and
the muP limit's benefit decide the verdict as the stated rule says."""
import numpy as np
import pandas as pd

from ntk_bridge.verify.beyond import C7_RULE, c7_rows


def _rows(gap, mse, seed):
    """Result rows of one limit and task seed: three test tasks, MTL / ANIL / MAML / the baseline."""
    out = []
    for method in ("mtl", "anil", "maml", "baseline"):
        for t in range(3):
            out.append(dict(method=method, test_task=t, task_seed=seed, status="ok", inner_time=1.0, tasks="subspace",
                            gap_to_mtl_rel=0.0 if method == "mtl" else gap * (1 + 0.01 * t + 0.02 * seed),
                            test_mse=1.0 if method == "baseline" else mse, test_accuracy=np.nan))
    return pd.DataFrame(out)


def _verdicts(mup_gap, ntk_gap, mup_mse):
    frames = {}
    for seed in range(3):
        frames[("subspace", seed, "mup")] = _rows(mup_gap, mup_mse, seed)
        frames[("subspace", seed, "ntk")] = _rows(ntk_gap, 0.5, seed)
    return {r["method"]: r for r in c7_rows(frames)}


def test_c7_holds_fails_inconclusive_by_the_stated_rule():
    held = _verdicts(0.1, 0.3, 0.2)  # gaps a third, benefit 0.8
    assert held["anil"]["verdict"] == "holds" and abs(held["anil"]["estimate"] - 1 / 3) < 1e-9
    assert _verdicts(0.6, 0.3, 0.2)["maml"]["verdict"] == "fails"  # gaps doubled, useful predictors
    assert _verdicts(0.1, 0.3, 1.5)["anil"]["verdict"] == "inconclusive"  # worse than no transfer
    assert "holds" in C7_RULE and "fails" in C7_RULE and "inconclusive" in C7_RULE
