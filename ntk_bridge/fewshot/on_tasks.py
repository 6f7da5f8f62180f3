"""The finite networks of ``ntk-bridge fewshot`` on a task set's own episodes (``--tasks-of RUN``).

A sweep over image tasks (``ntk-bridge sweep --tasks kanji --arch conv ...``) fits its closed forms to
the task set's ``N`` training episodes and scores them on its test episodes. Here the few-shot
methods (MTL, ANIL, MAML, R2D2, ProtoNet: Conv-4 or MLP bodies, cross-entropy, Adam, each method's
own test-time adaptation; :mod:`ntk_bridge.fewshot`) are trained on exactly those training episodes
and tested on exactly those test episodes, so each test episode has an accuracy from every closed
form and from every trained network, and the two can be compared pairwise
(:func:`closed_form_comparison`, ``closed_forms.csv``).

What is the same and what is not:

* the inputs: the task set's images as the closed forms see them (``sqrt(dim) x sqrt(dim)`` pixels,
  each image centred and put on the sphere ``||x||^2 = d``; float32 here);
* the training episodes: every outer step meta-trains on ``meta_batch`` of the ``N`` training
  episodes, with their support and query sets as they are (``MethodConfig.train_queries`` does not
  apply); MTL merges support and query and has one head per training task, as the closed forms' MTL;
* the labels: the task set's classification targets (one-hot or centred one-hot) as class indices;
  the closed forms regress the centred one-hot vectors with the squared loss, the networks are
  trained with cross-entropy (what ``ntk-bridge fewshot`` trains), and accuracy is the argmax for both;
* validation: the networks stop by the plateau rule on validation episodes that the closed forms
  never see: for ``kanji`` and ``omniglot`` task sets, episodes of the dataset's meta-validation
  classes prepared exactly as the task set's (:func:`ntk_bridge.families.image_validation_episodes`,
  built by :func:`ntk_bridge.bridge.load_run_tasks`, which reads the sweep's run folder);
  for a task file, the last ``val_tasks`` training episodes, which are then not trained on (the
  closed forms used all ``N``: said in ``config.json``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ntk_bridge.datasets.episodes import Episodes
from ntk_bridge.errors import UserError
from ntk_bridge.fewshot.evaluate import BASELINE, mean_ci95

__all__ = ["TaskEpisodes", "as_episodes", "task_episodes", "closed_form_comparison", "check_comparable",
           "write_closed_forms", "closed_form_table", "COMPARISON_COLUMNS", "CLOSED_FORM_KEYS"]


@dataclass(frozen=True)
class TaskEpisodes:
    """A task set's episodes as few-shot :class:`~ntk_bridge.datasets.episodes.Episodes`.

    Attributes:
      name: the task set's name (the ``dataset`` column).
      ways, shots, queries: classes per episode, support and query images per class.
      image_shape: ``(H, W, ch)``.
      train, val, test: training (``classes``: one row block per episode, MTL's heads), validation
        and test episodes.
      validation: where ``val`` came from (one sentence, for ``config.json``).
      fingerprint: the task set's :meth:`~ntk_bridge.tasks.TaskSet.fingerprint`.
    """

    name: str
    ways: int
    shots: int
    queries: int
    image_shape: tuple[int, ...]
    train: Episodes
    val: Episodes
    test: Episodes
    validation: str
    fingerprint: str

    credit = "the episodes of a task set (ntk-bridge sweep --tasks ...)"

    def summary(self) -> dict[str, tuple[int, int]]:
        """``{split: (episodes, images per episode)}`` (shown where datasets show classes x samples)."""
        return {s: (e.n_episodes, e.support_x.shape[1] + e.query_x.shape[1])
                for s, e in (("train", self.train), ("val", self.val), ("test", self.test))}


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class indices ``[E, n]`` of classification targets ``[E, n, k]`` (one-hot or centred one-hot)."""
    k = y.shape[-1]
    labels = np.argmax(y, axis=-1)
    onehot = np.eye(k)[labels]
    if k < 2 or not (np.allclose(y, onehot) or np.allclose(y, onehot - 1.0 / k)):
        raise UserError(f"{where}: the few-shot networks need classification tasks (targets one-hot or centred "
                        "one-hot over at least 2 classes)")
    return labels


def _per_class(labels: np.ndarray, ways: int, where: str) -> int:
    counts = np.stack([np.bincount(row, minlength=ways) for row in labels])
    if counts.min() < 1 or not np.all(counts == counts[0, 0]):
        raise UserError(f"{where}: every episode needs the same number of images of each of its {ways} classes")
    return int(counts[0, 0])


def as_episodes(sx: np.ndarray, sy: np.ndarray, qx: np.ndarray, qy: np.ndarray, image_shape, where: str,
                own_classes: bool) -> tuple[Episodes, int, int]:
    """Task arrays (``[E, n, d]`` inputs, ``[E, n, k]`` targets) -> ``(Episodes, shots, queries)``;
    ``own_classes``: episode ``e``'s label ``j`` gets class ``e * k + j`` (one head per task),
    else class ``j``."""
    shape = tuple(int(s) for s in image_shape)
    s_lab, q_lab = _labels(np.asarray(sy), where), _labels(np.asarray(qy), where)
    ways = sy.shape[-1]
    shots, queries = _per_class(s_lab, ways, f"{where} support"), _per_class(q_lab, ways, f"{where} query")
    n = sx.shape[0]
    base = (np.arange(n)[:, None] * ways) if own_classes else np.zeros((n, 1), int)
    as_images = lambda a: np.asarray(a, np.float32).reshape(a.shape[0], a.shape[1], *shape)  # noqa: E731
    return (Episodes(as_images(sx), s_lab.astype(np.int32), as_images(qx), q_lab.astype(np.int32),
                     (base + np.arange(ways)[None, :]).astype(np.int32)), shots, queries)


def task_episodes(tasks, validation: tuple[np.ndarray, ...] | None = None, val_tasks: int = 0) -> TaskEpisodes:
    """The episodes of a :class:`~ntk_bridge.tasks.TaskSet` with ``image_shape``; ``validation``:
    ``(support_x, support_y, query_x, query_y)`` arrays of validation episodes, else the last
    ``val_tasks`` training episodes are held out for validation."""
    if tasks.image_shape is None:
        raise UserError(f"the few-shot networks need image tasks ({tasks.name} has flat inputs): a kanji or "
                        "omniglot sweep, or a task file with image_shape")
    if tasks.test_query_y is None:
        raise UserError(f"{tasks.name}: the test tasks have no query labels; the networks' accuracy cannot be measured")
    train = (tasks.train_support_x, tasks.train_support_y, tasks.train_query_x, tasks.train_query_y)
    if validation is None:
        n = tasks.train_support_x.shape[0]
        if not 1 <= val_tasks < n:
            raise UserError(f"--val-tasks: hold out between 1 and {n - 1} of the {n} training tasks for validation, "
                            f"got {val_tasks}")
        validation = tuple(a[n - val_tasks:] for a in train)
        train = tuple(a[:n - val_tasks] for a in train)
        where = f"the last {val_tasks} of the task set's {n} training episodes (not trained on)"
    else:
        where = f"{validation[0].shape[0]} episodes of the dataset's meta-validation classes, prepared as the task set's"
    tr, shots, queries = as_episodes(*train, tasks.image_shape, "training tasks", own_classes=True)
    va, vs, _ = as_episodes(*validation, tasks.image_shape, "validation tasks", own_classes=False)
    te, ts, tq = as_episodes(tasks.test_support_x, tasks.test_support_y, tasks.test_query_x, tasks.test_query_y,
                             tasks.image_shape, "test tasks", own_classes=False)
    if not (vs == ts == shots) or tr.classes.shape[1] != te.classes.shape[1]:
        raise UserError("training, validation and test tasks must have the same ways and shots")
    return TaskEpisodes(tasks.name, int(tr.classes.shape[1]), shots, tq, tuple(int(s) for s in tasks.image_shape),
                        tr, va, te, where, tasks.fingerprint())


#: Columns of ``closed_forms.csv``.
COMPARISON_COLUMNS = {
    "closed_form": "the closed form (sweep method: mtl, anil, maml, ..., baseline)",
    "arch": "the closed form's architecture (fc, conv, resnet)",
    "depth": "its depth", "inner_time": "its lambda*tau (NaN where it does not depend on it)",
    "finetune_time": "its s_hat", "mtl_data": "its MTL data", "test_head": "its test-time head",
    "closed_accuracy": "its mean accuracy over the test episodes",
    "network": "the trained network's method (ntk-bridge fewshot), or nn-pixels",
    "network_accuracy": "the network's mean accuracy over the same test episodes (averaged over seeds first)",
    "difference": "network_accuracy - closed_accuracy",
    "difference_ci95": "95% half-width of that difference, paired over the test episodes",
    "episodes": "test episodes", "seeds": "training seeds of the network",
}

#: The columns that name one closed form of a sweep (one accuracy per test task each).
CLOSED_FORM_KEYS = ["method", "depth", "inner_time", "finetune_time", "mtl_data", "test_head"]


#: The columns of a sweep's rows that :func:`closed_form_comparison` reads.
SWEEP_COLUMNS = CLOSED_FORM_KEYS + ["width", "test_task", "test_accuracy", "status"]


def compared_closed_forms(sweep: pd.DataFrame) -> pd.DataFrame:
    """The rows of a sweep that :func:`closed_form_comparison` compares: infinite width (and infinite
    outer time), with a test accuracy; the closed-form keys' missing values are ``"-"``."""
    cf = sweep[(sweep["width"].astype(float) == np.inf) & sweep["test_accuracy"].notna()].copy()
    if "outer_time" in cf:
        cf = cf[cf["outer_time"].astype(float) == np.inf]
    cf[CLOSED_FORM_KEYS] = cf[CLOSED_FORM_KEYS].astype(object).where(cf[CLOSED_FORM_KEYS].notna(), "-")
    return cf


def check_comparable(sweep: pd.DataFrame, test_episodes: int, where: str) -> None:
    """Refuse (:class:`UserError`, one line) sweep rows that :func:`closed_form_comparison` could not
    pair with networks tested on ``test_episodes`` episodes: a missing column, or a closed form
    (all its rows ``ok``) with a test task outside ``0 .. test_episodes - 1`` or with two accuracies
    for one test task (rows of two sweeps mixed, say).
    Called before any network trains (:func:`ntk_bridge.bridge.verified_rows`), so the comparison
    after training cannot fail."""
    missing = [c for c in SWEEP_COLUMNS if c not in sweep]
    if missing:
        raise UserError(f"--tasks-of: the rows of {where} lack the column(s) {', '.join(missing)}")
    try:
        cf = compared_closed_forms(sweep)
        tasks = cf["test_task"].astype(float)
    except (ValueError, TypeError) as e:
        raise UserError(f"--tasks-of: the rows of {where} are not a sweep's ({e})") from None
    expected = [float(t) for t in range(int(test_episodes))]
    for key, group in cf.assign(test_task=tasks).groupby(CLOSED_FORM_KEYS, sort=False):
        if not (group["status"] == "ok").all():
            continue  # left out of the comparison (its accuracies are not trusted)
        got = list(group["test_task"])
        if len(set(got)) != len(got) or not set(got) <= set(expected):
            raise UserError(f"--tasks-of: closed form {dict(zip(CLOSED_FORM_KEYS, key))} in {where} has "
                            f"{len(got)} test accuracies over {len(set(got))} distinct test tasks, "
                            f"{len(set(got) - set(expected))} of them not among the task set's {len(expected)} test "
                            "episodes: each test episode needs at most one")


def closed_form_comparison(sweep: pd.DataFrame, episodes: pd.DataFrame, arch: str) -> pd.DataFrame:
    """Accuracies of every infinite-width closed form of a sweep (``results.csv`` rows, one per test
    task) beside every trained network's on the same test episodes (``episodes.csv`` of the few-shot
    run: one row per method, seed and episode), paired per episode (:data:`COMPARISON_COLUMNS`).
    Closed forms whose rows are not all ``ok`` are left out (their accuracies are not trusted)."""
    cf = compared_closed_forms(sweep)
    nets = episodes.groupby(["method", "episode"])["accuracy"].mean().unstack("episode")
    seeds = episodes.groupby("method")["seed"].nunique()
    rows = []
    for key, group in cf.groupby(CLOSED_FORM_KEYS, sort=False):
        if not (group["status"] == "ok").all():
            continue
        closed = group.sort_values("test_task")["test_accuracy"].to_numpy(float)
        tasks = group.sort_values("test_task")["test_task"].to_numpy(int)
        for network in nets.index:
            acc = nets.loc[network].reindex(tasks).to_numpy(float)
            if np.isnan(acc).any():
                raise ValueError(f"{network}: no accuracy for some of the sweep's test tasks; not the same episodes")
            diff, ci = mean_ci95(acc - closed)
            rows.append({"closed_form": key[0], "arch": arch, **dict(zip(CLOSED_FORM_KEYS[1:], key[1:])),
                         "closed_accuracy": float(closed.mean()), "network": network,
                         "network_accuracy": float(acc.mean()), "difference": diff, "difference_ci95": ci,
                         "episodes": len(tasks), "seeds": int(seeds[network])})
    out = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    return out.replace("-", np.nan)


def networks_first(names) -> list[str]:
    """Trained methods in registry order, then the raw-pixel baseline."""
    from ntk_bridge.fewshot import METHOD_NAMES

    names = set(names)
    return [m for m in METHOD_NAMES if m in names] + ([BASELINE] if BASELINE in names else [])


def write_closed_forms(out: Path | str, sweep: pd.DataFrame | None, episodes: pd.DataFrame, record: dict
                       ) -> pd.DataFrame | None:
    """Write ``closed_forms.csv`` (:func:`closed_form_comparison`) into the few-shot run folder
    ``out``; None (and nothing written) when the sweep has no results."""
    if sweep is None or not len(sweep):
        return None
    arch = str(record.get("config", {}).get("model", {}).get("arch", "fc"))
    table = closed_form_comparison(sweep, episodes, arch)
    from ntk_bridge.runs import RunFolder

    RunFolder(out).write_table("closed_forms.csv", table)  # atomically
    return table


def closed_form_table(comparison: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """A short view of ``closed_forms.csv``: each closed form's accuracy (percent) by depth at the
    smallest inner time (first MTL data and test head), and a title with the networks' accuracies."""
    c = comparison.copy()
    for column, value in (("inner_time", c["inner_time"].min()), ("mtl_data", c["mtl_data"].dropna().iloc[0]
                                                                   if c["mtl_data"].notna().any() else None),
                          ("test_head", c["test_head"].dropna().iloc[0] if c["test_head"].notna().any() else None)):
        if value is not None:
            c = c[c[column].isna() | (c[column] == value)]
    closed = c.drop_duplicates(["closed_form", "depth"])
    order = list(dict.fromkeys(closed["closed_form"]))
    pivot = closed.pivot(index="depth", columns="closed_form", values="closed_accuracy")[order]
    pivot = (100 * pivot).round(1).reset_index()
    pivot["depth"] = pivot["depth"].astype(int)
    pivot.columns = ["depth"] + [f"{m} (closed form)" for m in order]
    nets = comparison.drop_duplicates("network").set_index("network")["network_accuracy"]
    shown = ", ".join(f"{m} {100 * nets[m]:.1f}" for m in networks_first(nets.index))
    settings = ", ".join(f"{k} {c[k].dropna().iloc[0]}" for k in ("inner_time", "finetune_time", "mtl_data", "test_head")
                         if c[k].notna().any())
    title = (f"accuracy (%) on the same {int(comparison['episodes'].iloc[0])} test episodes: closed forms "
             f"({comparison['arch'].iloc[0]}, width inf, {settings}) by depth; trained networks: {shown}")
    return pivot, title

