"""The command line, through its real entry point (``ntk_bridge.cli.main``): a small sweep end to
end, and every user error as one line with exit code 2."""
import json

import numpy as np
import pandas as pd
import pytest

from ntk_bridge.cli import main
from ntk_bridge.families import subspace_tasks

SMALL = ["--train-tasks", "3", "--test-tasks", "2", "--support", "3", "--query", "4", "--dim", "5"]


class Result:
    def __init__(self, code, out, err):
        self.exit_code, self.stdout, self.stderr = code, out, err
        self.output = out + err


class Runner:
    """Runs ``main(argv)`` and captures what it prints."""

    def __init__(self, capsys):
        self.capsys = capsys

    def invoke(self, argv):
        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return Result(code, out, err)


@pytest.fixture
def runner(capsys):
    return Runner(capsys)


def test_sweep_end_to_end(runner, tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(["sweep", "--depth", "1..4", "--inner-time", "0.1,1", "--out", str(out), *SMALL])
    assert res.exit_code == 0, res.output
    for name in ("results.csv", "config.json", "summary.md", "gap_vs_depth.png", "gap_vs_depth.pdf"):
        assert (out / name).exists(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["grid"]["depths"] == [1, 2, 3, 4]
    assert cfg["versions"]["neural-tangents"] == "0.6.5"
    assert "slope" in res.stdout and "baseline" in res.stdout and "sweep" in res.stderr
    assert "slope" in (out / "summary.md").read_text()
    # a rerun resumes: nothing recomputed, same table
    before = (out / "results.csv").read_text()
    res = runner.invoke(["sweep", "--depth", "1..4", "--inner-time", "0.1,1", "--out", str(out), *SMALL])
    assert res.exit_code == 0
    assert (out / "results.csv").read_text() == before


def test_sweep_builds_the_task_set_once(runner, tmp_path, monkeypatch):
    """One ``ntk-bridge sweep`` builds its task set once (the check of the task file and the sweep share it),
    with and without figures, and the rows are those of a sweep that built it itself."""
    from ntk_bridge import build
    from ntk_bridge.sweep import SweepConfig, run_sweep

    real, calls = build.task_set, []
    monkeypatch.setattr(build, "task_set", lambda *a, **k: calls.append(1) or real(*a, **k))
    for figures in ("--figures", "--no-figures"):
        calls.clear()
        out = tmp_path / figures
        res = runner.invoke(["sweep", "--depth", "1,2", "--inner-time", "0.1", figures, "--out", str(out), *SMALL])
        assert res.exit_code == 0, res.output
        assert len(calls) == 1, figures
    config = SweepConfig.of(depths=(1, 2), inner_times=(0.1,), train_tasks=3, test_tasks=2, support=3, query=4, dim=5)
    df = run_sweep(config, str(tmp_path / "library"), figures=False)
    assert (out / "results.csv").read_bytes() == (tmp_path / "library" / "results.csv").read_bytes()
    assert len(df) and len(calls) == 2  # run_sweep alone builds it (once) when not handed one


def test_sweep_on_a_tasks_file(runner, tmp_path):
    path = tmp_path / "t.npz"
    subspace_tasks(seed=5, n_train=3, n_test=2, n_support=2, n_query=3, dim=4).save(path)
    res = runner.invoke(["sweep", "--depth", "1,3", "--tasks", str(path), "--inner-time", "0.5",
                              "--out", str(tmp_path / "run"), "--no-figures"])
    assert res.exit_code == 0, res.output
    assert f"Tasks: {path}." in (tmp_path / "run" / "summary.md").read_text()
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(results["tasks"]) == {"t"}  # a task file is named by its stem
    assert set(results["test_task"]) == {0, 1} and set(results["depth"]) == {1, 3}


BAD = [
    (["--depth", "32..2"], "--depth"),
    (["--depth", "0..4"], "--depth"),
    (["--depth", "a..b"], "--depth"),
    (["--width", "0"], "--width"),
    (["--width", "-64"], "--width"),
    (["--methods", "mtl,reptile"], "--methods"),
    (["--inner-time", "-1"], "--inner-time"),
    (["--mtl-data", "support"], "--mtl-data"),
    (["--tasks", "missing.npz"], "not found"),
    (["--tasks", "spiral"], "--tasks"),
    (["--width", "64", "--finite-dtype", "float16"], "--finite-dtype"),
    (["--width", "64", "--outer-steps", "0"], "--outer-steps"),
    (["--width", "64", "--finite-mode", "uncentred"], "--finite-mode"),
    (["--inner-time", "nan"], "not a number"),
    (["--finetune-time", "-0.5"], "--finetune-time"),
    (["--outer-time", "0"], "--outer-time"),
    (["--dim", "1"], "--dim"),
    (["--task-seed", "x"], "--task-seed"),
    (["--depth", "1..1000000"], "maximum"),
    (["--width", "64..99999999"], "maximum"),
    (["--depth", "1..2", "--train-tasks", "100000"], "memory"),
    (["--methods", "fomaml"], "--methods"),
    (["--blas-threads", "0"], "--blas-threads"),
    (["--workers", "-1"], "--workers"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "either"),
    (["--scheduler", "notanaddress"], "--scheduler"),
    (["--tasks", "/"], "folder"),
    (["--no-such-option"], "No such option"),
    (["--depth"], "--depth"),
    (["--arch", "cnn"], "--arch"),
    (["--arch", "conv"], "image"),
    (["--arch", "resnet", "--readout", "max"], "--readout"),
    (["--tasks", "omniglot", "--dim", "16", "--support", "5", "--query", "5"], "--data-dir"),
    (["--solver", "qr"], "--solver"),
    (["--solver", "cg", "--outer-time", "5"], "outer-time inf"),
    (["--blas-threads", "1000"], "--blas-threads"),
    (["--tasks", "kanji", "--dim", "100000000", "--support", "5", "--query", "5", "--depth", "1"], "memory"),
    (["--width", "64", "--seeds", "1000000"], "--yes"),
    (["--depth", "1..4096", "--train-tasks", "60", "--test-tasks", "60"], "--yes"),
    (["--tasks", "kanji", "--arch", "conv", "--dim", "22500", "--support", "5", "--query", "5"], "maximum"),
]


@pytest.mark.parametrize("args, word", BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(runner, tmp_path, args, word):
    out = tmp_path / "run"
    res = runner.invoke(["sweep", *SMALL, "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [l for l in res.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_malformed_tasks_file(runner, tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, train_support_x=np.zeros((2, 3, 4)))
    res = runner.invoke(["sweep", "--tasks", str(bad), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "lacks key" in res.output and not (tmp_path / "run").exists()
    junk = tmp_path / "junk.npz"
    junk.write_text("hello")
    res = runner.invoke(["sweep", "--tasks", str(junk), "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "is not a .npz file" in res.stderr and "pickle" not in res.stderr
    t = subspace_tasks(seed=1, n_train=2, n_test=2, n_support=2, n_query=2, dim=3)
    for name, change in (("complex", lambda a: a + 1j), ("strings", lambda a: a.astype(str))):
        arrays = t.arrays()
        arrays["train_query_y"] = change(arrays["train_query_y"])
        np.savez(tmp_path / f"{name}.npz", **arrays)
        res = runner.invoke(["sweep", "--tasks", str(tmp_path / f"{name}.npz"), "--out", str(tmp_path / "run")])
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and "real numbers" in lines[0], res.output
    assert not (tmp_path / "run").exists()


def test_unwritable_output_folder(runner, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = runner.invoke(["sweep", "--depth", "1..2", "--out", str(blocker / "run"), *SMALL])
    assert res.exit_code == 2 and res.stderr.startswith("error: --out"), res.output


def test_help_documents_every_option(runner):
    res = runner.invoke(["sweep", "--help"])
    assert res.exit_code == 0
    for opt in ("--depth", "--width", "--inner-time", "--finetune-time", "--outer-time", "--methods",
                "--mtl-data", "--tasks", "--train-tasks", "--support", "--query", "--test-tasks", "--dim",
                "--seeds", "--out"):
        assert opt in res.output


@pytest.mark.slow  # finite networks over a width range and two figures (about 20 s): in .ci/run
def test_finite_width_sweep_reports_exponents_and_draws_both_figures(runner, tmp_path):
    out = tmp_path / "run"
    args = ["sweep", "--width", "16,32,64", "--depth", "1,2", "--seeds", "2", "--outer-steps", "5", "--methods",
            "mtl,anil,fomaml", "--inner-time", "0.1", "--mtl-data", "query", "--no-linearized", "--out", str(out), *SMALL]
    res = runner.invoke(args)
    assert res.exit_code == 0, res.output
    assert "exponent" in res.stdout
    for name in ("distance_vs_width.png", "finite_gap_vs_depth.png", "finite_gap_vs_depth.csv"):
        assert (out / name).is_file(), name
    results = pd.read_csv(out / "results.csv")
    assert set(results["width"]) == {16, 32, 64} and set(results["outer_steps"]) == {5}
    assert results["dist_to_linearized_rel"].isna().all()  # --no-linearized
    summary = (out / "summary.md").read_text()
    assert "infinite-width predictor vs width" in summary and "exponent" in summary
    cfg = json.loads((out / "config.json").read_text())["config"]["finite"]
    assert cfg["outer_steps"] == 5 and cfg["linearized"] is False and cfg["finite_dtype"] == "float64"


def test_version_and_choices_in_help(runner):
    import ntk_bridge

    res = runner.invoke(["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"ntk-bridge {ntk_bridge.__version__}"
    res = runner.invoke(["sweep", "--help"])
    assert res.exit_code == 0
    for choices in ("centred|raw", "float64|float32"):
        assert choices in res.stdout, choices
    text = " ".join(res.stdout.replace("│", " ").split())
    assert "mtl, anil, maml, fomaml" in text


def test_unknown_option_and_command_are_one_line(runner):
    for argv in (["sweep", "--no-such-option"], ["no-such-command"]):
        res = runner.invoke(argv)
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), res.output


def _one_line(res, word):
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], res.output
    assert "Traceback" not in res.output


def _header_only_npz(path, shape):
    """A task file whose every member's .npy header claims ``shape`` (float64) and holds no data."""
    import io
    import zipfile

    from ntk_bridge.tasks import REQUIRED_KEYS

    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        for key in REQUIRED_KEYS:
            archive.writestr(f"{key}.npy", head.getvalue())


@pytest.mark.parametrize("command", ["sweep", "verify"])
def test_a_task_file_too_large_is_refused_from_its_header(runner, tmp_path, command):
    """The .npy headers claim 10^6 x 10^6 x 10 float64 numbers (73 TiB): refused from the sizes alone,
    before any array is read (a read would raise ArrayMemoryError)."""
    path = tmp_path / "huge.npz"
    _header_only_npz(path, (10 ** 6, 10 ** 6, 10))
    res = runner.invoke([command, "--tasks", str(path), "--out", str(tmp_path / "run")])
    _one_line(res, "memory")
    assert "reading the task file" in res.output and not (tmp_path / "run").exists()


def test_the_grid_estimate_counts_every_cell_the_plan_makes():
    from ntk_bridge import budget
    from ntk_bridge.config import SweepConfig
    from ntk_bridge.sweep import plan

    config = SweepConfig.of(depths=(1, 2, 3), inner_times=(0.1, 1.0), mtl_data=("all", "query"),
                            test_heads=("learned", "reset"), widths=(float("inf"), 32.0), train_tasks=3,
                            test_tasks=2, support=3, query=4, dim=5)
    tasks, cells, _ = plan(config)
    assert budget.estimate(config, tasks)["cells"] == len(cells) == 3 * 2 * 2 * 2 * 2
    assert budget.estimate(config, budget.planned_tasks(config)) == budget.estimate(config, tasks)


class _Silent:
    """A port on 127.0.0.1 that accepts connections and never says anything."""

    def __enter__(self):
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()
        return f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self):
        try:
            while True:
                self.held.append(self.sock.accept()[0])
        except OSError:
            pass

    def __exit__(self, *exc):
        for c in self.held:
            c.close()
        self.sock.close()


class _Http:
    """An HTTP server on 127.0.0.1 (it answers Dask's handshake with '400 Bad Request')."""

    def __enter__(self):
        import http.server
        import threading

        class Quiet(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"tcp://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("command", ["sweep", "verify"])
@pytest.mark.parametrize("server", [_Silent, _Http], ids=["silent port", "http server"])
def test_a_scheduler_that_is_not_dask_is_one_line_within_its_timeout(runner, tmp_path, monkeypatch, command, server):
    import time

    from ntk_bridge import distributed

    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", 1.0)
    args = [*SMALL, "--depth", "1..2"] if command == "sweep" else ["--quick", "--tasks", "subspace"]
    with server() as address:
        started = time.time()
        res = runner.invoke([command, *args, "--scheduler", address, "--out", str(tmp_path / "run")])
        took = time.time() - started
    _one_line(res, "--scheduler")
    assert "cannot reach the Dask scheduler" in res.output and took < 10, (took, res.output)
    assert not (tmp_path / "run").exists()


def _sweep_record(tmp_path):
    from ntk_bridge.config import SweepConfig

    config = SweepConfig.of(family="kanji", dim=49, support=5, query=5, train_tasks=3, test_tasks=2, depths=(1,))
    return {"config": config.to_dict(), "tasks_fingerprint": "ab" * 32, "command": "ntk-bridge sweep"}


def _edit(record, change):
    import copy

    record = copy.deepcopy(record)
    change(record)
    return record


EDITED = [
    (lambda r: r["config"]["tasks"].update(family=3), "config.tasks.family"),
    (lambda r: r["config"].update(tasks="kanji"), "config.tasks"),
    (lambda r: r["config"].update(model="conv"), "config.model"),
    (lambda r: r.pop("tasks_fingerprint"), "tasks_fingerprint"),
    (lambda r: r["config"]["tasks"].update(dim=-4), "--dim"),
    (lambda r: r["config"]["tasks"].update(dim=10 ** 10), "memory"),
    (lambda r: r["config"]["tasks"].update(train_tasks=True), "config.tasks.train_tasks"),
    (lambda r: r["config"]["tasks"].update(family="spiral"), "spiral"),
    (lambda r: r["config"]["tasks"].update(family="/etc/passwd.npz"), "not found"),
    (lambda r: r["config"]["grid"].update(depths=["a"]), "config.grid.depths"),
    (lambda r: r["config"]["tasks"].update(colour="red"), "config.tasks.colour"),
    (lambda r: r["config"].update(extra={}), "config.extra"),
    (lambda r: r.update(config=[]), "config"),
]


@pytest.mark.parametrize("change, word", EDITED)
def test_an_edited_run_folder_is_one_line_naming_the_key_before_anything_trains(runner, tmp_path, change, word):
    run = tmp_path / "sweep"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(_edit(_sweep_record(tmp_path), change)))
    out = tmp_path / "nets"
    res = runner.invoke(["fewshot", "--tasks-of", str(run), "--body", "mlp", "--channels", "8", "--blocks", "1",
                         "--max-steps", "2", "--out", str(out)])
    _one_line(res, word)
    assert not out.exists()  # refused before anything was written, built or trained
