"""Finished training runs of a few-shot run folder, saved one by one so that a rerun resumes.

Each (method, shots, seed) training run of :func:`ntk_bridge.fewshot.experiment.run_experiment` is
saved, as soon as it is tested, to ``<out>/trained/<method>-<shots>shot-seed<seed>-<key>.json``: its
``results.csv`` row, its validation curve (``curves.csv`` rows) and its per-episode test accuracies
(``episodes.csv`` rows): everything the tables are built from. The file is written atomically
(:func:`ntk_bridge.runs.atomic_write`) and begins with one header line,
``# ntk_bridge trained run <format> sha256 <hex>``, the SHA-256 of the JSON body that follows.

``key`` (:func:`run_key`) is the SHA-256 of everything that determines the run: the method's
settings, the body, the caps, checkpoints and plateau rule with the training seed, the episode
shapes and counts, a digest of the data's arrays (:func:`data_digest`: every image of every split,
or every episode of a task set), the versions of ntk_bridge and the numerical packages, and the BLAS
thread count. A changed option gives another key, so another file: it is never reused for it.

:meth:`TrainedRuns.load` trusts a file only when its header parses, the body's SHA-256 matches, the
body is JSON with the expected key, method, shots and seed, and its arrays have the recorded sizes;
anything else (cut short, altered, empty, another run's file renamed over it) is counted as damaged
(:attr:`TrainedRuns.damaged`) and the run is trained again. With a step cap alone a run is
reproducible, so a resumed folder's tables equal an uninterrupted run's; with a time cap the saved
run is the one that finished.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path

import numpy as np

__all__ = ["TrainedRuns", "run_key", "data_digest", "FORMAT", "FOLDER"]

#: Format of a saved run (part of every key: a new format never reads an old file). 2: format 1's runs may
#: have tested later parameters than their best-validation ones (a compiled step loaded from JAX's persistent
#: cache overwrote the snapshot, :func:`ntk_bridge.fewshot.train.snapshot`), so none of them is reused.
FORMAT = 2
#: The folder of saved runs inside a few-shot run folder.
FOLDER = "trained"
_HEADER = re.compile(rb"^# ntk_bridge trained run (\d+) sha256 ([0-9a-f]{64})\n")


def _plain(value):
    """numpy scalars -> Python numbers (for ``json``)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def data_digest(data) -> str:
    """SHA-256 of every array a few-shot run reads: a dataset's splits (``{split: images}``) or a task
    set's training, validation and test episodes (:class:`~ntk_bridge.fewshot.on_tasks.TaskEpisodes`)."""
    h = hashlib.sha256()
    if hasattr(data, "splits"):
        arrays = [(s, data.splits[s]) for s in sorted(data.splits)]
    else:
        arrays = [(f"{split}.{f.name}", getattr(getattr(data, split), f.name))
                  for split in ("train", "val", "test") for f in dataclasses.fields(getattr(data, split))]
    h.update(str(getattr(data, "name", "")).encode())
    for name, a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{name} {a.dtype.str} {a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def run_key(**parts) -> str:
    """SHA-256 (hex) of ``parts`` (JSON, sorted keys) with :data:`FORMAT`, the package versions and
    the BLAS thread count."""
    from ntk_bridge.provenance import numerics_versions
    from ntk_bridge.runtime import current_blas_threads

    context = dict(format=FORMAT, versions=dict(numerics_versions()), blas_threads=current_blas_threads(), **parts)
    blob = json.dumps(context, sort_keys=True, default=_plain).encode()
    return hashlib.sha256(blob).hexdigest()


class TrainedRuns:
    """The saved runs of the few-shot run folder ``out`` (see the module docstring)."""

    def __init__(self, out: Path | str):
        self.folder = Path(out) / FOLDER
        self.damaged: list[str] = []
        self.reused: list[str] = []

    def path(self, method: str, shots: int, seed: int, key: str) -> Path:
        return self.folder / f"{method}-{int(shots)}shot-seed{int(seed)}-{key[:24]}.json"

    def load(self, method: str, shots: int, seed: int, key: str) -> tuple[dict, list[dict], np.ndarray] | None:
        """``(row, history, accuracies)`` of a saved run that verifies, else None (a damaged file
        is noted in :attr:`damaged`)."""
        path = self.path(method, shots, seed, key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            self.damaged.append(path.name)
            return None
        saved = self._verified(blob, method, shots, seed, key)
        (self.damaged if saved is None else self.reused).append(path.name)
        return saved

    @staticmethod
    def _verified(blob: bytes, method: str, shots: int, seed: int, key: str):
        from ntk_bridge.runs import verified_body

        verified = verified_body(blob, _HEADER, FORMAT, 2)
        if verified is None:
            return None
        body = verified[1]
        try:
            saved = json.loads(body)
            row, history, acc = saved["row"], saved["history"], np.asarray(saved["accuracy"], np.float64)
        except (ValueError, KeyError, TypeError):
            return None
        if (saved.get("key") != key or not isinstance(row, dict) or not isinstance(history, list)
                or not all(isinstance(r, dict) for r in history) or acc.ndim != 1
                or (row.get("method"), row.get("shots"), row.get("seed")) != (method, int(shots), int(seed))
                or row.get("test_episodes") != acc.size):
            return None
        return row, history, acc

    def save(self, method: str, shots: int, seed: int, key: str, row: dict, history: list[dict],
             acc: np.ndarray) -> None:
        """Write the run atomically (an ``OSError`` propagates: the caller says it in one line)."""
        from ntk_bridge.runs import atomic_write

        body = json.dumps({"key": key, "row": row, "history": history,
                           "accuracy": np.asarray(acc, np.float64).tolist()}, default=_plain).encode()
        self.folder.mkdir(parents=True, exist_ok=True)
        header = f"# ntk_bridge trained run {FORMAT} sha256 {hashlib.sha256(body).hexdigest()}\n".encode()
        atomic_write(str(self.path(method, shots, seed, key)), header + body)
