"""Benchmark-local versions of the library changes proposed in ``benchmarks/README.md``.

Nothing here edits the library: each fix is applied in-process (a runtime setting, an import hook or
a monkeypatch) by the benchmark that measures it, next to the unpatched code.

``PRE_IMPORT`` fixes must run before ``neural_tangents`` / ``ntk_bridge`` are imported; the others
after.

* ``blas1``: one BLAS/LAPACK thread (``threadpoolctl.threadpool_limits(1, user_api="blas")``).
  OpenBLAS worker threads cost more than they save on a sweep's small matrices, and collapse when the
  machine is shared (every ``eigh`` waits for a descheduled spinning thread).
* ``defer_tf``: do not import ``neural_tangents.experimental`` (the TensorFlow-based empirical NTK,
  unused by ntk_bridge) until someone touches it. ``import neural_tangents`` otherwise imports
  TensorFlow, tf2jax and jax2tf: 6-11 s of every start-up.
* ``jax_cache``: JAX's persistent compilation cache (``jax_compilation_cache_dir``) with no minimum
  compile time, so the second and later sweeps skip XLA compilation (predictors and the eager
  neural-tangents ops). Directory: ``$NTKB_BENCH_JAX_CACHE`` (the benchmark sets it).
* ``outer_matvec``: in the GBML and MTL outer solves, apply ``U phi(m) U^T`` to the residual as
  ``U (phi * (U^T r))`` instead of forming the ``n x n`` operator first: one ``n^3`` product less.
* ``lean_wrapper``: ``predict_from_kernels`` with its inputs prepared in numpy (no eager JAX ops, no
  extra copies of the kernels); same jitted function, bit-identical results.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types

_KEEP = []


def blas1() -> None:
    """Limit every loaded OpenBLAS (numpy's and scipy's; jaxlib's LAPACK calls scipy's) to 1 thread."""
    # jaxlib's LAPACK (eigh) calls scipy's OpenBLAS, which is loaded only by the first jax linalg call
    # or an import of scipy.linalg: load it now, or the limit would not reach it.
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    _KEEP.append(threadpool_limits(limits=1, user_api="blas"))


def defer_tf() -> None:
    """Put a stand-in for ``neural_tangents.experimental`` in ``sys.modules`` that imports the real
    module (and TensorFlow) on first attribute access. Must run before ``import neural_tangents``.

    (``importlib.util.LazyLoader`` does not work here: the import system reads ``__spec__`` of the
    module found in ``sys.modules``, which triggers the load.)
    """
    name = "neural_tangents.experimental"
    if "neural_tangents" in sys.modules or name in sys.modules:
        return
    root = importlib.util.find_spec("neural_tangents")
    if root is None or not root.submodule_search_locations:
        return
    path = os.path.join(list(root.submodule_search_locations)[0], "experimental")
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    stub = types.ModuleType(name)
    stub.__path__ = [path]
    stub.__file__ = spec.origin
    stub.__spec__ = spec
    stub.__package__ = name

    def load():
        if sys.modules.get(name) is stub:
            real = importlib.util.module_from_spec(spec)
            sys.modules[name] = real
            try:
                spec.loader.exec_module(real)
            except BaseException:
                sys.modules[name] = stub
                raise
            parent = sys.modules.get("neural_tangents")
            if parent is not None:
                parent.experimental = real
        return sys.modules[name]

    def __getattr__(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(load(), attr)

    stub.__getattr__ = __getattr__
    sys.modules[name] = stub


def jax_cache() -> None:
    import jax

    folder = os.environ.get("NTKB_BENCH_JAX_CACHE") or os.path.join(os.path.dirname(__file__), "results", "tmp",
                                                                    "jax_cache")
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _eigh_solve(G, r, dyn, time, rcond):
    """``U phi(m) U^T r`` without forming the operator; same diagnostics as ``_eigh_apply``."""
    import jax.numpy as jnp

    from ntk_bridge import predictors as P

    G = 0.5 * (G + jnp.swapaxes(G, -1, -2))
    m, U = jnp.linalg.eigh(G)
    phi, ridge = P.spectral_function(m, dyn, time, rcond)
    out = U @ (phi[..., :, None] * (jnp.swapaxes(U, -1, -2) @ r))
    scale = jnp.maximum(jnp.max(jnp.abs(m), axis=-1), jnp.finfo(m.dtype).tiny)
    min_m = jnp.min(m, axis=-1)
    cond = scale / jnp.maximum(min_m, jnp.finfo(m.dtype).tiny)
    return out, P._Solve(jnp.min(min_m / scale), jnp.max(ridge), jnp.max(cond))


def gbml_matvec(Theta, G, d, layout, cfg, times):
    """``predictors._gbml`` with the outer solve applied to the residual (``_eigh_solve``)."""
    import jax.numpy as jnp

    from ntk_bridge import predictors as P

    sl, N, M = layout.slices(), layout.n_train, layout.n_test
    A, i1 = P._adapt_train(G, layout, cfg.inner, times[0], cfg.rcond)
    Ahat, i2 = P._adapt_test(G, layout, cfg.finetune, times[1], cfg.rcond)
    nq = N * layout.n_query
    phi = P._meta_kernel_blocks(Theta, A, layout).reshape(nq, nq)
    F0_train = d.f0q + A @ (d.ys - d.f0s)
    F0_test = d.f0tq + Ahat @ (d.yts - d.f0ts)
    cross = (P._block(Theta, sl["test_query"], sl["train_query"], M, N)
             - jnp.einsum("mab,mbjc->majc", Ahat, P._block(Theta, sl["test_support"], sl["train_query"], M, N))
             - jnp.einsum("majd,jcd->majc", P._block(Theta, sl["test_query"], sl["train_support"], M, N), A)
             + jnp.einsum("mab,mbjd,jcd->majc", Ahat,
                          P._block(Theta, sl["test_support"], sl["train_support"], M, N), A))
    coef, i3 = _eigh_solve(phi, (d.yq - F0_train).reshape(nq, -1), cfg.outer, times[2], cfg.rcond)
    out = F0_test + cross.reshape(M, layout.m_query, nq) @ coef
    return out, P._merge(i1, i2, i3)


def mtl_matvec(Theta, K, d, layout, cfg, times):
    """``predictors._mtl`` with the outer solve applied to the residual (``_eigh_solve``)."""
    import jax.numpy as jnp

    from ntk_bridge import predictors as P

    if cfg.mtl_heads == "independent":
        return P._finetune_head(K, d.f0ts, d.f0tq, d, layout, cfg, times)
    sl = layout.slices()
    idx, task = P._mtl_index(layout, cfg.mtl_data)
    kern = P.mtl_kernel(Theta[jnp.ix_(idx, idx)], K[jnp.ix_(idx, idx)], task, cfg.mtl_heads)
    y_all = jnp.concatenate([d.ys.reshape(-1, d.ys.shape[-1]), d.yq.reshape(-1, d.yq.shape[-1])])
    f0_all = jnp.concatenate([d.f0s.reshape(-1, d.f0s.shape[-1]), d.f0q.reshape(-1, d.f0q.shape[-1])])
    idx_local = idx - sl["train_support"].start
    alpha, i1 = _eigh_solve(kern, y_all[idx_local] - f0_all[idx_local], cfg.outer, times[2], cfg.rcond)
    body = Theta - K
    g_ts = d.f0ts + (body[sl["test_support"]][:, idx] @ alpha).reshape(d.f0ts.shape)
    g_tq = d.f0tq + (body[sl["test_query"]][:, idx] @ alpha).reshape(d.f0tq.shape)
    out, i2 = P._finetune_head(K, g_ts, g_tq, d, layout, cfg, times)
    return out, P._merge(i1, i2)


def outer_matvec() -> None:
    """Monkeypatch ``_gbml`` and ``_mtl`` (and drop compiled programs, which captured the old ones)."""
    from ntk_bridge import predictors as P

    P._gbml = gbml_matvec
    P._mtl = mtl_matvec
    P._predict_batched.clear_cache()


PRE_IMPORT = {"defer_tf": defer_tf}
POST_IMPORT = {"blas1": blas1, "jax_cache": jax_cache, "outer_matvec": outer_matvec}
FIXES = {**PRE_IMPORT, **POST_IMPORT}


def apply(name: str) -> None:
    if name not in FIXES:
        raise SystemExit(f"unknown fix {name!r}; known: {', '.join(FIXES)}")
    FIXES[name]()


def check_known(names) -> None:
    bad = [n for n in names if n not in FIXES]
    if bad:
        raise SystemExit(f"unknown fix(es) {', '.join(bad)}; known: {', '.join(FIXES)}")


def lean_predict_from_kernels(Theta, K, tasks, config=None, methods=None, f0=None):
    """``predictors.predict_from_kernels`` with its inputs prepared in numpy (no eager JAX ops, no
    ``jnp.asarray`` copies: the jitted call converts numpy arguments itself) and the outputs read
    with one ``device_get``. Same checks, same jitted function, same results.
    """
    import numpy as np

    from ntk_bridge import predictors as P
    from ntk_bridge.errors import require

    config = P.PredictorConfig() if config is None else config
    methods = P._check_methods(P.METHODS if methods is None else methods)
    layout = tasks.layout
    Theta = np.asarray(Theta, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    batched = Theta.ndim == 3
    if not batched:
        Theta, K = Theta[None], K[None]
    Pn = layout.n_points
    require(Theta.ndim == 3 and Theta.shape[1:] == (Pn, Pn),
            f"Theta must be [P, P] or [B, P, P] with P={Pn} points, got {tuple(Theta.shape)}")
    require(K.shape == Theta.shape, f"K has shape {tuple(K.shape)}, Theta has {tuple(Theta.shape)}")
    configs = list(config) if isinstance(config, (list, tuple)) else [config] * Theta.shape[0]
    require(len(configs) == Theta.shape[0], f"got {len(configs)} configs for {Theta.shape[0]} kernels")
    static = P._normalise_config(configs[0])
    require(all(P._normalise_config(c) == static for c in configs),
            "a batch of configs may differ only in inner_time, finetune_time and outer_time")
    k = tasks.n_outputs
    if f0 is None:
        f0 = np.zeros((Pn, k))
    else:
        f0 = np.asarray(f0, dtype=np.float64)
        require(f0.shape[0] == Pn and f0.size == Pn * k, f"f0 must have shape [{Pn}, {k}], got {f0.shape}")
        require(bool(np.all(np.isfinite(f0))), "f0 contains NaN or inf")
        require(configs[0].mtl_heads == "shared" or "mtl" not in methods,
                "f0 (a single network's outputs) is defined for shared MTL heads only")
    f0 = f0.reshape(Pn, -1)
    sl = layout.slices()
    data = P._Data(tasks.train_support_y, tasks.train_query_y, tasks.test_support_y,
                   f0[sl["train_support"]].reshape(layout.n_train, layout.n_support, -1),
                   f0[sl["train_query"]].reshape(layout.n_train, layout.n_query, -1),
                   f0[sl["test_support"]].reshape(layout.n_test, layout.m_support, -1),
                   f0[sl["test_query"]].reshape(layout.n_test, layout.m_query, -1))
    times = np.asarray([[c.inner_time, c.finetune_time, c.outer_time] for c in configs], np.float64)
    import jax

    raw = jax.device_get(P._predict_batched(Theta, K, data, times, layout, static, methods))
    results = []
    for b in range(Theta.shape[0]):
        entry = {}
        for method, (values, info) in raw.items():
            v = np.asarray(values[b])
            entry[method] = P.Prediction(v, P.Diagnostics(float(info.min_eig_rel[b]), float(info.ridge_rel[b]),
                                                          float(info.cond[b]), bool(np.all(np.isfinite(v)))))
        results.append(entry)
    return results if batched else results[0]


def lean_wrapper() -> None:
    """Monkeypatch ``predict_from_kernels`` (in ``predictors`` and ``sweep``) with the numpy-prepared one."""
    from ntk_bridge import predictors as P
    from ntk_bridge import sweep

    P.predict_from_kernels = lean_predict_from_kernels
    sweep.predict_from_kernels = lean_predict_from_kernels


POST_IMPORT["lean_wrapper"] = lean_wrapper
FIXES["lean_wrapper"] = lean_wrapper
