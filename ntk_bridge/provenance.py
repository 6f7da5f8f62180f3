"""What produced a result: package versions, git commit, Python, machine and load (``config.json``)."""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata

__all__ = ["PACKAGES", "provenance"]

#: Distributions whose versions are recorded.
PACKAGES = ("ntk-bridge", "jax", "jaxlib", "neural-tangents", "numpy", "scipy", "pandas", "optax",
            "scikit-learn", "pillow", "kanjivg")


def _git_commit() -> str | None:
    """``HEAD`` of the checkout this package runs from (``+dirty`` with uncommitted tracked changes);
    ``None`` outside a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if commit and dirty else commit


def provenance() -> dict:
    """Package versions, git commit, Python version, platform, CPU count and load average."""
    versions = {}
    for dist in PACKAGES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return dict(versions=versions, git_commit=_git_commit(), python=platform.python_version(),
                platform=platform.platform(), cpu_count=os.cpu_count(), load_average=list(os.getloadavg()))
