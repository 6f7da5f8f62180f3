"""The methods, one object each: the only place where a method is defined.

A :class:`Method` says what it is (name, label, colour, role), which grid settings its predictions
depend on, and which implementations it has. Each kind of implementation lives in one plain table keyed
by the method's name, on the floor of the code that runs it, with one signature per table:

* the infinite-width closed form: :data:`ntk_bridge.closed_forms.CLOSED_FORMS`
  (:class:`ntk_bridge.closed_forms.ClosedForm`), read by :func:`ntk_bridge.predictors.predict_from_kernels`;
* the finite-width trainer: :data:`ntk_bridge.finite.objectives.TRAINERS`
  (:class:`ntk_bridge.finite.objectives.Trainer`), read by :mod:`ntk_bridge.finite.training`;
* the few-shot objective: :data:`ntk_bridge.fewshot.methods.METHODS` (the few-shot registry).

The registry holds flags (``closed_form``, ``finite``, ``fewshot``), never the implementations, so it
stays on the ground floor and reading it imports nothing heavy (the command line builds its choices
from it without loading JAX); ``tests/test_methods.py`` checks each table's keys against the flags.

Everything that lists methods reads :data:`METHODS`: the command line's choices, the sweep's
planning (a method is computed once for all the values of a setting it does not depend on), the
report's tables, the figures' colours and labels. Adding a method is one new object here, its
implementations, and their tests.

The few-shot path has its own registry (:data:`ntk_bridge.fewshot.methods.METHODS`): MTL, ANIL and
MAML, linked from here by ``fewshot``, and two reference methods with no closed form here, R2D2 (a
ridge-regression head solved in closed form and differentiated through: the l2-regularised
last-layer GBML class the paper's speed-up is measured against) and ProtoNet.

Roles: ``mtl`` is the method every gap is measured against; ``gbml`` methods are compared with it;
the ``baseline`` (a head fine-tuned on an untrained body) shows what no transfer gives.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

from ntk_bridge.axes import AXES
from ntk_bridge.errors import UserError

__all__ = ["Method", "METHODS", "SETTINGS", "MTL", "ANIL", "MAML", "FOMAML", "BASELINE", "get", "names",
           "ordered", "SWEEPABLE", "DEFAULT_SWEEP"]

#: Grid settings a method's predictions can depend on (the sweep's cell dimensions beside depth): the
#: columns of the axes marked ``method_setting`` (:data:`ntk_bridge.axes.AXES`), in their order.
SETTINGS = tuple(axis.column for axis in AXES if axis.method_setting)


@dataclasses.dataclass(frozen=True)
class Method:
    """One method.

    Attributes:
      name: the identifier in tables and on the command line.
      label: for figures and reports.
      color: its colour in every figure.
      role: ``'mtl'``, ``'gbml'`` or ``'baseline'`` (module docstring).
      summary: one line: what it trains and how it adapts at test time.
      depends_on: the :data:`SETTINGS` its own predictions depend on.
      inner_kernel: the tangent kernel of its inner loop (``'K'``: the head, ``'Theta'``: every
        parameter), ``None`` without one.
      closed_form: whether it has an infinite-width closed form (``CLOSED_FORMS[name]``).
      closed_form_needs_steps: the closed form exists only for discrete times (every ``*_steps``
        set), so the method has no gradient-flow, infinite-time cell.
      finite: whether it has a finite-width trainer (``ntk_bridge.finite.objectives.TRAINERS[name]``).
      fewshot: whether it has a few-shot objective (``ntk_bridge.fewshot.methods.METHODS[name]``).
    """

    name: str
    label: str
    color: str
    role: str
    summary: str
    depends_on: tuple[str, ...]
    inner_kernel: str | None = None
    closed_form: bool = False
    closed_form_needs_steps: bool = False
    finite: bool = False
    fewshot: bool = False

    def depends(self, setting: str) -> bool:
        """Whether this method's predictions change with ``setting`` (one of :data:`SETTINGS`)."""
        return setting in self.depends_on


_GBML_SETTINGS = ("width", "inner_time", "finetune_time", "outer_time", "test_head")

MTL = Method(
    "mtl", "MTL", "#1b9e77", "mtl",
    "shared body, one head per training task (all initialised to w0), trained jointly; at test the head "
    "is reset to w0 and fine-tuned on the support",
    ("width", "finetune_time", "outer_time", "mtl_data"),
    inner_kernel=None, closed_form=True, finite=True,
    fewshot=True)
ANIL = Method(
    "anil", "ANIL", "#d95f02", "gbml",
    "inner loop on the head only (kernel K), outer loss on the queries of the adapted network",
    _GBML_SETTINGS, inner_kernel="K", closed_form=True,
    finite=True,
    fewshot=True)
MAML = Method(
    "maml", "MAML", "#7570b3", "gbml",
    "inner loop on every parameter (kernel Theta), second order",
    _GBML_SETTINGS, inner_kernel="Theta", closed_form=True,
    finite=True,
    fewshot=True)
FOMAML = Method(
    "fomaml", "FO-MAML", "#e7298a", "gbml",
    "MAML with the inner gradients held constant in the outer derivative (first order)",
    _GBML_SETTINGS, inner_kernel="Theta", closed_form=True,
    closed_form_needs_steps=True, finite=True)
BASELINE = Method(
    "baseline", "no-transfer baseline", "#444444", "baseline",
    "no training: a head fine-tuned on the test support of the untrained body",
    ("width", "finetune_time"), closed_form=True,
    finite=True)

#: Every method, in display order.
METHODS: dict[str, Method] = {m.name: m for m in (MTL, ANIL, MAML, FOMAML, BASELINE)}
#: What a sweep can be asked for (the baseline is always computed as well).
SWEEPABLE = tuple(m.name for m in METHODS.values() if m.role != "baseline")
#: What ``ntk-bridge sweep`` computes unless ``--methods`` says otherwise (the baseline always).
DEFAULT_SWEEP = tuple(m.name for m in (MTL, ANIL, MAML))


def get(name: str) -> Method:
    """The method called ``name``; ``UserError`` naming the known ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose from {', '.join(METHODS)}") from None


def names(role: str | None = None, closed_form: bool | None = None, finite: bool | None = None,
          fewshot: bool | None = None) -> tuple[str, ...]:
    """Names of the methods with the given role and implementations, in display order."""
    out = []
    for m in METHODS.values():
        if role is not None and m.role != role:
            continue
        if closed_form is not None and m.closed_form != closed_form:
            continue
        if finite is not None and m.finite != finite:
            continue
        if fewshot is not None and m.fewshot != fewshot:
            continue
        out.append(m.name)
    return tuple(out)


def ordered(selected: Iterable[str]) -> tuple[str, ...]:
    """``selected`` (method names, any order, repeats allowed) in display order, each once."""
    chosen = set(selected)
    return tuple(name for name in METHODS if name in chosen) + tuple(
        sorted(n for n in chosen if n not in METHODS))
