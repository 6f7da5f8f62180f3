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
"""
from ntk_bridge import runtime as _runtime

_runtime.prepare()

from ntk_bridge.errors import UserError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
