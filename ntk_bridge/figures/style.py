"""The figures' common style: colours and labels from the method registry, one matplotlib style,
atomic saving (PNG, PDF and the table behind the figure), log axes and quartile bands."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge.settings import ALL, LEARNED, QUERY

__all__ = ["STYLE", "COLORS", "LABELS", "MTL", "BASELINE", "GBML", "GBML_FLOW", "LINESTYLES", "save", "table_csv",
           "log_y", "depth_axis", "summarise", "band", "pyplot", "one_protocol"]

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.linewidth": 1.2,
    "lines.markersize": 3,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
COLORS = {name: m.color for name, m in registry.METHODS.items()}
LABELS = {name: m.label for name, m in registry.METHODS.items()}
MTL, BASELINE = registry.MTL.name, registry.BASELINE.name
#: Methods compared with MTL (their gap is drawn), and those with a closed form in continuous time.
GBML = registry.names(role="gbml")
GBML_FLOW = tuple(m for m in GBML if not registry.get(m).closed_form_needs_steps)
DATA_TITLES = {QUERY: "gap to MTL trained on the queries", ALL: "gap to MTL trained on all points"}
LINESTYLES = ["-", "--", ":", "-."]


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, imported when a figure is drawn (tables need none)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def one_protocol(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of one test-head protocol (``learned`` when several are present): a figure draws one;
    its table (the CSV beside it) keeps them all."""
    if "test_head" not in table or table["test_head"].nunique() < 2:
        return table
    keep = LEARNED if LEARNED in set(table["test_head"]) else sorted(table["test_head"].unique())[0]
    return table[table["test_head"] == keep]


def table_csv(table: pd.DataFrame) -> str:
    """A figure's table as the CSV text saved beside it."""
    return table.to_csv(index=False, float_format="%.6g")


#: Whether :func:`save` writes the PDF in a forked child while it writes the PNG (the drawing worker of a
#: sweep, :mod:`ntk_bridge.figures.drawer`, turns it on: the two renderings then take the time of one).
split_formats = False


def _savefig(fig, path: str, dpi) -> None:
    import io

    from ntk_bridge.runs import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format=path.rsplit(".", 1)[1], bbox_inches="tight", dpi=dpi,
                metadata={"CreationDate": None} if path.endswith(".pdf") else None)
    atomic_write(path, buf.getvalue())


def _aside(fig, path: str, dpi) -> int | None:
    """The process id of a forked child writing ``fig`` to ``path``, or ``None`` where forking is not safe
    (another thread is running, no ``fork``)."""
    import threading

    if not hasattr(os, "fork") or threading.active_count() > 1:
        return None
    pid = os.fork()
    if pid == 0:  # the child: write, and leave without running anything of the parent's
        code = 1
        try:
            _savefig(fig, path, dpi)
            code = 0
        finally:
            os._exit(code)
    return pid


def save(fig, path_prefix: str, table: pd.DataFrame | None = None, dpi: float | None = None) -> list[str]:
    """Save ``fig`` as PNG and PDF (and ``table`` as CSV) under ``path_prefix``, each file written
    atomically (a reader sees the old file or the new one), at ``dpi`` (the figure's own by default);
    the figure is closed, also on an error; returns the paths. With :data:`split_formats`, the PDF is
    written by a forked child meanwhile (the same bytes; written here if the child fails)."""
    plt = pyplot()
    from ntk_bridge.runs import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    png, pdf = paths = [f"{path_prefix}.png", f"{path_prefix}.pdf"]
    try:
        child = _aside(fig, pdf, dpi) if split_formats else None
        _savefig(fig, png, dpi)
        if child is None or os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) != 0:
            _savefig(fig, pdf, dpi)
    finally:
        plt.close(fig)
    if table is not None:
        atomic_write(f"{path_prefix}.csv", table_csv(table))
        paths.append(f"{path_prefix}.csv")
    return paths


def log_y(ax) -> None:
    """Log-scaled y axis with plain-number tick labels (``0.02``, not ``2 x 10^-2``): easier to read,
    and drawn without the mathtext parser, which is most of a figure's drawing time."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(plain)


def depth_axis(ax, values, label: str = "depth L (hidden layers)") -> None:
    """Log-scaled axis with plain integer ticks at powers of two."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    ax.set_xscale("log")
    values = sorted(set(float(v) for v in values))
    lo, hi = values[0], values[-1]
    if len(values) <= 8:  # few values: a tick at each (depths 1, 2, 3, 4)
        ticks = values
    else:
        ticks = [t for t in 2 ** np.arange(0, 16) if lo <= t <= hi] or [lo, hi]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def summarise(df: pd.DataFrame, by: list[str], columns: list[str]) -> pd.DataFrame:
    """Quartiles ``<col>_q25/_q50/_q75`` of ``columns`` over the rows of each ``by`` group, and ``n``."""
    g = df.groupby(by, dropna=False)
    parts = {}
    for c in columns:
        q = g[c].quantile([0.25, 0.5, 0.75]).unstack()
        q.columns = [f"{c}_q25", f"{c}_q50", f"{c}_q75"]
        parts[c] = q
    out = pd.concat(parts.values(), axis=1)
    out["n"] = g.size()
    return out.reset_index()


def band(ax, t: pd.DataFrame, x: str, col: str, color, label, marker="o", linestyle="-"):
    t = t.sort_values(x)
    ax.plot(t[x], t[f"{col}_q50"], marker=marker, linestyle=linestyle, color=color, label=label)
    ax.fill_between(t[x], t[f"{col}_q25"], t[f"{col}_q75"], color=color, alpha=0.15, linewidth=0)


