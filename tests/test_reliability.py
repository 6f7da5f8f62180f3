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

from ntk_bridge import runs, sweep as sw
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
def fresh(tmp_path_factory):
    run = tmp_path_factory.mktemp("fresh")
    return sw.run_sweep(sw.SweepConfig.of(**SMALL), str(run), figures=False).to_csv(index=False)


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
        sw.check_feasible(config, config.load_tasks(), memory=10 * 2 ** 20)
    assert not tmp_path.joinpath("run").exists()
    with pytest.raises(UserError, match="cells, above the maximum"):
        sw.check_feasible(config.replace(inner_times=tuple(np.linspace(0, 1, 80_000))), config.load_tasks())


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
