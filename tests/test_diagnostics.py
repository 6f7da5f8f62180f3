"""ntk_bridge.diagnostics: the kernel-degeneracy table holds the identities and limits it reports."""
import math

import numpy as np

from ntk_bridge.diagnostics import kernel_degeneracy_table
from ntk_bridge.kernels import kernels_by_depth
from ntk_bridge.families import subspace_tasks


def test_degeneracy_table_columns():
    tasks = subspace_tasks(seed=1, n_train=3, n_test=2, n_support=3, n_query=4, dim=6)
    depths = (1, 4, 32, 128)
    t = kernel_degeneracy_table(tasks, depths).set_index("depth")
    # exact under the default architecture on the sphere: K(x,x) / Theta(x,x) = 1 / (L + 1)
    np.testing.assert_allclose(t["k_over_theta_diag"], [1 / (L + 1) for L in depths], rtol=1e-12)
    # beyond the first layers the normalised NTK falls toward its limit 1/4, and the readout
    # correlation rises toward 1 at every depth
    mean = t["ntk_offdiag_normalised_mean"]
    assert mean[4] > mean[32] > mean[128] > 0.25
    assert np.all(np.diff(t["one_minus_rho_median"]) < 0)
    assert 0.3 * 9 * math.pi ** 2 / 2 < t.loc[128, "one_minus_rho_times_L2"] < 3 * 9 * math.pi ** 2 / 2
    # condition numbers of the training support kernels, recomputed from the kernels themselves
    L = tasks.layout
    (k,) = kernels_by_depth(tasks.all_points()[: L.n_train * (L.n_support + L.n_query)], depths=[32])
    blocks = [k.readout[i * L.n_support:(i + 1) * L.n_support, i * L.n_support:(i + 1) * L.n_support]
              for i in range(L.n_train)]
    assert t.loc[32, "cond_support_K_median"] == np.median([np.linalg.cond(b) for b in blocks])
