# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 — Finite-width networks against the infinite-width closed forms
#
# Notebooks 01 and 02 work with closed forms, which describe infinitely wide networks. The theorem's
# `eps` term is the price of finite width. Here we train real networks of the same `stax`
# definition by gradient descent (`ntk_bridge.finite`) and compare them with the closed forms.
# Both sides take exactly the same discrete steps (docs/theory.md §4, and §5 rung 3).
#
# A trained finite network differs from the infinite-width predictor for two reasons:
# * **width error**: its tangent kernels at initialisation are random matrices. They equal `Theta`
#   and `K` only as the width `h -> inf`, and their fluctuations are of order `h^-1/2`;
# * **linearisation error**: its kernel moves during training. NTK theory bounds this by `O(h^-1/2)`
#   too.
#
# Every network has a *linearised twin* `f_lin = f0 + J(x) (theta - theta0)` (neural-tangents'
# `linearize`), trained by the same code. The twin has no linearisation error, so comparing the
# network, its twin and the closed form separates the two errors.

# %%
import dataclasses
import os
import tempfile

import jax
import numpy as np
import pandas as pd
from IPython.display import Image

import ntk_bridge  # enables float64 in JAX
from ntk_bridge import figures as figs
from ntk_bridge.finite import TrainingConfig, discretise, finite_cell, infinite_predictions, train_networks
from ntk_bridge.kernels import Architecture, empirical_kernels, kernels_by_depth
from ntk_bridge.predictors import PredictorConfig, predict_from_kernels
from ntk_bridge.results import width_exponents
from ntk_bridge.families import subspace_tasks

METHODS = ("mtl", "anil", "maml")
# The test suite runs every notebook with NTK_BRIDGE_QUICK=1: fewer outer steps and networks, the
# same checks. Unset, the notebook runs the sizes its text describes.
QUICK = os.environ.get("NTK_BRIDGE_QUICK") == "1"
print("JAX float64:", jax.config.jax_enable_x64, "| quick mode:", QUICK)

# %% [markdown]
# ## The linearised network is the closed form with its own kernel
#
# First, an exact check on a problem small enough to print: one network of width 48 and depth 2,
# trained as MTL, ANIL and MAML for 25 outer steps. `discretise` turns the times of a
# `PredictorConfig` into numbers of steps. Step sizes come from the top eigenvalue of the
# infinite-width `Theta`, and the closed forms take exactly the same steps. The networks are
# *centred* (`f - f0`, the default mode), so at infinite width they follow the mean predictor
# (`f0 = None`).

# %%
tiny = subspace_tasks(seed=7, n_train=3, n_test=2, n_support=3, n_query=4, dim=5)
depth, width = 2, 48
x = tiny.all_points()
infinite_kernels = next(kernels_by_depth(x, depths=[depth]))
tiny_cfg = discretise(PredictorConfig(inner_time=0.3, finetune_time=0.5, mtl_data="all"), infinite_kernels.ntk,
                      tiny, TrainingConfig(outer_steps=25))
print(tiny_cfg)
tiny_run = train_networks(tiny, depth, width, tiny_cfg, METHODS, seed=3, n_networks=1, mode="centred")

# %% [markdown]
# The closed forms need this network's own kernels at initialisation: `Theta` from the Jacobian of
# every parameter and `K` from the Jacobian of the readout alone: `ntk_bridge.kernels.empirical_kernels`
# computes them with neural-tangents' `empirical_ntk_fn`. We then compare three
# predictions on the test queries: the trained twin, the trained network, and the closed forms with
# the empirical and with the infinite-width kernels.

# %%
_, apply_fn, _ = Architecture(width=width).network(depth)
params0 = jax.tree_util.tree_map(lambda a: a[0], tiny_run.params0)
_, theta_emp, K_emp = empirical_kernels(apply_fn, params0, x)
empirical = predict_from_kernels(theta_emp, K_emp, tiny, tiny_cfg, METHODS)
infinite = predict_from_kernels(infinite_kernels.ntk, infinite_kernels.readout, tiny, tiny_cfg, METHODS)


def max_rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


exact = pd.DataFrame([{
    "method": m,
    "twin vs empirical closed form": max_rel(tiny_run.linearized[m][0], empirical[m].values),
    "network vs empirical closed form": max_rel(tiny_run.finite[m][0], empirical[m].values),
    "empirical vs infinite closed form": max_rel(empirical[m].values, infinite[m].values),
} for m in METHODS])
worst = exact["twin vs empirical closed form"].max()
print(f"largest relative difference, trained twin vs closed form: {worst:.1e}")
assert worst < 1e-8
exact

# %% [markdown]
# The trained linearised network *is* the discrete closed form with its own initial kernels, to
# round-off, for all three methods. This includes the second-order inner loops of ANIL and MAML. So
# the formulas are right, and the rest of this notebook measures the other two columns:
# * the nonlinear network's distance to its twin: the kernel moved during training;
# * the distance between the closed forms with the empirical and with the infinite-width kernels: the
#   width error.
#
# At width 48 neither of them is small.

# %% [markdown]
# ## Distance to the infinite-width predictor against width
#
# Now the measurement itself:
# * depth 1, widths 64 to 512, four networks per width (two in quick mode);
# * four training tasks (4 support and 6 query points each, `d = 8`) and four unseen test tasks
#   (the task sizes of `ntk-bridge figures --quick`);
# * inner time `lambda*tau = 0.5`, fine-tuning time 1, MTL trained on the queries;
# * `outer_time = inf` becomes 300 outer steps (`TrainingConfig`'s default; 100 in quick mode).
#
# `finite_cell` trains every network and its twin, computes the closed form with the same schedule,
# and returns one row per (method, network, test task). It adds rows for the ensemble mean of the
# four networks.

# %%
tasks = subspace_tasks(seed=0, n_train=4, n_test=4, n_support=4, n_query=6, dim=8)
config = PredictorConfig(inner_time=0.5, finetune_time=1.0, mtl_data="query")
kernels = next(kernels_by_depth(tasks.all_points(), depths=[1]))  # shared by every width
widths, n_networks = (64, 128, 256, 512), 2 if QUICK else 4
training = TrainingConfig(outer_steps=100 if QUICK else 300)
rows = pd.concat([finite_cell(tasks, 1, w, config, METHODS, seed=0, n_networks=n_networks, kernels=kernels,
                              training=training) for w in widths], ignore_index=True)
schedule = rows.iloc[0]
print(len(rows), "rows;", rows["status"].value_counts().to_dict())
print(f"schedule: {schedule.inner_steps} inner steps, {schedule.finetune_steps} fine-tuning steps,"
      f" {schedule.outer_steps} outer steps (outer time {schedule.outer_time_used:.2f})")
single = rows[rows["network"] != "ensemble"]
print("median final / initial training loss:",
      single.groupby("method")["train_loss_rel"].median().map("{:.1e}".format).to_dict())

# %% [markdown]
# ## Fitted exponents
#
# `width_exponents` fits `distance ~ h^p` by least squares on log-log axes, with a 95% confidence
# interval. Each point is one network at one width: that network's mean distance over the test tasks
# (the test tasks of one network are not independent samples). Theory says about `-1/2`.

# %%
fits = width_exponents(rows)
assert (fits["exponent"] < 0).all(), "the distance falls with width for every method"
fits.assign(half_width=(fits["ci95_high"] - fits["ci95_low"]) / 2).round(3)

# %% [markdown]
# Four networks at four widths is a small sample, so the intervals are wide (their half-widths are
# printed). Another seed for the tasks or the networks moves each exponent by a similar amount.
# Read the table as "consistent with `-1/2` or not", not as a precise rate.
#
# The figure shows the quartiles over networks and test tasks (solid) and the ensemble mean of the
# four networks (dotted); its legend carries the exponents of the table.

# %%
run_dir = tempfile.mkdtemp(prefix="ntk-bridge-nb03-")
table = figs.distance_vs_width_table(rows)
paths = figs.plot_distance_vs_width(table, f"{run_dir}/distance_vs_width")
Image(paths[0])

# %% [markdown]
# ## Width error and linearisation error
#
# The section above showed that the trained twin is exactly the closed form with the network's
# initial kernels. So `linearized_to_infinite_rel` (twin vs infinite-width closed form) is the width
# error alone, and `dist_to_linearized_rel` (network vs twin) is the linearisation error alone. The
# total `dist_to_infinite_rel` is at most about their sum. Medians over networks and test tasks:

# %%
parts = ["dist_to_infinite_rel", "linearized_to_infinite_rel", "dist_to_linearized_rel"]
single.pivot_table(index="width", columns="method", values=parts, aggfunc="median").round(3)

# %%
split = pd.concat([width_exponents(rows, metric).assign(metric=metric) for metric in parts[1:]])
medians = single.groupby(["method", "width"])[parts[1:]].median()
ratio = medians["linearized_to_infinite_rel"] / medians["dist_to_linearized_rel"]
print(f"width error / linearisation error, per method and width: {ratio.min():.1f} to {ratio.max():.1f}")
assert ratio.min() > 2  # the text below says "several times"
assert (split["exponent"] < 0).all(), "both parts fall with width (the text below)"
split[["metric", "method", "exponent", "ci95_low", "ci95_high", "n"]].round(3)

# %% [markdown]
# At every width the width error is several times the linearisation error, so it accounts for almost
# all of the distance. At these sizes the finite network is far from the infinite-width predictor
# mainly because its kernel at initialisation is random, not because the kernel moves during
# training. The twin's distance therefore follows the total distance closely.
#
# Both parts fall with width. The intervals of the two exponents are printed; where they overlap,
# these few networks cannot tell whether the linearisation error falls faster than `h^-1/2` (the
# theory gives only that bound).

# %% [markdown]
# ## The ensemble mean against a single network
#
# Centred networks start at zero, and their mean over initialisations tends to the mean predictor.
# The random part of a network's kernel (order `h^-1/2`) averages out over networks. What averaging
# cannot remove is the bias of the expected finite network, which is of order `1/h`.
# `finite_cell`'s `ensemble` rows compare the mean of the networks (four; two in quick mode) with the
# closed form:

# %%
ens = f"ensemble of {n_networks}"
med = rows.assign(kind=np.where(rows["network"] == "ensemble", ens, "single network")) \
    .pivot_table(index=["method", "width"], columns="kind", values="dist_to_infinite_rel", aggfunc="median")
med["ratio"] = med[ens] / med["single network"]
med.round(3)

# %% [markdown]
# The printed ratio is the ensemble's median distance over a single network's. For independent
# zero-mean fluctuations it would be about `1/sqrt(4) = 0.5` (`0.71` for two). With four test tasks and so few networks,
# single values of the ratio are noisy.
#
# To see the averaging law more directly, we train 16 ANIL networks (4 in quick mode) at widths 128 and 512 and
# measure the distance of the mean of `k` of them: the mean over the disjoint groups of `k`
# networks, relative Frobenius norm over all test queries.

# %%
anil_cfg = discretise(config, kernels.ntk, tasks, training)
ensemble_rows = []
n_ensemble = 4 if QUICK else 16
for w in (128, 512):
    run = train_networks(tasks, 1, w, anil_cfg, ("anil",), seed=1, n_networks=n_ensemble,
                         training=dataclasses.replace(training, linearized=False))
    target = infinite_predictions(kernels, tasks, anil_cfg, ("anil",), "centred", run.f0)[0]["anil"][0]
    F = run.finite["anil"]
    for k in [k for k in (1, 2, 4, 8, 16) if k <= n_ensemble]:
        groups = [F[i:i + k].mean(0) for i in range(0, n_ensemble, k)]
        d = np.mean([np.linalg.norm(g - target) / np.linalg.norm(target) for g in groups])
        ensemble_rows.append({"width": w, "k": k, "distance": d, "distance * sqrt(k)": d * np.sqrt(k)})
pd.DataFrame(ensemble_rows).pivot(index="k", columns="width").round(3)

# %% [markdown]
# Where `distance * sqrt(k)` stays roughly flat as `k` grows, averaging removes the fluctuation as
# it would independent noise, and the `1/h` bias is still below what 16 networks can resolve. Where
# the product grows at large `k`, the ensemble is approaching that bias: averaging more networks
# of this width helps less and less. A bias of order `1/h` is reached at smaller `k` in narrower networks,
# so compare the two widths. Until the floor, a handful of narrow networks averaged together can be
# as close to the infinite-width predictor as one much wider network. Compare the largest `k` row at
# width 128 with the `k = 1` row at width 512.
#
# **Summary.** The closed forms are exact for linearised networks. Trained nonlinear networks
# approach them as the width grows, at a rate consistent with `h^-1/2` within wide intervals. Most of
# the distance at these widths is the randomness of the initial kernel. Ensembles average it away,
# down to a bias that shrinks with width.
