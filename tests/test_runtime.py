"""ntk_bridge.runtime: no TensorFlow at run time, lazy command modules, BLAS threads, the cache folder.

The import checks run in fresh interpreters: what a process has imported is the point.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ntk_bridge import runtime

TINY_SWEEP = ["sweep", "--depth", "1,2", "--inner-time", "0.1", "--mtl-data", "all", "--train-tasks", "2",
              "--test-tasks", "2", "--support", "2", "--query", "3", "--dim", "4"]


def run_python(code: str, tmp_path, **env) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, which is returned."""
    environ = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), **env)
    environ.pop("NTK_BRIDGE_CACHE", None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, env=environ,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # three commands in fresh processes (about 45 s): pytest -m slow, in .ci/run
def test_no_tensorflow_after_a_sweep_a_finite_cell_and_a_fewshot_step(tmp_path):
    result = run_python(f"""
        import json, sys
        from ntk_bridge.cli import main
        seen = {{}}
        assert main(["--help"]) == 0
        seen["help"] = sorted(m for m in ("jax", "neural_tangents", "ntk_bridge.fewshot.train", "sklearn")
                              if m in sys.modules)
        assert main({TINY_SWEEP!r} + ["--out", "inf", "--no-figures"]) == 0
        assert main({TINY_SWEEP!r} + ["--width", "16", "--depth", "1", "--outer-steps", "2", "--out", "fin",
                                      "--no-figures"]) == 0
        seen["sweep"] = sorted(m for m in ("ntk_bridge.fewshot.train", "sklearn", "optax") if m in sys.modules)
        assert main(["fewshot", "--dataset", "digits", "--ways", "3", "--shots", "1", "--body", "mlp",
                     "--channels", "16", "--blocks", "1", "--max-steps", "2", "--methods", "mtl,anil",
                     "--test-episodes", "4", "--val-episodes", "2", "--checkpoints", "1", "--out", "fs"]) == 0
        seen["fewshot_ran"] = "ntk_bridge.fewshot.train" in sys.modules
        seen["tensorflow"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf2jax"))
        print(json.dumps(seen))
    """, tmp_path)
    assert result["help"] == []  # --help loads neither JAX nor the few-shot stack
    assert result["sweep"] == []  # a sweep does not load the few-shot stack
    assert result["fewshot_ran"]
    assert result["tensorflow"] == []


@pytest.mark.slow  # imports TensorFlow in a fresh process (about 12 s): pytest -m slow, in .ci/run
def test_neural_tangents_experimental_still_loads_on_demand(tmp_path):
    result = run_python("""
        import json, sys
        import ntk_bridge, neural_tangents as nt
        before = "tensorflow" in sys.modules
        fn = nt.experimental.empirical_ntk_fn_tf
        print(json.dumps(dict(before=before, after="tensorflow" in sys.modules, name=fn.__name__)))
    """, tmp_path)
    assert result == dict(before=False, after=True, name="empirical_ntk_fn_tf")


def test_float64_is_on_whether_jax_comes_first_or_not(tmp_path):
    for order in ("import jax, ntk_bridge", "import ntk_bridge, jax"):
        result = run_python(f"""
            import json
            {order}
            import jax.numpy as jnp
            print(json.dumps(str(jnp.zeros(1).dtype)))
        """, tmp_path)
        assert result == "float64", order


def test_cache_dir_respects_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("NTK_BRIDGE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.cache_dir("jax") == str(tmp_path / "xdg" / "ntk_bridge" / "jax")
    monkeypatch.setenv("NTK_BRIDGE_CACHE", str(tmp_path / "mine"))
    assert runtime.cache_dir("jax") == str(tmp_path / "mine" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("NTK_BRIDGE_CACHE")
    assert runtime.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "ntk_bridge")


def test_blas_threads_sets_and_restores_the_count():
    before = runtime.current_blas_threads()
    with runtime.blas_threads(1):
        assert runtime.current_blas_threads() == 1
    assert runtime.current_blas_threads() == before


def test_compilation_cache_is_filled_and_reused(tmp_path):
    code = """
        import json, os
        import ntk_bridge
        from ntk_bridge import runtime
        folder = runtime.enable_compilation_cache()
        import jax, jax.numpy as jnp
        jax.jit(lambda x: jnp.sin(x) * 2.0)(jnp.arange(3.0)).block_until_ready()
        print(json.dumps(dict(folder=folder, entries=len(os.listdir(folder)))))
    """
    first = run_python(code, tmp_path)
    assert first["folder"] == str(tmp_path / "cache" / "ntk_bridge" / "jax") and first["entries"] >= 1
    assert run_python(code, tmp_path)["entries"] == first["entries"]  # the second run compiled nothing new
    off = run_python(code.replace("folder = runtime", "os.environ['NTK_BRIDGE_JAX_CACHE'] = '0'; folder = runtime")
                     .replace("len(os.listdir(folder))", "0"), tmp_path)
    assert off["folder"] is None


def test_shapes_once_works_out_each_layers_shapes_once_and_changes_nothing(monkeypatch):
    """Inside ``shapes_once`` a layer traces its finite network for the first input shape only; the kernels,
    their shapes and everything outside the block are as neural-tangents computes them."""
    import numpy as np
    from neural_tangents import stax
    from neural_tangents._src.stax import requirements

    traced = []
    propagate = requirements._propagate_shape
    monkeypatch.setattr(requirements, "_propagate_shape", lambda *a, **k: traced.append(1) or propagate(*a, **k))
    _, _, block = stax.serial(stax.Dense(8, W_std=1.5, b_std=0.1), stax.Relu())
    x = np.random.default_rng(0).normal(size=(5, 3))

    def pass_(n):
        kernels = [block(x, None)]
        for _ in range(n):
            kernels.append(block(kernels[-1]))
        return kernels

    plain = pass_(4)
    assert len(traced) == 2 * 3 * 5  # two shapes, three layers (the block, Dense, Relu), five calls
    traced.clear()
    memo = {}
    with runtime.shapes_once(memo):
        once = pass_(4)
    # two shapes for each of: the block, Dense and Relu on the inputs [5, 3] (Relu's input is [5, 8]), then the
    # block and Dense on a [5, 8] kernel; Relu's [5, 8] is known already
    assert len(traced) == 2 * 5
    for a, b in zip(plain, once):
        assert (a.shape1, a.shape2) == (b.shape1, b.shape2)
        np.testing.assert_array_equal(a.ntk, b.ntk)
        np.testing.assert_array_equal(a.nngp, b.nngp)
    traced.clear()
    pass_(1)
    assert len(traced) == 2 * 3 * 2  # outside the block: traced on every call again


# -- a heap that keeps what it frees ------------------------------------------------------------

_GLIBC = sys.platform.startswith("linux") and hasattr(os, "confstr") and "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")

_REFAULTS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from ntk_bridge import runtime
    if sys.argv[1] == "steady":
        assert runtime.steady_heap()
    np.core.multiarray._set_madvise_hugepage(False)  # 4 KiB pages, as XLA's buffers get
    np.ones(80 << 17)  # 80 MiB, freed at once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    np.ones(80 << 17)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


@pytest.mark.skipif(not _GLIBC, reason="steady_heap acts on glibc's malloc only")
def test_steady_heap_reuses_a_freed_large_block_instead_of_mapping_it_again():
    faults = {mode: int(subprocess.run([sys.executable, "-c", _REFAULTS, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("plain", "steady")}
    assert faults["plain"] > 15_000  # 20,480 pages mapped and zeroed afresh
    assert faults["steady"] < 1_000, faults  # the same pages again


_TRAIN = textwrap.dedent("""
    import dataclasses, os, sys
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core either way: XLA's threads round differently
    from ntk_bridge import runtime
    if sys.argv[1] == "steady":
        assert runtime.steady_heap()
    from ntk_bridge.datasets.loaders import DataSpec
    from ntk_bridge.fewshot.experiment import FewShotConfig, run_experiment
    from ntk_bridge.fewshot.methods import default_method_config
    from ntk_bridge.fewshot.models import ModelConfig
    methods = tuple(dataclasses.replace(default_method_config(m), meta_batch=2, train_queries=2) for m in ("mtl", "maml"))
    config = FewShotConfig(ways=3, shots=(1,), methods=methods, seeds=(0,), max_steps=6, checkpoints=2, val_episodes=2,
                           test_episodes=8, model=ModelConfig("mlp", 16, 1))
    results = run_experiment(config, DataSpec("digits").load()).results
    exact = [c for c in results.columns if not any(m in c for m in ("seconds", "cpu_s_", "step_cost"))]
    print(results[exact].to_csv(index=False))
""")


@pytest.mark.skipif(not _GLIBC or not hasattr(os, "sched_setaffinity"), reason="glibc and Linux affinity only")
def test_steady_heap_changes_no_trained_number():
    out = {mode: subprocess.run([sys.executable, "-c", _TRAIN, mode], capture_output=True, text=True, check=True).stdout
           for mode in ("plain", "steady")}
    assert len(out["plain"].split()) == 4 and "maml" in out["plain"]  # header, the baseline, two methods
    assert out["steady"] == out["plain"]


def test_started_calls_run_on_the_threads_and_give_what_the_calls_give():
    import threading

    from ntk_bridge import runtime

    names = {}

    def call(i):
        names[i] = threading.current_thread().name
        return i * i

    waiting = runtime.started({i: (lambda i=i: call(i)) for i in range(4)})
    assert waiting() == {0: 0, 1: 1, 2: 4, 3: 9}
    assert all(n.startswith("ntk_bridge") for n in names.values())

    def boom():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        runtime.started({"a": boom})()  # an error of a call is raised by the wait
    import jax

    names.clear()
    with jax.disable_jit():
        assert runtime.started({1: lambda: call(1)})() == {1: 1}
    assert names[1] == threading.current_thread().name  # the calling thread's setting kept
