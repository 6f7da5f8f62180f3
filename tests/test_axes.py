"""ntk_bridge.axes: every place that goes over the grid's axes derives from AXES, checked against
independent, hand-written versions (the nested loops, products and field lists as they were)."""
import dataclasses
import math

import pytest

from ntk_bridge import axes, budget, methods
from ntk_bridge.config import GridConfig, SweepConfig
from ntk_bridge.settings import ALL, LEARNED, QUERY, RESET
from ntk_bridge.sweep import CELL_SETTINGS, Cell, plan

SMALL = dict(train_tasks=3, test_tasks=2, support=3, query=4, dim=5)

#: Grids that vary every axis (the second with integer widths, which a cell holds as floats).
EVERY_AXIS = [
    dict(depths=(1, 2, 3), widths=(16.0, math.inf), inner_times=(0.1, 1.0), finetune_times=(0.5, 1.0),
         outer_times=(2.0, math.inf), mtl_data=(ALL, QUERY), test_heads=(LEARNED, RESET)),
    dict(depths=(2, 5), widths=(8, 16, math.inf), inner_times=(0.0, 0.1, 1.0), finetune_times=(1.0, 2.0),
         outer_times=(1.0, 3.0, math.inf), mtl_data=(QUERY, ALL), test_heads=(RESET, LEARNED)),
]


def _old_plan_cells(config):
    """The cells as plan() enumerated them before the axes were objects: a hand-written comprehension."""
    g = config.grid
    return [Cell(config.tasks.task_seed, w if w == axes.MUP_WIDTH else float(w), int(d), float(s), float(f), float(o),
                 m, h)
            for w in g.widths for s in g.inner_times for f in g.finetune_times
            for o in g.outer_times for m in g.mtl_data for h in g.test_heads for d in g.depths]


@pytest.mark.parametrize("grid", EVERY_AXIS)
def test_plan_makes_every_combination_in_the_loop_order_of_before(grid):
    config = SweepConfig.of(**grid, **SMALL)
    _, cells, keys = plan(config)
    expected = _old_plan_cells(config)
    assert cells == expected  # same values, same order (width outermost, depth innermost)
    assert [tuple(map(type, dataclasses.astuple(c))) for c in cells] == \
        [tuple(map(type, dataclasses.astuple(c))) for c in expected]  # int depth, float times: same keys
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("grid", EVERY_AXIS)
def test_the_estimate_counts_every_cell_the_plan_makes(grid):
    config = SweepConfig.of(**grid, **SMALL)
    tasks, cells, _ = plan(config)
    by_hand = (len(grid["depths"]) * len(grid["widths"]) * len(grid["inner_times"]) * len(grid["finetune_times"])
               * len(grid["outer_times"]) * len(grid["mtl_data"]) * len(grid["test_heads"]))
    assert budget.estimate(config, tasks)["cells"] == len(cells) == by_hand
    assert budget.n_cells(config.grid) == axes.n_cells(config.grid) == by_hand


def test_the_cell_fields_are_the_axes_columns_and_keep_their_order():
    """Cell's fields (names and order) enter every cache key: they must not move."""
    names = tuple(f.name for f in dataclasses.fields(Cell))
    assert names == ("task_seed", "width", "depth", "inner_time", "finetune_time", "outer_time", "mtl_data",
                     "test_head")
    assert set(names) == {"task_seed"} | {a.column for a in axes.AXES}
    assert [a.column for a in axes.AXES][-1] == "depth"  # depth innermost


def test_cache_keys_are_those_of_before():
    """Keys computed by the code before the axes were objects (same cell, same context)."""
    ctx = {"tasks": "abc", "rcond": 1e-10}
    assert Cell(3, math.inf, 7, 0.1, 0.5, math.inf, QUERY, RESET).key(ctx) == "66a3c5c9699319ad0418"
    assert Cell(0, 64.0, 2, 1.0, 1.0, 5.0, ALL).key(ctx) == "2d180c2dc7f25c0c15bf"
    assert Cell(0, axes.MUP_WIDTH, 1, 1.0, 1.0, 5.0, ALL).key({}) == "c6ff33361d66bdcaf81d"


def test_grid_fields_are_made_by_their_axes():
    fields = {f.name: f for f in dataclasses.fields(GridConfig)}
    assert set(fields) - {"methods"} == {a.name for a in axes.AXES}
    for axis in axes.AXES:
        meta = fields[axis.name].metadata
        assert meta["flag"] == axis.flag
        assert meta["parse"](meta["text"]) == fields[axis.name].default == axis.of(GridConfig())
    assert GridConfig.from_text(depths="1..3", widths="64,inf", inner_times="1,0.5", outer_times="auto",
                                mtl_data="query", test_heads="reset,learned") == \
        GridConfig(depths=(1, 2, 3), widths=(64.0, math.inf), inner_times=(0.5, 1.0), outer_times=(math.inf,),
                   mtl_data=(QUERY,), test_heads=(RESET, LEARNED))
    with pytest.raises(TypeError):
        GridConfig.from_text(depth="2")  # the field is 'depths'


def test_the_enumerated_axes_take_the_settings_constants():
    assert axes.MTL_DATA.values == ("all", "query") and axes.TEST_HEAD.values == ("learned", "reset")
    assert [a.name for a in axes.AXES if a.values is not None] == ["mtl_data", "test_heads"]


def test_predictor_config_takes_every_predictor_setting_of_the_cell():
    from ntk_bridge.predictors import PredictorConfig

    cell = Cell(0, math.inf, 4, 0.25, 0.75, 3.0, QUERY, RESET)
    assert cell.predictor_config(1e-9) == PredictorConfig(inner_time=0.25, finetune_time=0.75, outer_time=3.0,
                                                          mtl_data=QUERY, test_head=RESET, rcond=1e-9)
    assert cell.predictor_config(1e-9, dict(outer_steps=5)).outer_steps == 5
    assert {a.predictor for a in axes.AXES} - {None} <= {f.name for f in dataclasses.fields(PredictorConfig)}


def test_settings_methods_depend_on():
    assert methods.SETTINGS == ("width", "inner_time", "finetune_time", "outer_time", "mtl_data", "test_head")
    assert CELL_SETTINGS == ("inner_time", "finetune_time", "outer_time", "mtl_data", "test_head")
    for name in methods.METHODS:
        assert set(methods.get(name).depends_on) <= set(methods.SETTINGS), name


def test_report_keys_and_result_columns_follow_the_axes():
    from ntk_bridge import metrics, report, results

    assert report.DIMENSIONS == {"width": "width", "inner_time": "inner time", "finetune_time": "finetune time",
                                 "outer_time": "outer time", "mtl_data": "MTL data", "test_head": "test head"}
    assert results.GROUP == ["method", "width", "inner_time", "finetune_time", "outer_time", "mtl_data", "test_head"]
    assert tuple(metrics.NAMES[:8]) == ("method", "depth", "width", "inner_time", "finetune_time", "outer_time", "mtl_data",
                                 "test_head")
    kinds = {c.name: c.kind for c in metrics.COLUMNS}
    assert (kinds["depth"], kinds["width"], kinds["mtl_data"]) == ("int", "float", "str")
