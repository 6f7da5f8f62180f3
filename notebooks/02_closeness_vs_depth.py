# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 — Closeness of MTL and meta-learning as depth grows
#
# The theorem says `||F_ANIL - F_MTL|| = O(lambda*tau + 1/L)` at infinite width. Here we run a
# small sweep with the library (the same machinery as `ntk-bridge sweep`), look at the gap against
# depth and inner time, and — just as important — at whether the predictors still beat the
# no-transfer baseline, so that closeness is not the trivial closeness of two useless predictors.

# %%
import tempfile

import ntk_bridge
from ntk_bridge import figures as figs
from ntk_bridge.results import baseline_table, depth_slopes
from ntk_bridge.sweep import SweepConfig, run_sweep

config = SweepConfig.of(depths=(1, 2, 4, 8, 16, 32, 64), inner_times=(0.01, 1.0), train_tasks=8, test_tasks=10)
run_dir = tempfile.mkdtemp(prefix="ntk-bridge-nb02-")
df = run_sweep(config, run_dir)
print(len(df), "rows;", df["status"].value_counts().to_dict())
df.head()

# %% [markdown]
# ## Fitted slopes
#
# For each method, MTL training set and inner time: the least-squares slope of log(median gap)
# against log(depth), with a 95% confidence interval.

# %%
slopes = depth_slopes(df)
slopes[["method", "mtl_data", "inner_time", "slope", "ci95_low", "ci95_high", "first", "last"]].round(3)

# %% [markdown]
# What to look for:
# * ANIL against MTL trained on the **same data** (queries) falls close to `1/L` at small inner time,
#   and flattens when `lambda*tau` is large — the `lambda*tau` term.
# * Against MTL trained on **all points** (the paper's MTL) the gap stays: the predictors are fitted
#   to different data.
# * MAML does not approach MTL: it adapts the whole network with `Theta`, not only the head.

# %%
table = figs.gap_vs_depth_table(df)
from IPython.display import Image

paths = figs.plot_gap_vs_depth(table, f"{run_dir}/gap_vs_depth")
Image(paths[0])

# %% [markdown]
# ## Against the no-transfer baseline
#
# A head fine-tuned on an untrained body uses nothing from the training tasks. If MTL and ANIL only
# became close by both collapsing onto it, the theorem would say little.

# %%
baseline_table(df)[["method", "inner_time", "depth_min", "mse_min_depth", "baseline_min_depth",
                    "depth_max", "mse_max_depth", "baseline_max_depth"]].round(3)

# %% [markdown]
# All methods beat the baseline at small depth and drift toward it as depth grows: deep NTKs
# degenerate (`Theta(x,x')/Theta(x,x) -> 1/4`, the readout kernel tends to rank one), so part of the
# closeness at large `L` is closeness of predictors that have stopped using the training tasks.
