"""Feature learning against width (docs/theory.md §8): few-shot accuracy of finite muP linear networks
against log2 width with the muP limit and the NTK / NNGP limits as lines, and the GBML-MTL gap in the
muP limit against the NTK limit on several task families, beside each method's transfer benefit."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ntk_bridge.figures.style import COLORS, LABELS, STYLE, pyplot, save
from ntk_bridge.results import ok_rows

__all__ = ["LIMITS", "accuracy_vs_width_table", "closeness_table", "closeness_by_schedule", "feature_learning_table",
           "plot_feature_learning_vs_width"]

#: The limits drawn as lines: ``(source, label, line style)``.
LIMITS = (("mup_limit", "muP limit", "-"), ("ntk_linear", "NTK limit, linear", "--"),
          ("nngp_linear", "NNGP head, linear", ":"), ("ntk_relu", "NTK limit, ReLU", "-."),
          ("nngp_relu", "NNGP head, ReLU", (0, (1, 3))))


def _numeric(df: pd.DataFrame) -> pd.DataFrame:
    limit = df["width"].astype(str) == "mup"
    return df.assign(is_mup=limit, w=df["width"].where(~limit, math.inf).astype(float))


def accuracy_vs_width_table(mup: pd.DataFrame, ntk_linear: pd.DataFrame, ntk_relu: pd.DataFrame,
                            methods) -> pd.DataFrame:
    """Mean test accuracy over test episodes: finite muP networks per width and network (``source``
    ``finite_mup``), the muP limit, and the NTK limits (``width inf`` closed forms) of the linear and
    ReLU networks; the NNGP head is the no-transfer baseline on the NNGP kernel (a head trained on
    fixed random features). For a method without a gradient-flow closed form (FO-MAML) the NTK line is
    second-order MAML's (``ntk_method``)."""
    rows = []
    d = _numeric(ok_rows(mup))
    for method in methods:
        fin = d[(d["method"] == method) & ~d["is_mup"] & (d["network"] != "ensemble")]
        for (w, net), g in fin.groupby(["w", "network"]):
            rows.append(dict(panel="accuracy", source="finite_mup", method=method, width=w, network=str(net),
                             accuracy=g["test_accuracy"].mean(), kernel_movement=g["kernel_movement"].mean()))
        lim = d[(d["method"] == method) & d["is_mup"]]
        rows.append(dict(panel="accuracy", source="mup_limit", method=method, width=math.inf, network="mean",
                         accuracy=lim["test_accuracy"].mean(), kernel_movement=lim["kernel_movement"].mean()))
        for act, frame in (("linear", ntk_linear), ("relu", ntk_relu)):
            k = ok_rows(frame)
            ntk_method = method if method in set(k["method"]) else "maml"
            rows.append(dict(panel="accuracy", source=f"ntk_{act}", method=method, ntk_method=ntk_method,
                             width=math.inf, network="mean",
                             accuracy=k[k["method"] == ntk_method]["test_accuracy"].mean()))
            rows.append(dict(panel="accuracy", source=f"nngp_{act}", method=method, ntk_method="baseline",
                             width=math.inf, network="mean",
                             accuracy=k[k["method"] == "baseline"]["test_accuracy"].mean()))
    return pd.DataFrame(rows)


def closeness_table(pairs: dict[str, tuple[pd.DataFrame, pd.DataFrame]], methods) -> pd.DataFrame:
    """``{family: (muP-limit rows, NTK-limit rows)}`` -> per family, limit and method: the median over
    test tasks of ``gap_to_mtl_rel`` and the transfer benefit over the no-transfer baseline (regression:
    ``1 - MSE / MSE_baseline``; classification: accuracy minus the baseline's)."""
    rows = []
    for family, (mup, ntk) in pairs.items():
        for source, frame in (("mup_limit", mup), ("ntk_linear", ntk)):
            d = ok_rows(frame)
            base = d[d["method"] == "baseline"].groupby("test_task")
            classify = d["test_accuracy"].notna().any()
            for method in ("mtl",) + tuple(methods):
                g = d[d["method"] == method].set_index("test_task")
                if classify:
                    benefit = g["test_accuracy"] - base["test_accuracy"].mean()
                else:
                    benefit = 1 - g["test_mse"] / base["test_mse"].mean()
                rows.append(dict(panel="closeness", family=family, source=source, method=method,
                                 gap_to_mtl_rel=float(np.median(g["gap_to_mtl_rel"])),
                                 transfer_benefit=float(np.median(benefit)), test_tasks=len(g),
                                 kernel_movement=float(g["kernel_movement"].mean()) if "kernel_movement" in g else
                                 math.nan))
    return pd.DataFrame(rows)


def closeness_by_schedule(rows: pd.DataFrame, method: str = "anil") -> pd.DataFrame:
    """One sweep's rows of the muP limit (``width mup``) and the NTK limit (``width inf``) of the linear network
    over several inner and outer times -> per ``(inner_time, outer_time)`` of ``method``: its median gap to MTL
    and the transfer benefits of ``method`` and MTL in each limit (:func:`closeness_table`, MTL at the same outer
    time, the baseline shared), and the statuses of the muP limit's ``method`` rows (a diverged limit leaves its
    numbers empty)."""
    import warnings

    limit = rows["width"].astype(str) == "mup"
    out = []
    for (lt, ot), _ in rows[rows["method"] == method].groupby(["inner_time", "outer_time"]):
        def part(mask):
            d = rows[mask]
            return d[(d["method"] == "baseline") | (d["method"] == "mtl") & (d["outer_time"] == ot)
                     | (d["method"] == method) & (d["outer_time"] == ot) & (d["inner_time"] == lt)]

        with warnings.catch_warnings():  # a diverged limit: medians of no rows are NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            t = closeness_table({"": (part(limit), part(~limit))}, (method,)).set_index(["source", "method"])
        status = rows[limit & (rows["method"] == method) & (rows["inner_time"] == lt) & (rows["outer_time"] == ot)]
        out.append(dict(inner_time=lt, outer_time=ot,
                        gap_mup=t.loc[("mup_limit", method), "gap_to_mtl_rel"],
                        gap_ntk=t.loc[("ntk_linear", method), "gap_to_mtl_rel"],
                        benefit_mup=t.loc[("mup_limit", method), "transfer_benefit"],
                        benefit_ntk=t.loc[("ntk_linear", method), "transfer_benefit"],
                        mtl_benefit_mup=t.loc[("mup_limit", "mtl"), "transfer_benefit"],
                        mtl_benefit_ntk=t.loc[("ntk_linear", "mtl"), "transfer_benefit"],
                        mup_status=",".join(sorted(set(status["status"])))))
    return pd.DataFrame(out)


def feature_learning_table(accuracy: pd.DataFrame, closeness: pd.DataFrame) -> pd.DataFrame:
    """Both panels' tables as the one CSV saved beside the figure."""
    return pd.concat([accuracy, closeness], ignore_index=True)


def plot_feature_learning_vs_width(table: pd.DataFrame, path_prefix: str, title: str = "") -> list[str]:
    """One panel per method: accuracy of finite muP linear networks (points: networks; line: their
    mean) against log2 width, the limits as horizontal lines; then the gap to MTL (bars) in the muP
    and NTK limits per family, and the transfer benefit."""
    plt = pyplot()
    acc = table[table["panel"] == "accuracy"]
    clo = table[table["panel"] == "closeness"]
    methods = list(dict.fromkeys(acc["method"]))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(methods) + 2, figsize=(2.6 * (len(methods) + 2), 2.6))
        for ax, method in zip(axes, methods):
            a = acc[acc["method"] == method]
            fin = a[a["source"] == "finite_mup"]
            x = np.log2(fin["width"].astype(float))
            ax.scatter(x, fin["accuracy"], s=6, color=COLORS.get(method, "k"), alpha=0.5)
            mean = fin.groupby("width")["accuracy"].mean()
            ax.plot(np.log2(mean.index.astype(float)), mean.values, color=COLORS.get(method, "k"),
                    label="finite muP")
            for source, label, style in LIMITS:
                v = a[a["source"] == source]["accuracy"]
                if len(v) and np.isfinite(v.iloc[0]):
                    ax.axhline(v.iloc[0], color="k" if source == "mup_limit" else "0.45", linestyle=style,
                               linewidth=1.0, label=label)
            ax.set_title(f"{LABELS.get(method, method)}, {title}")
            ax.set_xlabel("log2 width")
            ax.set_ylabel("test accuracy")
        axes[0].legend(loc="lower right")
        families = list(dict.fromkeys(clo["family"]))
        gbml = [m for m in dict.fromkeys(clo["method"]) if m != "mtl"]
        width = 0.8 / max(1, 2 * len(gbml))
        for col, metric, label in ((len(methods), "gap_to_mtl_rel", "median gap to MTL"),
                                   (len(methods) + 1, "transfer_benefit", "median transfer benefit")):
            ax = axes[col]
            shown = gbml if metric == "gap_to_mtl_rel" else ["mtl"] + gbml
            width = 0.8 / max(1, 2 * len(shown))
            for i, (source, hatch) in enumerate((("mup_limit", ""), ("ntk_linear", "//"))):
                for j, method in enumerate(shown):
                    c = clo[(clo["source"] == source) & (clo["method"] == method)].set_index("family")
                    pos = np.arange(len(families)) + (i * len(shown) + j - len(shown) + 0.5) * width
                    ax.bar(pos, [c[metric].get(f, np.nan) for f in families], width, color=COLORS.get(method, "k"),
                           hatch=hatch, edgecolor="white" if not hatch else "k", linewidth=0.3,
                           label=f"{LABELS.get(method, method)}, {'muP' if source == 'mup_limit' else 'NTK'}")
            ax.set_xticks(np.arange(len(families)))
            ax.set_xticklabels(families, rotation=30)
            ax.set_ylabel(label)
            ax.set_title("muP limit (plain), NTK limit (hatched)")
        axes[-1].legend(loc="best", ncol=2)
        fig.tight_layout()
    return save(fig, path_prefix, table)
