"""Sphinx configuration of the ntk_bridge documentation (build: ``sphinx-build -W -b html docs docs/_build/html``).

Why Sphinx with MyST-NB: it is the JAX ecosystem's convention (JAX, optax, neural-tangents), so a
reader of neural-tangents' documentation finds the same layout; MyST reads the existing Markdown
pages (``docs/theory.md`` keeps its path) and MyST-NB executes the jupytext notebooks of
``notebooks/`` at build time; ``sphinx.ext.autodoc`` renders the docstrings, which state the math
and shapes, as the API reference. Everything is offline: the theme (furo) ships its assets and
MathJax comes from the ``sphinx-mathjax-offline`` package (served as static files), so no page loads anything from the
network.

Generated at build time (never typed twice, see ``_ext/ntk_docs.py``): the results schema and the
status vocabulary (``ntk_bridge.metrics.COLUMNS`` and ``STATUSES``), the command-line reference
(from the typer commands themselves), the tutorials (copies of ``notebooks/*.ipynb``).
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

import ntk_bridge  # noqa: E402  (float64 on, TensorFlow deferred, before autodoc imports anything)

project = "ntk_bridge"
author = "ntk_bridge authors"
copyright = "ntk_bridge authors, Apache-2.0"
release = version = ntk_bridge.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "ntk_docs",
]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "_generated", "README.md", "Thumbs.db", ".DS_Store"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# The tutorials run at build time in the notebooks' quick mode (NTK_BRIDGE_QUICK=1: the same checks on
# smaller sizes, as the test suite runs them); jupyter-cache keeps the outputs between builds of an
# unchanged notebook. A cell that raises fails the build.
os.environ.setdefault("NTK_BRIDGE_QUICK", "1")
nb_execution_mode = os.environ.get("NTK_BRIDGE_DOCS_EXECUTE", "cache")
nb_execution_cache_path = os.path.join(os.path.dirname(__file__), "_build", ".jupyter_cache")
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_merge_streams = True

napoleon_google_docstring, napoleon_numpy_docstring = True, False  # the docstrings are Google style
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"ntk_bridge {release}"
# MathJax 3 from the sphinx-mathjax-offline package (its folder is not importable as an extension, so
# its files are served as static files here): the pages load nothing from the network.
def _mathjax_static() -> str:
    from importlib.metadata import distribution

    init = next(f for f in distribution("sphinx-mathjax-offline").files if f.name == "__init__.py")
    return os.path.join(os.path.dirname(str(init.locate())), "static")


html_static_path = ["_static", _mathjax_static()]
html_css_files = ["ntk.css"]
mathjax_path = "mathjax/tex-chtml.js"
html_show_sourcelink = False
nitpicky = False
smartquotes = False  # option names keep their two hyphens, quotes stay as typed
