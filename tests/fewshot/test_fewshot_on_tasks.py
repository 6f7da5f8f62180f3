"""The few-shot networks on a task set's own episodes (``ntk-bridge fewshot --tasks-of``).

Independent checks: the episodes are the task set's arrays (compared element by element), the
validation episodes are prepared images of the validation classes, the networks are scored on the
task set's test episodes (1-NN and a trained ProtoNet re-scored by a naive loop over the task set's
own arrays), and the paired comparison equals a hand computation.
"""
import json

import numpy as np
import pandas as pd
import pytest

from ntk_bridge.cli import main
from ntk_bridge.datasets.loaders import load_digits_dataset
from ntk_bridge.errors import UserError
from ntk_bridge.families import _downsample, image_tasks, image_validation_episodes
from ntk_bridge.fewshot.experiment import config_for, run_experiment
from ntk_bridge.fewshot.methods import default_method_config
from ntk_bridge.fewshot.models import ModelConfig
from ntk_bridge.fewshot.on_tasks import closed_form_comparison, task_episodes
from ntk_bridge.fewshot.train import FixedSource, TrainConfig, train
from ntk_bridge.tasks import TaskSet, on_sphere


SIZES = dict(n_train=6, n_test=4, n_support=3, n_query=6, dim=16, ways=3)  # 3-way 1-shot, 2 queries per class


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


@pytest.fixture(scope="module")
def tasks(digits):
    return image_tasks(digits, seed=3, name="digits", **SIZES)


def test_the_episodes_are_the_task_sets_own_arrays(tasks):
    ep = task_episodes(tasks, val_tasks=2)
    assert (ep.ways, ep.shots, ep.queries, ep.image_shape) == (3, 1, 2, (4, 4, 1))
    n = 4  # 6 training tasks, the last 2 held out for validation
    np.testing.assert_array_equal(ep.train.support_x.reshape(n, 3, 16), tasks.train_support_x[:n].astype(np.float32))
    np.testing.assert_array_equal(ep.train.query_x.reshape(n, 6, 16), tasks.train_query_x[:n].astype(np.float32))
    np.testing.assert_array_equal(ep.val.support_x.reshape(2, 3, 16), tasks.train_support_x[n:].astype(np.float32))
    np.testing.assert_array_equal(ep.test.query_x.reshape(4, 6, 16), tasks.test_query_x.astype(np.float32))
    for e in range(n):  # labels are the targets' argmax; one head (3 rows) per training task
        np.testing.assert_array_equal(ep.train.support_y[e], np.argmax(tasks.train_support_y[e], -1))
        np.testing.assert_array_equal(ep.train.classes[e], [3 * e, 3 * e + 1, 3 * e + 2])
    np.testing.assert_array_equal(ep.test.query_y, np.argmax(tasks.test_query_y, -1))
    assert "last 2" in ep.validation


def test_validation_episodes_are_prepared_images_of_the_validation_classes(digits):
    sx, sy, qx, qy = image_validation_episodes(digits, seed=3, n_val=5, n_support=3, n_query=6, dim=16, ways=3)
    assert sx.shape == (5, 3, 16) and qy.shape == (5, 6, 3)
    val = _downsample(digits.splits["val"][..., 0], 4).reshape(*digits.splits["val"].shape[:2], 16)
    prepared = on_sphere(val - val.mean(-1, keepdims=True))  # [classes, samples, 16] as image_tasks prepares them
    seen = set()
    for e in range(5):
        x = np.concatenate([sx[e], qx[e]])
        y = np.argmax(np.concatenate([sy[e], qy[e]]), -1)
        classes = []
        for xi, yi in zip(x, y):
            c, s = np.argwhere(np.isclose(prepared, xi).all(-1))[0]
            assert (c, s) not in seen  # no image twice
            seen.add((c, s))
            classes.append((yi, c))
        assert len({c for _, c in classes}) == 3 and len(set(classes)) == 3  # each label one class
    # a different stream from the task set's: the training tasks' images are not among them
    train = image_tasks(digits, seed=3, **SIZES)
    assert not np.isin(train.train_support_x[0, 0], sx).all()


def test_regression_tasks_and_flat_inputs_are_user_errors(tasks):
    regression = TaskSet(*(np.asarray(getattr(tasks, k)) * (1.5 if k.endswith("_y") else 1.0) for k in
                           ("train_support_x", "train_support_y", "train_query_x", "train_query_y", "test_support_x",
                            "test_support_y", "test_query_x", "test_query_y")), image_shape=(4, 4, 1))
    with pytest.raises(UserError, match="classification"):
        task_episodes(regression, val_tasks=1)
    flat = TaskSet(*(tasks.arrays()[k] for k in ("train_support_x", "train_support_y", "train_query_x",
                                                "train_query_y", "test_support_x", "test_support_y", "test_query_x",
                                                "test_query_y")))
    with pytest.raises(UserError, match="image tasks"):
        task_episodes(flat, val_tasks=1)
    with pytest.raises(UserError, match="--val-tasks"):
        task_episodes(tasks, val_tasks=6)


def test_fixed_source_batches_are_whole_training_episodes(tasks):
    ep = task_episodes(tasks, val_tasks=2)
    source = FixedSource(ep.train, ep.val, ep.image_shape)
    rng = np.random.default_rng(0)
    mtl, anil = default_method_config("mtl", meta_batch=3), default_method_config("anil", meta_batch=3)
    x, y, classes = source.training_batch(mtl, 3, 1, rng)
    assert x.shape == (3, 9, 4, 4, 1) and classes.shape == (3, 3)
    picked = classes[:, 0] // 3
    assert len(set(picked)) == 3  # distinct episodes within a step
    for b, e in enumerate(picked):  # support then query of the picked episode, its own head rows
        np.testing.assert_array_equal(x[b], np.concatenate([ep.train.support_x[e], ep.train.query_x[e]]))
        np.testing.assert_array_equal(y[b], np.concatenate([ep.train.support_y[e], ep.train.query_y[e]]))
    sx, sy, qx, qy = source.training_batch(anil, 3, 1, np.random.default_rng(0))
    np.testing.assert_array_equal(sx, ep.train.support_x[picked])  # the same draw: the same episodes, unmerged
    np.testing.assert_array_equal(qy, ep.train.query_y[picked])
    assert sx.shape == (3, 3, 4, 4, 1) and qx.shape == (3, 6, 4, 4, 1)
    big = default_method_config("anil", meta_batch=9)  # more than the 4 episodes: drawn with replacement
    assert source.training_batch(big, 3, 1, rng)[0].shape[0] == 9


def _naive_nn_accuracy(tasks: TaskSet) -> np.ndarray:
    out = []
    for e in range(tasks.test_support_x.shape[0]):
        s, q = tasks.test_support_x[e], tasks.test_query_x[e]
        sl, ql = np.argmax(tasks.test_support_y[e], -1), np.argmax(tasks.test_query_y[e], -1)
        hits = 0
        for xi, yi in zip(q, ql):
            cos = [xi @ sj / np.linalg.norm(xi) / np.linalg.norm(sj) for sj in s]
            hits += sl[int(np.argmax(cos))] == yi
        out.append(hits / len(q))
    return np.asarray(out)


def test_networks_are_scored_on_the_task_sets_test_episodes_and_reproducibly(tasks):
    ep = task_episodes(tasks, val_tasks=2)
    model = ModelConfig("mlp", width=16, depth=1)
    config = config_for(ep, methods=(default_method_config("protonet", meta_batch=2),), model=model, seeds=(0,),
                        max_steps=6, checkpoints=2)
    tables = run_experiment(config, ep)
    episodes = tables.episodes
    nn = episodes[episodes.method == "nn-pixels"].sort_values("episode")["accuracy"].to_numpy()
    np.testing.assert_allclose(nn, _naive_nn_accuracy(tasks), atol=1e-12)

    # the trained ProtoNet, re-scored by a naive loop over the task set's own test arrays
    net, result = train(config.methods[0], TrainConfig(max_steps=6, checkpoints=2, seed=0), model,
                        FixedSource(ep.train, ep.val, ep.image_shape), 3, 1)
    expected = []
    for e in range(4):
        feats = lambda a: np.asarray(net.features(result.params["body"], a.reshape(-1, 4, 4, 1).astype(np.float32)))  # noqa: E731
        fs, fq = feats(tasks.test_support_x[e]), feats(tasks.test_query_x[e])
        sl, ql = np.argmax(tasks.test_support_y[e], -1), np.argmax(tasks.test_query_y[e], -1)
        protos = np.stack([fs[sl == k].mean(0) for k in range(3)])
        guess = np.argmin(((fq[:, None, :] - protos[None]) ** 2).sum(-1), axis=1)
        expected.append(np.mean(guess == ql))
    got = episodes[episodes.method == "protonet"].sort_values("episode")["accuracy"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    again = run_experiment(config, ep).episodes  # the same seed gives the same numbers
    pd.testing.assert_frame_equal(again, episodes)


def test_closed_form_comparison_is_paired_over_test_tasks():
    sweep = pd.DataFrame({
        "method": ["mtl"] * 3 + ["anil"] * 3 + ["maml"] * 3,
        "depth": 2, "width": np.inf, "inner_time": 0.1, "finetune_time": 1.0, "outer_time": np.inf,
        "mtl_data": "all", "test_head": "learned", "test_task": [0, 1, 2] * 3,
        "test_accuracy": [0.2, 0.4, 0.6, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1],
        "status": ["ok"] * 6 + ["ok", "ridge", "ok"]})
    episodes = pd.DataFrame({"method": ["mtl"] * 6, "seed": [0, 0, 0, 1, 1, 1], "episode": [2, 0, 1, 0, 1, 2],
                             "accuracy": [1.0, 0.0, 0.5, 0.2, 0.5, 0.8]})
    table = closed_form_comparison(sweep, episodes, "conv")
    assert set(table["closed_form"]) == {"mtl", "anil"}  # maml has a row that is not ok
    row = table[table.closed_form == "mtl"].iloc[0]
    net = np.array([0.1, 0.5, 0.9])  # per episode, averaged over the two seeds
    diff = net - np.array([0.2, 0.4, 0.6])
    assert row["network_accuracy"] == pytest.approx(0.5) and row["closed_accuracy"] == pytest.approx(0.4)
    assert row["difference"] == pytest.approx(diff.mean())
    assert row["difference_ci95"] == pytest.approx(1.96 * diff.std(ddof=1) / np.sqrt(3))
    assert row["seeds"] == 2 and row["episodes"] == 3 and row["arch"] == "conv"
    with pytest.raises(ValueError, match="not the same episodes"):
        closed_form_comparison(sweep, episodes[episodes.episode != 2], "conv")


def _run(capsys, argv):
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory, tasks):
    root = tmp_path_factory.mktemp("sweep")
    path = root / "digits.npz"
    tasks.save(path)
    run = root / "run"
    assert main(["sweep", "--tasks", str(path), "--arch", "conv", "--depth", "1,2", "--inner-time", "0.1",
                 "--mtl-data", "all", "--methods", "anil", "--out", str(run), "--no-figures"]) == 0
    return run


def test_tasks_of_a_sweep_writes_the_paired_comparison(conv_run, tmp_path, capsys):
    out = tmp_path / "nets"
    code, stdout, stderr = _run(capsys, ["fewshot", "--tasks-of", str(conv_run), "--methods", "mtl,protonet",
                                         "--body", "mlp", "--channels", "16", "--blocks", "1", "--max-steps", "4",
                                         "--checkpoints", "2", "--meta-batch", "2", "--val-tasks", "2",
                                         "--out", str(out)])
    assert code == 0, stdout + stderr
    table = pd.read_csv(out / "closed_forms.csv")
    sweep = pd.read_csv(conv_run / "results.csv")
    assert set(table["network"]) == {"mtl", "protonet", "nn-pixels"}
    assert set(table["closed_form"]) == {"mtl", "anil", "baseline"} and set(table["depth"]) == {1, 2}
    for _, r in table.iterrows():  # each closed form's accuracy is the sweep's own, over its test tasks
        rows = sweep[(sweep.method == r.closed_form) & (sweep.depth == r.depth)]
        assert r.closed_accuracy == pytest.approx(rows["test_accuracy"].mean()) and r.episodes == 4
    record = json.loads((out / "config.json").read_text())
    assert record["dataset"]["tasks_fingerprint"] == json.loads((conv_run / "config.json").read_text())["tasks_fingerprint"]
    assert record["experiment"]["test_episodes"] == 4 and record["tasks_of"]["run"] == str(conv_run)
    assert "closed form" in stdout


@pytest.mark.slow  # two worker processes start and import JAX (about 20 s on 2 cores): pytest -m slow, in .ci/run
def test_tasks_of_with_jobs_trains_in_workers_and_writes_the_same_comparison(conv_run, tmp_path, capsys):
    argv = ["fewshot", "--tasks-of", str(conv_run), "--methods", "mtl,protonet", "--body", "mlp", "--channels", "16",
            "--blocks", "1", "--max-steps", "4", "--checkpoints", "2", "--meta-batch", "2", "--val-tasks", "2"]
    tables = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        code, stdout, stderr = _run(capsys, [*argv, "--jobs", str(jobs), "--out", str(out)])
        assert code == 0 and "closed form" in stdout and "training runs in" in stderr, stdout + stderr
        assert json.loads((out / "config.json").read_text())["reused_runs"] == 2
        tables[jobs] = pd.read_csv(out / "closed_forms.csv")
    pd.testing.assert_frame_equal(tables[1], tables[2])  # one core's numbers for every number of workers
    assert set(tables[1]["network"]) == {"mtl", "protonet", "nn-pixels"}


@pytest.mark.parametrize("args,match", [
    (["--tasks-of", "/nonexistent/run"], "--tasks-of"),
    (["--val-tasks", "2"], "--val-tasks applies to --tasks-of only"),
])
def test_tasks_of_user_errors(args, match, tmp_path, capsys):
    code, _, stderr = _run(capsys, ["fewshot", *args, "--out", str(tmp_path / "x")])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and match in lines[0], stderr


def test_tasks_of_a_flat_sweep_or_a_changed_task_set_is_refused(conv_run, tmp_path, capsys):
    flat = tmp_path / "flat"
    assert main(["sweep", "--depth", "1", "--inner-time", "0.1", "--methods", "anil", "--out", str(flat),
                 "--no-figures"]) == 0
    code, _, stderr = _run(capsys, ["fewshot", "--tasks-of", str(flat), "--out", str(tmp_path / "a")])
    assert code == 2 and "image tasks" in stderr
    changed = tmp_path / "changed"
    changed.mkdir()
    record = json.loads((conv_run / "config.json").read_text())
    record["tasks_fingerprint"] = "0" * 64
    (changed / "config.json").write_text(json.dumps(record))
    code, _, stderr = _run(capsys, ["fewshot", "--tasks-of", str(changed), "--out", str(tmp_path / "b")])
    assert code == 2 and "differs from the one the sweep ran on" in stderr
    (changed / "config.json").write_text("{not json")
    code, _, stderr = _run(capsys, ["fewshot", "--tasks-of", str(changed), "--out", str(tmp_path / "c")])
    assert code == 2 and "not a sweep's config.json" in stderr


def _copy_run(conv_run, to):
    import shutil

    shutil.copytree(conv_run, to)
    return to


def test_tasks_of_without_a_fingerprint_or_with_another_task_seed_is_refused_before_training(conv_run, tmp_path,
                                                                                             capsys):
    unmarked = _copy_run(conv_run, tmp_path / "unmarked")
    record = json.loads((unmarked / "config.json").read_text())
    del record["tasks_fingerprint"]
    record["config"]["tasks"]["task_seed"] = 1  # says seed 1 over the seed-0 results
    (unmarked / "config.json").write_text(json.dumps(record))
    code, _, stderr = _run(capsys, ["fewshot", "--tasks-of", str(unmarked), "--out", str(tmp_path / "a")])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "tasks_fingerprint is missing" in lines[0], stderr
    assert not (tmp_path / "a" / "episodes.csv").exists()
    reseeded = _copy_run(conv_run, tmp_path / "reseeded")  # fingerprint intact, results.csv of another seed
    results = pd.read_csv(reseeded / "results.csv")
    results.assign(task_seed=1).to_csv(reseeded / "results.csv", index=False)
    code, _, stderr = _run(capsys, ["fewshot", "--tasks-of", str(reseeded), "--out", str(tmp_path / "b")])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "task seed(s) 1, but config.json says" in lines[0], stderr
    assert not (tmp_path / "b" / "episodes.csv").exists()


def test_tasks_of_reads_the_closed_forms_from_the_verified_cells(conv_run, tmp_path, capsys):
    from ntk_bridge.bridge import load_run_tasks

    cut = _copy_run(conv_run, tmp_path / "cut")
    full = pd.read_csv(conv_run / "results.csv")
    text = (cut / "results.csv").read_text().splitlines(keepends=True)
    (cut / "results.csv").write_text("".join(text[:3]))  # truncated: two rows of the first cell
    _, rows, _ = load_run_tasks(cut, val_episodes=2)
    first = full[full["cell"] == full["cell"].iloc[0]]
    assert len(rows) == len(first) and set(rows["test_task"]) == {0, 1, 2, 3}  # the whole cell, every test task
    for _, group in rows.groupby(["method", "depth", "mtl_data", "test_head"]):
        assert sorted(group["test_task"]) == [0, 1, 2, 3]
    missing = _copy_run(conv_run, tmp_path / "missing")
    (missing / "cells" / f"{full['cell'].iloc[-1]}.csv").unlink()
    code, _, stderr = _run(capsys, ["fewshot", "--tasks-of", str(missing), "--out", str(tmp_path / "m")])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "missing or damaged" in lines[0], stderr


def _no_training(monkeypatch):
    from ntk_bridge.fewshot import experiment

    def forbidden(*args, **kwargs):
        raise AssertionError("a network trained before the run folder was checked")

    monkeypatch.setattr(experiment, "train", forbidden)


def _edit_cells(run, edit):
    """Rewrite every cell that ``results.csv`` lists as ``edit(rows)``, with a valid header (an edit the
    cells' checksums cannot see: the folder was written so)."""
    from ntk_bridge.runs import RunFolder

    folder = RunFolder(run)
    for key in dict.fromkeys(pd.read_csv(run / "results.csv")["cell"].astype(str)):
        folder.write_cell(key, edit(folder.read_cell(key)))


FEWSHOT_ON = ["--methods", "mtl", "--body", "mlp", "--channels", "8", "--blocks", "1", "--max-steps", "2",
              "--checkpoints", "1", "--meta-batch", "2", "--val-tasks", "2"]


@pytest.mark.parametrize("edit,match", [
    ("other test tasks", "covers 3 of the task set's 4 test tasks and 1 test task(s) it does not have"),
    ("fewer test tasks", "covers 3 of the task set's 4 test tasks"),
    ("a test task twice", "each test episode needs at most one"),
    ("a cell of another sweep", "each test episode needs at most one"),
    ("a column lost", "lack the column(s) test_accuracy"),
    ("another fingerprint", "differs from the one the sweep ran on"),
    ("another task seed", "task seed(s) 1, but config.json says"),
])
def test_a_run_folder_whose_test_episodes_differ_is_refused_before_any_network_trains(edit, match, conv_run, tmp_path,
                                                                                     capsys, monkeypatch):
    run = _copy_run(conv_run, tmp_path / "edited")
    if edit == "other test tasks":  # the rows of test tasks 1..4 where the task set has 0..3
        _edit_cells(run, lambda rows: rows.assign(test_task=rows["test_task"] + 1))
    elif edit == "fewer test tasks":
        _edit_cells(run, lambda rows: rows[rows["test_task"] != 3])
    elif edit == "a test task twice":  # every test task covered, test task 0 twice
        _edit_cells(run, lambda rows: pd.concat([rows, rows[rows["test_task"] == 0]], ignore_index=True))
    elif edit == "a cell of another sweep":  # results.csv lists a second copy of every cell (a shared --out)
        from ntk_bridge.runs import RunFolder

        results = pd.read_csv(run / "results.csv")
        copies = []
        for key, rows in results.groupby("cell", sort=False):
            RunFolder(run).write_cell("x" + key[1:], RunFolder(run).read_cell(key).assign(cell="x" + key[1:]))
            copies.append(rows.assign(cell="x" + key[1:]))
        pd.concat([results, *copies]).to_csv(run / "results.csv", index=False)
    elif edit == "a column lost":
        _edit_cells(run, lambda rows: rows.drop(columns="test_accuracy"))
    elif edit == "another fingerprint":
        record = json.loads((run / "config.json").read_text())
        record["tasks_fingerprint"] = "f" * 64
        (run / "config.json").write_text(json.dumps(record))
    elif edit == "another task seed":
        pd.read_csv(run / "results.csv").assign(task_seed=1).to_csv(run / "results.csv", index=False)
    _no_training(monkeypatch)
    out = tmp_path / "nets"
    code, stdout, stderr = _run(capsys, ["fewshot", "--tasks-of", str(run), *FEWSHOT_ON, "--out", str(out)])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], stderr
    assert "Traceback" not in stdout + stderr and not (out / "trained").exists() and not (out / "results.csv").exists()


def test_an_unedited_run_folder_passes_the_same_checks(conv_run, tmp_path, capsys, monkeypatch):
    """The refusals above come from the edits: the copied folder itself is accepted and reaches training."""
    _no_training(monkeypatch)
    run = _copy_run(conv_run, tmp_path / "copy")
    with pytest.raises(AssertionError, match="a network trained"):
        main(["fewshot", "--tasks-of", str(run), *FEWSHOT_ON, "--out", str(tmp_path / "nets")])


def test_tasks_of_a_run_estimated_over_an_hour_needs_yes(conv_run, tmp_path, capsys, monkeypatch):
    """The estimate of a run on a task set's episodes (their own sizes) is checked before training."""
    from ntk_bridge.fewshot import command

    _no_training(monkeypatch)
    argv = ["fewshot", "--tasks-of", str(conv_run), *FEWSHOT_ON, "--max-steps", "1000000000", "--out",
            str(tmp_path / "nets")]
    code, _, stderr = _run(capsys, argv)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "would take about" in lines[0] and "--yes" in lines[0], stderr
    started = []
    monkeypatch.setattr(command, "_run", lambda config, episodes, out, tasks_of=None, estimate=None, jobs=None:
                        started.append(estimate))
    code, _, stderr = _run(capsys, [*argv, "--yes"])
    assert code == 0 and len(started) == 1 and "for 1 training run to its caps" in started[0], stderr
