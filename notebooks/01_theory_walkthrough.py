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
# # 01 — The formulas of the theory (docs/theory.md), each checked numerically
#
# This notebook walks through the closed forms that ntk_bridge implements, on a problem small
# enough to print, and checks every step against an independent computation. Nothing here is
# asserted without a number next to it.
#
# Setting: `N = 3` training tasks with 3 support and 4 query points each, 2 test tasks, inputs on
# the sphere `||x||^2 = d` with `d = 5`, a ReLU network with `L = 2` hidden layers in NTK
# parameterisation.

# %%
import numpy as np
import scipy.linalg

import ntk_bridge  # enables float64 in JAX
from ntk_bridge.kernels import Architecture, kernels_by_depth
from ntk_bridge.operators import Dynamics, inner_operator, meta_kernel
from ntk_bridge.predictors import PredictorConfig, predict_from_kernels
from ntk_bridge.families import subspace_tasks

tasks = subspace_tasks(seed=0, n_train=3, n_test=2, n_support=3, n_query=4, dim=5)
x = tasks.all_points()
print("points:", x.shape, " squared norms:", np.round((x ** 2).sum(1)[:4], 12))

# %% [markdown]
# ## Kernels: `Theta(x,x) = L + 1`, `K(x,x) = 1`
#
# `Theta` is the full NTK, `K` the readout kernel (Gram of the readout gradients, equal to the output
# NNGP in NTK parameterisation). One pass over the layers gives every depth.

# %%
ks = {k.depth: k for k in kernels_by_depth(x, max_depth=4)}
for L, k in ks.items():
    print(f"L={L}: Theta(x,x) = {np.diag(k.ntk).mean():.12f} (L+1 = {L + 1}),"
          f" K(x,x) = {np.diag(k.readout).mean():.12f}, K/Theta = {np.diag(k.readout / k.ntk).mean():.6f}")
Theta, K = ks[2].ntk, ks[2].readout

# %% [markdown]
# The one-pass kernels are exactly those of the whole network's `kernel_fn`:

# %%
direct = Architecture().network(2)[2](x, None, ("ntk", "nngp"))
print("max |one pass - kernel_fn|:", np.abs(Theta - np.asarray(direct.ntk)).max(), np.abs(K - np.asarray(direct.nngp)).max())

# %% [markdown]
# ## The inner-loop operator
#
# Adapting the parameters whose tangent kernel is `G` on a support set for time `s` changes the
# prediction by `G(X, X') T (Y' - f(X'))` with `T = G'^{-1} (I - exp(-s G'))`. ntk_bridge computes
# `T` from `eigh(G')`, never through an inverse. Check against `scipy.linalg.expm`:

# %%
G = K[:3, :3]  # support kernel of training task 0
for s in (0.01, 1.0, 100.0):
    T = inner_operator(G, s)
    ref = np.linalg.solve(G, np.eye(3) - scipy.linalg.expm(-s * G))
    print(f"s={s:>6}: max |T - expm form| = {np.abs(T - ref).max():.2e}")
print("s -> 0 :  T / s =", np.round(inner_operator(G, 1e-9) / 1e-9, 6)[0])
print("s -> inf: |T - G^-1| =", np.abs(inner_operator(G, np.inf) - np.linalg.inv(G)).max())

# %% [markdown]
# Discrete steps replace `exp(-s G)` by `(I - lambda G)^tau`:

# %%
lam, tau = 0.3, 7
T = inner_operator(G, lam * tau, steps=tau)
ref = np.linalg.solve(G, np.eye(3) - np.linalg.matrix_power(np.eye(3) - lam * G, tau))
print("max |T_discrete - matrix power form| =", np.abs(T - ref).max())

# %% [markdown]
# ## The GBML meta-kernel
#
# `Phi_ij = Theta(X_i,X_j) - A_i Theta(X'_i,X_j) - Theta(X_i,X'_j) A_j^T + A_i Theta(X'_i,X'_j) A_j^T`
# with `A_i = G(X_i, X'_i) T_i`. It is the Gram matrix of the adapted Jacobians, so it must be
# symmetric positive semi-definite; ntk_bridge builds it with einsum over task blocks.

# %%
layout = tasks.layout
for name, G in (("ANIL (G = K)", K), ("MAML (G = Theta)", Theta)):
    Phi = meta_kernel(Theta, G, layout, Dynamics(0.5))
    ev = np.linalg.eigvalsh(Phi)
    print(f"{name}: shape {Phi.shape}, symmetric: {np.array_equal(Phi, Phi.T)}, eigenvalues {ev.min():.3g} .. {ev.max():.3g}")

# %% [markdown]
# With no inner loop (`s = 0`) the meta-kernel is just `Theta` on the queries, and both ANIL and MAML
# become plain NTK regression on the query sets:

# %%
sl = layout.slices()
q = sl["train_query"]
print("|Phi(s=0) - Theta_QQ| =", np.abs(meta_kernel(Theta, K, layout, Dynamics(0.0)) - Theta[q, q]).max())
out = predict_from_kernels(Theta, K, tasks, PredictorConfig(inner_time=0.0, finetune_time=0.0), methods=("anil", "maml"))
tq = sl["test_query"]
ntk_reg = (Theta[tq, q] @ np.linalg.solve(Theta[q, q], tasks.train_query_y.reshape(-1, 1))).reshape(out["anil"].values.shape)
print("|ANIL - NTK regression| =", np.abs(out["anil"].values - ntk_reg).max(), " |MAML - NTK regression| =", np.abs(out["maml"].values - ntk_reg).max())

# %% [markdown]
# ## MTL: shared body, identical heads
#
# With every head initialised to the same `w0`, MTL's tangent kernel is
# `Theta_MTL = Theta - K + blockdiag_i(K)`: the body is shared across tasks, the heads are not. At
# test time the head is reset to `w0` and fine-tuned on the test support with `K`.

# %%
from ntk_bridge.operators import mtl_kernel

idx = np.arange(sl["train_query"].start, sl["train_query"].stop)
task = np.repeat(np.arange(layout.n_train), layout.n_query)
Tm = np.asarray(mtl_kernel(Theta[np.ix_(idx, idx)], K[np.ix_(idx, idx)], task))
print("diagonal blocks equal Theta:", np.allclose(Tm[:4, :4], Theta[np.ix_(idx[:4], idx[:4])]),
      "| off-diagonal blocks equal Theta - K:", np.allclose(Tm[:4, 4:8], (Theta - K)[np.ix_(idx[:4], idx[4:8])]))

# %% [markdown]
# ## Why `1/L`
#
# `K/Theta = 1/(L+1)` on the diagonal, so `Theta_MTL` differs from `Theta` — ANIL's meta-kernel as
# `s -> 0` — by off-diagonal head blocks of relative size `O(1/L)`. With MTL trained on the queries
# (the same data as ANIL's outer loss) the gap should therefore fall like `1/L` at small inner time:

# %%
from ntk_bridge.predictors import predict

cfg = PredictorConfig(inner_time=0.01, mtl_data="query")
res = predict(tasks, [2, 4, 8, 16, 32, 64], cfg, methods=("mtl", "anil"))
for L, o in res.items():
    gap = np.linalg.norm(o["anil"].values - o["mtl"].values) / np.linalg.norm(o["mtl"].values)
    print(f"L={L:>3}: gap = {gap:.4f}   gap * L = {gap * L:.3f}")

# %% [markdown]
# The product `gap * L` levels off: the `1/L` law, at this small inner time. The test suite proves
# the same closed forms equal gradient descent on linearised networks to 1e-8 (`tests/finite/test_linearized.py`).
