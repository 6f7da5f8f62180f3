"""Short training runs: every method learns on a tiny kanji subset; dtypes, early stopping, budget split."""
import jax
import numpy as np
import pytest

from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.data import KanjiConfig, load_digits_dataset, load_kanji
from ntk_bridge.fewshot.evaluate import mean_ci95
from ntk_bridge.fewshot.experiment import ExperimentConfig, run_experiment
from ntk_bridge.fewshot.models import ModelConfig
from ntk_bridge.fewshot.train import TrainConfig, default_method_config, evaluate_split, train

SMALL_CONV = ModelConfig(width=16)
SMALL_MLP = ModelConfig("mlp", 32, 1)


@pytest.fixture(scope="module")
def tiny_kanji(tmp_path_factory):
    """60 rendered characters (42 / 6 / 12 classes), 20 samples each, in a private cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NTK_BRIDGE_CACHE", str(tmp_path_factory.mktemp("cache")))
        return load_kanji(KanjiConfig(max_classes=60))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mtl", "anil", "maml"])
def test_each_method_learns_and_beats_chance_clearly(tiny_kanji, method):
    """5-way 1-shot after 50 outer steps (training episodes with 5 queries per class, to be quick).
    Chance is 20%; the untrained network (random features) is already above it for MTL and ANIL, so
    training must also lower the loss. Test accuracy over 40 episodes x 75 queries has a standard
    error of about 2 points; the floor of 40% leaves several standard errors below what the methods
    reach here (about 55-75%). Parameters must stay float32 although float64 is enabled."""
    config = default_method_config(method, train_queries=5)
    run = TrainConfig(budget_seconds=0, max_steps=50, checkpoints=2, val_episodes=10)
    net, result = train(config, run, SMALL_CONV, tiny_kanji, ways=5, shots=1)
    assert result.stopped == "max_steps" and result.steps == 50
    first_half, second_half = result.history[1]["train_loss"], result.history[2]["train_loss"]
    assert second_half < first_half, result.history
    assert {np.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(result.params)} == {np.dtype("float32")}
    acc, _ = evaluate_split(net, config, result.params, tiny_kanji.splits["test"], 5, 1, episodes=40, seed=0)
    mean, ci = mean_ci95(acc)
    assert mean > 0.40, (method, mean, ci)


def test_parameters_stay_float32_and_plateau_stops_early():
    """With a learning rate of 1e-12 nothing changes, validation accuracy never improves after the first
    checkpoint, and with patience 1 and no learning-rate drops allowed the run stops at the second."""
    digits = load_digits_dataset()
    config = default_method_config("anil", lr=1e-12)
    run = TrainConfig(budget_seconds=0, max_steps=50, checkpoints=10, val_episodes=5, plateau_patience=1, max_lr_drops=0)
    _, result = train(config, run, SMALL_MLP, digits, ways=3, shots=1)
    assert result.stopped == "converged" and result.steps == 5 and len(result.history) == 2
    assert {np.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(result.params)} == {np.dtype("float32")}


def test_budget_split_and_paired_tables():
    """Budget: equal per shot setting, then remaining / methods left; every run here stops at its step
    cap, so each later run inherits what the earlier ones left."""
    digits = load_digits_dataset()
    methods = tuple(default_method_config(m) for m in ("mtl", "anil"))
    config = ExperimentConfig(ways=3, shots=(1, 2), methods=methods, model=SMALL_MLP, budget_seconds=600.0,
                              max_steps=3, test_episodes=10, val_episodes=3, checkpoints=1)
    tables = run_experiment(config, digits)
    budgets = [a["budget_seconds"] for a in tables.allocations]
    used = tables.results.dropna(subset=["steps"]).query("method != 'nn-pixels'")["train_seconds"].to_numpy()
    assert budgets[0] == pytest.approx(150.0)
    assert budgets[1] == pytest.approx(300 - used[0])
    assert budgets[2] == pytest.approx((600 - used[:2].sum()) / 2)
    assert budgets[3] == pytest.approx(600 - used[:3].sum())
    results = tables.results
    assert list(results["method"]) == ["nn-pixels", "mtl", "anil"] * 2
    assert np.allclose(results.loc[results.method == "mtl", "diff_vs_mtl"], 0.0)
    assert len(tables.episodes) == 2 * 3 * 10 and len(tables.curves) == 2 * 2 * 2
    with pytest.raises(UserError):
        ExperimentConfig(methods=(), budget_seconds=1.0)
