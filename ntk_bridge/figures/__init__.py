"""Figures, drawn only from stored tables.

Each figure has a ``*_table`` function that turns tidy results (``results.csv`` rows) into the small
table that is actually drawn (saved as the figure's CSV), and a ``plot_*`` function that draws from
that table alone. One fixed style (:data:`STYLE`), labelled axes, sized for a paper column. Rows
whose ``status`` is not ``ok`` never reach a table; the caller reports them.
"""
from ntk_bridge.figures.depth import (gap_vs_depth_table, gap_vs_inner_time_table, plot_gap_vs_depth,
                                      plot_gap_vs_inner_time, plot_kernel_degeneracy, plot_test_error_vs_depth)
from ntk_bridge.figures.style import COLORS, LABELS, STYLE, depth_axis, log_y, save, summarise, table_csv
from ntk_bridge.figures.width import (distance_vs_width_table, finite_gap_vs_depth_table, plot_distance_vs_width,
                                      plot_finite_gap_vs_depth)

__all__ = [
    "STYLE", "COLORS", "LABELS", "save", "table_csv", "depth_axis", "log_y", "summarise",
    "gap_vs_depth_table", "plot_gap_vs_depth", "plot_test_error_vs_depth",
    "gap_vs_inner_time_table", "plot_gap_vs_inner_time",
    "distance_vs_width_table", "plot_distance_vs_width",
    "finite_gap_vs_depth_table", "plot_finite_gap_vs_depth",
    "plot_kernel_degeneracy",
]
