"""Statistics of a rating study: pure functions of the answers and the design (numpy, choix, krippendorff).

    rows = oriented(answers, design)          # one row per pair answer: rater, pair, criterion, a, b, y_a
    wtl(rows)                                 # win/tie/loss per system pair and criterion
    bradley_terry(systems, rows, items)       # strengths (first system = 0) with item-bootstrap 95% CIs
    rater_quality(answers, design)            # attention checks, repeat agreement, exclusion
    alpha(rows)                               # Krippendorff's alpha (ordinal) per criterion
    scorer_agreement(rows, design)            # judge / pixel reward vs the human majority

`y_a` is 1 when system a (the design's first of the pair) was preferred, 0.5 for a tie, 0 for b.
Ties enter Bradley-Terry as half a win each way (choix takes (winner, loser) pairs: a win is entered
twice, a tie once in each direction). Intervals are percentile bootstraps that resample items (all
ratings of an item together), since ratings of one item by several raters are not independent.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

import numpy as np

# Exclusion rule (stated in the report): a rater is excluded from every statistic when they answered
# fewer than MIN_CHECK_ACCURACY of their attention checks correctly, or, with repeats, agreed with their
# own first answer on fewer than MIN_REPEAT_AGREEMENT of the repeated questions: below chance (1/3 with
# three answers). A higher bar excluded honest simulated raters: with 9-12 repeated questions and
# pairs that are close calls, an honest rater's agreement is ~0.6 and falls under 0.5 one time in four.
MIN_CHECK_ACCURACY = 0.75
MIN_REPEAT_AGREEMENT = 1 / 3
NOT_SCORES = {"seed", "edit_fraction"}  # numeric per-item fields of results.json that are not scores


def _systems_of(design: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(item id, image path) -> system name."""
    return {(i["id"], path): name for i in design["items"] for name, path in i["edits"].items()}


def oriented(
    answers: list[dict[str, Any]], design: dict[str, Any], kinds: tuple[str, ...] = ("pair",)
) -> list[dict]:
    """Pair answers (of `kinds`) in the design's orientation: which system was on which side undone."""
    pairs = {p["id"]: p for p in design["pairs"]}
    system = _systems_of(design)
    y_left = {"left": 1.0, "tie": 0.5, "right": 0.0}
    rows = []
    for a in answers:
        if a["kind"] not in kinds:
            continue
        p = pairs[a["ref"]]
        left = system[(p["item"], a["left_image"])]
        y = y_left[a["choice"]] if left == p["a"] else 1.0 - y_left[a["choice"]]
        rows.append({"rater": a["rater"], "pair": p["id"], "item": p["item"], "criterion": a["criterion"],
                     "a": p["a"], "b": p["b"], "y_a": y, "kind": a["kind"]})  # fmt: skip
    return rows


def wtl(rows: list[dict]) -> list[dict[str, Any]]:
    """Per criterion and system pair: wins of a, ties, wins of b, and a's share (ties count half)."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        acc[(r["criterion"], r["a"], r["b"])].append(r["y_a"])
    out = []
    for (crit, a, b), ys in sorted(acc.items()):
        y = np.asarray(ys)
        out.append({"criterion": crit, "a": a, "b": b, "a_wins": int((y == 1).sum()), "ties": int((y == 0.5).sum()),
                    "b_wins": int((y == 0).sum()), "n": len(y), "a_share": float(y.mean())})  # fmt: skip
    return out


def _bt_fit(n: int, comparisons: list[tuple[int, int, float]]) -> np.ndarray:
    import choix

    data: list[tuple[int, int]] = []
    for i, j, y in comparisons:
        if y == 1.0:
            data += [(i, j), (i, j)]
        elif y == 0.0:
            data += [(j, i), (j, i)]
        else:
            data += [(i, j), (j, i)]
    # a small ridge keeps a system that won or lost every comparison finite
    params = choix.opt_pairwise(n, data, alpha=1e-3, method="BFGS")
    return params - params[0]


def bradley_terry(
    systems: list[str], rows: list[dict], n_boot: int = 500, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Strength (log-odds scale, the first system 0) per system, with a 95% item-bootstrap interval.
    P(i beats j) = 1 / (1 + exp(s_j - s_i))."""
    index = {s: k for k, s in enumerate(systems)}
    by_item: dict[str, list[tuple[int, int, float]]] = defaultdict(list)
    for r in rows:
        by_item[r["item"]].append((index[r["a"]], index[r["b"]], r["y_a"]))
    items = sorted(by_item)
    point = _bt_fit(len(systems), [c for i in items for c in by_item[i]])
    rng = np.random.default_rng(seed)
    boots = np.empty((n_boot, len(systems)))
    for k in range(n_boot):
        pick = rng.integers(0, len(items), len(items))
        boots[k] = _bt_fit(len(systems), [c for i in pick for c in by_item[items[i]]])
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    return {
        s: {"strength": float(point[k]), "lo": float(lo[k]), "hi": float(hi[k])} for s, k in index.items()
    }


def alpha(rows: list[dict], n_boot: int = 200, seed: int = 0) -> Optional[dict[str, float]]:
    """Krippendorff's alpha (ordinal: a better < tie < b better) over the (pair, criterion) questions
    answered by two or more raters, with a 95% bootstrap interval over questions; None if too few."""
    import krippendorff

    raters = sorted({r["rater"] for r in rows})
    units = sorted({(r["pair"], r["criterion"]) for r in rows})
    if len(raters) < 2 or not units:
        return None
    ui, ri = {u: k for k, u in enumerate(units)}, {r: k for k, r in enumerate(raters)}
    data = np.full((len(raters), len(units)), np.nan)
    for r in rows:
        data[ri[r["rater"]], ui[(r["pair"], r["criterion"])]] = 2 * r["y_a"]
    shared = (~np.isnan(data)).sum(axis=0) >= 2
    data = data[:, shared]
    if data.shape[1] < 2 or len(np.unique(data[~np.isnan(data)])) < 2:
        return None
    value = float(
        krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal", value_domain=[0, 1, 2])
    )
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        sample = data[:, rng.integers(0, data.shape[1], data.shape[1])]
        if len(np.unique(sample[~np.isnan(sample)])) > 1:
            boots.append(krippendorff.alpha(reliability_data=sample, level_of_measurement="ordinal",
                                            value_domain=[0, 1, 2]))  # fmt: skip
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    return {
        "alpha": value,
        "lo": float(lo),
        "hi": float(hi),
        "questions": int(data.shape[1]),
        "raters": len(raters),
    }


def rater_quality(answers: list[dict[str, Any]], design: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per rater: answers, attention-check accuracy, agreement of repeats with the first answer, median
    seconds per answer, and whether the exclusion rule excludes them (with the reason)."""
    checks = {c["id"]: c for c in design["checks"]}
    first = {(r["rater"], r["pair"], r["criterion"]): r["y_a"] for r in oriented(answers, design)}
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({a["rater"] for a in answers}):
        mine = [a for a in answers if a["rater"] == name]
        hits = []
        for a in mine:
            if a["kind"] == "check":
                good = checks[a["ref"]]["good"]
                hits.append((a["choice"] == "left") == (a["left_image"] == good) and a["choice"] != "tie")
        agree = [
            first[(r["rater"], r["pair"], r["criterion"])] == r["y_a"]
            for r in oriented(mine, design, kinds=("repeat",))
            if (r["rater"], r["pair"], r["criterion"]) in first
        ]
        check_acc = float(np.mean(hits)) if hits else None
        repeat_agree = float(np.mean(agree)) if agree else None
        reasons = []
        if check_acc is not None and check_acc < MIN_CHECK_ACCURACY:
            reasons.append(f"attention checks {check_acc:.0%} < {MIN_CHECK_ACCURACY:.0%}")
        if repeat_agree is not None and repeat_agree < MIN_REPEAT_AGREEMENT:
            reasons.append(f"repeat agreement {repeat_agree:.0%} < {MIN_REPEAT_AGREEMENT:.0%}")
        out[name] = {
            "answers": len(mine),
            "checks": len(hits),
            "check_accuracy": check_acc,
            "repeats": len(agree),
            "repeat_agreement": repeat_agree,
            "median_s": float(np.median([a["time_ms"] for a in mine]) / 1000) if mine else None,
            "excluded": bool(reasons),
            "reason": "; ".join(reasons),
        }
    return out


def majority(rows: list[dict]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (pair, criterion): the raters' margin for a (mean of +1 a better, 0 tie, -1 b better) and
    the majority (+1, 0 = tie or split, -1)."""
    acc: dict[tuple[str, str], list[float]] = defaultdict(list)
    info = {}
    for r in rows:
        acc[(r["pair"], r["criterion"])].append(2 * r["y_a"] - 1)
        info[(r["pair"], r["criterion"])] = r
    out = {}
    for key, v in acc.items():
        m = float(np.mean(v))
        r = info[key]
        out[key] = {
            "margin": m,
            "majority": int(np.sign(m)),
            "n": len(v),
            "item": r["item"],
            "a": r["a"],
            "b": r["b"],
        }
    return out


def scorer_names(design: dict[str, Any]) -> list[str]:
    """Score fields present (not None) for every system and item and not equal for all of them."""
    per_sys = design["scores"]
    names = None
    for by_item in per_sys.values():
        for scores in by_item.values():
            keys = {k for k, v in scores.items() if v is not None and k not in NOT_SCORES}
            names = keys if names is None else names & keys
    values = lambda k: {s[k] for by_item in per_sys.values() for s in by_item.values()}  # noqa: E731
    return sorted(k for k in (names or set()) if len(values(k)) > 1)


def _agreement(
    idx: np.ndarray, d: np.ndarray, pred: np.ndarray, margin: np.ndarray, maj: np.ndarray
) -> tuple[float, float]:
    """(accuracy on the decided pairs of idx, Kendall's tau-b of d against the margin) of one resample."""
    dec = idx[maj[idx] != 0]
    acc = float(np.mean(np.where(pred[dec] == 0, 0.5, pred[dec] == maj[dec]))) if len(dec) else np.nan
    return acc, kendall_tau_b(d[idx], margin[idx])


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of two [n] vectors (ties corrected), NaN when either is constant. O(n^2) memory,
    for the few hundred pairs of a study: ~50x faster than scipy's per call, which the bootstrap needs."""
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = np.sqrt(float((dx != 0).sum()) * float((dy != 0).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def scorer_agreement(
    rows: list[dict], design: dict[str, Any], n_boot: int = 1000, seed: int = 0, tol: float = 1e-9
) -> list[dict[str, Any]]:
    """Per score field (higher = better) and criterion: how often the scorer prefers the same edit as
    the human majority (pairs with a non-tie majority; a scorer tie counts half), and Kendall's tau-b
    between the score difference and the human margin over every pair; 95% bootstrap over pairs."""
    maj = majority(rows)
    scores = design["scores"]
    out = []
    rng = np.random.default_rng(seed)
    for name in scorer_names(design):
        for crit in [c["name"] for c in design["criteria"]]:
            keys = [k for k in maj if k[1] == crit]
            if not keys:
                continue
            d = np.array([scores[maj[k]["a"]][maj[k]["item"]][name] - scores[maj[k]["b"]][maj[k]["item"]][name]
                          for k in keys])  # fmt: skip
            pred = np.where(np.abs(d) <= tol, 0, np.sign(d))
            m = np.array([maj[k]["margin"] for k in keys])
            hm = np.array([maj[k]["majority"] for k in keys])

            acc, tau = _agreement(np.arange(len(keys)), d, pred, m, hm)
            boots = np.array(
                [_agreement(rng.integers(0, len(keys), len(keys)), d, pred, m, hm) for _ in range(n_boot)]
            )
            a_lo, a_hi = np.nanpercentile(boots[:, 0], [2.5, 97.5])
            t_lo, t_hi = (
                np.nanpercentile(boots[:, 1], [2.5, 97.5])
                if not np.isnan(boots[:, 1]).all()
                else (np.nan,) * 2
            )
            out.append({"scorer": name, "criterion": crit, "pairs": len(keys), "decided": int((hm != 0).sum()),
                        "accuracy": acc, "acc_lo": float(a_lo), "acc_hi": float(a_hi),
                        "tau": tau, "tau_lo": float(t_lo), "tau_hi": float(t_hi)})  # fmt: skip
    return out
