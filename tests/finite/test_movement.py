"""Kernel movement's empirical kernels (ntk_bridge.finite.movement): the blocked, per-point Jacobian
contraction equals neural-tangents' own empirical NTK of the whole batch, and the memory budget counts
what a finite cell's kernel movement and training hold (against a measured peak)."""
import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ntk_bridge.finite import movement
from ntk_bridge.finite.mup import mup_network
from ntk_bridge.finite.networks import init_networks, network_for
from ntk_bridge.families import subspace_tasks
from ntk_bridge.kernels import Architecture


def _reference(net, params, x):
    """neural-tangents' empirical NTK of the whole batch by NTK-vector products (no ``vmap_axes``): an
    independent route to the same kernel."""
    import neural_tangents as nt

    return np.asarray(nt.empirical_ntk_fn(net.apply_fn, trace_axes=(-1,), implementation=2)(x, None, params))


@pytest.mark.parametrize("cap", [None, 3 * 8 * 2 * 40])
@pytest.mark.parametrize("param, activation, depth", [("mup", "linear", 1), ("mup", "relu", 2), ("ntk", "relu", 2)])
def test_blocked_kernel_is_the_empirical_ntk(monkeypatch, cap, param, activation, depth):
    """One block, and blocks of 3 points (the last one padded) on 10 points: the same kernel."""
    tasks = subspace_tasks(seed=0, n_train=2, n_test=2, n_support=2, n_query=3, dim=5, n_outputs=2)
    arch = dataclasses.replace(Architecture(), param=param, activation=activation, width=8, n_outputs=2)
    net = network_for(arch, depth)
    params, _ = init_networks(tasks, depth, 8, seed=0, architecture=arch, network=net)
    one = jax.tree_util.tree_map(lambda a: a[0], params)
    n_params = sum(a.size for a in jax.tree_util.tree_leaves(one))
    x = tasks.all_points()[:10]
    if cap is not None:
        monkeypatch.setattr(movement, "JACOBIAN_BYTES", 3 * 8 * 2 * n_params)
        assert movement.block_size(10, 2, n_params) == 3
    theta = movement.empirical_ntk(net, one, x)
    np.testing.assert_allclose(theta, _reference(net, one, x), rtol=1e-10, atol=1e-12)


def test_movement_peak_is_bounded_by_blocks_not_points_times_width():
    assert movement.block_size(300, 5, 110_000) == movement.JACOBIAN_BYTES // (8 * 5 * 110_000)
    assert movement.block_size(300, 5, 10) == 300 and movement.block_size(3, 1, 10 ** 12) == 1
    small, wide = movement.movement_bytes(300, 5, 28_000), movement.movement_bytes(300, 5, 4 * 28_000)
    # a block's Jacobian never exceeds the cap: the peak stops growing with the width once blocks are cut
    assert max(small, wide) <= movement.JACOBIAN_COPIES * movement.JACOBIAN_BYTES + 3 * 8 * 300 ** 2


SWEEP = ["--tasks", "subspace", "--dim", "49", "--train-tasks", "4", "--test-tasks", "10", "--support", "10",
         "--query", "20", "--depth", "1", "--width", "512", "--param", "mup", "--activation", "linear",
         "--methods", "anil", "--mtl-data", "all", "--inner-time", "0.5", "--outer-steps", "20", "--seeds", "1",
         "--no-linearized", "--no-figures"]


@pytest.mark.slow
def test_budget_estimate_of_a_finite_cell_bounds_its_measured_peak(tmp_path):
    """A finite muP cell with 300 test points at width 512 (about 8 s): the estimate is at least the measured peak
    resident memory of the sweep's process and at most twice it. Before the kernel movement formed its Jacobians
    per point and in blocks the same sweep peaked at 0.73 GiB (3.8 GiB on kanji episodes with 5 outputs) against an
    estimate of 0.58 GiB; it now peaks at about 0.45 GiB."""
    from ntk_bridge import budget
    from ntk_bridge.sweep import SweepConfig

    config = SweepConfig.of(family="subspace", dim=49, train_tasks=4, test_tasks=10, support=10, query=20, depths=(1,),
                            widths=(512.0,), param="mup", activation="linear", methods=("anil",), mtl_data=("all",),
                            inner_times=(0.5,), outer_steps=20, seeds=1, linearized=False)
    estimate = budget.estimate(config, budget.planned_tasks(config))["memory_bytes"]
    env = dict(os.environ, NTK_BRIDGE_CACHE=str(tmp_path / "cache"))
    # the peak of this process image: VmHWM (ru_maxrss would keep the forking pytest process's size across exec)
    code = ("import sys; from ntk_bridge.cli import main; code = main(sys.argv[1:]); "
            "print('PEAK', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]); "
            "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, "sweep", *SWEEP, "--out", str(tmp_path / "run")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    peak = 1024 * int(done.stdout.split("PEAK")[-1].split()[0])  # VmHWM is in KiB
    assert peak <= estimate <= 2 * peak, (peak, estimate)
