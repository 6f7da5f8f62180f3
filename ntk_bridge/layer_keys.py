"""Stable keys of user ``stax`` layers (for cache keys of custom architectures).

A ``stax`` layer is a triple of closures ``(init_fn, apply_fn, kernel_fn)``; what distinguishes two
layers (the layer types, widths, ``W_std``, ``b_std``, parameterisation, nonlinearity constants) lives in
their closure cells. :func:`layer_key` walks them depth first and hashes what it finds: the qualified
name of every function, the ``repr`` of every number, string and ``None``, the shape, dtype and bytes
of every array, the structure of tuples, lists and dicts. The walk order is fixed by the code, so the
key is the same in every process; two layers that differ in any such value get different keys.
"""
from __future__ import annotations

import hashlib
import numbers

import numpy as np

__all__ = ["layer_key", "custom_layers_key"]


def _parts(obj) -> list[str]:
    parts: list[str] = []
    seen: set[int] = set()

    def walk(v):
        if isinstance(v, (bool, numbers.Number, str, bytes, type(None))):
            parts.append(repr(v))
            return
        if id(v) in seen:
            parts.append("<seen>")
            return
        seen.add(id(v))
        if isinstance(v, np.ndarray) or type(v).__module__.startswith(("jax", "jaxlib")):
            a = np.asarray(v)
            parts.append(f"array{a.shape}{a.dtype}:{hashlib.sha256(a.tobytes()).hexdigest()}")
        elif isinstance(v, (tuple, list)):
            parts.append(f"{type(v).__name__}[{len(v)}]")
            for item in v:
                walk(item)
        elif isinstance(v, dict):
            parts.append(f"dict[{len(v)}]")
            for k in sorted(v, key=repr):
                walk(k)
                walk(v[k])
        elif callable(v) and hasattr(v, "__code__"):
            parts.append(f"{v.__module__}.{v.__qualname__}")
            for cell in v.__closure__ or ():
                try:
                    walk(cell.cell_contents)
                except ValueError:  # an empty cell
                    parts.append("<empty>")
            for default in v.__defaults__ or ():
                walk(default)
        else:
            parts.append(type(v).__qualname__)

    walk(obj)
    return parts


def layer_key(layer) -> str:
    """A hex SHA-256 of ``layer``'s closures (a ``stax`` triple or any nesting of functions and
    values); ``None`` gives the key of ``None``."""
    return hashlib.sha256("\x1f".join(_parts(layer)).encode()).hexdigest()


def custom_layers_key(hidden_layer, readout_layer) -> str | bool:
    """``False`` for the built-in layers (both ``None``: the key earlier runs have), else
    :func:`layer_key` of the pair."""
    if hidden_layer is None and readout_layer is None:
        return False
    return layer_key((hidden_layer, readout_layer))
