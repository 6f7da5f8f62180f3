"""One convention for every command's help and flags (``ntk_bridge.clihelp``), through the real
entry point: options in panels, flags without an argument type, examples at the end that are
real invocations, few-shot options generated from their fields, renamed flags refused in one line,
and the device line on stderr."""
import dataclasses
import inspect
import shlex
import typing

import pytest
import typer

from ntk_bridge import cli
from ntk_bridge.clihelp import EXAMPLES, plain_flags
from ntk_bridge.config import PANELS, parameter
from ntk_bridge.fewshot.command import fewshot_command
from ntk_bridge.fewshot.options import RENAMED, FewShotOptions

COMMANDS = ("sweep", "verify", "fewshot", "figures")


def run(capsys, argv):
    capsys.readouterr()
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def click_command(name):
    command = typer.main.get_command(cli.app)
    plain_flags(command)
    return command.commands[name]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_panels_no_bool_and_ends_with_examples(name, capsys):
    code, out, _ = run(capsys, [name, "--help"])
    assert code == 0
    assert "<bool>" not in out
    panels = [p for p in PANELS if f"─ {p} " in out]
    assert len(panels) >= 2 and "Grid" in panels and "Output" in panels, panels
    # no option outside a panel but --help itself
    command = click_command(name)
    for param in command.params:
        if isinstance(param, typer.core.TyperOption):
            assert param.rich_help_panel in PANELS, (name, param.name)
    tail = out[out.index("Examples:"):]
    assert out.rstrip().endswith(tail.rstrip()) and 2 <= len(EXAMPLES[name]) <= 3
    for line, _ in EXAMPLES[name]:
        assert " ".join(line.split()) in " ".join(tail.split()), line


@pytest.mark.parametrize("name", COMMANDS)
def test_every_example_uses_only_options_of_its_command(name):
    """An example is a real invocation: each of its flags is an option of the command, and the
    typed values parse (click's own parser, nothing run)."""
    command = click_command(name)
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    for line, _ in EXAMPLES[name]:
        words = shlex.split(line)
        assert words[:2] == ["ntk-bridge", name], line
        flags = [w.split("=")[0] for w in words[2:] if w.startswith("--")]
        assert set(flags) <= known, (line, set(flags) - known)
        ctx = command.make_context(name, words[2:], resilient_parsing=True)
        assert ctx.params, line


def test_root_help_and_version_flags_show_no_argument(capsys):
    code, out, _ = run(capsys, ["--help"])
    assert code == 0 and "<bool>" not in out and "--version" in out
    code, out, _ = run(capsys, ["--version"])
    assert code == 0 and out.startswith("ntk-bridge ")


def test_fewshot_options_are_its_fields_and_back():
    params = inspect.signature(fewshot_command).parameters
    hints = typing.get_type_hints(fewshot_command)
    fields = {f.name: f for f in dataclasses.fields(FewShotOptions)}
    assert list(params) == list(fields)
    for name, f in fields.items():
        option = params[name].default
        assert option.help == f.metadata["help"] and option.rich_help_panel == f.metadata["panel"], name
        assert f.metadata["flag"] == option.param_decls[0], name
        if name != "set_":
            assert option.default == f.default, name
        if f.metadata["choices"]:
            assert typing.get_args(hints[name]) == f.metadata["choices"], name
    assert parameter(fields["train_seeds"]) == "train_seeds"


def test_a_shared_flag_means_one_thing():
    """fewshot has none of the flags that sweep uses for its kernel's network and finite cells."""
    fewshot = {o for p in click_command("fewshot").params for o in p.opts}
    sweep = {o for p in click_command("sweep").params for o in p.opts}
    assert not set(RENAMED) & fewshot and set(RENAMED) <= sweep
    assert set(RENAMED.values()) <= fewshot


@pytest.mark.parametrize("old,new", sorted(RENAMED.items()))
def test_old_fewshot_spellings_are_refused_with_a_hint(old, new, capsys):
    for argv in (["fewshot", old, "1"], ["fewshot", "--quick", f"{old}=1"]):
        code, out, err = run(capsys, argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
        assert old in lines[0] and new in lines[0] and "Traceback" not in out + err


def test_sweep_says_its_device_and_blas_threads_on_stderr(tmp_path, capsys):
    code, out, err = run(capsys, ["sweep", "--depth", "1", "--inner-time", "0.1", "--methods", "anil",
                                  "--blas-threads", "1", "--train-tasks", "2", "--test-tasks", "1", "--support", "2",
                                  "--query", "2", "--dim", "3", "--no-figures", "--out", str(tmp_path / "run")])
    assert code == 0, err
    line = [line for line in err.splitlines() if line.startswith("device:")]
    assert len(line) == 1 and "cpu" in line[0] and "BLAS threads: 1" in line[0], err
    assert "device:" not in out


def test_a_cached_rerun_computes_nothing_and_names_no_device(tmp_path, capsys):
    argv = ["sweep", "--depth", "1", "--inner-time", "0.1", "--methods", "anil", "--train-tasks", "2",
            "--test-tasks", "1", "--support", "2", "--query", "2", "--dim", "3", "--no-figures",
            "--out", str(tmp_path / "run")]
    assert run(capsys, argv)[0] == 0
    code, out, err = run(capsys, argv)
    assert code == 0 and "cached" in err, err
    assert not [line for line in err.splitlines() if line.startswith("device:")], err


def test_figures_help_names_every_figure(capsys):
    from ntk_bridge.paper_figures import FIGURES

    code, out, err = run(capsys, ["figures", "--help"])
    assert code == 0
    words = set(out.replace("│", " ").replace(",", " ").replace(".", " ").split())
    missing = [name for name in FIGURES if name not in words]
    assert not missing, missing
