"""The axes of a sweep's grid: one :class:`Axis` object per axis, in :data:`AXES`.

A sweep's settings pass through several shapes: a tuple of values in
:class:`~ntk_bridge.config.GridConfig` (``depths``), one value in each grid cell
(:class:`~ntk_bridge.sweep.Cell`, ``depth``) and in the column of ``results.csv`` of the same name,
a field of :class:`~ntk_bridge.predictors.PredictorConfig` for the settings the closed forms take,
a header in the report. An :class:`Axis` names all of them, with the command-line flag that sets it
and how the typed text is parsed (the allowed values of an enumerated axis are the constants of
:mod:`ntk_bridge.settings`). Everything that goes over every axis derives from :data:`AXES`:

* the cells of :func:`ntk_bridge.sweep.plan` (one per combination, in the order of :data:`AXES`: width
  outermost, depth innermost) and their predictor configs (:meth:`ntk_bridge.sweep.Cell.predictor_config`),
* the settings a method can depend on (:data:`ntk_bridge.methods.SETTINGS`, :data:`ntk_bridge.sweep.CELL_SETTINGS`),
* the number of cells (:func:`n_cells`, the budget's estimate),
* the axes' columns of ``results.csv`` (:data:`ntk_bridge.metrics.COLUMNS`), the report's grouping keys
  and headers (:data:`ntk_bridge.results.GROUP`, :data:`ntk_bridge.report.DIMENSIONS`).

The help texts and defaults stay with the fields of :class:`~ntk_bridge.config.GridConfig`, which
are made by :meth:`Axis.option`. ``Cell``'s fields are written out in its class (their names, order
and values are part of every cache key); ``tests/test_axes.py`` checks them against :data:`AXES`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from ntk_bridge import ranges
from ntk_bridge.fields import option
from ntk_bridge.settings import MTL_DATA_VALUES, TEST_HEADS

__all__ = ["Axis", "AXES", "DEPTH", "WIDTH", "INNER_TIME", "FINETUNE_TIME", "OUTER_TIME", "MTL_DATA", "TEST_HEAD",
           "MUP_WIDTH", "MAX_DEPTH", "MAX_WIDTH", "n_cells"]

#: The ``--width`` token of the muP limit of the one-hidden-layer linear network.
MUP_WIDTH = "mup"
#: Documented caps of the grid (a larger value is almost surely a typo, and would plan for minutes).
MAX_DEPTH, MAX_WIDTH = 4096, 1 << 20


def _same(value):
    return value


def _width(value):
    return value if value == MUP_WIDTH else float(value)


def _outer_times(text: str, flag: str) -> list[float]:
    if text.strip().lower() in ("auto", "inf"):
        return [math.inf]
    return ranges.parse_floats(text, flag, positive=True)


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis of the grid.

    Attributes:
      name: its field of :class:`~ntk_bridge.config.GridConfig` (a tuple of values).
      column: its field of a grid cell (one value) and its column of ``results.csv``.
      flag: the command-line option that sets it.
      parser: ``parser(text, flag)``: the typed text as a list of values; ``None`` for an enumerated
        axis, whose text is a comma list of ``values``.
      values: the allowed values of an enumerated axis (constants of :mod:`ntk_bridge.settings`), else ``None``.
      cell: a value of the grid as a cell holds it (``int``, ``float``, as is).
      predictor: the :class:`~ntk_bridge.predictors.PredictorConfig` field it sets, or ``None``.
      method_setting: whether a method's predictions can depend on it (:data:`ntk_bridge.methods.SETTINGS`;
        depth is every method's x-axis instead).
      header: its column header in the report.
      kind: its type in ``results.csv`` (``int``, ``float``, ``str``; :class:`ntk_bridge.metrics.Column`).
      meaning: what its column of ``results.csv`` means.
    """

    name: str
    column: str
    flag: str
    parser: Callable[[str, str], list] | None
    values: tuple[str, ...] | None
    cell: Callable[[Any], Any]
    predictor: str | None
    method_setting: bool
    header: str
    kind: str
    meaning: str

    def parse(self, text: str) -> tuple:
        """The typed text as the tuple of values of the grid field (``UserError`` naming the flag)."""
        if self.parser is None:
            return tuple(ranges.parse_choices(text, self.flag, self.values))
        return tuple(self.parser(text, self.flag))

    def of(self, grid) -> tuple:
        """This axis's values in a :class:`~ntk_bridge.config.GridConfig`."""
        return getattr(grid, self.name)

    def option(self, help: str, default: tuple, text: str):
        """The :class:`~ntk_bridge.config.GridConfig` field of this axis (:func:`ntk_bridge.fields.option`):
        its flag and parser are the axis's."""
        return option(self.flag, help, default, text, self.parse)


WIDTH = Axis("widths", "width", "--width", lambda text, flag: ranges.parse_widths(text, flag, MAX_WIDTH), None,
             _width, None, True, "width", "float",
             "hidden width (`inf` = the closed form, the NTK limit; `mup` = the muP limit)")
INNER_TIME = Axis("inner_times", "inner_time", "--inner-time", ranges.parse_floats, None, float, "inner_time", True,
                  "inner time", "float", "`lambda*tau` of the inner loop during meta-training")
FINETUNE_TIME = Axis("finetune_times", "finetune_time", "--finetune-time", ranges.parse_floats, None, float,
                     "finetune_time", True, "finetune time", "float", "`s_hat`, the test-time adaptation")
OUTER_TIME = Axis("outer_times", "outer_time", "--outer-time", _outer_times, None, float, "outer_time", True,
                  "outer time", "float", "`eta*t` of (meta-)training (`inf` = to convergence)")
MTL_DATA = Axis("mtl_data", "mtl_data", "--mtl-data", None, MTL_DATA_VALUES, _same, "mtl_data", True, "MTL data",
                "str", "MTL's training set: " + " or ".join(f"`{v}`" for v in MTL_DATA_VALUES)
                + " (rows of other methods repeat per value, for pairing)")
TEST_HEAD = Axis("test_heads", "test_head", "--test-head", None, TEST_HEADS, _same, "test_head", True, "test head",
                 "str", "how GBML's test-time adaptation starts: " + " or ".join(f"`{v}`" for v in TEST_HEADS)
                 + " (rows of MTL and the baseline repeat per value, for pairing)")
DEPTH = Axis("depths", "depth", "--depth", lambda text, flag: ranges.parse_int_range(text, flag, 1, MAX_DEPTH), None,
             int, None, False, "depth", "int", "hidden layers `L`")

#: The axes in the order of the grid's loops: every combination of their values is one cell, the first
#: axis outermost, depth innermost (the order of :func:`ntk_bridge.sweep.plan`'s cells and of ``results.csv``).
AXES: tuple[Axis, ...] = (WIDTH, INNER_TIME, FINETUNE_TIME, OUTER_TIME, MTL_DATA, TEST_HEAD, DEPTH)


def n_cells(grid) -> int:
    """Cells of a :class:`~ntk_bridge.config.GridConfig`: one per combination of the values of every axis."""
    return math.prod(len(axis.of(grid)) for axis in AXES)
