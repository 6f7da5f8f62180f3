"""Shared test set-up: float64 on, an explicit PRNG key per test, notebooks in quick mode."""
import os
import zlib

# Notebooks executed by the suite (pytest --nbmake) run small: they read NTK_BRIDGE_QUICK.
os.environ.setdefault("NTK_BRIDGE_QUICK", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import ntk_bridge  # noqa: E402,F401  (enables float64)

settings.register_profile("ci", max_examples=25, deadline=None)
settings.load_profile("ci")


@pytest.fixture
def key(request):
    """A PRNG key derived from the test's name: reproducible, different per test."""
    seed = zlib.crc32(request.node.nodeid.encode()) % (2**31)
    return jax.random.PRNGKey(seed)


#: The tiny sweep several test files share: subspace tasks (3 training, 2 test, 3 + 4 points, dimension 5,
#: seed 0), depths 1..3, inner times 0.1 and 1, MTL on all data: six cells.
TINY_SWEEP = dict(depths=(1, 2, 3), inner_times=(0.1, 1.0), mtl_data=("all",), train_tasks=3, test_tasks=2, support=3,
                  query=4, dim=5)


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """``(config, run folder, results.csv text)`` of :data:`TINY_SWEEP` run in-process, once per test
    process; tests read its folder and never write into it."""
    from ntk_bridge.sweep import SweepConfig, run_sweep

    config = SweepConfig.of(**TINY_SWEEP)
    run = str(tmp_path_factory.mktemp("tiny_sweep"))
    return config, run, run_sweep(config, run, figures=False).to_csv(index=False)


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()) % (2**31))


def pytest_collection_modifyitems(config, items):
    """The notebooks (executed by nbmake) count as ``slow``: ``pytest`` runs the fast suite,
    ``pytest -m slow`` the notebooks, the statistical checks and the benchmarks' smoke runs (``.ci/run``
    runs both)."""
    slow = pytest.mark.slow
    for item in items:
        if str(getattr(item, "fspath", "")).endswith(".ipynb"):
            item.add_marker(slow)


def _write_omniglot(root, alphabets_bg=2, alphabets_ev=4, characters=3, drawers=4):
    """A tiny Omniglot: 105x105 binary PNGs, ink black (0) on white; character c has a bar at row 10*c."""
    from PIL import Image

    for half, n_alpha in (("images_background", alphabets_bg), ("images_evaluation", alphabets_ev)):
        for a in range(n_alpha):
            for c in range(characters):
                folder = root / half / f"Alphabet_{a}" / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for d in range(drawers):
                    pixels = np.full((105, 105), 255, np.uint8)
                    pixels[10 * c + 5 : 10 * c + 15, 10:95] = 0
                    Image.fromarray(pixels).convert("1").save(folder / f"{c:04d}_{d + 1:02d}.png")


@pytest.fixture
def write_omniglot():
    """``write(root, alphabets_bg=2, alphabets_ev=4, characters=3, drawers=4)`` writes a tiny Omniglot in the
    official layout under ``root`` (character ``c`` is a bar at row ``10 c``)."""
    return _write_omniglot
