"""A sweep's ``config.json`` read back through one validating schema.

``ntk-bridge fewshot --tasks-of RUN`` rebuilds a sweep's task set from the ``config.json`` in its run
folder; the folder may have been edited, copied from another machine or written by something else.
:func:`read_sweep_record` reads it before anything is built, rendered or trained, and refuses, in one
line naming the key (``config.tasks.dim``), anything that is not what
:meth:`ntk_bridge.config.SweepConfig.to_dict` writes:

* the JSON is an object whose ``config`` holds the sections ``grid``, ``tasks``, ``model``,
  ``finite``, ``numerics`` (objects; ``tasks`` required, the others default), each key a field of its
  section (:data:`ntk_bridge.config._PARTS`) with a value of the field's type (an integer is not a
  bool, a section is not a string, a list of depths holds integers, ``"inf"`` stands for infinity);
* the values pass the same checks as the command line's (ranges, known families, sizes, an existing
  ``.npz`` task file, an existing Omniglot folder);
* ``tasks_fingerprint`` is present (a hexadecimal string): without it a rebuilt task set could not be
  told from the one the sweep ran on;
* the task set it describes fits the memory (:func:`ntk_bridge.budget.check_memory`, from its sizes).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from ntk_bridge.errors import UserError

__all__ = ["read_sweep_record"]

_HEX = re.compile(r"^[0-9a-f]{8,128}$")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) or v in ("inf", "Infinity")


def _number(v):
    return math.inf if v in ("inf", "Infinity") else v


#: Type of a field (its annotation as written) -> (test of a JSON value, conversion, what it should be).
_TYPES = {
    "int": (_is_int, lambda v: v, "an integer"),
    "float": (_is_number, _number, "a number"),
    "bool": (lambda v: isinstance(v, bool), lambda v: v, "true or false"),
    "str": (lambda v: isinstance(v, str), lambda v: v, "a string"),
    "str | None": (lambda v: v is None or isinstance(v, str), lambda v: v, "a string or null"),
    "tuple[int, ...]": (lambda v: isinstance(v, list) and all(map(_is_int, v)), tuple, "a list of integers"),
    "tuple[float, ...]": (lambda v: isinstance(v, list) and all(map(_is_number, v)),
                          lambda v: tuple(float(_number(x)) for x in v), "a list of numbers"),
    "tuple[str, ...]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), tuple,
                        "a list of strings"),
}


def _section(where: str, name: str, klass, values):
    if not isinstance(values, dict):
        raise UserError(f"{where}: config.{name} must be an object of settings, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(klass)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"{where}: config.{name}.{key} is not a setting of a sweep ({', '.join(fields)})")
        test, convert, what = _TYPES[str(fields[key].type)]
        if not test(value):
            raise UserError(f"{where}: config.{name}.{key} must be {what}, got {json.dumps(value)[:60]}")
        kwargs[key] = convert(value)
    try:
        return klass(**kwargs)
    except UserError as exc:
        raise UserError(f"{where}: config.{name}: {exc}") from None


def read_sweep_record(run: Path | str, option: str = "--tasks-of"):
    """``(record, SweepConfig)`` of the sweep run folder ``run`` (see the module docstring); every
    failure is one :class:`~ntk_bridge.errors.UserError` line that starts with ``option`` and names
    the key."""
    from ntk_bridge import budget
    from ntk_bridge.config import _PARTS, SweepConfig

    path = Path(run) / "config.json"
    where = f"{option}: {path}"
    if not path.is_file():
        raise UserError(f"{option}: {run} is not a sweep's run folder (no config.json)")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{where} is not a sweep's config.json ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise UserError(f"{where} is not a sweep's config.json (no 'config' object)")
    sections = record["config"]
    if "tasks" not in sections:
        raise UserError(f"{where} is not a sweep's config.json (no config.tasks)")
    unknown = sorted(set(sections) - set(_PARTS))
    if unknown:
        raise UserError(f"{where}: config.{unknown[0]} is not a section of a sweep's config ({', '.join(_PARTS)})")
    parts = {name: _section(where, name, klass, sections.get(name, {})) for name, klass in _PARTS.items()}
    try:
        config = SweepConfig(**parts)
    except UserError as exc:
        raise UserError(f"{where}: config: {exc}") from None
    fingerprint = record.get("tasks_fingerprint")
    if not (isinstance(fingerprint, str) and _HEX.match(fingerprint)):
        raise UserError(f"{where}: tasks_fingerprint is missing or not a hexadecimal string, so nothing shows that "
                        "the task set rebuilt from it is the one the sweep ran on; rerun the sweep into that folder")
    for key in ("command",):
        if key in record and not isinstance(record[key], (str, type(None))):
            raise UserError(f"{where}: {key} must be a string")
    planned = budget.planned_tasks(config)
    points = planned.layout.n_points if planned.layout is not None else 0
    budget.check_memory(planned.source_bytes + 4 * 8 * points * planned.dim,
                        f"{where}: rebuilding its task set ({points:,} points of dimension {planned.dim:,})")
    return record, config
