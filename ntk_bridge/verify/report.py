"""The verify report: ``claims.csv``, ``report.md`` and a self-contained one-page ``report.html``
(figures embedded), all drawn from the panel's stored rows and the claims table."""
from __future__ import annotations

import base64
import html
import io
import os

import numpy as np
import pandas as pd

from ntk_bridge import methods as registry
from ntk_bridge.figures.style import COLORS, LABELS, STYLE, depth_axis, log_y, pyplot
from ntk_bridge.report import fmt
from ntk_bridge.verify.claims import RULES, benefit_table, gap_medians, verdict_matrix
from ntk_bridge.settings import ALL, LEARNED, QUERY

__all__ = ["figures", "markdown_report", "html_report", "verdict_table"]

_TITLES = {
    "C1": "C1 depth: the ANIL-MTL gap falls with depth",
    "C2": "C2 inner time: gap = a/L + b lambda*tau",
    "C3": "C3 bound tightness: C = max gap / (lambda*tau + 1/L)",
    "C4": "C4 width: finite networks approach the closed form like h^-1/2",
    "C5": "C5 MAML: the MAML-MTL gap falls with depth",
    "C6": "C6 non-triviality: the methods beat the no-transfer baseline",
    "C7": "C7 beyond the kernel regime: the GBML-MTL gap in the muP limit against the NTK limit",
}
_SHOWN = ["tasks", "method", "mtl_data", "test_head", "inner_time", "depths", "estimate", "ci95_low", "ci95_high",
          "n", "quality", "verdict", "detail", "useful_up_to_depth"]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=110)
    pyplot().close(fig)
    return buf.getvalue()


def _families(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["tasks"]))


def _fig_gap(rows: pd.DataFrame, method: str) -> bytes:
    plt = pyplot()
    med = gap_medians(rows, method)
    s0 = med["inner_time"].min()
    fams = _families(rows)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(fams), figsize=(2.9 * len(fams), 2.6), squeeze=False)
        for ax, fam in zip(axes[0], fams):
            g = med[(med["tasks"] == fam) & (med["inner_time"] == s0)]
            for i, ((data, head), c) in enumerate(g.groupby(["mtl_data", "test_head"])):
                stats = c.groupby("depth")["gap_to_mtl_rel"].agg(["mean", "min", "max"])
                style = ["-", "--", ":", "-."][i % 4]
                ax.plot(stats.index, stats["mean"], style, marker="o", color=COLORS[method] if data == QUERY else "#555",
                        label=f"MTL on {data}, {head} head")
                ax.fill_between(stats.index, stats["min"], stats["max"], color=COLORS[method], alpha=0.1, linewidth=0)
            if len(g):
                ref = g[g["mtl_data"] == g["mtl_data"].iloc[0]].groupby("depth")["gap_to_mtl_rel"].mean()
                d = np.array(ref.index, float)
                ax.plot(d, ref.iloc[0] * d[0] / d, color="k", linewidth=0.8, linestyle=(0, (1, 2)), label="1/L")
                depth_axis(ax, d)
                log_y(ax)
            ax.set_title(f"{fam}: {LABELS[method]}, lambda*tau={s0:g}")
            ax.legend(frameon=False, fontsize=5.5)
        axes[0][0].set_ylabel(f"gap {LABELS[method]} - MTL (relative)")
        fig.tight_layout()
        return _png(fig)


def _fig_ratio(rows: pd.DataFrame) -> bytes:
    plt = pyplot()
    med = gap_medians(rows, registry.ANIL.name)
    med = med.assign(ratio=med["gap_to_mtl_rel"] / (med["inner_time"] + 1.0 / med["depth"]))
    fams, datas = _families(rows), sorted(med["mtl_data"].unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(datas), len(fams), figsize=(2.6 * len(fams), 2.1 * len(datas)), squeeze=False)
        for i, data in enumerate(datas):
            for j, fam in enumerate(fams):
                g = med[(med["tasks"] == fam) & (med["mtl_data"] == data) & (med["test_head"] == LEARNED)]
                if g.empty:
                    g = med[(med["tasks"] == fam) & (med["mtl_data"] == data)]
                grid = g.groupby(["inner_time", "depth"])["ratio"].mean().unstack("depth")
                ax = axes[i][j]
                im = ax.imshow(np.log10(grid.to_numpy()), aspect="auto", origin="lower", cmap="magma")
                ax.set_xticks(range(grid.shape[1]), [str(d) for d in grid.columns], fontsize=5)
                ax.set_yticks(range(grid.shape[0]), [f"{s:g}" for s in grid.index], fontsize=5)
                ax.set_title(f"{fam}, MTL on {data}, learned head", fontsize=7)
                ax.set_xlabel("depth L")
                ax.set_ylabel("lambda*tau")
                fig.colorbar(im, ax=ax, label="log10 gap/(lambda*tau+1/L)")
        fig.tight_layout()
        return _png(fig)


def _fig_benefit(rows: pd.DataFrame) -> bytes:
    plt = pyplot()
    b = benefit_table(rows)
    fams = _families(rows)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(fams), figsize=(2.9 * len(fams), 2.6), squeeze=False)
        if not len(b):
            return _png(fig)
        s0 = b["inner_time"].min()
        for ax, fam in zip(axes[0], fams):
            head = LEARNED if (b["test_head"] == LEARNED).any() else b["test_head"].iloc[0]
            g = b[(b["tasks"] == fam) & (b["inner_time"] == s0) & (b["test_head"] == head)]
            for (method, data), c in g.groupby(["method", "mtl_data"]):
                if not registry.get(method).depends("mtl_data") and data != sorted(g["mtl_data"].unique())[0]:
                    continue
                c = c.sort_values("depth")
                label = LABELS[method] + (f" ({data})" if registry.get(method).depends("mtl_data") else "")
                style = "-." if data == ALL and registry.get(method).depends("mtl_data") else "-"
                ax.plot(c["depth"], c["benefit"], style, marker="o", color=COLORS[method], label=label)
                ax.fill_between(c["depth"], c["ci95_low"], c["ci95_high"], color=COLORS[method], alpha=0.12, linewidth=0)
            ax.axhline(0, color="k", linewidth=0.8)
            depth_axis(ax, g["depth"].unique() if len(g) else [1, 2])
            ax.set_title(f"{fam}: transfer benefit (lambda*tau={s0:g})")
            ax.legend(frameon=False, fontsize=5.5)
        axes[0][0].set_ylabel("1 - MSE / MSE(baseline)")
        fig.tight_layout()
        return _png(fig)


def _fig_width(finite: pd.DataFrame) -> bytes | None:
    from ntk_bridge.figures import distance_vs_width_table, plot_distance_vs_width

    if finite is None or not len(finite) or finite["width"].nunique() < 2:
        return None
    table = distance_vs_width_table(finite)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plot_distance_vs_width(table, os.path.join(tmp, "width"))
        with open(os.path.join(tmp, "width.png"), "rb") as fh:
            return fh.read()


def _usable(rows: pd.DataFrame, method: str) -> bool:
    """Whether ``method`` has a finite gap on an ok row to draw."""
    return bool(np.isfinite(gap_medians(rows, method)["gap_to_mtl_rel"].to_numpy(float)).any())


def figures(rows: pd.DataFrame, finite: pd.DataFrame | None) -> dict[str, bytes]:
    """The report's figures as PNG bytes, by file name; a figure without a usable row (every gap NaN
    or not ok: the claims say so) is not drawn."""
    anil, maml = _usable(rows, registry.ANIL.name), _usable(rows, registry.MAML.name)
    out = {}
    if anil:
        out["c1_gap_vs_depth.png"] = _fig_gap(rows, registry.ANIL.name)
    if maml:
        out["c5_maml_gap_vs_depth.png"] = _fig_gap(rows, registry.MAML.name)
    if anil:
        out["c3_ratio.png"] = _fig_ratio(rows)
    benefit = benefit_table(rows)
    if "benefit" in benefit and np.isfinite(benefit["benefit"].to_numpy(float)).any():
        out["c6_benefit.png"] = _fig_benefit(rows)
    width = _fig_width(finite)
    if width is not None:
        out["c4_width.png"] = width
    return out


_CAPTIONS = {
    "C1": "Lines: the median gap over test tasks, averaged over task seeds, at the smallest inner time; bands: its "
          "range over the seeds; dotted: a 1/L guide.",
    "C3": "log10 of gap / (lambda*tau + 1/L), averaged over task seeds, learned head: where the bound is tight "
          "(bright) and loose (dark).",
    "C4": "Finite networks' distance to the closed form with the same steps, against width; the legend carries the "
          "fitted exponents.",
    "C5": "As C1, for MAML.",
    "C6": "1 - MSE / MSE(no-transfer baseline), mean over task seeds with its 95% interval, learned head, smallest "
          "inner time; above 0: the method uses the training tasks.",
}
_FIGURE_OF = {"C1": "c1_gap_vs_depth.png", "C3": "c3_ratio.png", "C4": "c4_width.png", "C5": "c5_maml_gap_vs_depth.png",
              "C6": "c6_benefit.png"}


def _shown(claims: pd.DataFrame, claim: str) -> pd.DataFrame:
    g = claims[claims["claim"] == claim]
    cols = [c for c in _SHOWN if c in g and not g[c].isna().all() and not (g[c].astype(str) == "").all()]
    return g[cols]


def _md_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
    return "\n".join(lines)


def _intro(panel: dict, seconds: float | None) -> list[str]:
    replicates = "task seeds" if len(panel["seeds"]) > 1 else "the test tasks of the one task set"
    lines = [f"Panel `{panel['name']}`: families {', '.join(panel['families'])}; task seeds "
             f"{', '.join(map(str, panel['seeds']))}; depths {', '.join(map(str, panel['depths']))}; inner times "
             f"{', '.join(f'{s:g}' for s in panel['inner_times'])}; MTL trained on {', '.join(panel['mtl_data'])}; "
             f"test-head protocols {', '.join(panel['test_heads'])}. Statistics are taken over {replicates} "
             "(mean and t-based 95% interval); gaps are medians over test tasks."]
    if seconds is not None:
        lines.append(f"Computed in {seconds:.0f} s.")
    return lines


def _summary(verdicts: pd.DataFrame) -> pd.DataFrame:
    undecided = verdicts["inconclusive"] + verdicts["no_data"]
    return pd.DataFrame({"claim": [_TITLES.get(c, c) for c in verdicts["claim"]], "verdict": verdicts["verdict"],
                         "holds / fails / inconclusive": [f"{h} / {f} / {u} of {n}" for h, f, u, n in zip(
                             verdicts["holds"], verdicts["fails"], undecided, verdicts["conditions"])],
                         "where": verdicts["where"].fillna("")})


def markdown_report(claims: pd.DataFrame, verdicts: pd.DataFrame, panel: dict, command: str | None,
                    seconds: float | None = None, images: dict | None = None) -> str:
    """``report.md``: the verdicts, then per claim its rule, its verdict matrix, its figure (those of
    ``images`` when given) and every condition's numbers."""
    parts = ["# ntk-bridge verify: the theorem's verdict", ""]
    if command:
        parts += [f"Command: `{command}`", ""]
    parts += _intro(panel, seconds) + ["", "## Verdicts", "", _md_table(_summary(verdicts)), "",
                                       f"Overall: {RULES['overall']}.", "", f"Every claim: {RULES['every']}."]
    for claim in sorted(claims["claim"].unique()):
        parts += ["", f"## {_TITLES.get(claim, claim)}", "", f"Rule: {RULES[claim]}.", "",
                  _md_table(verdict_matrix(claims, claim))]
        if claim in _FIGURE_OF and (images is None or _FIGURE_OF[claim] in images):
            parts += ["", f"![{claim}]({_FIGURE_OF[claim]})", "", _CAPTIONS[claim]]
        parts += ["", "Every condition:", "", _md_table(_shown(claims, claim))]
    parts.append("")
    return "\n".join(parts)


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;font-size:12px;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
        "th{background:#f2f2f2}.holds{color:#1a7f37;font-weight:600}.fails{color:#b3261e;font-weight:600}"
        ".depends,.inconclusive,.no{color:#9a6700;font-weight:600}img{max-width:100%}code{background:#f6f6f6}")


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for _, r in df.iterrows():
        cells = []
        for c, v in r.items():
            text = html.escape(fmt(v))
            word = text.split(" ")[0]
            cls = f' class="{word}"' if word in ("holds", "fails", "depends", "inconclusive", "no") else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def html_report(claims: pd.DataFrame, verdicts: pd.DataFrame, panel: dict, images: dict[str, bytes],
                command: str | None, seconds: float | None = None) -> str:
    """One self-contained page: the same content as ``report.md``, figures embedded as data URIs,
    every condition's numbers folded under each claim."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>ntk-bridge verify</title>",
             f"<style>{_CSS}</style></head><body><h1>ntk-bridge verify: the theorem's verdict</h1>"]
    if command:
        parts.append(f"<p>Command: <code>{html.escape(command)}</code></p>")
    parts += [f"<p>{html.escape(line)}</p>" for line in _intro(panel, seconds)]
    parts += ["<h2>Verdicts</h2>", _html_table(_summary(verdicts)), f"<p>Overall: {html.escape(RULES['overall'])}.</p>",
              f"<p>Every claim: {html.escape(RULES['every'])}.</p>"]
    for claim in sorted(claims["claim"].unique()):
        parts += [f"<h2>{html.escape(_TITLES.get(claim, claim))}</h2>", f"<p>Rule: {html.escape(RULES[claim])}.</p>",
                  _html_table(verdict_matrix(claims, claim))]
        name = _FIGURE_OF.get(claim)
        if name in images:
            data = base64.b64encode(images[name]).decode()
            parts.append(f"<figure><img alt='{claim}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(_CAPTIONS[claim])}</figcaption></figure>")
        parts += ["<details><summary>Every condition</summary>", _html_table(_shown(claims, claim)), "</details>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def verdict_table(verdicts: pd.DataFrame):
    """The verdicts as a :class:`ntk_bridge.report.ReportTable` (what ``verify`` prints)."""
    from ntk_bridge.report import ReportTable

    frame = _summary(verdicts)
    cols = {c: c for c in frame.columns}
    note = ("A claim holds if every condition holds, fails if every condition fails, is inconclusive if none is "
            "decided, depends otherwise; report.md lists where. The rules are in the report.")
    return ReportTable("ntk-bridge verify: the theorem's claims", frame, cols, note)
