"""What survives what: damaged cells, kills, a full disk, concurrent sweeps, impossible requests,
degenerate data, and where provenance comes from (README, "Guarantees")."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ntk_bridge import build, runs, sweep as sw
from ntk_bridge.cli import main
from ntk_bridge.errors import UserError
from ntk_bridge.metrics import STATUSES
from ntk_bridge.provenance import source_checkout
from ntk_bridge.runs import RunFolder
from ntk_bridge.tasks import TaskSet
from ntk_bridge.families import subspace_tasks

SMALL = dict(depths=(1, 2, 3), inner_times=(0.1, 1.0), mtl_data=("all",), train_tasks=3, test_tasks=2, support=3,
             query=4, dim=5)
CLI_SMALL = ["sweep", "--depth", "1..3", "--inner-time", "0.1,1", "--mtl-data", "all", "--train-tasks", "3",
             "--test-tasks", "2", "--support", "3", "--query", "4", "--dim", "5", "--no-figures"]


class Notes(sw.Progress):
    def __init__(self):
        self.notes, self.starts = [], []

    def start(self, total, cached, damaged):
        self.starts.append((total, cached, damaged))

    def note(self, message):
        self.notes.append(message)


@pytest.fixture(scope="module")
def fresh(tiny_sweep):
    """The results of SMALL, an uninterrupted in-process run (the suite's shared tiny sweep)."""
    config, _, csv = tiny_sweep
    assert config == sw.SweepConfig.of(**SMALL)
    return csv


# -- damaged cache ------------------------------------------------------------------------------

def _damage(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif how == "cut mid-line":
        path.write_bytes(blob[: blob.rindex(b"\n", 0, len(blob) - 1) + 7])
    elif how == "altered":
        i = blob.index(b"0.", blob.index(b"\n", 80))
        path.write_bytes(blob[:i] + (b"9" if blob[i:i + 1] != b"9" else b"8") + blob[i + 1:])
    elif how == "extra row":
        path.write_bytes(blob + blob.splitlines(keepends=True)[-1])
    elif how == "no header":
        path.write_bytes(blob[blob.index(b"\n") + 1:])


@pytest.mark.parametrize("how", ["empty", "truncated", "cut mid-line", "altered", "extra row", "no header"])
def test_a_damaged_cell_is_recomputed_and_said_once(tmp_path, fresh, how):
    config = sw.SweepConfig.of(**SMALL)
    sw.run_sweep(config, str(tmp_path), figures=False)
    victim = sorted((tmp_path / "cells").iterdir())[2]
    _damage(victim, how)
    notes = Notes()
    df = sw.run_sweep(config, str(tmp_path), progress=notes, figures=False)
    assert df.to_csv(index=False) == fresh
    assert notes.starts == [(6, 5, 1)] and len([n for n in notes.notes if "damaged" in n]) == 1
    assert RunFolder(tmp_path).read_cell(victim.stem) is not None  # repaired


def test_cells_verify_themselves():
    folder = RunFolder("/nonexistent")
    assert folder.read_cell("missing") is None


# -- kills and interruptions --------------------------------------------------------------------

def test_kill_9_mid_sweep_then_rerun_is_the_fresh_result(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-c", "import sys; from ntk_bridge.cli import entry; sys.argv[0] = 'ntk-bridge'; entry()",
            *CLI_SMALL, "--depth", "1..5", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        cells = list((out / "cells").glob("*.csv")) if (out / "cells").exists() else []
        if len(cells) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main([*CLI_SMALL, "--depth", "1..5", "--out", str(out)]) == 0
    assert main([*CLI_SMALL, "--depth", "1..5", "--out", str(tmp_path / "fresh")]) == 0
    assert (out / "results.csv").read_bytes() == (tmp_path / "fresh" / "results.csv").read_bytes()
    assert not [p for p in (out / "cells").iterdir() if p.name.endswith(".tmp")]


def test_a_killed_writers_temporary_files_are_removed_by_the_next_run(tmp_path, fresh):
    # what a kill between atomic_write's mkstemp and its rename leaves (the race above hits it only sometimes)
    assert main([*CLI_SMALL, "--out", str(tmp_path)]) == 0
    cells = sorted((tmp_path / "cells").glob("*.csv"))
    left = [tmp_path / "cells" / f".{cells[0].name}.k1ll3d.tmp", tmp_path / ".results.csv.x9z8y7.tmp"]
    for path in left:
        path.write_bytes(cells[0].read_bytes()[:40])
    cells[1].unlink()  # and one cell still to compute
    keep = tmp_path / "cells" / "notes.tmp"  # not a name atomic_write gives: not ours to remove
    keep.write_text("mine")
    assert main([*CLI_SMALL, "--out", str(tmp_path)]) == 0
    assert not any(p.exists() for p in left) and keep.read_text() == "mine"
    assert pd.read_csv(tmp_path / "results.csv").to_csv(index=False) == fresh


# -- a full disk ---------------------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_the_rerun_resumes(tmp_path, fresh, monkeypatch, capsys):
    real = runs.atomic_write
    calls = []

    def full_after_two(path, data):
        if os.path.basename(os.path.dirname(path)) == "cells" and len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        calls.append(path)
        real(path, data)

    monkeypatch.setattr(runs, "atomic_write", full_after_two)
    capsys.readouterr()
    args = [*CLI_SMALL, "--out", str(tmp_path)]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "No space left on device" in err[0] and "rerun" in err[0]
    assert len(list((tmp_path / "cells").glob("*.csv"))) == 2
    monkeypatch.setattr(runs, "atomic_write", real)
    assert main(args) == 0
    assert pd.read_csv(tmp_path / "results.csv").to_csv(index=False) == fresh


# -- two sweeps into one folder -----------------------------------------------------------------

def test_a_second_sweep_into_a_locked_folder_waits_then_computes_nothing_twice(tmp_path):
    config = sw.SweepConfig.of(**SMALL)
    sw.run_sweep(config, str(tmp_path), figures=False)
    held = threading.Event()
    release = threading.Event()

    def hold():
        with RunFolder(tmp_path).lock():
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    notes = Notes()
    timer = threading.Timer(0.5, release.set)
    timer.start()
    started = time.time()
    sw.run_sweep(config, str(tmp_path), progress=notes, figures=False)
    t.join()
    assert time.time() - started >= 0.45 and any("waiting" in n for n in notes.notes)
    assert notes.starts == [(6, 6, 0)]


def test_two_sweeps_started_together_compute_each_cell_once(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-c", "import sys; from ntk_bridge.cli import entry; sys.argv[0] = 'ntk-bridge'; entry()",
            *CLI_SMALL, "--out", str(out)]
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    cached = sorted(int(m.group(1)) for e in errs for m in [re.search(r"\((\d+) cached", e)] if m)
    assert cached == [0, 6], errs  # one computed all six cells, the other found them


# -- impossible and degenerate requests ---------------------------------------------------------

def test_a_sweep_too_large_for_the_memory_is_refused_before_anything_is_written(tmp_path):
    config = sw.SweepConfig.of(**SMALL)
    with pytest.raises(UserError, match="needs about .* of memory"):
        sw.check_feasible(config, build.task_set(config), memory=10 * 2 ** 20)
    assert not tmp_path.joinpath("run").exists()
    with pytest.raises(UserError, match="cells, above the maximum"):
        sw.check_feasible(config.replace(inner_times=tuple(np.linspace(0, 1, 80_000))), build.task_set(config))


def test_a_sweep_with_no_ok_row_finishes_reports_and_draws_nothing(tmp_path, capsys):
    t = subspace_tasks(seed=0, n_train=3, n_test=2, n_support=3, n_query=4, dim=5)
    same = TaskSet(*(np.ones_like(a) if k.endswith("_x") else a for k, a in t.arrays().items()))
    same.save(tmp_path / "same.npz")
    capsys.readouterr()
    assert main(["sweep", "--tasks", str(tmp_path / "same.npz"), "--depth", "1..3", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert not (df["status"] == "ok").any() and "Flagged rows" in out
    assert not list((tmp_path / "run").glob("*.png"))
    assert set(df["status"]) <= set(STATUSES) | {f"mtl_{s}" for s in STATUSES}


# -- provenance ----------------------------------------------------------------------------------

def test_provenance_records_a_commit_only_for_this_projects_checkout(tmp_path):
    repo = tmp_path / "other"
    (repo / "site" / "ntk_bridge").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert source_checkout(str(repo / "site" / "ntk_bridge")) is None  # an unrelated repository encloses it
    (repo / "ntk_bridge").mkdir()
    (repo / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert source_checkout(str(repo / "ntk_bridge")) is None
    (repo / "pyproject.toml").write_text('[project]\nname = "ntk-bridge"\n')
    subprocess.run(["git", "-C", str(repo), "add", "."], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x"],
                   check=True)
    found = source_checkout(str(repo / "ntk_bridge"))
    assert found is not None and len(found["commit"]) == 40 and found["dirty"] is False


def test_config_json_says_how_many_damaged_cells_were_recomputed(tmp_path):
    config = sw.SweepConfig.of(**SMALL)
    sw.run_sweep(config, str(tmp_path), figures=False)
    next((tmp_path / "cells").iterdir()).write_bytes(b"")
    sw.run_sweep(config, str(tmp_path), figures=False)
    assert json.loads((tmp_path / "config.json").read_text())["damaged_cells_recomputed"] == 1


# -- the new surfaces: the kanji render cache, verify, fewshot, run folders ----------------------

def _cheap_renderer(monkeypatch):
    """Rendering as the code does it, on 6 characters (no near-duplicate pass over all of KanjiVG)."""
    from ntk_bridge.datasets import render

    monkeypatch.setattr(render, "list_characters", lambda *a, **k: [0x4e00, 0x4e8c, 0x4e09, 0x5341, 0x571f, 0x5c71])
    monkeypatch.setattr(render, "drop_near_duplicates", lambda codepoints, *a, **k: list(codepoints))


@pytest.mark.parametrize("how", ["truncated", "empty", "altered", "foreign arrays"])
def test_a_damaged_kanji_render_cache_is_rebuilt_never_trusted(tmp_path, monkeypatch, how):
    from ntk_bridge.datasets import loaders as data

    _cheap_renderer(monkeypatch)
    monkeypatch.delenv("NTK_BRIDGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the one cache rule (runtime.cache_dir)
    config = data.KanjiConfig(seed=3, samples_per_class=3, max_classes=None)
    images, codes = data.render_kanji(config)
    [entry] = (tmp_path / "xdg" / "ntk_bridge").glob("kanji_r*.npz")
    blob = entry.read_bytes()
    if how == "truncated":
        entry.write_bytes(blob[: len(blob) // 2])
    elif how == "empty":
        entry.write_bytes(b"")
    elif how == "altered":  # a flipped byte inside the compressed images: the archive's CRC catches it
        i = len(blob) // 3
        entry.write_bytes(blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1:])
    else:  # a valid archive with the wrong arrays
        np.savez(entry, images=np.zeros((2, 3, 5, 5), np.uint8), codepoints=np.arange(2))
    again, again_codes = data.render_kanji(config)
    np.testing.assert_array_equal(again, images)
    np.testing.assert_array_equal(again_codes, codes)
    with np.load(entry) as stored:  # rebuilt in place, whole
        np.testing.assert_array_equal(stored["images"], images)
    assert not [p for p in entry.parent.iterdir() if p.name.endswith(".tmp")]


def _degenerate(tmp_path, how):
    t = subspace_tasks(seed=0, n_train=3, n_test=3, n_support=3, n_query=4, dim=5)
    change = {"zero labels": lambda k, a: np.zeros_like(a) if k.endswith("_y") else a,
              "identical points": lambda k, a: np.ones_like(a) if k.endswith("_x") else a,
              "zero inputs": lambda k, a: np.zeros_like(a) if k.endswith("_x") else a,
              "inputs x1e150": lambda k, a: a * 1e150 if k.endswith("_x") else a}[how]
    path = tmp_path / "tasks.npz"
    np.savez(path, **{k: change(k, a) for k, a in t.arrays().items()})  # as a user's script would write it
    return path


@pytest.mark.parametrize("how", ["zero labels", "identical points", "zero inputs", "inputs x1e150"])
def test_verify_on_degenerate_data_writes_the_report_and_names_the_claims_without_usable_rows(tmp_path, capsys, how):
    from ntk_bridge.verify.claims import NO_USABLE_ROWS

    path = _degenerate(tmp_path, how)
    out = tmp_path / "verify"
    capsys.readouterr()
    code = main(["verify", "--quick", "--no-finite", "--tasks", str(path), "--out", str(out)])
    captured = capsys.readouterr()
    if how == "inputs x1e150":  # outside the kernels' exact range (ntk_bridge.tasks): refused in one line
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and "range" in lines[0], captured.err
        return
    assert code == 0 and "Traceback" not in captured.err, captured.err[-2000:]
    for name in ("claims.csv", "verdicts.csv", "report.md", "report.html", "panel.json"):
        assert (out / name).is_file(), name
    claims = pd.read_csv(out / "claims.csv")
    empty = claims[claims["detail"] == NO_USABLE_ROWS]
    assert (empty["verdict"] == "no data").all()  # a condition without a usable row: no statistic
    if len(empty):
        assert "no usable rows for" in captured.out
        for claim in set(empty["claim"]):
            if (claims.loc[claims["claim"] == claim, "detail"] == NO_USABLE_ROWS).all():
                verdicts = pd.read_csv(out / "verdicts.csv").set_index("claim")
                assert verdicts.loc[claim, "verdict"] == "inconclusive"


VERIFY = ["verify", "--quick", "--no-finite", "--tasks"]  # + a task file: one task set, 48 cells


@pytest.fixture
def small_file(tmp_path):
    path = tmp_path / "small.npz"
    subspace_tasks(seed=0, n_train=3, n_test=3, n_support=3, n_query=4, dim=5).save(path)
    return str(path)


def test_verify_on_a_full_disk_or_with_a_folder_in_the_way_is_one_line_and_the_rerun_resumes(tmp_path, monkeypatch,
                                                                                              capsys, small_file):
    import ntk_bridge.verify  # noqa: F401  (imported before the writer is replaced: its name is bound at import)

    out = tmp_path / "verify"
    real = runs.atomic_write
    written = []

    def full_after_three(path, data):
        if os.path.dirname(os.path.abspath(path)) == str(out) and len(written) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        if os.path.dirname(os.path.abspath(path)) == str(out):
            written.append(path)
        real(path, data)

    monkeypatch.setattr(runs, "atomic_write", full_after_three)
    capsys.readouterr()
    assert main([*VERIFY, small_file, "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(err) == 1 and "No space left on device" in err[0] and "rerun" in err[0], err
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(runs, "atomic_write", real)
    (out / "report.html").mkdir()  # now a folder where the report goes
    assert main([*VERIFY, small_file, "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(err) == 1 and "report.html" in err[0], err
    (out / "report.html").rmdir()
    assert main([*VERIFY, small_file, "--out", str(out)]) == 0
    assert "(0 cached" not in capsys.readouterr().err  # every sweep found its cells: nothing recomputed
    assert (out / "report.html").is_file() and (out / "claims.csv").is_file()


@pytest.mark.parametrize("command", ["sweep", "verify"])
def test_a_run_folder_whose_lock_is_a_folder_is_one_line(tmp_path, capsys, command, small_file):
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    capsys.readouterr()
    argv = CLI_SMALL if command == "sweep" else [*VERIFY, small_file]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot take the lock") and ".lock" in lines[0], captured.err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


FEWSHOT = ["fewshot", "--dataset", "digits", "--ways", "3", "--shots", "1", "--methods", "mtl", "--body", "mlp",
           "--channels", "8", "--blocks", "1", "--max-steps", "3", "--test-episodes", "4", "--val-episodes", "2",
           "--checkpoints", "2", "--meta-batch", "2", "--train-queries", "2"]


def test_fewshot_on_a_full_disk_is_one_line_writes_atomically_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "fewshot"
    real = runs.atomic_write
    written = []

    def full_after_two_tables(path, data):
        if len([w for w in written if not w.startswith("trained/")]) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(os.path.relpath(path, out))
        real(path, data)

    monkeypatch.setattr(runs, "atomic_write", full_after_two_tables)
    capsys.readouterr()
    assert main([*FEWSHOT, "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:") or "Traceback" in line]
    assert len(err) == 1 and "No space left on device" in err[0] and "rerun" in err[0], err
    # the finished training run, then the tables, each through the atomic writer
    assert written[0].startswith("trained/mtl-1shot-seed0-") and written[1:] == ["results.csv", "summary.csv"]
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "summary.csv", "trained"]  # no temporaries
    assert [p.name for p in (out / "trained").iterdir()] == [os.path.basename(written[0])]
    monkeypatch.setattr(runs, "atomic_write", real)
    from ntk_bridge.fewshot import experiment

    def forbidden(*args, **kwargs):
        raise AssertionError("the rerun trained a run that had finished before the disk was full")

    monkeypatch.setattr(experiment, "train", forbidden)  # the rerun resumes: nothing is trained again
    assert main([*FEWSHOT, "--out", str(out)]) == 0
    for name in ("results.csv", "summary.csv", "curves.csv", "episodes.csv", "config.json", "accuracy_vs_time.png"):
        assert (out / name).is_file(), name


def test_figures_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """The guard around ``figures`` (its sweeps are cached run folders, as in the sweep test above)."""
    from ntk_bridge import paper_figures

    def full(**kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(kwargs["out"], "gap_vs_depth.png"))

    monkeypatch.setattr(paper_figures, "make_figures", full)
    capsys.readouterr()
    assert main(["figures", "--quick", "--out", str(tmp_path / "figs")]) == 2
    # the device line comes first, once the inputs are checked (every command prints it), then one error
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("device:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "gap_vs_depth.png" in lines[0], lines
