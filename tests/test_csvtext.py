"""``ntk_bridge.csvtext`` writes exactly pandas' ``to_csv(index=False)``: generated tables of every dtype it
formats itself (and of those it hands to pandas) against pandas' own writer."""
import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntk_bridge import csvtext
from ntk_bridge.csvtext import Rows, frame_csv
from ntk_bridge.runs import RunFolder


def pandas_csv(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()


SPECIAL = [0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, 1e-5, 1e-4, 9.999999999999999e-05, 1e16, 9999999999999998.0,
           1.7976931348623157e308, 0.1, 1 / 3, 123456789.0]
floats = st.one_of(st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.integers(0, 2 ** 64 - 1).map(lambda b: float(np.array(b, np.uint64).view(np.float64))))
texts = st.one_of(st.sampled_from(["mtl", "anil", "ok", "", " x ", "a,b", 'say "hi"', "two\nlines", "cr\r", "é→∞"]),
                  st.text(max_size=6))


@st.composite
def columns(draw, n):
    """One column of ``n`` values: its kind drawn, its values drawn or repeated."""
    kind = draw(st.sampled_from(["float", "float_const", "int", "bool", "text", "text_missing", "string", "none",
                                 "float32", "mixed", "nullable_int"]))
    if kind == "float":
        pool = draw(st.lists(floats, min_size=1, max_size=8))
        return np.array(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), np.float64)
    if kind == "float_const":
        return np.full(n, draw(floats))
    if kind == "int":
        return np.array(draw(st.lists(st.integers(-2 ** 63, 2 ** 63 - 1), min_size=n, max_size=n)), np.int64)
    if kind == "bool":
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), bool)
    if kind in ("text", "text_missing", "string"):
        pool = draw(st.lists(texts, min_size=1, max_size=4)) + ([None, np.nan] if kind != "text" else [])
        values = np.array(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=object)
        return pd.array(values, dtype="string") if kind == "string" else values
    if kind == "none":
        return np.full(n, None, dtype=object)
    if kind == "float32":
        return np.array(draw(st.lists(st.floats(width=32), min_size=n, max_size=n)), np.float32)
    if kind == "mixed":  # objects that are not text: pandas writes them
        return np.array(draw(st.lists(st.one_of(st.integers(-5, 5), floats, texts), min_size=n, max_size=n)),
                        dtype=object)
    return pd.array(draw(st.lists(st.one_of(st.none(), st.integers(-5, 5)), min_size=n, max_size=n)), dtype="Int64")


@st.composite
def frames(draw):
    n = draw(st.one_of(st.integers(0, 12), st.sampled_from([255, 256, 300])))
    k = draw(st.integers(1, 6))
    names = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "g,h", 'q"', "a b"]), min_size=k,
                          max_size=k, unique=True))
    return pd.DataFrame({name: draw(columns(n)) for name in names}, columns=names)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(frames())
def test_frame_csv_is_pandas_to_csv(df):
    assert frame_csv(df) == pandas_csv(df)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), floats, texts,
                    floats.map(np.float64), st.integers(-5, 5).map(np.int64), st.booleans().map(np.bool_),
                    st.floats(width=32).map(np.float32), st.just((1, 2)))


@st.composite
def rows(draw):
    n = draw(st.integers(0, 10))
    names = draw(st.lists(st.sampled_from(list("abcdefg")), min_size=1, max_size=6, unique=True))
    held = draw(st.lists(st.sampled_from(list("abcdefgz")), max_size=7, unique=True))
    cols = {name: draw(st.one_of(scalars, columns(n))) for name in held}
    cols = {k: np.asarray(v, dtype=object) if isinstance(v, pd.api.extensions.ExtensionArray) else v
            for k, v in cols.items()}
    return Rows(n, cols, names)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows())
def test_rows_csv_is_their_frame_to_csv(r):
    assert r.csv() == pandas_csv(r.frame())


def test_the_fast_path_is_taken_for_a_cells_columns(monkeypatch):
    """A cell's kind of table (floats, integers, text, constants, missing columns) never reaches pandas' writer,
    and its text is still pandas'."""
    n = 300
    rng = np.random.default_rng(0)
    r = Rows(n, dict(method=np.array(["mtl", "anil"] * (n // 2), dtype=object), depth=7, width=float("inf"),
                     test_task=np.arange(n), gap=rng.standard_normal(n), mse=np.where(rng.random(n) < 0.1, np.nan, 1.5),
                     status="ok", seed=np.int64(0), zero=-0.0, linearized=np.nan, flag=True),
             ["method", "depth", "width", "test_task", "gap", "mse", "status", "seed", "zero", "linearized", "flag",
              "absent"])
    expected = pandas_csv(r.frame())
    df = r.frame()
    monkeypatch.setattr(csvtext, "_pandas", lambda _: pytest.fail("handed to pandas"))
    assert r.csv() == expected
    assert frame_csv(df) == expected


def test_a_cell_file_is_the_same_from_rows_or_from_their_frame(tmp_path):
    r = Rows(3, dict(cell="k", depth=2, gap=np.array([0.5, np.nan, 1e-30]), method=np.array(["a", "b", "c"], object)),
             ["method", "depth", "gap", "cell", "empty"])
    RunFolder(tmp_path / "x").write_cell("k", r)
    RunFolder(tmp_path / "y").write_cell("k", r.frame())
    assert (tmp_path / "x" / "cells" / "k.csv").read_bytes() == (tmp_path / "y" / "cells" / "k.csv").read_bytes()
    back = RunFolder(tmp_path / "x").read_cell("k", {"depth": 2})
    assert back is not None and list(back["method"]) == ["a", "b", "c"]


def test_rows_pickle_and_compare():
    import pickle

    r = Rows(2, dict(a=np.array([1.0, 2.0]), b="x"), ["b", "a"])
    back = pickle.loads(pickle.dumps(r))
    assert back == r and back.names == ["b", "a"] and len(back) == 2
    assert back != Rows(2, dict(a=np.array([1.0, 3.0]), b="x"), ["b", "a"])
