"""The ``fewshot`` command through the real entry point (``ntk_bridge.cli.main``)."""
import json

import pandas as pd
import pytest

from ntk_bridge.cli import main
from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.command import apply_overrides, parse_int_list
from ntk_bridge.fewshot.experiment import RESULT_COLUMNS
from ntk_bridge.fewshot.train import default_method_config

TINY = ["--dataset", "digits", "--ways", "3", "--arch", "mlp", "--width", "32", "--depth", "1", "--max-steps", "4",
        "--test-episodes", "12", "--val-episodes", "3", "--checkpoints", "2", "--budget-minutes", "1"]


def run(capsys, argv):
    capsys.readouterr()
    code = main(["fewshot", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_fewshot_writes_tables_figure_and_provenance(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run(capsys, [*TINY, "--shots", "2", "--out", str(out), "--set", "maml.inner_lr=0.2"])
    assert code == 0, stdout + stderr
    for name in ("results.csv", "curves.csv", "episodes.csv", "config.json", "accuracy_vs_time.png", "accuracy_vs_time.pdf"):
        assert (out / name).is_file(), name
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == list(RESULT_COLUMNS)
    assert len(results) == 4 and set(results["method"]) == {"nn-pixels", "mtl", "anil", "maml"}
    assert results["accuracy"].between(0, 100).all()
    config = json.loads((out / "config.json").read_text())
    maml = [m for m in config["experiment"]["methods"] if m["method"] == "maml"][0]
    assert maml["inner_lr"] == 0.2
    assert config["provenance"]["versions"]["neural-tangents"] == "0.6.5"
    assert "nn-pixels" in stdout and "maml" in stdout


@pytest.mark.parametrize("args,match", [
    (["--dataset", "cifar"], "--dataset"),
    (["--shots", "0"], "positive integers"),
    (["--shots", "1,x"], "comma-separated"),
    (["--methods", "mtl,reptile"], "unknown method"),
    (["--set", "maml.bogus=1"], "METHOD.FIELD=VALUE"),
    (["--dataset", "omniglot"], "--data-dir"),
    (["--ways", "5"], "5 classes but the split has"),
    (["--clock", "gpu"], "--clock"),
])
def test_user_errors_are_one_line_exit_2(args, match, tmp_path, capsys):
    code, stdout, stderr = run(capsys, [*TINY, "--out", str(tmp_path / "x"), *args])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], stderr
    assert "Traceback" not in stdout + stderr


def test_missing_data_dir_names_the_layout(tmp_path, capsys):
    code, _, stderr = run(capsys, ["--dataset", "mini-imagenet", "--data-dir", str(tmp_path)])
    assert code == 2 and "mini-imagenet-cache-train.pkl" in stderr


def test_helpers():
    assert parse_int_list("1, 5", "shots") == (1, 5)
    configs = apply_overrides([default_method_config("anil"), default_method_config("maml")], ["all.lr=0.01", "anil.inner_steps=2"])
    assert [c.lr for c in configs] == [0.01, 0.01] and configs[0].inner_steps == 2 and configs[1].inner_steps == 1
    with pytest.raises(UserError, match="must be int"):
        apply_overrides([default_method_config("anil")], ["anil.inner_steps=1.5"])
