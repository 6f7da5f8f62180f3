"""What produced a result: package versions, the source checkout, Python, machine and load
(``config.json``), and the versions that fix a cell's numbers (:func:`numerics_versions`)."""
from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata

__all__ = ["CACHE_VERSION", "PACKAGES", "NUMERICS", "provenance", "numerics_versions", "source_checkout"]

#: Bumped when a change of ntk_bridge's code changes the numbers a sweep cell holds (part of every
#: cell's cache key, with :func:`numerics_versions`).
CACHE_VERSION = 4

#: Distributions whose versions are recorded.
PACKAGES = ("ntk-bridge", "jax", "jaxlib", "neural-tangents", "numpy", "scipy", "pandas", "optax",
            "scikit-learn", "pillow", "kanjivg", "threadpoolctl")
#: Distributions whose versions can change a computed number (part of every cell's cache key);
#: scipy: its LAPACK is what JAX calls on CPU.
NUMERICS = ("jax", "jaxlib", "neural-tangents", "numpy", "scipy")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=None)
def numerics_versions() -> tuple[tuple[str, str | None], ...]:
    """``(name, version)`` of ntk_bridge (with its cache version) and of :data:`NUMERICS`."""
    import ntk_bridge

    return (("ntk_bridge", f"{ntk_bridge.__version__} (cache {CACHE_VERSION})"),
            *((name, _version(name)) for name in NUMERICS))


def _git(here: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", here, *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def source_checkout(package: str | None = None) -> dict | None:
    """``{'commit', 'dirty'}`` when this package (folder ``package``, default this one's) runs from a
    git checkout of this project (the package folder is ``<top>/ntk_bridge`` of the work tree and
    ``<top>/pyproject.toml`` names ``ntk-bridge``); ``None`` otherwise (an installed copy: its
    version says what it is)."""
    package = package or os.path.dirname(os.path.abspath(__file__))
    top = _git(package, "rev-parse", "--show-toplevel")
    if not top or os.path.realpath(os.path.join(top, "ntk_bridge")) != os.path.realpath(package):
        return None
    try:
        with open(os.path.join(top, "pyproject.toml"), encoding="utf-8") as fh:
            if 'name = "ntk-bridge"' not in fh.read():
                return None
    except OSError:
        return None
    commit = _git(package, "rev-parse", "HEAD")
    status = _git(package, "status", "--porcelain", "--untracked-files=no")
    return dict(commit=commit, dirty=bool(status)) if commit else None


def provenance() -> dict:
    """Package versions, the source checkout (if any), Python version, platform, CPU count and load."""
    return dict(versions={dist: _version(dist) for dist in PACKAGES}, source=source_checkout(),
                python=platform.python_version(), platform=platform.platform(), cpu_count=os.cpu_count(),
                load_average=list(os.getloadavg()))
