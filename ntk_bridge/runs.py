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
file (``tempfile.mkstemp`` alone would leave them ``0600``).

**One writer at a time.** :meth:`RunFolder.lock` takes an exclusive lock on ``<folder>/.lock``
(``fcntl.flock``: released by the operating system when the process ends, however it ends), so two
sweeps started into one folder do not both compute every cell: the second waits, then finds the
first one's cells and computes only what is still missing.

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
import re
import tempfile
from typing import Callable, Iterable, Mapping

import pandas as pd

from ntk_bridge.errors import UserError

__all__ = ["atomic_write", "verified_body", "RunFolder", "CELL_FORMAT"]

#: Version of the cell file format (the first line of every cell file).
CELL_FORMAT = 1
_HEADER = re.compile(rb"^# ntk_bridge cell v(\d+) rows=(\d+) sha256=([0-9a-f]{64})\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename), with
    the permissions the umask gives a new file. On any error the temporary file is removed and the
    old ``path`` (if any) is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.chmod(tmp, 0o666 & ~_umask())
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


def _csv_bytes(df: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()


class RunFolder:
    """The files of one run (see the module docstring). Creating the object creates nothing;
    :meth:`check_writable` creates the folder and proves it writable, ``cells/`` appears with the
    first cell."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.cells = os.path.join(self.path, "cells")

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

    # -- cells ---------------------------------------------------------------------------------
    def cell_path(self, key: str) -> str:
        return os.path.join(self.cells, f"{key}.csv")

    def write_cell(self, key: str, rows: pd.DataFrame) -> None:
        """Write one cell's rows (a DataFrame in the results schema) atomically, with its header."""
        os.makedirs(self.cells, exist_ok=True)
        body = _csv_bytes(rows)
        header = f"# ntk_bridge cell v{CELL_FORMAT} rows={len(rows)} sha256={hashlib.sha256(body).hexdigest()}\n"
        atomic_write(self.cell_path(key), header.encode() + body)

    def read_cell(self, key: str, fields: Mapping[str, object] | None = None) -> pd.DataFrame | None:
        """The cell's rows, or ``None`` if its file is missing or fails verification: its header, its
        SHA-256, its row count, and that every row belongs to the cell (its ``cell`` column is ``key``
        and each of ``fields``, ``{column: value}``, the cell's grid fields, has the cell's value)."""
        try:
            with open(self.cell_path(key), "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            return None
        except OSError:
            return None
        verified = verified_body(blob, _HEADER, CELL_FORMAT, 3)
        if verified is None:
            return None
        match, body = verified
        try:
            df = pd.read_csv(io.BytesIO(body), keep_default_na=True)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
            return None
        if len(df) != int(match.group(2)) or ("cell" in df and not (df["cell"].astype(str) == key).all()):
            return None
        for name, value in (fields or {}).items():
            if name not in df or not (df[name] == value).all():
                return None
        return df

    def read_cells(self, keys: Iterable[str], fields: Mapping[str, Mapping[str, object]] | None = None
                   ) -> tuple[dict[str, pd.DataFrame], list[str]]:
        """``({key: rows} of the cells that verify, [keys whose file exists but is damaged])``;
        ``fields``: ``{key: {column: value}}``, the grid fields each cell's rows must have."""
        good, damaged = {}, []
        for key in keys:
            df = self.read_cell(key, (fields or {}).get(key))
            if df is not None:
                good[key] = df
            elif os.path.exists(self.cell_path(key)):
                damaged.append(key)
        return good, damaged

    # -- the other files -----------------------------------------------------------------------
    def write_table(self, name: str, df: pd.DataFrame) -> None:
        atomic_write(self.file(name), _csv_bytes(df))

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
