"""Range and list parsing of the grid options."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ntk_bridge.errors import UserError
from ntk_bridge.ranges import parse_choices, parse_floats, parse_int_range, parse_widths


@pytest.mark.parametrize("text, expected", [
    ("2..32", list(range(2, 33))),
    ("1..128:x2", [1, 2, 4, 8, 16, 32, 64, 128]),
    ("1..100:x3", [1, 3, 9, 27, 81]),
    ("1..10:3", [1, 4, 7, 10]),
    ("1,2,4,8", [1, 2, 4, 8]),
    ("8,1,2..3,2", [1, 2, 3, 8]),
    ("5", [5]),
    (" 3 .. 5 ", [3, 4, 5]),
])
def test_int_ranges(text, expected):
    assert parse_int_range(text) == expected


@pytest.mark.parametrize("text, word", [
    ("32..2", "empty"), ("0..4", "below 1"), ("a..b", "not an integer"), ("", "empty"),
    ("1..8:x1", "factor"), ("1..8:0", "step"), ("0", "below 1"), ("-3", "below 1"), ("2.5", "not an integer"),
])
def test_bad_int_ranges(text, word):
    with pytest.raises(UserError, match=word):
        parse_int_range(text, "--depth")


@given(lo=st.integers(1, 50), n=st.integers(0, 30), step=st.integers(1, 7))
def test_arithmetic_range_matches_python_range(lo, n, step):
    hi = lo + n
    assert parse_int_range(f"{lo}..{hi}:{step}") == list(range(lo, hi + 1, step))


def test_widths_and_floats():
    assert parse_widths("inf") == [math.inf]
    assert parse_widths("64..256:x2,inf") == [64.0, 128.0, 256.0, math.inf]
    with pytest.raises(UserError, match="--width"):
        parse_widths("0")
    with pytest.raises(UserError, match="--width"):
        parse_widths("-64")
    assert parse_floats("0.01,0.1,1", "--inner-time") == [0.01, 0.1, 1.0]
    assert parse_floats("inf", "--outer-time") == [math.inf]
    for bad in ("-1", "nan", "x", ""):
        with pytest.raises(UserError, match="--inner-time"):
            parse_floats(bad, "--inner-time")
    with pytest.raises(UserError, match="must be > 0"):
        parse_floats("0", "--outer-time", positive=True)
    assert parse_choices("mtl,ANIL,mtl", "--methods", ("mtl", "anil")) == ["mtl", "anil"]
    with pytest.raises(UserError, match="reptile"):
        parse_choices("mtl,reptile", "--methods", ("mtl", "anil"))
