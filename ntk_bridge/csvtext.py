"""CSV text, the bytes of pandas' ``to_csv(index=False)``, made without pandas' writer.

Every cell file and every ``results.csv`` of a sweep is the CSV of a table whose values repeat: a cell's
80 rows share their depth, times, task set and cache key, a method's rows share its diagnostics. pandas
formats every value of every row (numpy's ``astype(str)``, then Python's ``csv`` module); on the main job's
main thread that was more time than the metrics themselves. Here a value repeated down a column is formatted
once, and a cell's rows need not become a DataFrame at all (:class:`Rows`).

The text is pandas' by construction, and tested against ``to_csv`` on generated tables
(``tests/test_csvtext.py``): a ``float64`` value is written as Python's ``repr`` (the digits of numpy's
``astype(str)``, which pandas uses), an integer as ``str``, a boolean as ``True``/``False``, a missing value
(NaN, ``None``, ``pd.NA``) as the empty field, text as it is. Whatever is not handled exactly like pandas
goes to pandas unchanged: other dtypes (``float32``, nullable integers, categories, dates), objects that are
not text, text that the ``csv`` module would quote (a comma, a quote, a line break), column names that are
not plain text, tables of one column (an empty field alone on a line is quoted) and tables without rows.
"""
from __future__ import annotations

import io
import itertools
import math
import re
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["frame_csv", "Rows"]

#: What makes Python's ``csv`` module (``QUOTE_MINIMAL``, the delimiter ``,``) quote a field.
_QUOTED = re.compile(r'[,"\r\n]')

#: From this many values, a column's distinct values are found first and each formatted once.
_DISTINCT_FROM = 256


def _pandas(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()


def _by_distinct(values: np.ndarray, keys: np.ndarray, text) -> list[str]:
    """``text`` of each distinct value of ``values`` (told apart by ``keys``), spread back over the rows."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    distinct = [text(v) for v in values[first].tolist()]
    return [distinct[i] for i in inverse.ravel().tolist()]


def _float(v: float) -> str:
    return "" if v != v else float.__repr__(v)


def _floats(values: np.ndarray) -> list[str]:
    if len(values) >= _DISTINCT_FROM:  # by their bits: 0.0 and -0.0 are written differently
        return _by_distinct(values, np.ascontiguousarray(values).view(np.int64), _float)
    return [_float(v) for v in values.tolist()]


def _objects(values: np.ndarray) -> list[str] | None:
    """Text and missing values as pandas writes them; ``None`` for anything else."""
    missing = pd.isna(values).tolist()
    out, seen = [], {}
    for v, gone in zip(values.tolist(), missing):
        if gone:
            out.append("")
            continue
        text = seen.get(v) if type(v) is str else None
        if text is None:
            if not isinstance(v, str) or _QUOTED.search(v):
                return None
            text = seen[v] = str(v)
        out.append(text)
    return out


def _array(values) -> list[str] | None:
    """The CSV fields of one column (a numpy array, or a pandas string array), or ``None`` where pandas
    alone knows how it writes them."""
    if isinstance(values, pd.api.extensions.ExtensionArray):
        return _objects(values.to_numpy(dtype=object)) if isinstance(values.dtype, pd.StringDtype) else None
    kind = values.dtype.kind
    if kind == "f":
        return _floats(values) if values.dtype == np.float64 else None  # float32's digits are its own
    if kind in "iu":
        if len(values) >= _DISTINCT_FROM:
            return _by_distinct(values, values, str)
        return [str(v) for v in values.tolist()]
    if kind == "b":
        return ["True" if v else "False" for v in values.tolist()]
    if kind == "O":
        return _objects(values)
    return None


def _scalar(v) -> str | None:
    """The field of a column that holds ``v`` on every row, as pandas types a list of it; ``None`` where
    pandas alone knows."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if type(v) is float or isinstance(v, np.float64):
        return "" if math.isnan(v) else float.__repr__(float(v))
    if isinstance(v, str) and not _QUOTED.search(v):
        return str(v)
    return None


def _lines(names: Sequence[str], fields: list, n: int) -> bytes:
    """The CSV of ``n`` rows whose columns are ``fields`` (a list of ``n`` strings, or one string of every
    row); runs of constant columns are joined once."""
    parts: list = []
    for f in fields:
        if isinstance(f, str) and parts and isinstance(parts[-1], str):
            parts[-1] = f"{parts[-1]},{f}"
        else:
            parts.append(f)
    columns = [itertools.repeat(p, n) if isinstance(p, str) else p for p in parts]
    lines = [",".join(names)]
    lines.extend(map(",".join, zip(*columns)))
    lines.append("")
    return "\n".join(lines).encode()


def _plain_names(names) -> bool:
    return len(names) >= 2 and all(type(n) is str and not _QUOTED.search(n) for n in names)


def frame_csv(df: pd.DataFrame) -> bytes:
    """``df.to_csv(index=False).encode()`` (see the module docstring)."""
    names = list(df.columns)
    if not len(df) or not _plain_names(names) or len(set(names)) != len(names):
        return _pandas(df)
    fields = []
    for _, column in df.items():
        dtype = column.dtype
        text = _array(column.array) if isinstance(dtype, pd.StringDtype) else \
            _array(column.to_numpy()) if isinstance(dtype, np.dtype) else None
        if text is None:
            return _pandas(df)
        fields.append(text)
    return _lines(names, fields, len(df))


class Rows:
    """A table of ``n`` rows as its columns, before (or instead of) a DataFrame: ``columns[name]`` is a
    numpy array of ``n`` values or one Python value of every row (a number, a bool, text or ``None``);
    ``names``, the table's columns in order (default: those of ``columns``; a name ``columns`` does not
    hold is a column of missing values, a column it holds but ``names`` does not is left out).

    :meth:`frame` is the DataFrame pandas makes of it (a value of every row given as a list of ``n``);
    :meth:`csv` is that frame's ``to_csv(index=False)``, made without building it.
    """

    __slots__ = ("n", "columns", "names")

    def __init__(self, n: int, columns: Mapping[str, object], names: Sequence[str] | None = None):
        self.n, self.columns = int(n), dict(columns)
        self.names = list(self.columns) if names is None else list(names)

    def __len__(self) -> int:
        return self.n

    def __eq__(self, other) -> bool:
        return isinstance(other, Rows) and self.frame().equals(other.frame())

    def __reduce__(self):
        return Rows, (self.n, self.columns, self.names)

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame."""
        names = self.names
        if not self.n:
            return pd.DataFrame(columns=names)
        data = {k: v if isinstance(v, np.ndarray) else [v] * self.n for k, v in self.columns.items()}
        return pd.DataFrame(data, index=pd.RangeIndex(self.n), columns=names)

    def csv(self) -> bytes:
        """``self.frame().to_csv(index=False).encode()``."""
        names = self.names
        if not self.n or not _plain_names(names) or len(set(names)) != len(names):
            return _pandas(self.frame())
        fields = []
        for name in names:
            value = self.columns.get(name)
            text = _array(value) if isinstance(value, np.ndarray) else _scalar(value)
            if text is None or (isinstance(value, np.ndarray) and (value.ndim != 1 or len(value) != self.n)):
                return _pandas(self.frame())
            fields.append(text)
        return _lines(names, fields, self.n)
