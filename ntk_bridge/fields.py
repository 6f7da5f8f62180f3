"""Dataclass fields that carry their command-line option (:func:`option`), and the ``typer`` options
built from them (:func:`typer_option`): the one place every command's options come from
(:mod:`ntk_bridge.config` for ``sweep``, :mod:`ntk_bridge.fewshot.options` for ``fewshot``)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ntk_bridge.errors import require

__all__ = ["PANELS", "option", "flag", "parameter", "typer_option"]

#: The help panels of every command, in the order ``--help`` lists them (``rich_help_panel``).
PANELS = ("Grid", "Tasks", "Model", "Solver", "Execution", "Output")


def option(flag: str, help: str, default, text: str | None = None, parse: Callable[[str], Any] | None = None,
           choices: tuple[str, ...] | None = None, panel: str | None = None, metavar: str | None = None,
           **field_kwargs):
    """A dataclass field set by the command-line option ``flag`` (metadata: the flag, its help, the
    default as typed, the parser of the typed text, the fixed choices if any, and the help panel
    it is listed under, one of :data:`PANELS`; ``None``: its part's panel; the metavar ``--help``
    shows, if not the type's)."""
    require(panel is None or panel in PANELS, f"unknown help panel {panel!r}")
    meta = dict(flag=flag, help=help, text=text, parse=parse, choices=choices, panel=panel, metavar=metavar)
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed")
    return dataclasses.field(default=default, metadata=meta, **field_kwargs)


def flag(cls, name: str) -> str:
    """The command-line flag of field ``name`` of dataclass ``cls``."""
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["flag"]


def parameter(f: dataclasses.Field) -> str:
    """The command function's parameter name for a field: its flag without dashes."""
    return f.metadata["flag"].split("/")[0].lstrip("-").replace("-", "_")


def typer_option(cls, name: str, panel: str | None = None):
    """``typer.Option`` of field ``name`` of dataclass ``cls``: its flag, its default as typed, its
    help, its help panel (the field's own, else ``panel``), and choices via the parameter's
    ``Literal`` type. A ``--x/--no-x`` flag takes no argument."""
    import typer

    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    default = f.metadata["text"] if f.metadata["text"] is not None else f.default
    return typer.Option(default, *f.metadata["flag"].split(" "), help=f.metadata["help"],
                        rich_help_panel=f.metadata.get("panel") or panel, metavar=f.metadata.get("metavar"))
