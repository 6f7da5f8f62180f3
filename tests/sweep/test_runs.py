"""ntk_bridge.runs: atomic writes with the user's permissions, and cells that verify themselves."""
import os
import stat

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntk_bridge import runs
from ntk_bridge.runs import RunFolder, atomic_write


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(str(tmp_path / "a.txt"), "hello")
        RunFolder(tmp_path).write_cell("k", pd.DataFrame({"x": [1.0]}))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "cells" / "k.csv").stat().st_mode) == mode


def test_a_cell_reads_back_exactly(tmp_path):
    rows = pd.DataFrame({"method": ["mtl", "anil"], "gap": [0.1, float("nan")], "depth": [1, 2]})
    folder = RunFolder(tmp_path)
    folder.write_cell("k", rows)
    pd.testing.assert_frame_equal(folder.read_cell("k"), rows)
    assert folder.read_cell("missing") is None


def _one_by_one(folder, keys, fields):
    frames = [folder.read_cell(k, fields.get(k)) for k in keys]
    return {k: f for k, f in zip(keys, frames) if f is not None}


def _table_bytes(frames: dict) -> bytes:
    frames = [f for f in frames.values() if len(f)]
    return pd.concat(frames, ignore_index=True).to_csv(index=False).encode() if frames else b""


_CELL_COLUMN = st.lists(st.one_of(st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True, width=32),
                                  st.sampled_from(["ok", "mup", "True", "1e5", "", "nan"])), min_size=0, max_size=4)


@given(st.lists(st.tuples(st.sampled_from(["kind_a", "kind_a", "kind_a", "kind_b"]), _CELL_COLUMN, _CELL_COLUMN, st.booleans()),
                min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_cells_read_together_equal_the_cells_read_one_by_one(tmp_path_factory, cells):
    """Columns of numbers in one file and text in another, blanks, booleans, empty cells, rows of another cell:
    the one parse per column line gives each cell's verdict and the table the files' own parses give."""
    folder = RunFolder(tmp_path_factory.mktemp("cells"))
    keys, fields = [], {}
    for i, (kind, a, b, own) in enumerate(cells):
        key = f"k{i:02d}"
        n = min(len(a), len(b))
        rows = pd.DataFrame({"cell": [key if own else "other"] * n, "a": a[:n], "b": b[:n], "depth": [i] * n})
        if kind == "kind_b":
            rows = rows.rename(columns={"b": "c"})
        folder.write_cell(key, rows)
        keys.append(key)
        fields[key] = {"depth": i}
    keys.append("absent")
    good, damaged = folder.read_cells(keys, fields)
    expected = _one_by_one(folder, keys, fields)
    assert list(good) == [k for k in keys if k in expected]
    assert sorted(damaged) == sorted(k for k in keys[:-1] if k not in expected)
    assert _table_bytes(good) == _table_bytes(expected)


def test_a_width_column_of_mup_and_numbers_reads_as_the_files_do(tmp_path):
    """The sweep's case: ``width`` is text in the muP limit's cells and a number in the finite ones."""
    folder = RunFolder(tmp_path)
    widths = {"k0": [32.0, 32.0], "k1": ["mup", "mup"], "k2": [float("inf")]}
    for key, w in widths.items():
        folder.write_cell(key, pd.DataFrame({"cell": key, "width": w, "gap": 0.5}))
    fields = {"k0": {"width": 32.0}, "k1": {"width": "mup"}, "k2": {"width": float("inf")}}
    good, damaged = folder.read_cells(list(widths), fields)
    assert damaged == [] and list(good) == list(widths)
    assert good["k0"]["width"].tolist() == [32.0, 32.0] and good["k1"]["width"].tolist() == ["mup", "mup"]
    assert _table_bytes(good) == _table_bytes(_one_by_one(folder, list(widths), fields))
    # a cell whose grid field is not its own is damaged, the others read
    good, damaged = folder.read_cells(list(widths), dict(fields, k0={"width": 64.0}))
    assert damaged == ["k0"] and list(good) == ["k1", "k2"]


def test_a_sweeps_cells_are_parsed_in_one_go(tmp_path, monkeypatch):
    """Cells of one schema whose columns type alike are not read one file at a time."""
    folder = RunFolder(tmp_path)
    for i in range(3):
        folder.write_cell(f"k{i}", pd.DataFrame({"cell": f"k{i}", "width": [float(2 ** i)] * 2, "gap": [0.1, i]}))
    expected = _one_by_one(folder, ["k0", "k1", "k2"], {})
    monkeypatch.setattr(runs, "_parse_cell", lambda *a: pytest.fail("read one file at a time"))
    good, damaged = folder.read_cells(["k0", "k1", "k2"], {f"k{i}": {"width": float(2 ** i)} for i in range(3)})
    assert damaged == [] and _table_bytes(good) == _table_bytes(expected)
