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
    monkeypatch.setattr(command, "_run", lambda config, spec, out: seen.update(config=config, spec=spec))
    argv = ["--dataset", "kanji", "--ways", "5", "--shots", "1", "--methods", ",".join(METHOD_NAMES), "--train-seeds", "3",
            "--out", str(tmp_path / "o")]
    code, _, stderr = run(capsys, argv)
    assert code == 0, stderr
    assert (seen["config"], seen["spec"]) == figure_config(quick=False)
    quick_config, quick_data = figure_config(quick=True)
    code, _, stderr = run(capsys, ["--quick", "--out", str(tmp_path / "q")])
    assert code == 0, stderr
    assert (seen["config"], seen["spec"]) == (quick_config, quick_data)
