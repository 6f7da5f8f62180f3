"""ntk_bridge.runs: atomic writes with the user's permissions, and cells that verify themselves."""
import os
import stat

import pandas as pd
import pytest

from ntk_bridge.runs import RunFolder, atomic_write


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_permissions_of_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(str(tmp_path / "a.txt"), "hello")
        RunFolder(tmp_path).write_cell("k", pd.DataFrame({"x": [1.0]}))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "cells" / "k.csv").stat().st_mode) == mode


def test_a_cell_reads_back_exactly(tmp_path):
    rows = pd.DataFrame({"method": ["mtl", "anil"], "gap": [0.1, float("nan")], "depth": [1, 2]})
    folder = RunFolder(tmp_path)
    folder.write_cell("k", rows)
    pd.testing.assert_frame_equal(folder.read_cell("k"), rows)
    assert folder.read_cell("missing") is None
