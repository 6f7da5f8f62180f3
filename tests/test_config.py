"""ntk_bridge.config: one source of truth for the sweep's options, checked against the command line."""
import dataclasses
import inspect
import math
import typing

import pytest
from typer.testing import CliRunner

from ntk_bridge import cli
from ntk_bridge.config import SweepConfig, parameter
from ntk_bridge.errors import UserError


def command_parameters():
    return inspect.signature(cli.sweep.__wrapped__).parameters


def test_every_option_of_the_command_is_a_config_field_and_back():
    params = command_parameters()
    hints = typing.get_type_hints(cli.sweep.__wrapped__)
    fields = {parameter(f): (part, f) for part, f in SweepConfig.options()}
    shown = CliRunner().invoke(cli.app, ["sweep", "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"})
    help_text = " ".join(shown.stdout.replace("│", " ").split())
    run_only = {"ctx", "out", "scheduler", "workers", "figures", "yes"}  # how to run, not what is computed
    assert set(params) - run_only == set(fields)
    for name, (part, f) in fields.items():
        option = params[name].default
        assert " ".join(f.metadata["help"].split()) in help_text, name  # what `sweep --help` shows
        assert f.metadata["flag"].split("/")[0] in option.param_decls[0], name
        # the default as typed parses to the field's default
        text = option.default
        parse = f.metadata["parse"]
        assert (parse(text) if parse else text) == f.default, name
        choices = f.metadata["choices"]
        if choices:
            assert typing.get_args(hints[name]) == choices, name


def test_every_option_reaches_its_field(monkeypatch, tmp_path):
    """``sweep`` with every option set to a value other than its default: the config it builds has
    each of them in its field (an option dropped on the way would keep the default)."""
    from ntk_bridge import budget

    seen = []

    def stop(config, **_):
        seen.append(config)
        raise UserError("stop here")

    monkeypatch.setattr(budget, "check_feasible", stop)
    argv = ["sweep", "--depth", "3,5", "--width", "64,inf", "--inner-time", "0.5", "--finetune-time", "2,3",
            "--outer-time", "5", "--methods", "mtl,maml", "--mtl-data", "query", "--test-head", "reset,learned",
            "--tasks", "linear", "--train-tasks", "3", "--support", "2", "--query", "4", "--test-tasks", "6",
            "--dim", "7", "--task-seed", "8", "--data-dir", str(tmp_path), "--arch", "fc", "--readout", "gap",
            "--param", "mup", "--activation", "linear", "--seeds", "2", "--finite-mode", "raw", "--outer-steps", "9",
            "--finite-dtype", "float32", "--no-linearized", "--blas-threads", "2", "--solver", "dense",
            "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 2 and len(seen) == 1, result.output
    expected = dict(depths=(3, 5), widths=(64.0, math.inf), inner_times=(0.5,), finetune_times=(2.0, 3.0),
                    outer_times=(5.0,), methods=("mtl", "maml"), mtl_data=("query",), test_heads=("reset", "learned"),
                    family="linear", train_tasks=3, support=2, query=4, test_tasks=6, dim=7, task_seed=8,
                    data_dir=str(tmp_path), arch="fc", readout="gap", param="mup", activation="linear", seeds=2,
                    finite_mode="raw", outer_steps=9, finite_dtype="float32", linearized=False, blas_threads=2,
                    solver="dense")
    config = seen[0]
    for part, f in SweepConfig.options():  # every option set, none left at its default (but --arch: below)
        value = getattr(getattr(config, part), f.name)
        assert value == expected[f.name] and (value != f.default or f.name == "arch"), f.name
    assert config == SweepConfig.of(**expected)
    # --param mup and --activation linear are for --arch fc only: the other architecture on its own
    argv = ["sweep", "--arch", "conv", "--tasks", "kanji", "--dim", "49", "--support", "5", "--query", "5",
            "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(cli.app, argv).exit_code == 2 and len(seen) == 2
    assert (seen[1].model.arch, seen[1].tasks.family, seen[1].tasks.dim) == ("conv", "kanji", 49)


def test_defaults_match_and_flat_construction():
    assert SweepConfig.of() == SweepConfig()
    cfg = SweepConfig.of(depths=(1, 2), dim=8, family="linear", seeds=3, blas_threads=2)
    assert (cfg.grid.depths, cfg.tasks.dim, cfg.tasks.family, cfg.finite.seeds, cfg.numerics.blas_threads) == \
        ((1, 2), 8, "linear", 3, 2)
    assert cfg.replace(dim=4).tasks.dim == 4 and cfg.replace(dim=4).grid == cfg.grid
    with pytest.raises(TypeError):
        SweepConfig.of(depth=(1, 2))  # the field is 'depths'
    d = SweepConfig().to_dict()
    assert d["grid"]["widths"] == ["inf"] and d["grid"]["depths"][0] == 2 and d["tasks"]["family"] == "subspace"
    assert hash(cfg) == hash(SweepConfig.of(depths=(1, 2), dim=8, family="linear", seeds=3, blas_threads=2))


@pytest.mark.parametrize("flat, flag", [
    (dict(depths=(0, 1)), "--depth"),
    (dict(widths=(0.5,)), "--width"),
    (dict(inner_times=(math.nan,)), "--inner-time"),
    (dict(methods=("reptile",)), "--methods"),
    (dict(methods=("fomaml",)), "--methods"),
    (dict(mtl_data=("support",)), "--mtl-data"),
    (dict(family="spiral"), "--tasks"),
    (dict(family="missing.npz"), "--tasks"),
    (dict(test_tasks=0), "--test-tasks"),
    (dict(seeds=0), "--seeds"),
    (dict(finite_dtype="float16"), "--finite-dtype"),
    (dict(outer_steps=0), "--outer-steps"),
    (dict(blas_threads=0), "--blas-threads"),
])
def test_errors_name_the_option(flat, flag):
    with pytest.raises(UserError, match=flag):
        SweepConfig.of(**flat)


def test_parts_are_frozen():
    cfg = SweepConfig()
    parts = [getattr(cfg, f.name) for f in dataclasses.fields(cfg)]
    assert len(parts) >= 5
    for part in [cfg, *parts]:  # every part, each through its first field
        name = dataclasses.fields(part)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, name, getattr(part, name))


def test_config_describes_and_builds_nothing():
    """config.py imports only ground-floor modules, at top level or inside functions: the task set,
    architecture and training settings are built by ntk_bridge.build, not by the config."""
    import ast
    from pathlib import Path

    import ntk_bridge.config as config_module

    tree = ast.parse(Path(config_module.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ntk_bridge"):
            names = [node.module] if node.module != "ntk_bridge" else [f"ntk_bridge.{a.name}" for a in node.names]
            imported.update(names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names if a.name.startswith("ntk_bridge"))
    ground = {f"ntk_bridge.{m}" for m in ("axes", "errors", "fields", "methods", "ranges", "runtime", "settings")}
    assert imported and imported <= ground, sorted(imported - ground)
