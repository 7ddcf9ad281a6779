"""Per-point outcomes of attacks: which test points survive, the worst case over attacks, and the intervals of
differences measured on several seeds x the same test points.

eval.py stores, in every eval_<attack>.json, the test indices it used ("index") and per target whether the full
model was still right at the attacked point ("correct": {"clean": [...], "whole": [...], ...}; dual models keep one
"correct" per alpha row). Outcomes of attacks run in different calls then combine point by point:

  RA (worst) = share of the points every attack shares on which the model survives every attack that ran on it.
"""
import numpy as np
from scipy import stats

CLEAN = "clean"
EVAL_NAME = "eval_{}"  # eval.py's file of one attack, RUN/eval_<attack>.json: the one place it is named


def outcomes(ev: dict, alpha: float = None) -> dict:
    """{target: {test index: survived}} of one evaluation (one alpha row of a dual evaluation)."""
    if not isinstance(ev, dict) or "index" not in ev:
        return {}
    source = ev
    if "rows" in ev:
        source = next((r for r in ev["rows"] if alpha is not None and abs(r.get("alpha", -1) - alpha) < 1e-6), {})
    index = ev["index"] if isinstance(ev["index"], list) else [int(i) for i in ev["index"].split(",")]
    return {target: dict(zip(index, (b in (1, True, "1") for b in bits)))  # bits: a list, or results.json's string
            for target, bits in source.get("correct", {}).items()}


def worst_case(evals: list, alpha: float = None, only=None) -> tuple:
    """(names of the attacks covered, {test index: survived all}) over every attacked target of the evaluations,
    or over those of them named in only ("attack:target" names, e.g. to compare two runs on the attacks both faced).

    Only points that every one of those attacks evaluated count; clean correctness is part of every attack's
    outcome (a wrong clean point is wrong under attack too), so it is not a separate attack here.
    """
    covered, survived = [], None
    for ev in evals:
        for target, points in outcomes(ev, alpha).items():
            name = f"{ev.get('attack', '?')}:{target}"
            if target == CLEAN or (only is not None and name not in only):
                continue
            covered.append(name)
            survived = dict(points) if survived is None else {
                i: ok and points[i] for i, ok in survived.items() if i in points}
    return sorted(covered), (survived or {})


def accuracy(points: dict) -> float:
    """Percent of points that survived; NaN for none."""
    return 100.0 * sum(points.values()) / len(points) if points else float("nan")


def crossed_mean(d) -> tuple:
    """(mean, standard error, degrees of freedom) of a seeds x points matrix d under the crossed random-effects model
    d[s, i] = mu + seed_s + point_i + e_si: Var(mean) = (MS_seed + MS_point - MS_resid) / (S N), Satterthwaite's df."""
    d = np.asarray(d, float)
    seeds, points = d.shape
    mean = float(d.mean())
    if d.size < 2:
        return mean, float("nan"), float("nan")
    row, col = d.mean(1), d.mean(0)
    terms = []  # (signed mean square, its degrees of freedom)
    if points > 1:
        terms.append((seeds * ((col - mean) ** 2).sum() / (points - 1), points - 1))
    if seeds > 1:
        terms.append((points * ((row - mean) ** 2).sum() / (seeds - 1), seeds - 1))
    if seeds > 1 and points > 1:
        resid = d - row[:, None] - col[None, :] + mean
        terms.append((-(resid ** 2).sum() / ((seeds - 1) * (points - 1)), (seeds - 1) * (points - 1)))
    total = sum(ms for ms, _ in terms)
    largest = max(terms[:2])
    if total < largest[0]:  # each main effect's mean square alone estimates less than Var(mean) x S N: never go below
        terms, total = [largest], largest[0]
    df = total ** 2 / sum(ms ** 2 / f for ms, f in terms) if total > 0 else float("inf")
    return mean, float(np.sqrt(total / d.size)), float(df)


def interval(mean: float, se: float, df: float, level: float = 0.95) -> tuple:
    """Two-sided t interval of the given level around mean."""
    if not np.isfinite(se):
        return float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    return mean - half, mean + half


def p_value(distance: float, se: float, df: float) -> float:
    """Two-sided p of 'the true value equals mean - distance' (distance: estimate minus the claim's threshold)."""
    if not np.isfinite(se):
        return float("nan")
    if se == 0:
        return 0.0 if distance else 1.0
    return float(2 * stats.t.sf(abs(distance) / se, df))


def holm(p_values: list, rate: float = 0.05) -> list:
    """Which of the p values Holm's step-down procedure rejects at family-wise error rate `rate`."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if not p_values[i] < rate / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def verdict(interval: tuple) -> str:
    """holds when the whole interval is above zero, contradicted when below, else undecided."""
    low, high = interval
    if not np.isfinite(low):
        return "n/a"
    return "holds" if low > 0 else ("contradicted" if high < 0 else "undecided")
