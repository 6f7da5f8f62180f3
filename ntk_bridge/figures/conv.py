"""The gap to MTL against depth for the fully connected, convolutional and residual networks on
real few-shot episodes, with each closed form's classification accuracy (docs/theory.md §7)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from ntk_bridge.figures.style import BASELINE, COLORS, GBML_FLOW, LABELS, LINESTYLES, MTL, STYLE, depth_axis, log_y, \
    one_protocol, pyplot, save, summarise
from ntk_bridge.results import mean_ci95, ok_rows

__all__ = ["ARCH_LABELS", "conv_gap_vs_depth_table", "plot_conv_gap_vs_depth"]

ARCH_LABELS = {"fc": "fully connected", "conv": "convolutional", "resnet": "residual"}



def conv_gap_vs_depth_table(frames: dict[str, pd.DataFrame], chance: float = math.nan,
                            networks: pd.DataFrame | None = None, order: Sequence[str] = ()) -> pd.DataFrame:
    """``{arch: results rows}`` (closed forms) -> quartiles over test tasks of the gap to MTL and of
    the test accuracy per architecture, method, inner time and depth (column ``arch``, ``source``
    ``closed form``); ``chance``: the accuracy of guessing (``1 / ways``), kept as a column for the
    figure. ``networks``: the ``episodes.csv`` of the few-shot networks trained and tested on the same
    episodes (``ntk-bridge fewshot --tasks-of``), one row per method (``source`` ``trained network``):
    mean accuracy over the test episodes (each episode's averaged over seeds first), its 95%
    half-width over episodes, and the number of seeds; the methods in ``order``, then the others in
    the order they appear (the caller knows the few-shot registry: this module imports no wing)."""
    parts = []
    for arch, df in frames.items():
        d = ok_rows(df)
        d = d[(d["width"] == math.inf)]
        t = summarise(d, ["method", "mtl_data", "test_head", "inner_time", "finetune_time", "depth"],
                      ["gap_to_mtl_rel", "test_accuracy"])
        parts.append(t.assign(arch=arch, source="closed form", tasks=";".join(sorted(set(df["tasks"].astype(str)))),
                              chance=chance))
    if networks is not None and len(networks):
        rows = []
        present = list(dict.fromkeys(networks["method"]))
        for method in [m for m in order if m in present] + [m for m in present if m not in order]:
            g = networks[networks["method"] == method]
            mean, ci = mean_ci95(g.groupby("episode")["accuracy"].mean().to_numpy())
            rows.append({"method": method, "network_accuracy": mean, "network_ci95": ci, "seeds": g["seed"].nunique(),
                         "episodes": g["episode"].nunique()})
        parts.append(pd.DataFrame(rows).assign(arch="conv4", source="trained network", chance=chance))
    table = pd.concat(parts, ignore_index=True)
    return table[["arch", "source"] + [c for c in table.columns if c not in ("arch", "source")]]


def plot_conv_gap_vs_depth(table: pd.DataFrame, path_prefix: str,
                           network_styles: Mapping[str, tuple[str, str]] | None = None) -> list[str]:
    """Left: median gap to MTL vs depth of ANIL and MAML (colour) for each architecture (line style),
    smallest inner time; then one panel per architecture: median test accuracy of MTL, ANIL, MAML
    and the no-transfer baseline (band: interquartile range over test episodes; dotted: chance);
    last, when the table has them, the trained networks' mean accuracy on the same test episodes
    (bars: 95% intervals over episodes), labelled and coloured by ``network_styles``
    (``{method: (label, colour)}``, from the caller; else the closed forms' labels and colours, grey)."""
    styles = dict(network_styles or {})
    full = table  # the CSV keeps every row; the panels draw one protocol
    nets = table[table["source"] == "trained network"] if "source" in table else table.iloc[:0]
    table = one_protocol(table[table["source"] != "trained network"] if "source" in table else table)
    archs = [a for a in ARCH_LABELS if a in set(table["arch"])]
    s0 = sorted(table["inner_time"].unique())[0]
    t = table[table["inner_time"] == s0]
    plt = pyplot()
    with plt.rc_context(STYLE):
        panels = len(archs) + 1 + (len(nets) > 0)
        fig, axes = plt.subplots(1, panels, figsize=(2.9 * panels, 2.8), squeeze=False)
        ax = axes[0][0]
        for i, arch in enumerate(archs):
            for method in [m for m in GBML_FLOW if m in set(t["method"])]:
                g = t[(t["arch"] == arch) & (t["method"] == method)].sort_values("depth")
                ax.plot(g["depth"], g["gap_to_mtl_rel_q50"], color=COLORS[method], linestyle=LINESTYLES[i % 4],
                        marker="o", label=f"{LABELS[method]}, {arch}")
        depth_axis(ax, t["depth"].unique(), "depth L (layers / blocks)")
        log_y(ax)
        ax.set_ylabel("‖F(method) − F(MTL)‖ / ‖F(MTL)‖")
        ax.set_title(f"gap to MTL (λτ={s0:g})")
        ax.legend(frameon=False, fontsize=5.5)
        lo = min(0.0, float(t["test_accuracy_q25"].min()))
        for ax, arch in zip(axes[0][1:len(archs) + 1], archs):
            g0 = t[t["arch"] == arch]
            for method in [MTL] + [m for m in GBML_FLOW if m in set(g0["method"])] + [BASELINE]:
                g = g0[g0["method"] == method].sort_values("depth")
                if g.empty:
                    continue
                ax.plot(g["depth"], g["test_accuracy_q50"], color=COLORS[method], marker="o",
                        linestyle="--" if method == BASELINE else "-", label=LABELS[method])
                ax.fill_between(g["depth"], g["test_accuracy_q25"], g["test_accuracy_q75"], color=COLORS[method],
                                alpha=0.12, linewidth=0)
            chance = float(g0["chance"].iloc[0]) if "chance" in g0 and len(g0) else math.nan
            if math.isfinite(chance):
                ax.axhline(chance, color="k", linewidth=0.7, linestyle=":", label="chance")
            depth_axis(ax, g0["depth"].unique(), "depth L (layers / blocks)")
            ax.set_ylim(lo, 1.0)
            ax.set_ylabel("test accuracy (query sets)")
            ax.set_title(f"{ARCH_LABELS[arch]}: accuracy")
            ax.legend(frameon=False, fontsize=5.5)
        if len(nets):
            ax = axes[0][-1]
            x = range(len(nets))
            colours = [styles[m][1] if m in styles else COLORS.get(m, "0.5") for m in nets["method"]]
            ax.bar(x, nets["network_accuracy"], yerr=nets["network_ci95"], color=colours, alpha=0.8, capsize=2,
                   error_kw={"linewidth": 0.7})
            ax.set_xticks(list(x), [styles[m][0] if m in styles else LABELS.get(m, m) for m in nets["method"]],
                          rotation=30, fontsize=6)
            chance = float(nets["chance"].iloc[0])
            if math.isfinite(chance):
                ax.axhline(chance, color="k", linewidth=0.7, linestyle=":", label="chance")
                ax.legend(frameon=False, fontsize=5.5)
            ax.set_ylim(lo, 1.0)
            ax.set_ylabel("mean test accuracy (same query sets)")
            seeds = int(nets["seeds"].max())
            ax.set_title(f"trained Conv-4 networks ({seeds} seed{'s' * (seeds > 1)})")
        fig.tight_layout()
        return save(fig, path_prefix, full)

