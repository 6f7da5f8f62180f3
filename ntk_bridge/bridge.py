"""The bridge between the two wings: a sweep's run folder read back as few-shot episodes (``ntk-bridge
fewshot --tasks-of RUN``).

It sits above both wings because it needs both: the task families and the run record of the sweep
(:mod:`ntk_bridge.families`, :mod:`ntk_bridge.record`, :mod:`ntk_bridge.runs`) to rebuild the task set
a sweep ran on, with validation episodes of the dataset's meta-validation classes, and the few-shot
wing's episodes (:mod:`ntk_bridge.fewshot.on_tasks`) to hand it to the networks. Putting it in either
wing would make that wing import the other; here ``families`` imports nothing of ``fewshot`` and
``fewshot`` nothing of ``families`` (``tests/test_structure.py``). What is compared with what is
said in :mod:`ntk_bridge.fewshot.on_tasks`.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.on_tasks import CLOSED_FORM_KEYS, check_comparable, task_episodes

__all__ = ["load_run_tasks", "verified_rows"]


def load_run_tasks(run: Path | str, val_episodes: int = 20, val_tasks: int = 0):
    """``(TaskEpisodes, sweep results or None, the run's config.json)`` of a sweep's run folder: the
    task set rebuilt from its ``config.json`` (and checked against the fingerprint recorded there),
    with validation episodes as the module docstring says."""
    from ntk_bridge.families import IMAGE_FAMILIES, image_family_data, image_validation_episodes
    from ntk_bridge import build
    from ntk_bridge.record import read_sweep_record

    run = Path(run)
    path = run / "config.json"
    record, config = read_sweep_record(run)  # one validating schema, before anything is built
    spec = config.tasks
    tasks = build.task_set(spec)
    recorded = record["tasks_fingerprint"]  # present: read_sweep_record refuses a record without it
    if recorded != tasks.fingerprint():
        raise UserError(f"--tasks-of: the task set rebuilt from {path} differs from the one the sweep ran on "
                        f"(fingerprint {tasks.fingerprint()} != {recorded}); was the data or the renderer changed?")
    validation = None
    if spec.family in IMAGE_FAMILIES:
        data = image_family_data(spec.family, spec.data_dir)
        classes, samples = data.splits["val"].shape[:2]
        ways, need = tasks.n_outputs, (spec.support + spec.query) // tasks.n_outputs
        n = min(int(val_episodes), classes * (samples // need) // ways)  # what distinct images allow at most
        while validation is None:  # the greedy draw may run out of classes a little before that bound
            try:
                validation = image_validation_episodes(data, spec.task_seed, n, spec.support, spec.query, spec.dim,
                                                       ways, name=spec.family)
            except UserError:
                if n <= 1:
                    raise
                n -= 1
    episodes = task_episodes(tasks, validation, val_tasks or max(1, tasks.train_support_x.shape[0] // 5))
    return episodes, verified_rows(run, tasks, spec.task_seed), record


def verified_rows(run: Path, tasks, task_seed: int) -> pd.DataFrame | None:
    """The rows of the cells a sweep's ``results.csv`` lists, read from its verified ``cells/``
    (:meth:`ntk_bridge.runs.RunFolder.read_cell`), or None without ``results.csv``. ``UserError``
    (one line) when ``results.csv`` says another task set or task seed than ``config.json``, when a
    cell it lists is missing or damaged, when a closed form does not cover every test task, or when
    a compared closed form has not exactly one accuracy per test task
    (:func:`~ntk_bridge.fewshot.on_tasks.check_comparable`): all before any network trains."""
    from ntk_bridge.runs import RunFolder

    if not (run / "results.csv").is_file():
        return None
    try:
        listed = pd.read_csv(run / "results.csv", keep_default_na=True, usecols=["tasks", "task_seed", "cell"])
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"--tasks-of: {run / 'results.csv'} is not a sweep's results table ({e})") from None
    if not len(listed):
        return None
    seeds = sorted(set(listed["task_seed"].dropna().astype(int)))
    names = sorted(set(listed["tasks"].dropna().astype(str)))
    if names != [tasks.name] or seeds != [int(task_seed)]:
        raise UserError(f"--tasks-of: {run / 'results.csv'} holds tasks {', '.join(names)} at task seed(s) "
                        f"{', '.join(map(str, seeds))}, but config.json says {tasks.name} at task seed {task_seed}")
    folder, frames = RunFolder(run), []
    for key in dict.fromkeys(listed["cell"].dropna().astype(str)):
        rows = folder.read_cell(key)
        if rows is None:
            raise UserError(f"--tasks-of: cell {key} that {run / 'results.csv'} lists is missing or damaged in "
                            f"{folder.cells}; rerun the sweep into {run} to recompute it")
        frames.append(rows)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=listed.columns)
    if set(rows["tasks"].astype(str)) - {tasks.name} or set(rows["task_seed"].astype(int)) - {int(task_seed)}:
        raise UserError(f"--tasks-of: the cells of {run} hold rows of another task set or task seed than "
                        "config.json's")
    test = set(range(tasks.test_support_x.shape[0]))
    keys = [k for k in CLOSED_FORM_KEYS + ["width", "outer_time"] if k in rows]
    for key, group in rows.groupby(keys, dropna=False, sort=False):
        got = set(group["test_task"].astype(int))
        if got != test:
            others = f" and {len(got - test)} test task(s) it does not have" if got - test else ""
            raise UserError(f"--tasks-of: closed form {dict(zip(keys, key))} in {run} covers "
                            f"{len(got & test)} of the task set's {len(test)} test tasks{others}")
    if len(rows):  # what the comparison after training reads, checked now
        check_comparable(rows, len(test), str(run))
    return rows
