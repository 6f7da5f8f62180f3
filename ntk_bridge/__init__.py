"""ntk_bridge: MTL vs gradient-based meta-learning, checked by computation.

Closed-form infinite-width NTK predictors of multi-task learning (MTL), ANIL and MAML
(``ntk_bridge.predictors``), the kernels of every depth in one pass (``ntk_bridge.kernels``),
task sets (``ntk_bridge.tasks``), finite networks trained by gradient descent
(``ntk_bridge.finite``), resumable sweeps (``ntk_bridge.sweep``) and a few-shot training path
(``ntk_bridge.fewshot``).

Importing the package enables float64 in JAX (``jax_enable_x64``): every kernel computation here
is done in float64, because the gaps of interest are below float32 noise. Code that wants float32
(the few-shot networks) asks for it explicitly. It also keeps neural-tangents from importing
TensorFlow, which nothing here uses (:mod:`ntk_bridge.runtime`). Importing the package itself is
cheap: JAX is imported by the modules that compute.

The package is built in floors, from the ground up (:data:`FLOORS`; ``docs/architecture.md``):

1. ground -- errors, runtime, run folders, ranges, fields, the settings' allowed values (``settings``),
   the grid's axes (``axes``), the method registry, task sets, the image data (``ntk_bridge.datasets``),
   provenance, the settings' descriptions (``config``), jitted programs kept on disk (``programs``);
2. tables -- task families, the results schema and statuses (``metrics``), statistics
   (``results``), figures drawn from tables (``figures``);
3. kernels -- kernels, outer operators, outer solvers, the closed forms' outer problems (``outer``), closed
   forms, predictors, diagnostics;
4. wings -- finite networks (``finite``) and few-shot networks (``fewshot``), which import nothing
   of each other;
5. runs -- what a configuration describes, built (``build``), the budget, the sweep's record, the
   sweep, the verdict, the report, the bridge between the wings (``bridge``), the paper's figures;
6. commands -- the command line (``cli``, how its process ends: ``leave``, ``fewshot.command``).

A module imports only from its floor or below (``tests/test_structure.py`` checks every import,
at module level or inside a function).
"""
from ntk_bridge import runtime as _runtime

_runtime.prepare()

from ntk_bridge.errors import UserError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["UserError", "__version__", "FLOORS", "floor_of"]

#: The floors of the package, bottom first: ``(name, modules)``; a module name stands for itself and
#: its submodules (``"ntk_bridge"`` for the package's ``__init__`` only), and the longest name that
#: matches decides (``fewshot.command`` is a command, the rest of ``fewshot`` a wing). A module
#: imports only from its floor or below.
FLOORS = (
    ("ground", ("ntk_bridge", "errors", "runtime", "runs", "ranges", "fields", "clihelp", "settings", "axes", "methods",
                "tasks", "datasets", "blocked", "convnets", "provenance", "config", "programs",
                "csvtext")),
    ("tables", ("families", "metrics", "results", "figures")),
    ("kernels", ("kernels", "layer_keys", "operators", "solvers", "outer", "closed_forms", "predictors",
                 "diagnostics")),
    ("wings", ("finite", "fewshot")),
    ("runs", ("build", "budget", "record", "sweep", "verify", "report", "distributed", "bridge", "paper_figures")),
    ("commands", ("cli", "leave", "fewshot.command")),
)


def floor_of(module: str) -> int | None:
    """The floor (index into :data:`FLOORS`) of the package module ``module`` (``"ntk_bridge.x.y"``),
    or None when no entry names it or a package above it."""
    best, floor = -1, None
    for i, (_, names) in enumerate(FLOORS):
        for name in names:
            full = name if name == "ntk_bridge" else f"ntk_bridge.{name}"
            within = module == full or (full != "ntk_bridge" and module.startswith(full + "."))
            if within and len(full) > best:
                best, floor = len(full), i
    return floor
