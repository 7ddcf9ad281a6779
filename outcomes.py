"""Per-point outcomes of attacks: which test points survive, the worst case over attacks, and paired bootstrap CIs.

eval.py stores, in every eval_<attack>.json, the test indices it used ("index") and per target whether the full
model was still right at the attacked point ("correct": {"clean": [...], "whole": [...], ...}; dual models keep one
"correct" per alpha row). Outcomes of attacks run in different calls then combine point by point:

  RA (worst) = share of the points every attack shares on which the model survives every attack that ran on it.
"""
import numpy as np

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


def paired_bootstrap(pairs: list, resamples: int = 2000, seed: int = 0) -> tuple:
    """Mean difference (pp) of A - B and its 95 % percentile interval; pairs: per seed, (a bits, b bits) on the
    same test points. Resamples seeds (when there are several) and, within each, test points, with replacement."""
    pairs = [(np.asarray(a, float), np.asarray(b, float)) for a, b in pairs if len(a)]
    if not pairs:
        return float("nan"), (float("nan"), float("nan"))
    diffs = [a - b for a, b in pairs]
    estimate = 100.0 * np.concatenate(diffs).mean()
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for r in range(resamples):
        chosen = rng.integers(len(diffs), size=len(diffs)) if len(diffs) > 1 else [0]
        stats[r] = np.concatenate([diffs[s][rng.integers(len(diffs[s]), size=len(diffs[s]))] for s in chosen]).mean()
    low, high = np.percentile(100.0 * stats, [2.5, 97.5])
    return float(estimate), (float(low), float(high))


def verdict(interval: tuple) -> str:
    """holds when the whole 95 % interval is above zero, contradicted when below, else undecided."""
    low, high = interval
    if not np.isfinite(low):
        return "n/a"
    return "holds" if low > 0 else ("contradicted" if high < 0 else "undecided")
