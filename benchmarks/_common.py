"""Shared helpers of the benchmark scripts: interleaved timing, machine description, tables, CSV.

Timing rules (the machine is shared and noisy): the two sides of every ratio are measured in the same
process, interleaved (the order alternates between repeats), and each side's *median* over repeats
is reported. Ratios are the result; absolute seconds are printed only to make them checkable.
"""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RESULTS = os.environ.get("NTK_BRIDGE_BENCH_RESULTS") or os.path.join(HERE, "results")


def smoke(argv=None) -> bool:
    """``--smoke``: tiny sizes through the same code path, seconds instead of minutes, to show that a
    benchmark still runs (``tests/test_benchmarks.py``). Its CSVs go to a temporary folder (inherited by
    the benchmark's child processes), never over the measured ones in ``benchmarks/results/``."""
    global RESULTS
    argv = sys.argv[1:] if argv is None else argv
    if "--smoke" not in argv:
        return False
    if not os.environ.get("NTK_BRIDGE_BENCH_RESULTS"):
        import tempfile

        os.environ["NTK_BRIDGE_BENCH_RESULTS"] = tempfile.mkdtemp(prefix="ntkb-bench-smoke-")
    RESULTS = os.environ["NTK_BRIDGE_BENCH_RESULTS"]
    return True


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine() -> dict:
    """``nproc``, CPU model, memory, load and package versions: written beside every CSV."""
    from importlib import metadata

    versions = {}
    for dist in ("jax", "jaxlib", "neural-tangents", "numpy", "scipy", "tensorflow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return dict(
        date=_dt.datetime.now().isoformat(timespec="seconds"),
        nproc=os.cpu_count(),
        affinity=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        cpu=cpu_model(),
        mem_gib=round(mem_total_gib(), 1),
        load_1min=round(os.getloadavg()[0], 2),
        python=platform.python_version(),
        **{f"v_{k}": v for k, v in versions.items()},
    )


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

def block(x):
    """Wait for JAX arrays inside ``x`` (no-op for numpy)."""
    try:
        import jax

        return jax.block_until_ready(x)
    except ImportError:  # pragma: no cover
        return x


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = block(fn())
    return time.perf_counter() - t, out


def interleaved(fns: Mapping[str, Callable[[], object]], repeats: int,
                warmup: bool = True) -> dict[str, list[float]]:
    """Run every function ``repeats`` times, interleaved; the order rotates each repeat.

    Returns ``{name: [seconds per repeat]}``. ``warmup`` runs each once first, untimed.
    """
    names = list(fns)
    if warmup:
        for n in names:
            block(fns[n]())
    out = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order = order[::-1]
        for n in order:
            out[n].append(timed(fns[n])[0])
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> float:
    """(max - min) / median: a crude noise indicator printed next to each median."""
    m = median(xs)
    return float((max(xs) - min(xs)) / m) if m > 0 and len(xs) > 1 else 0.0


def max_rel(a, b) -> float:
    """``max |a - b| / max |b|`` (0 when both are zero)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = float(np.max(np.abs(b))) if b.size else 0.0
    num = float(np.max(np.abs(a - b))) if a.size else 0.0
    return num / den if den > 0 else num


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------

def fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "-"
        if v == 0:
            return "0"
        a = abs(v)
        if a >= 1e4 or a < 1e-3:
            return f"{v:.2e}"
        return f"{v:.3g}"
    return str(v)


def print_table(title: str, rows: list[dict], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for c in columns:
            t.add_column(c, justify="right")
        for r in rows:
            t.add_row(*[fmt(r.get(c, "")) for c in columns])
        Console(width=170).print(t)
    except ImportError:  # pragma: no cover
        print(title)
        print(" | ".join(columns))
        for r in rows:
            print(" | ".join(fmt(r.get(c, "")) for c in columns))


def write_csv(name: str, rows: list[dict], meta: dict | None = None) -> str:
    """``benchmarks/results/<name>.csv``; every row also carries the machine description."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.csv")
    meta = meta or machine()
    full = [dict(r, **{f"machine_{k}": v for k, v in meta.items()}) for r in rows]
    cols: list[str] = []
    for r in full:
        for k in r:
            if k not in cols:
                cols.append(k)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(full)
    print(f"wrote {os.path.relpath(path, REPO)}")
    return path


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
