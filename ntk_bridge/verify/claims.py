"""The claims ``ntk-bridge verify`` checks, each computed from the panel's rows, and the rules that
turn the fitted numbers into verdicts (stated in :data:`RULES` and in the report; nothing expected is
written into a result).

Replicates: the statistics are taken over *task seeds* (independent task sets of one family) when
the panel has two or more, else over the *test tasks* of the one task set. For each replicate the
gap is the median over its test tasks (or the test task's own gap); a claim's estimate is the mean
over replicates with a t-based 95% interval.

======  ==========================================================================================
claim   what is measured
======  ==========================================================================================
C1      the ANIL-MTL gap against depth: log-log slope (theory: it falls, like ``1/L`` while that
        term dominates)
C2      the gap against ``lambda*tau`` and depth: the least-squares fit ``gap = a/L + b lambda*tau``
        (no intercept, every depth and inner time), ``b`` and the fit's ``R^2``
C3      the bound's constant ``C = max gap / (lambda*tau + 1/L)`` over the grid, and whether the ratio
        still grows with depth at the smallest inner time (log-log slope over the deeper half)
C4      finite networks: the distance to the infinite-width predictor against width (theory: ``h^-1/2``)
C5      the MAML-MTL gap against depth (the theorem covers last-layer GBML; MAML is the check)
C6      the transfer benefit ``1 - MSE_method / MSE_baseline`` at each depth, and the deepest depth up
        to which it is significantly above zero
======  ==========================================================================================
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import special

from ntk_bridge import methods as registry
from ntk_bridge.results import fit_power_law, ok_rows, width_exponents
from ntk_bridge.verify.beyond import C7_RULE

__all__ = ["RULES", "VERDICTS", "OVERALL", "C4_RIVALS", "claims_table", "overall", "replicate_column", "gap_medians",
           "benefit_table"]

#: The verdicts a condition can get: ``no data`` where the statistic cannot be formed (fewer than two
#: replicates); an interval that cannot be formed otherwise decides nothing (``inconclusive``).
VERDICTS = ("holds", "fails", "inconclusive", "no data")
#: A claim's overall verdicts.
OVERALL = ("holds", "fails", "inconclusive", "depends")

#: The width exponents a C4 interval must exclude to call the rate ``h^-1/2`` (the neighbouring
#: rates ``h^-1/4`` and ``h^-1``): an interval wide enough to hold them cannot tell the rates apart.
C4_RIVALS = (-0.25, -1.0)

#: How each claim's verdict is derived (the report prints these).
RULES = {
    "C1": "per condition: holds if the slope's 95% CI lies below 0 (the gap falls with depth), fails if it "
          "lies at or above 0, inconclusive otherwise",
    "C2": "per condition: holds if b's 95% CI lies above 0 (the gap grows with the inner time) and the fit's "
          "R^2 >= 0.8; fails if b's CI lies at or below 0 or R^2 < 0.5; inconclusive otherwise (the fit: least "
          "squares without intercept over every depth and inner time, per seed for b's CI; R^2 = 1 - SSE/SST of "
          "the fit to the seed-mean gaps, negative when it does worse than a constant)",
    "C3": "per condition: fails if the ratio gap / (lambda*tau + 1/L) still grows with depth at the smallest "
          "inner time (log-log slope over the deeper half of the depths, 95% CI above 0), holds if that CI "
          "reaches 0 or below (the bound's shape fits the grid)",
    "C4": "per method and depth: holds if the width exponent's 95% CI contains -1/2 and excludes both -1/4 and "
          "-1 (it tells h^-1/2 from its neighbouring rates); fails if the CI excludes -1/2 (above it: a slower "
          "approach, or none where it reaches 0; below it: a faster one); inconclusive otherwise (a CI too wide to "
          "tell the rates apart)",
    "C5": "as C1, for the MAML-MTL gap",
    "C6": "per condition: holds if the benefit's 95% CI lies above 0 at the shallowest depth (the method "
          "transfers something), fails if it lies at or below 0, inconclusive otherwise; the detail gives the "
          "deepest depth up to which it stays above 0",
    "C7": C7_RULE,
    "every": "a condition whose 95% CI cannot be formed is inconclusive, and no data when it has fewer than two "
             "replicates (task seeds, or the test tasks of a single task file; a file with fewer than two test "
             "tasks is refused)",
    "overall": "a claim holds if every condition holds, fails if every condition fails, is inconclusive if "
               "none is decided, and depends otherwise; where lists the families on which it holds, fails or is "
               "inconclusive throughout, and the mixed ones with their counts",
}

KEYS = ["tasks", "mtl_data", "test_head", "inner_time"]


def replicate_column(df: pd.DataFrame) -> str:
    """``task_seed`` when the rows span several task seeds, else ``test_task``."""
    return "task_seed" if df["task_seed"].nunique() > 1 else "test_task"


def _mean_ci(values) -> tuple[float, float, float, int]:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(special.stdtrit(n - 1, 0.975)) * float(v.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


def _undecided(lo: float, hi: float, n: int) -> str | None:
    """``'no data'`` for fewer than two replicates, ``'inconclusive'`` for an interval that cannot be
    formed, ``None`` when the interval can decide."""
    if n < 2:
        return "no data"
    return None if np.isfinite(lo) and np.isfinite(hi) else "inconclusive"


def _sign_verdict(lo: float, hi: float, n: int = 2) -> str:
    """Below 0: ``holds``; at or above 0: ``fails``; containing 0: ``inconclusive``."""
    return _undecided(lo, hi, n) or ("holds" if hi < 0 else ("fails" if lo >= 0 else "inconclusive"))


def gap_medians(df: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per replicate and condition: the gap to MTL of ``method`` at each depth (median over test
    tasks when replicates are seeds)."""
    rep = replicate_column(df)
    d = ok_rows(df)
    d = d[(d["method"] == method) & (d["width"] == math.inf)]
    return d.groupby(KEYS + [rep, "depth"])["gap_to_mtl_rel"].median().reset_index().rename(columns={rep: "rep"})


def _slope_rows(df: pd.DataFrame, claim: str, method: str) -> list[dict]:
    rows = []
    for key, g in gap_medians(df, method).groupby(KEYS):
        slopes = [fit_power_law(r["depth"], r["gap_to_mtl_rel"])[0] for _, r in g.groupby("rep")]
        est, lo, hi, n = _mean_ci(slopes)
        per_depth = g.groupby("depth")["gap_to_mtl_rel"].mean()
        rows.append(dict(zip(KEYS, key), claim=claim, method=method, estimate=est, ci95_low=lo, ci95_high=hi, n=n,
                         depths=f"{per_depth.index.min()}..{per_depth.index.max()}",
                         quality=f"gap {per_depth.iloc[0]:.3g} at L={per_depth.index.min()}, "
                                 f"{per_depth.iloc[-1]:.3g} at L={per_depth.index.max()}",
                         verdict=_sign_verdict(lo, hi, n),
                         detail="CI contains -1 (the 1/L rate)" if np.isfinite(lo) and lo <= -1 <= hi else ""))
    return rows


def _c2_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    keys = KEYS[:-1]
    for key, g in gap_medians(df, registry.ANIL.name).groupby(keys):
        if g["inner_time"].nunique() < 2:
            continue
        coef = []
        for _, r in g.groupby("rep"):
            X = np.stack([1.0 / r["depth"].to_numpy(float), r["inner_time"].to_numpy(float)], axis=1)
            coef.append(np.linalg.lstsq(X, r["gap_to_mtl_rel"].to_numpy(float), rcond=None)[0])
        coef = np.array(coef)
        mean = g.groupby(["depth", "inner_time"])["gap_to_mtl_rel"].mean().reset_index()
        X = np.stack([1.0 / mean["depth"].to_numpy(float), mean["inner_time"].to_numpy(float)], axis=1)
        y = mean["gap_to_mtl_rel"].to_numpy(float)
        fit = np.linalg.lstsq(X, y, rcond=None)[0]
        r2 = 1 - float(np.sum((y - X @ fit) ** 2) / np.sum((y - y.mean()) ** 2))
        a = _mean_ci(coef[:, 0])
        b = _mean_ci(coef[:, 1])
        verdict = _undecided(b[1], b[2], b[3]) or ("holds" if b[1] > 0 and r2 >= 0.8 else
                                                   "fails" if b[2] <= 0 or r2 < 0.5 else "inconclusive")
        rows.append(dict(zip(keys, key), claim="C2", method=registry.ANIL.name, estimate=b[0], ci95_low=b[1],
                         ci95_high=b[2], n=b[3], quality=f"R^2 = {r2:.2f}; a = {a[0]:.3g} [{a[1]:.3g}, {a[2]:.3g}]",
                         verdict=verdict, detail="estimate: b, the gap per unit of lambda*tau"))
    return rows


def _c3_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    keys = KEYS[:-1]
    med = gap_medians(df, registry.ANIL.name)
    med = med.assign(ratio=med["gap_to_mtl_rel"] / (med["inner_time"] + 1.0 / med["depth"]))
    for key, g in med.groupby(keys):
        mean = g.groupby(["depth", "inner_time"])["ratio"].mean().dropna()
        if mean.empty:  # every gap NaN: claims_table reports the condition as having no usable rows
            continue
        (L_max, s_max), C = mean.idxmax(), float(mean.max())
        (L_min, s_min), c_min = mean.idxmin(), float(mean.min())
        s0 = g["inner_time"].min()
        deep = sorted(g["depth"].unique())[len(g["depth"].unique()) // 2:]
        edge = g[(g["inner_time"] == s0) & g["depth"].isin(deep)]
        trend = [fit_power_law(r["depth"], r["ratio"])[0] for _, r in edge.groupby("rep")]
        est, lo, hi, n = _mean_ci(trend)
        verdict = _undecided(lo, hi, n) or ("fails" if lo > 0 else "holds")
        rows.append(dict(zip(keys, key), claim="C3", method=registry.ANIL.name, estimate=C, ci95_low=math.nan,
                         ci95_high=math.nan, n=n, quality=f"ratio {c_min:.3g} (loosest) at L={L_min}, "
                                                          f"lambda*tau={s_min:g} to {C:.3g} (tightest) at L={L_max}, "
                                                          f"lambda*tau={s_max:g}",
                         verdict=verdict, detail=f"ratio's slope with depth at lambda*tau={s0:g}, L >= {deep[0]}: "
                                                 f"{est:.2f} [{lo:.2f}, {hi:.2f}]"))
    return rows


def _c4_rows(finite: pd.DataFrame) -> list[dict]:
    if finite is None or not len(finite) or finite["width"].nunique() < 2:
        return []
    rows = []
    fits = width_exponents(finite[finite["method"] != registry.BASELINE.name], by=("method", "depth"))
    for _, f in fits.iterrows():
        lo, hi = f["ci95_low"], f["ci95_high"]
        verdict = _c4_verdict(lo, hi, int(f["n"]))
        rows.append(dict(tasks=finite["tasks"].iloc[0], claim="C4", method=f["method"], estimate=f["exponent"],
                         ci95_low=lo, ci95_high=hi, n=int(f["n"]), depths=str(f["depth"]),
                         quality=f"widths {int(finite['width'].min())}..{int(finite['width'].max())}",
                         verdict=verdict, detail="exponent of dist_to_infinite_rel against width" + (
                             "; slower than h^-1/2" if verdict == "fails" and lo > -0.5 else
                             "; faster than h^-1/2" if verdict == "fails" else "")))
    return rows


def _c4_verdict(lo: float, hi: float, n: int) -> str:
    """:data:`RULES` ``C4``: the interval must contain -1/2 and exclude :data:`C4_RIVALS`."""
    undecided = _undecided(lo, hi, n)
    if undecided:
        return undecided
    if not lo <= -0.5 <= hi:
        return "fails"
    return "holds" if not any(lo <= r <= hi for r in C4_RIVALS) else "inconclusive"


def benefit_table(df: pd.DataFrame) -> pd.DataFrame:
    """``1 - MSE_method / MSE_baseline`` per replicate, condition and depth (medians over test tasks
    when replicates are seeds), with its mean and 95% CI over replicates."""
    rep = replicate_column(df)
    d = ok_rows(df)
    d = d[d["width"] == math.inf]
    if d["test_mse"].isna().all():
        return pd.DataFrame()
    med = d.groupby(["method"] + KEYS + [rep, "depth"])["test_mse"].median().reset_index()
    base = med[med["method"] == registry.BASELINE.name].groupby(["tasks", rep, "depth"])["test_mse"].first()
    med = med[med["method"] != registry.BASELINE.name]
    med = med.assign(benefit=1 - med["test_mse"] / base.reindex(
        pd.MultiIndex.from_frame(med[["tasks", rep, "depth"]])).to_numpy())
    out = []
    for key, g in med.groupby(["method"] + KEYS + ["depth"]):
        est, lo, hi, n = _mean_ci(g["benefit"])
        out.append(dict(zip(["method"] + KEYS + ["depth"], key), benefit=est, ci95_low=lo, ci95_high=hi, n=n))
    return pd.DataFrame(out)


def _useful_up_to(g: pd.DataFrame):
    """The deepest depth up to which the benefit's CI stays above 0 (from the shallowest), or None."""
    deepest = None
    for _, r in g.sort_values("depth").iterrows():
        if not (np.isfinite(r["ci95_low"]) and r["ci95_low"] > 0):
            break
        deepest = int(r["depth"])
    return deepest


def _c6_rows(benefit: pd.DataFrame) -> list[dict]:
    rows = []
    if not len(benefit):
        return rows
    s0 = benefit["inner_time"].min()
    b = benefit[benefit["inner_time"] == s0]
    for key, g in b.groupby(["method"] + KEYS):
        m = dict(zip(["method"] + KEYS, key))
        if not registry.get(m["method"]).depends("mtl_data") and m["mtl_data"] != sorted(b["mtl_data"].unique())[0]:
            continue  # GBML methods do not depend on MTL's data: once
        if not registry.get(m["method"]).depends("test_head") and m["test_head"] != sorted(b["test_head"].unique())[0]:
            continue
        for setting in ("mtl_data", "test_head", "inner_time"):
            if not registry.get(m["method"]).depends(setting):
                m[setting] = "-" if setting != "inner_time" else math.nan
        first = g.sort_values("depth").iloc[0]
        deepest = _useful_up_to(g)
        lo, hi = first["ci95_low"], first["ci95_high"]
        verdict = _undecided(lo, hi, int(first["n"])) or ("holds" if lo > 0 else "fails" if hi <= 0 else
                                                          "inconclusive")
        rows.append(dict(m, claim="C6", estimate=first["benefit"], ci95_low=first["ci95_low"],
                         ci95_high=first["ci95_high"], n=int(first["n"]), depths=f"{int(first['depth'])}",
                         quality=f"benefit at L={int(g['depth'].max())}: {g.sort_values('depth').iloc[-1]['benefit']:.3g}",
                         verdict=verdict,
                         detail=(f"significantly better than no transfer up to depth {deepest}" if deepest is not None
                                 else "never significantly better than no transfer")))
    return rows


COLUMNS = ["claim", "tasks", "method", "mtl_data", "test_head", "inner_time", "depths", "estimate", "ci95_low",
           "ci95_high", "n", "quality", "verdict", "detail", "useful_up_to_depth"]


#: The ``detail`` of a condition (or of a claim without any condition) that no usable row supports.
NO_USABLE_ROWS = ("no usable rows: every gap here is NaN or its rows are not ok (identical or zero inputs, all-zero "
                  "labels, overflowing inputs); the runs' results.csv give each row's status")


def _expected(claim: str, rows: pd.DataFrame) -> bool:
    """Whether ``claim`` has conditions on a panel with these rows (C2 needs two inner times, C4 the
    finite panel)."""
    if claim == "C4":
        return False
    return claim != "C2" or rows["inner_time"].nunique() >= 2


def claims_table(rows: pd.DataFrame, finite: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every claim for every condition (``claims.csv``). C1 rows carry ``useful_up_to_depth``: the
    depth up to which both ANIL (same protocol) and MTL (same data) beat the baseline significantly,
    so that each closeness verdict says whether it is closeness of useful predictors."""
    benefit = benefit_table(rows)
    parts = {"C1": _slope_rows(rows, "C1", registry.ANIL.name), "C2": _c2_rows(rows), "C3": _c3_rows(rows),
             "C4": _c4_rows(finite), "C5": _slope_rows(rows, "C5", registry.MAML.name), "C6": _c6_rows(benefit)}
    out = []
    for claim, found in parts.items():
        if not found and len(rows) and _expected(claim, rows):
            found = [dict(claim=claim, tasks=", ".join(map(str, dict.fromkeys(rows["tasks"]))), n=0)]
        out += found
    table = pd.DataFrame(out).reindex(columns=COLUMNS)
    unusable = (table["n"].fillna(0).astype(int) == 0) & table["estimate"].isna()
    table[["verdict", "detail"]] = table[["verdict", "detail"]].astype(object)
    table.loc[unusable, "verdict"] = "no data"
    table.loc[unusable, "detail"] = NO_USABLE_ROWS
    table["useful_up_to_depth"] = table["useful_up_to_depth"].astype(object)
    if len(benefit):
        for i, r in table[table["claim"].isin(["C1", "C5"])].iterrows():
            method = registry.ANIL.name if r["claim"] == "C1" else registry.MAML.name
            same = ((benefit["tasks"] == r["tasks"]) & (benefit["test_head"] == r["test_head"])
                    & (benefit["inner_time"] == r["inner_time"]) & (benefit["mtl_data"] == r["mtl_data"]))
            gbml = benefit[same & (benefit["method"] == method)]
            mtl = benefit[same & (benefit["method"] == registry.MTL.name)]
            depths = [d for d in (_useful_up_to(gbml), _useful_up_to(mtl)) if d is not None]
            table.loc[i, "useful_up_to_depth"] = min(depths) if len(depths) == 2 else "none"
    return table


def overall(claims: pd.DataFrame) -> pd.DataFrame:
    """One row per claim (:data:`OVERALL`): ``holds`` if every condition holds, ``fails`` if every
    condition fails, ``inconclusive`` if none is decided (inconclusive or no data), ``depends``
    otherwise; the counts of each verdict, and ``where``: the families on which the claim holds,
    fails or is undecided throughout, and the mixed ones with their counts."""
    out = []
    for claim, g in claims.groupby("claim", sort=True):
        v = g["verdict"].where(g["verdict"] != "no data", "inconclusive")
        if (v == "holds").all():
            verdict = "holds"
        elif (v == "fails").all():
            verdict = "fails"
        elif (v == "inconclusive").all():
            verdict = "inconclusive"
        else:
            verdict = "depends"
        where = []
        if (g["detail"] == NO_USABLE_ROWS).all():  # nothing to decide on: neither holds nor fails
            verdict, where = "inconclusive", ["no usable rows (no data)"]
        if verdict not in ("holds", "fails") and not where:
            by = {t: list(c) for t, c in g.groupby("tasks", sort=False)["verdict"]}
            for word in ("holds", "fails", "inconclusive", "no data"):
                every = [t for t, vs in by.items() if set(vs) == {word}]
                if every:
                    where.append(f"{word} on {', '.join(every)}")
            mixed = [f"{t} ({_counts(vs)})" for t, vs in by.items() if len(set(vs)) > 1]
            if mixed:
                where.append(f"mixed on {', '.join(mixed)}")
        count = g["verdict"].value_counts()
        out.append({"claim": claim, "verdict": verdict, "conditions": len(g), "holds": int(count.get("holds", 0)),
                    "fails": int(count.get("fails", 0)), "inconclusive": int(count.get("inconclusive", 0)),
                    "no_data": int(count.get("no data", 0)), "where": "; ".join(where)})
    return pd.DataFrame(out)


def _counts(verdicts) -> str:
    """``'3 hold, 1 fails, 2 inconclusive of 6'``: the verdicts of one family's conditions."""
    words = {"holds": "hold", "fails": "fail", "inconclusive": "inconclusive", "no data": "no data"}
    parts = [f"{verdicts.count(w)} {words[w]}" for w in words if verdicts.count(w)]
    return f"{', '.join(parts)} of {len(verdicts)}"


#: The settings a claim's conditions vary over besides the family and the inner time.
SETTINGS = ("method", "mtl_data", "test_head")


def verdict_matrix(claims: pd.DataFrame, claim: str) -> pd.DataFrame:
    """One claim's verdicts as a table: a row per family (C4: per method), a column per combination
    of the settings that vary, each cell the verdicts over the inner times (C4: depths) folded into
    one phrase (``holds``, or ``2 of 3 hold; 0.01: inconclusive``)."""
    g = claims[claims["claim"] == claim]
    if not len(g):
        return pd.DataFrame()
    rows, over = ("method", "depths") if claim == "C4" else ("tasks", "inner_time")
    cols = [c for c in SETTINGS if c != rows and g[c].astype(str).nunique() > 1]
    cells = {}
    for key, c in g.groupby([rows] + cols, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        verdicts = list(c["verdict"])
        if len(set(verdicts)) == 1:
            text = verdicts[0] if len(verdicts) == 1 else f"{verdicts[0]} (all {len(verdicts)})"
        else:
            held = verdicts.count("holds")
            other = "; ".join(f"{_point(v)}: {w}" for v, w in zip(c[over], c["verdict"]) if w != "holds")
            text = f"{held} of {len(verdicts)} hold; {other}"
        column = ", ".join(f"{k} {v}" for k, v in zip(cols, key[1:])) or "verdict"
        cells.setdefault(key[0], {})[column] = text
    return pd.DataFrame.from_dict(cells, orient="index").rename_axis(rows).reset_index()


def _point(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)
