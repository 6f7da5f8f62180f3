"""Every benchmark runs: ``benchmarks/bench_*.py --smoke`` (tiny sizes through the same code path as the
measured runs) exits 0 and writes its CSV to a temporary folder, never over ``benchmarks/results/``.
A benchmark that nobody runs rots (a renamed function, a moved module): this is the test that notices."""
import glob
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(REPO, "benchmarks", "bench_*.py")))


def test_every_benchmark_is_listed():
    assert len(SCRIPTS) >= 9, SCRIPTS


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke(script, tmp_path):
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(REPO, "benchmarks", "results", "*.csv"))}
    env = dict(os.environ, NTK_BRIDGE_BENCH_RESULTS=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", script), "--smoke"], capture_output=True,
                       text=True, env=env, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    assert glob.glob(str(tmp_path / "*.csv")), f"{script} --smoke wrote no CSV: {p.stdout[-1000:]}"
    after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(REPO, "benchmarks", "results", "*.csv"))}
    assert after == before, "a smoke run wrote into benchmarks/results/"
