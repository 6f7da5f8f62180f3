"""One convention for the help and flags of every ``ntk-bridge`` command.

* Options are grouped into the panels of :data:`ntk_bridge.config.PANELS` (grid, tasks, model,
  solver, execution, output), set from each option's field (:func:`ntk_bridge.config.typer_option`).
* A flag takes no argument, and ``--help`` says so: :func:`plain_flags` drops the ``<bool>`` type
  that typer shows for every flag (``--help`` and ``--version`` included).
* Every command's help ends with two or three example invocations (:data:`EXAMPLES`, :func:`epilog`).
* A flag means one thing in every command; a command's old spellings of a renamed flag are refused
  with a one-line hint (:func:`renamed_flag`).

Only the standard library is imported here (``ntk-bridge --help`` imports this module).
"""
from __future__ import annotations

__all__ = ["EXAMPLES", "epilog", "plain_flags", "renamed_flag", "yes_option"]

#: Example invocations ending each command's ``--help`` (``command``: ``(line, what it does)``).
EXAMPLES = {
    "sweep": (("ntk-bridge sweep --depth 2..32", "the main job: closed forms at depths 2..32 (about 6 s, 4 s once compiled)"),
              ("ntk-bridge sweep --width 64..512:x2 --depth 1..4 --seeds 2 --methods mtl,anil",
               "finite networks trained by gradient descent against the closed forms"),
              ("ntk-bridge sweep --depth 2..64 --tasks linear --workers 4 --out runs/linear",
               "another task family, on a local Dask cluster")),
    "verify": (("ntk-bridge verify --quick", "the reduced panel (about 30 s): claims.csv and report.html"),
               ("ntk-bridge verify", "the full panel: five families, five seeds (about 2 minutes)"),
               ("ntk-bridge verify --tasks common,kanji --arch fc,conv", "two families, two architectures")),
    "fewshot": (("ntk-bridge fewshot --quick", "smoke run (about 3 minutes)"),
                ("ntk-bridge fewshot --dataset kanji --shots 1 --methods mtl,r2d2,protonet --train-seeds 3 --yes",
                 "trained networks on rendered kanji, three training seeds (estimated at most 1.8 hours: --yes)"),
                ("ntk-bridge fewshot --tasks-of runs/kanji-conv --body conv4 --channels 32 --max-steps 1000",
                 "networks on a sweep's own episodes, beside its closed forms")),
    "figures": (("ntk-bridge figures --quick --out /tmp/figures", "every figure on small grids (a few minutes)"),
                ("ntk-bridge figures --only gap_vs_depth,kernel_degeneracy", "two figures, full grids"),
                ("ntk-bridge figures", "every figure of figures/ (about 95 minutes)")),
}


def epilog(command: str) -> str:
    """The examples that end ``ntk-bridge COMMAND --help`` (typer joins lines split by blank lines)."""
    lines = [f"# {what}\n\n  {line}" for line, what in EXAMPLES[command]]
    return "Examples:\n\n" + "\n\n".join(lines)


def plain_flags(command) -> None:
    """Show no argument type for the flags of ``command`` and of its subcommands (click objects).

    typer's help shows ``<bool>`` beside every flag, ``--help`` included, although a flag takes no
    argument; an empty metavar is displayed as nothing. Parsing is unchanged."""
    import typer

    ctx = typer.Context(command, info_name="ntk-bridge")
    params = list(command.params)
    help_option = command.get_help_option(ctx)
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        plain_flags(sub)


def renamed_flag(argv: list[str], renamed: dict[str, dict[str, str]]) -> str | None:
    """The one-line hint for the first old spelling of a flag in ``argv`` (``renamed``: command ->
    ``{old: new}``), or ``None``. Only the option words of the command's own arguments are read."""
    if not argv or argv[0] not in renamed:
        return None
    table = renamed[argv[0]]
    for word in argv[1:]:
        if word == "--":
            break
        name = word.split("=", 1)[0]
        if name in table:
            return (f"{name} is not an option of ntk-bridge {argv[0]}: use {table[name]} ({name} means another "
                    "thing in ntk-bridge sweep)")
    return None


def yes_option(what: str):
    """The ``--yes`` option of a command whose work is estimated first (:mod:`ntk_bridge.budget`)."""
    import typer

    return typer.Option(False, "--yes", help=f"Start even when the {what} is estimated to take more than an hour "
                        f"(without it such a {what} is refused, with the estimate).", rich_help_panel="Execution")
