"""Parsing of grid options: ``2..32``, ``1..128:x2``, ``1..10:3``, ``1,2,4,8``, ``inf``.

Every parser raises :class:`~ntk_bridge.errors.UserError` with one line naming the option.
"""
from __future__ import annotations

import math

from ntk_bridge.errors import UserError

__all__ = ["parse_int_range", "parse_widths", "parse_floats", "parse_choices"]


def _int(text: str, option: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{option}: {text!r} is not an integer") from None


def parse_int_range(text: str, option: str = "--depth", minimum: int = 1, maximum: int | None = None) -> list[int]:
    """Integers from ``a..b`` (step 1), ``a..b:s`` (step s), ``a..b:xk`` (geometric, factor k,
    ``b`` included only if reached), or a comma list. Sorted, unique, all in ``[minimum, maximum]``
    (checked before the list is built)."""
    text = str(text).strip()
    if not text:
        raise UserError(f"{option}: empty value")
    values: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if ".." in part:
            span, _, step = part.partition(":")
            lo_s, _, hi_s = span.partition("..")
            lo, hi = _int(lo_s.strip(), option), _int(hi_s.strip(), option)
            if lo < minimum:
                raise UserError(f"{option}: range {part!r} starts below {minimum}")
            if hi < lo:
                raise UserError(f"{option}: range {part!r} is empty (end {hi} < start {lo})")
            if maximum is not None and hi > maximum:
                raise UserError(f"{option}: {hi} is above the maximum of {maximum}")
            step = step.strip()
            if step.startswith("x"):
                factor = _int(step[1:], option)
                if factor < 2:
                    raise UserError(f"{option}: geometric factor in {part!r} must be >= 2")
                v = lo
                while v <= hi:
                    values.append(v)
                    v *= factor
            else:
                s = _int(step, option) if step else 1
                if s < 1:
                    raise UserError(f"{option}: step in {part!r} must be >= 1")
                values.extend(range(lo, hi + 1, s))
        else:
            v = _int(part, option)
            if v < minimum:
                raise UserError(f"{option}: {v} is below {minimum}")
            if maximum is not None and v > maximum:
                raise UserError(f"{option}: {v} is above the maximum of {maximum}")
            values.append(v)
    return sorted(set(values))


def parse_widths(text: str, option: str = "--width", maximum: int | None = None) -> list:
    """Widths: ``inf`` (infinite width, the closed forms), ``mup`` (the muP limit) and/or positive
    integers as in :func:`parse_int_range`. Returned sorted with ``inf`` then ``'mup'`` last."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError(f"{option}: empty value")
    infinite = [p for p in parts if p.lower() in ("inf", "infinite", "infinity")]
    mup = [p for p in parts if p.lower() == "mup"]
    finite = [p for p in parts if p not in infinite and p not in mup]
    out: list = []
    if finite:
        out.extend(float(w) for w in parse_int_range(",".join(finite), option, minimum=1, maximum=maximum))
    if infinite:
        out.append(math.inf)
    if mup:
        out.append("mup")
    return out


def parse_floats(text: str, option: str, allow_inf: bool = True, positive: bool = False) -> list[float]:
    """A comma list of non-negative floats (``inf`` allowed unless ``allow_inf`` is False)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError(f"{option}: empty value")
    out = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise UserError(f"{option}: {p!r} is not a number") from None
        if math.isnan(v):
            raise UserError(f"{option}: {p!r} is not a number")
        if v < 0 or (positive and v == 0):
            raise UserError(f"{option}: {p!r} must be {'> 0' if positive else '>= 0'}")
        if math.isinf(v) and not allow_inf:
            raise UserError(f"{option}: must be finite, got {p!r}")
        out.append(v)
    return sorted(set(out))


def parse_choices(text: str, option: str, choices: tuple[str, ...]) -> list[str]:
    """A comma list of names from ``choices``, in the given order, without repeats."""
    parts = [p.strip().lower() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError(f"{option}: empty value")
    bad = [p for p in parts if p not in choices]
    if bad:
        raise UserError(f"{option}: unknown value(s) {', '.join(bad)}; choose from {', '.join(choices)}")
    return list(dict.fromkeys(parts))
