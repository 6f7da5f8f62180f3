"""The ``fewshot`` command through the real entry point (``ntk_bridge.cli.main``)."""
import json

import pandas as pd
import pytest

from ntk_bridge.cli import main
from ntk_bridge.errors import UserError
from ntk_bridge.fewshot import METHOD_NAMES
from ntk_bridge.fewshot.command import apply_overrides, parse_int_list
from ntk_bridge.fewshot.methods import default_method_config
from ntk_bridge.fewshot.tables import RESULT_COLUMNS, SUMMARY_COLUMNS

TINY = ["--dataset", "digits", "--ways", "3", "--body", "mlp", "--channels", "16", "--blocks", "1", "--max-steps", "4",
        "--test-episodes", "8", "--val-episodes", "2", "--checkpoints", "2", "--meta-batch", "2", "--train-queries", "2"]


def run(capsys, argv):
    capsys.readouterr()
    code = main(["fewshot", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow  # 17 s end to end; the rerun test below runs the command through the fast suite
def test_fewshot_writes_tables_figure_and_provenance(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run(capsys, [*TINY, "--shots", "2", "--train-seeds", "2", "--out", str(out),
                                        "--methods", ",".join(METHOD_NAMES), "--set", "maml.inner_lr=0.2"])
    assert code == 0, stdout + stderr
    for name in ("results.csv", "summary.csv", "curves.csv", "episodes.csv", "config.json", "accuracy_vs_time.png",
                 "accuracy_vs_time.pdf"):
        assert (out / name).is_file(), name
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == list(RESULT_COLUMNS)
    required = ["method", "shots", "seed", "accuracy", "ci95", "cpu_s_to_95pct", "cpu_s_to_target", "outer_steps", "status"]
    assert set(required) <= set(results.columns)
    assert len(results) == 2 * (1 + len(METHOD_NAMES)) and set(results["method"]) == {"nn-pixels", *METHOD_NAMES}
    assert results["accuracy"].between(0, 100).all() and set(results["status"]) <= {"ok", "diverged", "nonfinite"}
    assert list(pd.read_csv(out / "summary.csv").columns) == list(SUMMARY_COLUMNS)
    config = json.loads((out / "config.json").read_text())
    maml = [m for m in config["experiment"]["methods"] if m["method"] == "maml"][0]
    assert maml["inner_lr"] == 0.2 and config["experiment"]["seeds"] == [0, 1]
    assert config["methods"]["r2d2"] == "ntk_bridge.fewshot.methods:R2D2"
    assert config["provenance"]["versions"]["neural-tangents"] == "0.6.5"
    assert "ProtoNet" in stdout and "R2D2" in stdout
    device = [line for line in stderr.splitlines() if line.startswith("device:")]
    assert len(device) == 1 and "cpu" in device[0] and "BLAS threads:" in device[0], stderr
    assert "estimate: at most about" in stderr and "for 10 training runs" in stderr, stderr


@pytest.mark.parametrize("args,match", [
    (["--dataset", "cifar"], "--dataset"),
    (["--shots", "0"], "positive integers"),
    (["--shots", "1,x"], "comma-separated"),
    (["--methods", "mtl,reptile"], "unknown method"),
    (["--set", "maml.bogus=1"], "METHOD.FIELD=VALUE"),
    (["--set", "mtl.schedule=linear"], "unknown schedule"),
    (["--set", "mtl.lr=nan"], "learning rates"),
    (["--dataset", "omniglot"], "--data-dir"),
    (["--ways", "5"], "5 classes but the split has"),
    (["--ways", "1"], "--ways"),
    (["--clock", "gpu"], "--clock"),
    (["--budget-minutes", "nan"], "--budget-minutes"),
    (["--budget-minutes", "-1"], "--budget-minutes"),
    (["--max-steps", "0"], "--max-steps"),
    (["--train-seeds", "0"], "--train-seeds"),
    (["--test-episodes", "1"], "--test-episodes"),
    (["--max-classes", "30"], "kanji dataset only"),
])
def test_user_errors_are_one_line_exit_2(args, match, tmp_path, capsys):
    code, stdout, stderr = run(capsys, [*TINY, "--out", str(tmp_path / "x"), *args])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], stderr
    assert "Traceback" not in stdout + stderr


def test_errors_come_before_any_rendering_or_training(tmp_path, capsys, monkeypatch):
    """Bad options and an unwritable --out are reported before kanji is rendered or a step is taken."""
    from ntk_bridge.datasets import loaders as data
    from ntk_bridge.fewshot import train

    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded or a run started before the options were checked")

    monkeypatch.setattr(data, "load_kanji", forbidden)
    monkeypatch.setattr(data, "load_digits_dataset", forbidden)
    monkeypatch.setattr(train, "train", forbidden)
    for argv, match in ((["--dataset", "kanji", "--ways", "1"], "--ways"),
                        (["--dataset", "kanji", "--budget-minutes", "nan"], "--budget-minutes"),
                        ([*TINY, "--out", "/proc/ntk-bridge-x"], "--out: cannot write"),
                        (["--dataset", "kanji", "--set", "mtl.optimizer=sgd"], "unknown optimizer")):
        code, stdout, stderr = run(capsys, [*argv, "--out", str(tmp_path / "ok")] if "--out" not in argv else argv)
        assert code == 2 and stderr.startswith("error:") and match in stderr, stderr
        assert "Traceback" not in stdout + stderr


@pytest.mark.parametrize("name,expected", [("mini-imagenet", "mini-imagenet-cache-train.pkl"),
                                           ("omniglot", "images_background/<alphabet>/<character>")])
def test_missing_data_dir_names_the_layout(name, expected, tmp_path, capsys):
    for data_dir in (tmp_path, tmp_path / "nowhere"):
        code, _, stderr = run(capsys, ["--dataset", name, "--data-dir", str(data_dir), "--out", str(tmp_path / "o")])
        assert code == 2 and expected in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_help_lists_the_methods_and_choices(capsys):
    code, stdout, _ = run(capsys, ["--help"])
    assert code == 0
    flat = " ".join(stdout.split())
    for name in METHOD_NAMES:
        assert name in flat
    assert "<cpu|wall>" in flat and "<conv4|mlp>" in flat  # Literal options show their choices


def test_helpers():
    assert parse_int_list("1, 5", "shots") == (1, 5)
    configs = apply_overrides([default_method_config("anil"), default_method_config("maml")], ["all.lr=0.01", "anil.inner_steps=2"])
    assert [c.lr for c in configs] == [0.01, 0.01] and configs[0].inner_steps == 2 and configs[1].inner_steps == 1
    with pytest.raises(UserError, match="must be int"):
        apply_overrides([default_method_config("anil")], ["anil.inner_steps=1.5"])


def test_the_figure_settings_are_the_documented_command(tmp_path, capsys, monkeypatch):
    """``figure_config()`` (what ``ntk-bridge figures`` runs) is exactly what the README's command builds."""
    from ntk_bridge.fewshot import command
    from ntk_bridge.fewshot.figure import figure_config

    seen = {}
    monkeypatch.setattr(command, "_run", lambda config, spec, out, **kwargs: seen.update(config=config, spec=spec))
    argv = ["--dataset", "kanji", "--ways", "5", "--shots", "1", "--methods", ",".join(METHOD_NAMES), "--train-seeds", "3",
            "--yes", "--out", str(tmp_path / "o")]  # estimated at about 3 hours to its step caps
    code, _, stderr = run(capsys, argv)
    assert code == 0, stderr
    assert (seen["config"], seen["spec"]) == figure_config(quick=False)
    quick_config, quick_data = figure_config(quick=True)
    code, _, stderr = run(capsys, ["--quick", "--out", str(tmp_path / "q")])
    assert code == 0, stderr
    assert (seen["config"], seen["spec"]) == (quick_config, quick_data)


# --------------------------------------------------------------------------- time estimate and --yes
def test_a_run_estimated_over_an_hour_needs_yes_and_nothing_trains_before(tmp_path, capsys, monkeypatch):
    from ntk_bridge.fewshot import command, experiment

    def forbidden(*args, **kwargs):
        raise AssertionError("a network trained before the estimate was checked")

    monkeypatch.setattr(experiment, "train", forbidden)
    huge = [*TINY, "--max-steps", "100000000", "--out", str(tmp_path / "huge")]
    code, stdout, stderr = run(capsys, huge)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "would take about" in lines[0] and "--yes" in lines[0] and "100,000,000 steps" in lines[0], lines
    assert not (tmp_path / "huge" / "results.csv").exists() and "Traceback" not in stdout + stderr
    started = []
    monkeypatch.setattr(command, "_run", lambda config, spec, out, estimate=None, jobs=None: started.append(estimate))
    code, _, stderr = run(capsys, [*huge, "--yes"])
    assert code == 0 and len(started) == 1 and started[0].startswith("estimate: at most about"), stderr
    assert "days" in started[0]
    # a time cap bounds the estimate: the same step cap under --budget-minutes 1 starts without --yes
    code, _, stderr = run(capsys, [*huge, "--budget-minutes", "1"])
    assert code == 0 and len(started) == 2 and "minutes" in started[1], stderr


def test_the_estimate_grows_with_every_size_and_a_time_cap_bounds_it():
    import dataclasses

    from ntk_bridge.fewshot.cost import dataset_estimate
    from ntk_bridge.fewshot.experiment import FewShotConfig
    from ntk_bridge.fewshot.models import ModelConfig

    base = FewShotConfig(ways=5, shots=(1,), methods=(default_method_config("mtl"), default_method_config("anil")),
                         max_steps=1000, test_episodes=100, val_episodes=20, checkpoints=10)
    seconds = lambda config, side=28: dataset_estimate(config, (side, side, 1), 20)["seconds"]  # noqa: E731
    s0 = seconds(base)
    assert 0 < s0 < 3600
    bigger = {
        "seeds": dataclasses.replace(base, seeds=(0, 1, 2)),
        "steps": dataclasses.replace(base, max_steps=5000),
        "methods": dataclasses.replace(base, methods=(*base.methods, default_method_config("maml"))),
        "shots": dataclasses.replace(base, shots=(1, 5)),
        "ways": dataclasses.replace(base, ways=10),
        "test episodes": dataclasses.replace(base, test_episodes=1000),
        "channels": dataclasses.replace(base, model=ModelConfig("conv4", 64, 4)),
        "meta batch": dataclasses.replace(base, methods=tuple(dataclasses.replace(m, meta_batch=32)
                                                              for m in base.methods)),
    }
    for what, config in bigger.items():
        assert seconds(config) > s0, what
    assert seconds(base, side=84) > s0
    three = seconds(bigger["seeds"]) - seconds(dataclasses.replace(base, seeds=(0, 1)))
    assert three == pytest.approx(seconds(dataclasses.replace(base, seeds=(0, 1))) - s0)  # linear in the seeds
    capped = dataclasses.replace(base, max_steps=None, budget_seconds=60.0)
    endless = dataclasses.replace(base, max_steps=10 ** 9)
    assert seconds(dataclasses.replace(endless, budget_seconds=60.0)) == pytest.approx(seconds(capped))
    assert dataset_estimate(capped, (28, 28, 1), 20)["train_seconds"] == pytest.approx(2 * 60.0)  # 2 runs, each 60 s


# --------------------------------------------------------------------------- resume after a failure
RESUME = [*TINY, "--methods", "mtl,protonet", "--shots", "1", "--train-seeds", "2"]
TIMING = ("seconds", "cpu_s", "eval_", "compile_", "step_cost")  # measured on the clock: the rest must be equal


def _deterministic(table: pd.DataFrame) -> pd.DataFrame:
    return table[[c for c in table.columns if not any(t in c for t in TIMING)]]


def _counting_train(monkeypatch, fail_after: int | None = None):
    from ntk_bridge.fewshot import experiment
    from ntk_bridge.fewshot.train import train as real  # the trainer itself, not an earlier patch of it

    calls = []

    def counted(config, run, *args, **kwargs):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt  # Ctrl-C, or the process killed, in the middle of the comparison
        calls.append((config.method, run.seed))
        return real(config, run, *args, **kwargs)

    monkeypatch.setattr(experiment, "train", counted)
    return calls


def test_a_rerun_after_a_failure_trains_only_the_rest_and_gives_the_same_tables(tmp_path, capsys, monkeypatch):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    calls = _counting_train(monkeypatch)
    code, _, stderr = run(capsys, [*RESUME, "--out", str(whole)])
    assert code == 0 and len(calls) == 4, stderr
    assert len(list((whole / "trained").glob("*.json"))) == 4  # one saved file per finished run

    calls = _counting_train(monkeypatch, fail_after=3)  # dies in the fourth run
    code, _, stderr = run(capsys, [*RESUME, "--out", str(resumed)])
    assert code == 130 and "rerun the same command to resume" in stderr, stderr
    assert len(list((resumed / "trained").glob("*.json"))) == 3 and not (resumed / "results.csv").exists()
    assert not list((resumed / "trained").glob(".*"))  # no temporary file left behind

    calls = _counting_train(monkeypatch)
    code, _, stderr = run(capsys, [*RESUME, "--out", str(resumed)])
    assert code == 0 and calls == [("protonet", 1)], stderr  # only the run that had not finished
    for name in ("results.csv", "curves.csv"):
        pd.testing.assert_frame_equal(_deterministic(pd.read_csv(resumed / name)),
                                      _deterministic(pd.read_csv(whole / name)))
    for name in ("episodes.csv", "summary.csv"):
        a, b = pd.read_csv(resumed / name), pd.read_csv(whole / name)
        pd.testing.assert_frame_equal(_deterministic(a), _deterministic(b))
    assert json.loads((resumed / "config.json").read_text())["reused_runs"] == 3
    assert "reused_runs" not in json.loads((whole / "config.json").read_text())  # a normal run's record as before

    # everything finished: a rerun trains nothing and rewrites the same tables, byte for byte
    before = {n: (resumed / n).read_bytes() for n in ("results.csv", "summary.csv", "curves.csv", "episodes.csv")}
    calls = _counting_train(monkeypatch)
    code, _, stderr = run(capsys, [*RESUME, "--out", str(resumed)])
    assert code == 0 and calls == [], stderr
    assert {n: (resumed / n).read_bytes() for n in before} == before

    # a changed option is another run: only the runs it changes are trained again
    calls = _counting_train(monkeypatch)
    code, _, stderr = run(capsys, [*RESUME, "--set", "protonet.lr=0.002", "--out", str(resumed)])
    assert code == 0 and calls == [("protonet", 0), ("protonet", 1)], stderr
    calls = _counting_train(monkeypatch)
    code, _, stderr = run(capsys, [*RESUME, "--max-steps", "5", "--out", str(resumed)])
    assert code == 0 and len(calls) == 4, stderr


def test_a_damaged_saved_run_is_trained_again_never_trusted(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = [*RESUME, "--train-seeds", "1", "--out", str(out)]
    calls = _counting_train(monkeypatch)
    assert run(capsys, argv)[0] == 0 and len(calls) == 2
    first = pd.read_csv(out / "results.csv")
    mtl, protonet = sorted((out / "trained").glob("mtl-*")) + sorted((out / "trained").glob("protonet-*"))
    good = mtl.read_bytes()
    for damage in (lambda b: b[: len(b) // 2],                                  # cut short
                   lambda b: b"",                                               # empty
                   lambda b: b.replace(b'"status": "ok"', b'"status": "nonfinite"', 1),  # altered after its checksum
                   lambda b: b.replace(b'"accuracy": [', b'"accuracy": [1.0, '),  # an accuracy more than its row says
                   lambda b: protonet.read_bytes()):                            # another run's file renamed over it
        assert damage(good) != good
        mtl.write_bytes(damage(good))
        calls = _counting_train(monkeypatch)
        code, _, stderr = run(capsys, argv)
        assert code == 0 and calls == [("mtl", 0)], stderr
        assert "damaged: trained again" in " ".join(stderr.split()), stderr
        pd.testing.assert_frame_equal(_deterministic(pd.read_csv(out / "results.csv")), _deterministic(first))
        assert mtl.read_bytes() != damage(good)  # saved again, whole


# -- --jobs N: the runs in worker processes of one core each -------------------------------------

def test_runs_trained_one_by_one_are_found_by_the_whole_comparison(tmp_path, monkeypatch):
    """What ``--jobs N`` does, in this process: each run trained on its own by ``train_one`` (any order), then
    ``run_fewshot`` of the whole configuration finds every one and trains nothing."""
    from ntk_bridge.datasets.loaders import DataSpec
    from ntk_bridge.fewshot.experiment import FewShotConfig, run_fewshot, train_one
    from ntk_bridge.fewshot.models import ModelConfig

    methods = (default_method_config("protonet", meta_batch=2, train_queries=2),)
    config = FewShotConfig(ways=3, shots=(1, 2), methods=methods, seeds=(0, 1), max_steps=3, checkpoints=1,
                           val_episodes=2, test_episodes=8, model=ModelConfig("mlp", 8, 1))
    spec, split, whole = DataSpec("digits"), tmp_path / "split", tmp_path / "whole"
    runs = [(2, 1), (1, 0), (2, 0), (1, 1)]  # (shots, seed), any order
    rows = [train_one(config, spec, split, shots, seed, "protonet") for shots, seed in runs]
    assert [(r["method"], r["shots"], r["seed"]) for r in rows] == [("protonet", *run) for run in runs]
    for bad in ((1, 0, "maml"), (3, 0, "protonet"), (1, 2, "protonet")):
        with pytest.raises(ValueError, match="has no run"):
            train_one(config, spec, split, *bad)
    calls = _counting_train(monkeypatch)
    a = run_fewshot(config, spec, split, figure=False)
    assert calls == [] and json.loads((split / "config.json").read_text())["reused_runs"] == 4
    b = run_fewshot(config, spec, whole, figure=False)
    assert len(calls) == 4  # the whole comparison in one go, in a fresh folder
    for name in ("results", "curves", "episodes", "summary"):
        pd.testing.assert_frame_equal(_deterministic(getattr(a, name)), _deterministic(getattr(b, name)))


def test_jobs_below_one_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, [*TINY, "--jobs", "0", "--out", str(tmp_path / "run")])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "--jobs" in lines[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # three worker processes start, each imports JAX (about 40 s on 2 cores): pytest -m slow, in .ci/run
def test_the_numbers_are_the_same_for_every_number_of_jobs(tmp_path, capsys):
    got = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        code, stdout, stderr = run(capsys, [*RESUME, "--jobs", str(jobs), "--out", str(out)])
        assert code == 0, stderr
        assert f"4 training runs in {jobs} process" in stderr and stderr.count("-way 1-shot seed") >= 4, stderr
        assert json.loads((out / "config.json").read_text())["reused_runs"] == 4  # the tables found every run
        assert "ProtoNet" in stdout
        got[jobs] = {n: _deterministic(pd.read_csv(out / n)) for n in ("results.csv", "curves.csv", "episodes.csv")}
    for name in got[1]:
        pd.testing.assert_frame_equal(got[1][name], got[2][name])
