"""Programs kept on disk (ntk_bridge.programs): the numbers of a program exported in one process and loaded in
another are those of a plain jax.jit call, bit for bit; keys move with what a program depends on; a damaged
file is exported again; NTK_BRIDGE_JAX_CACHE=0 keeps nothing."""
import json
import os
import subprocess
import sys

import numpy as np

from ntk_bridge import programs

# A fresh process: closed forms of every method on a small task set, printed with every bit.
_CHILD = r"""
import json, sys
import numpy as np
import ntk_bridge, jax
from ntk_bridge import programs
from ntk_bridge.kernels import kernels_by_depth
from ntk_bridge.predictors import CLOSED_FORM_METHODS, PredictorConfig, predict_from_kernels
from ntk_bridge.families import subspace_tasks
tasks = subspace_tasks(seed=3, n_train=4, n_test=3, n_support=3, n_query=4, dim=6, n_outputs=2)
kern = next(kernels_by_depth(tasks.all_points(), depths=[3]))
preds = predict_from_kernels(kern.ntk, kern.readout, tasks, PredictorConfig(inner_time=0.3), CLOSED_FORM_METHODS)
out = {m: [np.asarray(p.values).tobytes().hex(), repr(tuple(p.diagnostics))] for m, p in preds.items()}
print("RESULT " + json.dumps(dict(out=out, loaded=len(programs._LOADED), folder=programs.folder())))
"""


def _child(cache, **env):
    p = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                       env=dict(os.environ, NTK_BRIDGE_CACHE=str(cache), **env))
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])


def _files(cache):
    folder = os.path.join(cache, "programs")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_a_program_loaded_in_a_fresh_process_gives_the_numbers_of_a_plain_jit_call(tmp_path):
    cache = tmp_path / "cache"
    plain = _child(tmp_path / "off", NTK_BRIDGE_JAX_CACHE="0")  # every call a plain jax.jit call
    assert plain["folder"] is None and plain["loaded"] == 0 and _files(tmp_path / "off") == []
    exported = _child(cache)  # exports and writes them
    written = _files(cache)
    assert written and exported["loaded"] == len(written)
    loaded = _child(cache)  # loads them: nothing traced
    assert _files(cache) == written
    assert exported["out"] == plain["out"] and loaded["out"] == plain["out"]
    # a damaged file (cut short) is exported again, rewritten, and gives the same numbers
    victim = os.path.join(cache, "programs", written[0])
    with open(victim, "r+b") as fh:
        fh.truncate(os.path.getsize(victim) // 2)
    again = _child(cache)
    assert again["out"] == plain["out"]
    import ntk_bridge.predictors  # noqa: F401  (registers the programs' input and output types)

    assert programs._load(victim) is not None  # rewritten whole


def test_keys_move_with_shapes_static_arguments_and_source(monkeypatch):
    import jax

    @jax.jit
    def f(x):
        return x

    a, b = np.zeros((2, 3)), np.zeros((3, 3))
    assert programs._key(f, (a,), {}) == programs._key(f, (np.ones((2, 3)),), {})  # values are not in it
    assert programs._key(f, (a,), {}) != programs._key(f, (b,), {})
    assert programs._key(f, (a,), {}) != programs._key(f, (a.astype(np.float32),), {})
    assert programs._key(f, (a,), {"cfg": 1}) != programs._key(f, (a,), {"cfg": 2})
    assert programs._key(f, (a,), {}) != programs._key(f, ((a,),), {})  # the structure
    assert programs._key(f, (1.0,), {}) is None  # not an array: a plain call
    before = programs._key(f, (a,), {})
    monkeypatch.setattr(programs, "_source_fingerprint", lambda: "another source")
    assert programs._key(f, (a,), {}) != before


def test_a_file_that_does_not_verify_is_not_loaded(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"# ntk_bridge program v1 sha256=" + b"0" * 64 + b"\nnot a program")
    assert programs._load(str(path)) is None
    path.write_bytes(b"")
    assert programs._load(str(path)) is None
    assert programs._load(str(tmp_path / "absent.bin")) is None


def test_on_another_backend_a_call_is_a_plain_jit_call(monkeypatch, tmp_path):
    import jax

    monkeypatch.setenv("NTK_BRIDGE_CACHE", str(tmp_path))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    before = dict(programs._LOADED)

    @jax.jit
    def double(x):
        return 2 * x

    assert float(programs.call(double, (np.ones(()),), {})) == 2.0
    assert programs._LOADED == before and _files(tmp_path) == []
