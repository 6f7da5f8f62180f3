"""Figures, drawn only from stored tables.

Each figure has a ``*_table`` function that turns tidy results (``results.csv`` rows) into the small
table that is actually drawn (saved as the figure's CSV), and a ``plot_*`` function that draws from
that table alone. One fixed style (:data:`STYLE`), labelled axes, sized for a paper column. Rows
whose ``status`` is not ``ok`` never reach a table; the caller reports them.
"""
import importlib

#: Where each name of the package lives. They are imported on first use (PEP 562), so that importing a
#: submodule that needs neither pandas nor matplotlib (:mod:`ntk_bridge.figures.drawer`, which the
#: command line imports before anything heavy) imports neither.
_HOMES = {
    "depth": ("gap_vs_depth_table", "gap_vs_inner_time_table", "plot_gap_vs_depth", "plot_gap_vs_inner_time",
              "plot_kernel_degeneracy", "plot_test_error_vs_depth"),
    "style": ("COLORS", "LABELS", "STYLE", "depth_axis", "log_y", "save", "summarise", "table_csv"),
    "width": ("distance_vs_width_table", "finite_gap_vs_depth_table", "plot_distance_vs_width",
              "plot_finite_gap_vs_depth"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}
_SUBMODULES = ("conv", "depth", "drawer", "feature", "regimes", "style", "width")


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_HOME) | set(_SUBMODULES))


__all__ = [
    "STYLE", "COLORS", "LABELS", "save", "table_csv", "depth_axis", "log_y", "summarise",
    "gap_vs_depth_table", "plot_gap_vs_depth", "plot_test_error_vs_depth",
    "gap_vs_inner_time_table", "plot_gap_vs_inner_time",
    "distance_vs_width_table", "plot_distance_vs_width",
    "finite_gap_vs_depth_table", "plot_finite_gap_vs_depth",
    "plot_kernel_degeneracy",
]
