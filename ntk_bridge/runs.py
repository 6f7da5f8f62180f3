"""Run folders: every file a run writes goes through :func:`atomic_write`; cells verify themselves.

A run folder holds::

    cells/<key>.csv     one file per grid cell (the cache; see below)
    results.csv         every row of the current grid, sorted
    config.json         resolved configuration, provenance, command, wall time
    summary.md          the report tables
    <figure>.png/.pdf/.csv

**Atomic, with the user's permissions.** :func:`atomic_write` writes a temporary file in the target
folder and renames it over the target (``os.replace``), so a reader (or a rerun after a crash) sees
the old file or the new one, never a part. Files get the permissions the user's umask gives a new
file (``tempfile.mkstemp`` would leave them ``0600``).

**One writer at a time.** :meth:`RunFolder.lock` takes an exclusive lock on ``<folder>/.lock``
(``fcntl.flock``: released by the operating system when the process ends, however it ends), so two
sweeps started into one folder do not both compute every cell: the second waits, then finds the
first one's cells and computes only what is still missing.

**Nothing left behind.** A writer killed mid-write (``kill -9``, a power loss) can leave its temporary
file; the next run removes such files once it holds the lock (:meth:`RunFolder.remove_leftovers`).

**Self-verifying cells.** A cell file starts with one line ``# ntk_bridge cell v1 rows=N
sha256=H`` followed by the CSV of its rows; ``H`` is the SHA-256 of the CSV bytes. A file that is
empty, cut short, altered or unparseable fails :meth:`RunFolder.read_cell` and counts as missing, so
the cell is computed again (a file can only be damaged from outside: a full disk outside the atomic
rename, a power loss before the data reached the disk, an editor). So does a file that verifies but
belongs to another cell (copied or renamed over this one): its rows' ``cell`` column must be the
file's key and their grid fields the cell's.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import tempfile
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from ntk_bridge.csvtext import Rows, frame_csv
from ntk_bridge.errors import UserError

__all__ = ["atomic_write", "verified_body", "RunFolder", "CELL_FORMAT"]

#: Version of the cell file format (the first line of every cell file).
CELL_FORMAT = 1
_HEADER = re.compile(rb"^# ntk_bridge cell v(\d+) rows=(\d+) sha256=([0-9a-f]{64})\n")


#: The random part of temporary names (seeded from the system's randomness, as ``tempfile``'s).
_NAMES = random.Random()


def _temporary(folder: str, name: str) -> tuple[int, str]:
    """``(fd, path)`` of a new file ``.<name>.<random>.tmp`` in ``folder``, opened for writing: created with
    mode ``0o666``, which the umask narrows as for any new file (``tempfile.mkstemp`` would leave ``0600``)."""
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{os.getpid()}{_NAMES.getrandbits(32):08x}.tmp")  # forks apart
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {folder}")


def atomic_write(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename), with
    the permissions the umask gives a new file. On any error the temporary file is removed and the
    old ``path`` (if any) is untouched. Four system calls (a sweep writes a file per cell, and each call
    lets the other threads take the interpreter)."""
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = _temporary(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def verified_body(blob: bytes, header: re.Pattern, version: int, digest_group: int):
    """``(match, body)`` of a self-verifying file: ``header`` matches its first line, whose group 1 is the
    format ``version`` and group ``digest_group`` the SHA-256 (hex) of the ``body`` after it; ``None`` when
    either does not hold (a file cut short, altered, empty or of another format)."""
    match = header.match(blob)
    if match is None or int(match.group(1)) != version:
        return None
    body = blob[match.end():]
    if hashlib.sha256(body).hexdigest() != match.group(digest_group).decode():
        return None
    return match, body


_PARSE_ERRORS = (ValueError, pd.errors.ParserError, UnicodeDecodeError)


def _belong(df: pd.DataFrame, keys: list[str], counts: list[int], fields: list[Mapping[str, object]]) -> list[bool]:
    """Per cell (``counts[i]`` consecutive rows of ``df`` each): whether its rows' ``cell`` column is
    ``keys[i]`` and each of its ``fields[i]`` (``{column: value}``) has the value on every row."""
    ok = np.ones(len(df), bool)
    if "cell" in df:
        ok &= df["cell"].astype(str).to_numpy() == np.repeat(np.array(keys, object), counts)
    names = dict.fromkeys(n for f in fields for n in f)
    missing = [n for n in names if n not in df]
    for name in names:
        if name in df:
            per_cell = np.empty(len(fields), object)  # one value per cell, never broadcast into more axes
            per_cell[:] = [f.get(name, _ABSENT) for f in fields]
            wanted = np.repeat(per_cell, counts)
            ok &= (df[name].to_numpy(object) == wanted) | (wanted == _ABSENT)
    ends = np.cumsum(counts)
    return [bool(ok[e - c:e].all()) and not any(n in f for n in missing)
            for c, e, f in zip(counts, ends, fields)]


#: The value of a field that a cell read together with others does not check.
_ABSENT = object()


def _parse_cell(key: str, rows: int, body: bytes, fields: Mapping[str, object]) -> pd.DataFrame | None:
    """The rows of one verified cell file's ``body`` (its CSV), or ``None`` if they do not parse, are not
    ``rows`` many or do not belong to the cell (:func:`_belong`)."""
    try:
        df = pd.read_csv(io.BytesIO(body), keep_default_na=True)
    except _PARSE_ERRORS:
        return None
    return df if len(df) == rows and _belong(df, [key], [rows], [fields])[0] else None


def _read_together(members: list[tuple[str, int, bytes]], fields: list[Mapping[str, object]]
                   ) -> list[pd.DataFrame] | None:
    """The rows of verified cell files of one column line (``members``: ``(key, rows, body)``), parsed as
    one CSV and cut at the row counts: each cell's rows. ``None``
    where that may not equal the files' own parses: a body that does not end a line, a row count that does
    not add up, a parse error, a text column holding only numbers, booleans or blanks in some file (that
    file alone would have typed it as numbers), or a cell whose rows do not belong to it (:func:`_belong`;
    its rows took part in typing the columns)."""
    head, rests = members[0][2].partition(b"\n")[0], [body.partition(b"\n")[2] for _, _, body in members]
    if any(rest and not rest.endswith(b"\n") for rest in rests):
        return None
    counts = [n for _, n, _ in members]
    try:
        df = pd.read_csv(io.BytesIO(b"\n".join([head, b"".join(rests)])), keep_default_na=True)
    except _PARSE_ERRORS:
        return None
    if len(df) != sum(counts):
        return None
    ends = np.cumsum(counts)
    for name in df.select_dtypes(exclude=["number", "bool"]).columns:  # text (``str`` or ``object``)
        codes, distinct = pd.factorize(df[name])  # each distinct value tested once; a blank is code -1
        distinct = pd.Series(distinct, dtype=object)
        plain_value = (pd.to_numeric(distinct, errors="coerce").notna() | distinct.isin(["True", "False"])).to_numpy()
        blank = codes < 0
        plain = blank | np.append(plain_value, False)[codes]
        if any(c and plain[e - c:e].all() and not blank[e - c:e].all() for c, e in zip(counts, ends)):
            return None
    if not all(_belong(df, [k for k, _, _ in members], counts, fields)):
        return None  # a damaged cell's rows took part in typing the columns
    return [df.iloc[e - c:e].reset_index(drop=True) for c, e in zip(counts, ends)]


class RunFolder:
    """The files of one run (see the module docstring). Creating the object creates nothing;
    :meth:`check_writable` creates the folder and proves it writable, ``cells/`` appears with the
    first cell."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.cells = os.path.join(self.path, "cells")
        self._cells_made = False

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def check_writable(self, option: str = "--out") -> None:
        """Create the folder and prove it is writable, or raise ``UserError`` naming ``option``."""
        try:
            os.makedirs(self.path, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".write-test-")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise UserError(f"{option}: cannot write to {self.path} ({exc.strerror or exc})") from None

    @contextlib.contextmanager
    def lock(self, on_wait: Callable[[], None] | None = None):
        """Hold the folder's exclusive lock for the block; ``on_wait()`` is called once if another
        process holds it (then this one waits). A no-op where ``fcntl`` does not exist."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover  (not POSIX)
            yield
            return
        try:
            fd = os.open(self.file(".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:  # a folder or an unreadable file in its place, a read-only folder
            raise UserError(f"cannot take the lock {self.file('.lock')} ({exc.strerror or exc}): it must be a "
                            "file this user can write (remove what is there and rerun)") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def remove_leftovers(self) -> list[str]:
        """Remove the temporary files a killed writer left (:func:`atomic_write`'s ``.<name>.<random>.tmp``)
        from the folder and ``cells/``; return their paths. Call it only while holding :meth:`lock`: every
        writer of a run folder holds it, so none of these files is being written."""
        gone = []
        for folder in (self.path, self.cells):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))
                        gone.append(os.path.join(folder, name))
        return gone

    # -- cells ---------------------------------------------------------------------------------
    def cell_path(self, key: str) -> str:
        return os.path.join(self.cells, f"{key}.csv")

    def write_cell(self, key: str, rows: pd.DataFrame | Rows) -> None:
        """Write one cell's rows atomically, with its header: a DataFrame in the results schema, or
        :class:`~ntk_bridge.csvtext.Rows` in that schema."""
        body = rows.csv() if isinstance(rows, Rows) else frame_csv(rows)
        header = f"# ntk_bridge cell v{CELL_FORMAT} rows={len(rows)} sha256={hashlib.sha256(body).hexdigest()}\n"
        if not self._cells_made:  # once: every call of a cell's write lets other threads take the interpreter
            os.makedirs(self.cells, exist_ok=True)
            self._cells_made = True
        atomic_write(self.cell_path(key), header.encode() + body)

    def _verified(self, key: str) -> tuple[int, bytes] | None:
        """``(rows, body)`` of the cell's file if its header and SHA-256 verify, else ``None``."""
        try:
            with open(self.cell_path(key), "rb") as fh:
                blob = fh.read()
        except OSError:
            return None
        verified = verified_body(blob, _HEADER, CELL_FORMAT, 3)
        return None if verified is None else (int(verified[0].group(2)), verified[1])

    def read_cell(self, key: str, fields: Mapping[str, object] | None = None) -> pd.DataFrame | None:
        """The cell's rows, or ``None`` if its file is missing or fails verification: its header, its
        SHA-256, its row count, and that every row belongs to the cell (its ``cell`` column is ``key``
        and each of ``fields``, ``{column: value}``, the cell's grid fields, has the cell's value)."""
        got = self._verified(key)
        return None if got is None else _parse_cell(key, *got, fields or {})

    def read_cells(self, keys: Iterable[str], fields: Mapping[str, Mapping[str, object]] | None = None
                   ) -> tuple[dict[str, pd.DataFrame], list[str]]:
        """``({key: rows} of the cells that verify, [keys whose file exists but is damaged])``;
        ``fields``: ``{key: {column: value}}``, the grid fields each cell's rows must have.

        The same as :meth:`read_cell` for every key, read faster: when every verified file has the same
        column line (a sweep's cells do), they are parsed as one CSV and cut at their row counts. Where that
        one parse could type a column differently from the files' own parses (a column of text in one file
        and of numbers in another, as the ``width`` column of a sweep with ``mup`` and finite widths; a
        damaged cell among them; files of several column lines), each file's bytes are parsed alone."""
        fields, keys = fields or {}, list(dict.fromkeys(keys))
        verified = {key: self._verified(key) for key in keys}
        members = [(key, *got) for key, got in verified.items() if got is not None]
        heads = {body.partition(b"\n")[0] for _, _, body in members}
        frames = _read_together(members, [fields.get(k) or {} for k, _, _ in members]) if len(heads) == 1 else None
        if frames is None:
            frames = [_parse_cell(key, rows, body, fields.get(key) or {}) for key, rows, body in members]
        read = dict(zip([key for key, _, _ in members], frames))
        good = {k: read[k] for k in keys if read.get(k) is not None}
        return good, [k for k in keys if read.get(k) is None and os.path.exists(self.cell_path(k))]

    # -- the other files -----------------------------------------------------------------------
    def write_table(self, name: str, df: pd.DataFrame) -> None:
        atomic_write(self.file(name), frame_csv(df))

    def write_json(self, name: str, payload: dict) -> None:
        atomic_write(self.file(name), json.dumps(payload, indent=2, default=str) + "\n")

    def write_text(self, name: str, text: str) -> None:
        atomic_write(self.file(name), text)

    @contextlib.contextmanager
    def writing(self, what: str = "the results"):
        """Turn an ``OSError`` of the block's writes (a full disk, a folder where a file goes, a
        read-only file) into one ``UserError`` line naming the file's folder: the files written
        before are whole (:func:`atomic_write`), and the rerun resumes."""
        try:
            yield
        except OSError as exc:
            where = getattr(exc, "filename2", None) or exc.filename or self.path
            raise UserError(f"cannot write {what} into {self.path} ({exc.strerror or exc}: {where}); the files "
                            "written so far are whole: free some space or remove what is in the way, and rerun "
                            "the same command to resume") from None
