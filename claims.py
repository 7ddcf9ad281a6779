"""A verdict for every claim of the papers that a preset can test: claims.md from the runs' per-point outcomes.

Each claim says "C > t" for a contrast C of measures (run, target, alpha): A - B, or a trend's least-squares change
over its levels (t: 0 unless the claim names a tolerance). Every seed of every run is scored on the same test
points, so C is a seeds x points matrix; its mean's interval comes from the crossed random-effects model of
outcomes.crossed_mean (seed and point effects, t quantile with Satterthwaite's df). A claim of k comparisons holds
when each holds and is contradicted when one is, each at level 1 - 0.05 / k. Each row also gets a p value, and
Holm's correction over the preset's rows says which decided verdicts survive at a 5 % family-wise rate. The worst
case of the sides runs over the attack:targets all of them faced. Also attacks.md: PGD, AutoAttack and the adaptive
attack compared point by point on each single MoE.
  python claims.py runs/digits [--out runs/digits/results] [--preset digits]
  python claims.py --side-by-side results/digits results/fashion_mnist     (README's verdict table)
"""
import argparse
import json
import os
import re
from collections import namedtuple

import numpy as np

from outcomes import CLEAN, EVAL_NAME, crossed_mean, holm, interval, outcomes, p_value, verdict, worst_case
from report_data import NUM_CLASSES, collapse_sa, load_runs  # load_runs: the runs as the tables read them

COLLAPSE = "collapse"  # a constant side: the SA at or below which a run counts as collapsed (report_data.collapse_sa)
MARGIN = "margin"  # target of Table 5's claim: per-point margin of the robust MoE F_R, per class (eval.py fields below)
MARGIN_POINTS, LABELS = "margin_rob_points", "labels"  # row[...]: per point p_y - max_k!=y p_k; ev[...]: true class
ROUTE_SAME, SAME_ROUTE = "route_same_", "same_route"  # eval.py: share of points whose top-1 expert held; per point
STABLE = -2.0  # "RA remains stable" (Figure 7) gives no tolerance; we read it as: at most 2 pp lower
RATE = 0.05  # a row's false-verdict rate, and the family-wise rate of Holm's correction over a preset's rows
OURS, READ = "tolerance ours", "our reading"  # marks of a claim whose threshold or wording the paper does not give
MARKS = f"({READ}): the paper's words, made testable by us; ({OURS}): a threshold the paper does not give."
# a claim: its text, where the paper says it, the attacks it is judged under ("worst": the worst case over the
# attacks all its sides faced), its comparisons (each a contrast: (weight, side) terms), t in "C > t", and a mark
Claim = namedtuple("Claim", "text source attacks parts threshold mark", defaults=(0.0, None))
RA3 = ("pgd", "aa", "worst")


def versus(a, b) -> tuple:
    """The contrast A - B."""
    return ((1.0, a), (-1.0, b))


def trend(runs, levels, target, alphas=None, falls=False) -> tuple:
    """The contrast 'least-squares slope of target over levels, times their range': the fitted change from the
    first level to the last (negated when the claim says it falls); runs (or alphas of one run) give the levels."""
    x = np.asarray(levels, float)
    weights = (x - x.mean()) / ((x - x.mean()) ** 2).sum() * (x[-1] - x[0]) * (-1 if falls else 1)
    sides = [(run, target) for run in runs] if alphas is None else [(runs, target, a) for a in alphas]
    return tuple((float(w), side) for w, side in zip(weights, sides))


JTDMOE = (("JTDMoE (Algorithm 1)", "jtdmoe_a0.7"), ("JTDMoE (public code's form)", "jtdmoe_pub_a0.7"))
FIG7 = ("0.5", "0.6", "0.8")
DUAL_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # every alpha run_all.sh evaluates the pre-trained dual model at
BETAS, EXPERTS = (("rter_b1", "rter_b3", "rter_b6"), (1, 3, 6)), (("rter_e3", "rter", "rter_e5"), (3, 4, 5))
CLAIMS = [
    Claim("Experts are more vulnerable than the router (ST MoE: RA-R > RA-E)", "Section 4.1, Table 1",
          ("pgd", "aa"), (versus(("st", "router"), ("st", "experts")),)),
    Claim("Expert attacks leave at least 98 % of points routed to the same expert (ST MoE)", "Section 3",
          ("pgd", "aa"), (versus(("st", "route_same_experts"), 98.0),), mark=READ),
    Claim("RT-ER beats AT in RA", "Section 6.2, Tables 2-3", RA3, (versus(("rter", "whole"), ("at", "whole")),)),
    Claim("RT-ER beats AT in RA-E", "Section 6.2, Table 3", ("pgd", "aa"),
          (versus(("rter", "experts"), ("at", "experts")),)),
    Claim("RT-ER costs less than 1.3 pp of SA against AT", "Section 6.2", ("pgd",),
          (versus(("rter", CLEAN), ("at", CLEAN)),), -1.3),
    Claim("RT-ER beats ST and AT under the smooth attack", "Appendix A.3, Table 6", ("smooth",),
          (versus(("rter", "whole"), ("st", "whole")), versus(("rter", "whole"), ("at", "whole")))),
    Claim("Top-2 routing: RT-ER beats AT in RA", "Table 2", RA3,
          (versus(("rter_top2", "whole"), ("at_top2", "whole")),)),
    Claim("RT-ER beats TRADES in RA", "Appendix A.3, Table 7", RA3, (versus(("rter", "whole"), ("trades", "whole")),)),
    Claim("RT-ER beats AdvMoE in RA", "Appendix A.3, Table 7", RA3, (versus(("rter", "whole"), ("advmoe", "whole")),)),
    Claim("SA rises with the number of experts (E = 3 -> 4 -> 5)", "Appendix A.3, Table 8", ("pgd",),
          (trend(*EXPERTS, CLEAN),)),
    Claim("RA rises with the number of experts (E = 3 -> 4 -> 5)", "Appendix A.3, Table 8 (caption)", ("pgd",),
          (trend(*EXPERTS, "whole"),), mark=READ),
    Claim("beta 1 -> 3 -> 6 lowers SA", "Appendix A.3, Table 9", ("pgd",), (trend(*BETAS, CLEAN, falls=True),)),
    *[Claim(f"beta 1 -> 3 -> 6 raises {name}", "Appendix A.3, Table 9", ("pgd",), (trend(*BETAS, target),))
      for name, target in (("RA", "whole"), ("RA-E", "experts"), ("RA-R", "router"))],
    Claim("RT-ER with beta 9 collapses (SA at most twice chance)", "Appendix A.3, Table 9", ("pgd",),
          (versus(COLLAPSE, ("rter_b9", CLEAN)),), mark=OURS),
    Claim(f"Dual model: SA falls as alpha rises ({DUAL_ALPHAS[0]:g} -> {DUAL_ALPHAS[-1]:g})", "Section 6.3, Table 3",
          ("pgd",), (trend("dual_pretrained", DUAL_ALPHAS, CLEAN, DUAL_ALPHAS, falls=True),)),
    Claim(f"Dual model: RA rises as alpha rises ({DUAL_ALPHAS[0]:g} -> {DUAL_ALPHAS[-1]:g})", "Section 6.3, Table 3",
          RA3, (trend("dual_pretrained", DUAL_ALPHAS, "dual", DUAL_ALPHAS),)),
    *[Claim(f"{name} beats the pre-trained dual model in {measure} (alpha 0.7)", source, attacks,
            (versus((run, target, 0.7), ("dual_pretrained", target, 0.7)),))
      for name, run in JTDMOE for measure, target, attacks, source in (
          ("SA", CLEAN, ("pgd",), "Section 6.4, Table 3"), ("RA", "dual", RA3, "Section 6.4, Tables 3-4"),
          ("RA-RMoE", "rmoe", ("pgd", "aa"), "Section 6.4, Tables 3-4"),
          ("RA-SMoE", "smoe", ("pgd", "aa"), "Section 6.4, Tables 3-4"))],
    Claim("JTDMoE improves the robust MoE's margin for every class (alpha 0.7)", "Section 6.4, Table 5", ("pgd",),
          MARGIN),
    Claim(f"JTDMoE improves SA over the pre-trained dual model at alpha {' / '.join(FIG7)}", "Appendix A.5, Figure 7",
          ("pgd",), tuple(versus((f"jtdmoe_a{a}", CLEAN, float(a)), ("dual_pretrained", CLEAN, float(a)))
                          for a in FIG7)),
    Claim(f"JTDMoE keeps RA (at most {-STABLE:g} pp lower) at alpha {' / '.join(FIG7)}", "Appendix A.5, Figure 7",
          ("pgd",), tuple(versus((f"jtdmoe_a{a}", "dual", float(a)), ("dual_pretrained", "dual", float(a)))
                          for a in FIG7), STABLE, OURS),
    # the AdvMoE appendix (MoE-CNN, 10-step PGD training, r = 0.5)
    *[Claim(f"AdvMoE beats AT ({b}) in RA", "AdvMoE appendix, Table A1", RA3,
            (versus(("a1_advmoe", "whole"), (f"a1_{run}", "whole")),)) for b, run in
      (("MoE", "moe"), ("S-Dense", "sdense"), ("Sparse", "sparse"))],
]


def seeds_of(runs: dict, run: str) -> dict:
    """{seed: run record} for a run's folders: `run` is seed 0, `run-seed<k>` seed k."""
    found = {0: runs[run]} if run in runs else {}
    for name, record in runs.items():
        match = re.fullmatch(re.escape(run) + r"-seed(\d+)", name)
        if match:
            found[int(match.group(1))] = record
    return found


PAPER_ATTACK_NAMES = {"apgd-ce50": "APGD-CE-50 (the ICML paper's)",
                      "pgd10-advmoe": "PGD-10 on CE + 6 CE(router) (the AdvMoE code's)"}


def attack_name(ev: dict) -> str:
    """How eval.py ran an attack, from its JSON: PGD-50, AutoAttack (version), smooth PGD-50, adaptive PGD-50, and
    the papers' own: APGD-CE-50, the AdvMoE code's PGD-10."""
    attack, steps = ev.get("attack", "?"), ev.get("steps", "?")
    if attack == "aa":
        return f"AutoAttack {ev.get('aa_version') or '(standard)'}"
    if attack in PAPER_ATTACK_NAMES:
        return PAPER_ATTACK_NAMES[attack]
    return {"pgd": "", "smooth": "smooth ", "adaptive": "adaptive "}.get(attack, f"{attack} ") + f"PGD-{steps}"


def measure(record: dict, attack: str, target: str, alpha: float = None, only=None) -> tuple:
    """({test index: outcome}, names of the attacks behind it) of one run folder: survived (0/1), a margin, or
    whether the top-1 expert stayed the same; attack 'worst': every attack:target in `only` (default: all that ran)."""
    evals = record.get("evals", {})
    if attack == "worst":
        covered, points = worst_case(list(evals.values()), alpha, only) if target != CLEAN else ([], {})
        return points, [f"worst of {', '.join(covered)}"] if points else []
    ev = evals.get(EVAL_NAME.format(attack)) or {}
    if target.startswith(ROUTE_SAME):
        routed = target.removeprefix(ROUTE_SAME)
        if routed in ev.get(SAME_ROUTE, {}):  # eval.py's per-point record
            points = outcomes({"index": ev["index"], "correct": ev[SAME_ROUTE]}).get(routed, {})
            return points, [f"{attack_name(ev)}:{routed} (routing)"]
        # older evaluations kept only the share: as 0/1 points it has the mean, and the point part of the variance
        # of points all seeds share, which overstates Var(mean) (never understates it)
        n, share = ev.get("n"), ev.get(target)
        k = round(share * n / 100) if isinstance(share, (int, float)) and isinstance(n, int) else None
        return ({i: i < k for i in range(n)}, [f"{attack_name(ev)}:{routed} (routing, share only)"]) \
            if k is not None else ({}, [])
    if target.startswith(MARGIN):
        row = next((r for r in ev.get("rows", []) if abs(r.get("alpha", -1) - alpha) < 1e-6), {})
        points, labels, c = row.get(MARGIN_POINTS), ev.get(LABELS), int(target.split(":")[1])
        index = outcomes(ev, alpha).get(CLEAN, {})
        return ({i: m for i, m, y in zip(index, points, labels) if y == c}, ["clean (margin)"]) \
            if points and labels else ({}, [])
    read = "smooth" if attack == "smooth" and target == "whole" else target  # eval_smooth.json's whole-model target
    points = outcomes(ev, alpha).get(read, {})
    return points, [f"{attack_name(ev)}:{read}" if target != CLEAN else f"clean ({attack_name(ev)}'s points)"] \
        if points else []


def is_margin(part) -> bool:
    return any(isinstance(side, tuple) and side[1].startswith(MARGIN) for _, side in part)


def judge(runs: dict, attack: str, part, threshold: float = 0.0, classes: int = 10, level: float = 1 - RATE) -> dict:
    """The contrast part (((weight, side), ...): sides (run, target[, alpha]), percents or COLLAPSE) as the mean of
    its seeds x shared points matrix, in pp (margins: in probability), its interval of the given level, the verdict
    of 'contrast > threshold', its p value, the attacks behind it, and how many seeds and points per seed."""
    terms = [(w, collapse_sa(classes) if s == COLLAPSE else s) for w, s in part]
    scale = 1.0 if is_margin(part) else 100.0
    found = [None if isinstance(s, float) else seeds_of(runs, s[0]) for _, s in terms]
    seeds = sorted(set.intersection(*[set(f) for f in found if f is not None]))
    per_seed, names = [], set()
    for seed in seeds:
        only = None  # the worst case of each side over the attack:targets all sides faced
        if attack == "worst":
            only = set.intersection(*[set(worst_case(list(f[seed].get("evals", {}).values()),
                                                     s[2] if len(s) > 2 else None)[0])
                                      for (_, s), f in zip(terms, found) if f is not None])
        got = [measure(f[seed], attack, *s[1:], only=only) if f is not None else None
               for (_, s), f in zip(terms, found)]
        if all(g[0] for g in got if g is not None):
            per_seed.append(got)
    shared = sorted(set.intersection(*[set(g[0]) for got in per_seed for g in got if g is not None])) \
        if per_seed else []
    if not shared:
        return {"difference": float("nan"), "ci95": (float("nan"),) * 2, "verdict": "n/a", "p": float("nan"),
                "attacks": [], "seeds": 0, "points": 0, "level": level}
    for got in per_seed:
        names.update(n for g in got if g is not None for n in g[1])
    matrix = [sum(w * (np.array([float(g[0][i]) for i in shared]) if g is not None else s / 100.0)
                  for (w, s), g in zip(terms, got)) for got in per_seed]
    mean, se, df = crossed_mean(scale * np.array(matrix))
    low, high = interval(mean, se, df, level)
    return {"difference": mean, "ci95": (low, high), "verdict": verdict((low - threshold, high - threshold)),
            "p": p_value(mean - threshold, se, df), "attacks": sorted(names), "seeds": len(per_seed),
            "points": len(shared), "level": level}


def parts_of(claim: Claim, classes: int) -> tuple:
    """The comparisons of a claim; Table 5's: one per class, JTDMoE's margin against the pre-trained one."""
    if claim.parts != MARGIN:
        return claim.parts
    return tuple(versus(("jtdmoe_a0.7", f"{MARGIN}:{c}", 0.7), ("dual_pretrained", f"{MARGIN}:{c}", 0.7))
                 for c in range(classes))


def combine(judged: list, threshold: float = 0.0) -> tuple:
    """(verdict, shown comparison, p) of a claim that holds only when each of its k comparisons does (each judged
    at level 1 - RATE / k, so the claim's false-verdict rate stays at RATE): p, the claim's Bonferroni p value."""
    have = [j for j in judged if j["verdict"] != "n/a"]
    if len(have) < len(judged):
        return "n/a", (have or judged)[0], float("nan")
    k = len(judged)
    below = [j for j in judged if j["difference"] < threshold]
    # contradicted by its most clearly contradicted comparison, else holding only as far as its weakest does
    shown = min(below, key=lambda j: j["p"]) if below else max(judged, key=lambda j: j["p"])
    p = min(1.0, k * shown["p"])
    verdicts = [j["verdict"] for j in judged]
    result = "contradicted" if "contradicted" in verdicts else "holds" if set(verdicts) == {"holds"} else "undecided"
    return result, shown, p


def describe(side, classes: int = 10) -> str:
    if side == COLLAPSE:
        return f"{collapse_sa(classes):g} % (twice chance)"
    if isinstance(side, float):
        return f"{side:g} %"
    run, target = side[0], side[1]
    name = {CLEAN: "SA", "whole": "RA", "experts": "RA-E", "router": "RA-R", "dual": "RA", "rmoe": "RA-RMoE",
            "smoe": "RA-SMoE", "route_same_experts": "same top-1 %"}.get(target) or \
        f"margin of class {target.split(':')[1]}"
    return f"{name} of `{run}`" + (f" at alpha {side[2]}" if len(side) > 2 else "")


def describe_part(part, classes: int = 10) -> tuple:
    """(A, B) columns of a contrast: its two sides, or a trend and 0."""
    if len(part) == 2 and part[0][0] == 1.0 and part[1][0] == -1.0:
        return describe(part[0][1], classes), describe(part[1][1], classes)
    first = part[0][1]
    levels = " / ".join(f"`{s[0]}`" if len(s) < 3 else f"{s[2]:g}" for _, s in part)
    over = levels if len(first) < 3 else f"alpha {levels} of `{first[0]}`"
    name = describe(first, classes).split(" of ")[0]
    return f"{'fall' if part[0][0] > 0 else 'rise'} of {name} over {over} (least squares, first to last level)", "0"


def unit(part) -> str:
    return "prob." if is_margin(part) else "pp"


def claims_table(runs: dict, classes: int = 10) -> tuple:
    """(markdown rows, claims without data, records) of every claim under each of its attacks; each row's last
    cell says whether it survives Holm's correction over the rows."""
    rows, missing, records, p_values = [], [], [], []
    for claim in CLAIMS:
        parts, missing_before = parts_of(claim, classes), len(missing)
        for attack in claim.attacks:
            level = 1 - RATE / len(parts)
            judged = [judge(runs, attack, part, claim.threshold, classes, level) for part in parts]
            result, shown, p = combine(judged, claim.threshold)
            records.append({"claim": claim.text, "source": claim.source, "attack": attack, "verdict": result,
                            "p": p, "parts": [dict(zip("ab", describe_part(part, classes)), **j)
                                              for part, j in zip(parts, judged)]})
            if result == "n/a":
                missing.append(attack)
                continue
            a, b = describe_part(parts[judged.index(shown)], classes)
            low, high = shown["ci95"]
            decimals = 4 if unit(parts[0]) == "prob." else 2
            rows.append([claim.text + (f" ({claim.mark})" if claim.mark else ""), claim.source,
                         "; ".join(shown["attacks"]), a, b, f"{claim.threshold:+g}",
                         f"{shown['difference']:+.{decimals}f} {unit(parts[0])}"
                         + (f" (shown: 1 of {len(parts)})" if len(parts) > 1 else ""),
                         f"[{low:+.{decimals}f}, {high:+.{decimals}f}]" + (f" at {100 * level:.4g} %"
                                                                            if len(parts) > 1 else ""),
                         f"{p:.2g}", f"{shown['seeds']} x {shown['points']}", f"**{result}**"])
            p_values.append(p)
        if len(missing) > missing_before:  # said once per claim: the attacks it lacks, and what it needs
            needed = ", ".join(f"`{r}`" for r in sorted({s[0] for part in parts for _, s in part
                                                         if isinstance(s, tuple)}))
            missing[missing_before:] = [f"{claim.text} ({', '.join(missing[missing_before:])}): needs {needed}"
                                        + (f" with eval.py's `{MARGIN_POINTS}` and `{LABELS}`" if claim.parts == MARGIN
                                           else " evaluated")]
    for row, survives in zip(rows, holm(p_values, RATE)):
        row.append("yes" if survives else "no" if row[-1] != "**undecided**" else "-")
    return rows, missing, records


def verdicts(rows: list) -> dict:
    """Claim text -> its claims.md row under the last of its attacks with data (the strongest: the worst case)."""
    return {row[0]: row for row in rows}


def judged_under(row) -> str:
    attacks = row[2]
    if attacks.startswith("worst of"):
        return f"worst case of {attacks.count(',') + 1} attack:targets"
    return "; ".join(dict.fromkeys(a.split(":")[0].split(" (PGD")[0] for a in attacks.split("; "))) \
        + (" (routing share only, not per point)" if "share only" in attacks else "")


def side_by_side(presets: dict) -> str:
    """A markdown table of every claim's verdict on each preset ({name: verdicts(...)}), one row per claim: verdict,
    estimate, interval, the attack set and seeds x points per seed, and whether it survives Holm's correction."""
    from cli import markdown_table
    rows = []
    for claim in dict.fromkeys(row for found in presets.values() for row in found):
        got = [found[claim] for found in presets.values() if claim in found]
        cells = [f"{row[10]} {row[6].split(' (')[0]} {row[7]}; {judged_under(row)}; {row[9]} per seed"
                 + {"yes": "; survives Holm", "no": "; not after Holm"}.get(row[11], "")
                 if row else "not run" for row in (found.get(claim) for found in presets.values())]
        rows.append([claim, got[0][1], *cells])
    return markdown_table(["claim", "source in the paper", *presets], rows) + "\n" + MARKS + "\n"


def mean_std(values) -> str:
    """One seed's number, or mean ± sample std over seeds."""
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "n/a"
    return f"{values[0]:.2f}" if len(values) == 1 else f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def attack_table(runs: dict) -> tuple:
    """(names of the attacks as they ran, rows): per single MoE with AutoAttack and adaptive results, how the
    attacks compare, point by point, on AA's points."""
    rows, names = [], {a: set() for a in ("pgd", "aa", "adaptive")}
    for run in sorted({re.sub(r"-seed\d+$", "", name) for name in runs}):
        per_seed = []
        for record in seeds_of(runs, run).values():
            got = {a: measure(record, a, "whole") for a in ("pgd", "aa", "adaptive")}
            if not all(points for points, _ in got.values()):
                continue
            for a in got:
                names[a].add(attack_name(record["evals"][EVAL_NAME.format(a)]))
            got = {a: points for a, (points, _) in got.items()}
            on_aa = sorted(got["aa"])
            survived = {a: [got[a][i] for i in on_aa] for a in got}
            worst = measure(record, "worst", "whole")[0]
            per_seed.append([100 * np.mean(list(got["pgd"].values())), 100 * np.mean(survived["pgd"]),
                             100 * np.mean(survived["aa"]), 100 * np.mean(survived["adaptive"]),
                             100 * np.mean(list(got["adaptive"].values())),
                             sum(a and not b for a, b in zip(survived["adaptive"], survived["aa"])),
                             sum(b and not a for a, b in zip(survived["adaptive"], survived["aa"])),
                             100 * np.mean(list(worst.values())), len(on_aa)])
        if per_seed:
            cols = list(zip(*per_seed))
            rows.append([f"`{run}`"] + [mean_std(c) for c in cols[:5]] + [str(sum(cols[5])), str(sum(cols[6]))]
                        + [mean_std(cols[7]), f"{len(per_seed)} x {cols[8][0]}"])
    return {a: " / ".join(sorted(n)) or a for a, n in names.items()}, rows


def write(runs: dict, out: str, classes: int = 10) -> list:
    """claims.md and attacks.md of a preset's runs (classes: its number of classes) into the results folder out;
    returns claims.md's rows."""
    from checkpoint import atomic_write
    from cli import markdown_table
    rows, missing, _ = claims_table(runs, classes)
    notes = ["C: A - B, or for a trend (E, beta, alpha) the least-squares slope through every level times the levels' "
             "range, one test over all levels. Interval: the seeds x points matrix of C under a crossed random-effects "
             "model (seed and test-point effects; t quantile, Satterthwaite's df; DETAILS.md, Verdicts).",
             f"A claim of k comparisons holds when each does and is contradicted when one is, each judged at level "
             f"1 - {RATE:g} / k; its row shows the comparison that decides it (the weakest, or the contradicting one).",
             f"p: the row's two-sided p value against its threshold (Bonferroni over its k comparisons). Holm: whether "
             f"a decided verdict survives Holm's correction over this page's {len(rows)} rows at a family-wise error "
             f"rate of {RATE:.0%}; a decided row marked no may be one of the rows decided by chance.",
             f"Collapsed: SA at most twice chance ({collapse_sa(classes):g} %), the same line Table 9 draws.",
             MARKS,
             "Margins (Table 5) are differences of p_y - max_k!=y p_k in probability, not percentage points."]
    if any(row[9].startswith("1 x") for row in rows):
        notes.append("A row on 1 seed has an interval for that training run only: the seeds' spread is unknown.")
    notes += [f"No data yet: {m}." for m in missing]
    atomic_write(os.path.join(out, "claims.md"), (markdown_table(
        ["claim", "source in the paper", "attacks (attack:target)", "A", "B", "holds if C >", "C = A - B",
         "95 % CI", "p", "seeds x points per seed", "verdict", "Holm"], rows) if rows
        else "No claim has data on this preset.\n") + "".join(f"\n- {n}" for n in notes) + "\n")
    names, attack_rows = attack_table(runs)
    atomic_write(os.path.join(out, "attacks.md"), markdown_table(
        ["run", f"{names['pgd']} RA (all)", f"{names['pgd']} RA (AA points)", f"{names['aa']} RA",
         f"{names['adaptive']} RA (AA points)", f"{names['adaptive']} RA (all)", "points AA breaks, adaptive not",
         "points adaptive breaks, AA not", "RA (worst, every attack)", "seeds x AA points"], attack_rows))
    return rows


def compact(runs: dict) -> dict:
    """A copy of the runs whose per-point outcomes are strings of 0/1 (results.json stays small)."""
    def squeeze(value, key=None):
        if key in ("correct", SAME_ROUTE) and isinstance(value, dict):
            return {t: "".join(str(int(b)) for b in bits) for t, bits in value.items()}
        if isinstance(value, dict):
            return {k: squeeze(v, k) for k, v in value.items()}
        if key == "index" and isinstance(value, list):
            return ",".join(map(str, value))
        return [squeeze(v) for v in value] if isinstance(value, list) else value
    return squeeze(runs)


def main(argv=None):
    from cli import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="?", help="runs folder of a preset (e.g. runs/digits)")
    p.add_argument("--side-by-side", nargs="+", metavar="RESULTS", default=None,
                   help="print the verdicts of the results folders given (results.json of report.py) side by side")
    p.add_argument("--out", default=None, help="results folder (default <runs>/results)")
    p.add_argument("--preset", default=None, help="its preset (default: the runs folder's name, e.g. digits-quick)")
    args = p.parse_args(argv)
    missing = [folder for folder in args.side_by_side or () if not os.path.isfile(os.path.join(folder, "results.json"))]
    if missing:
        p.error(f"--side-by-side: no results.json (report.py writes it) in {', '.join(missing)}")
    if args.side_by_side:
        presets = {}
        for folder in args.side_by_side:
            with open(os.path.join(folder, "results.json")) as f:
                blob = json.load(f)
            presets[blob["preset"]] = verdicts(claims_table(blob["runs"], NUM_CLASSES.get(blob["preset"], 10))[0])
        print(side_by_side(presets), end="")
        return
    if not args.runs:
        p.error("give a runs folder, or --side-by-side RESULTS...")
    if not os.path.isdir(args.runs):
        p.error(f"{args.runs}: no such runs folder")
    out = args.out or os.path.join(args.runs, "results")
    preset = args.preset or os.path.basename(os.path.normpath(args.runs)).removesuffix("-quick")
    os.makedirs(out, exist_ok=True)
    write(load_runs(args.runs, []), out, NUM_CLASSES.get(preset, 10))
    print(f"wrote {out}/claims.md and attacks.md")


if __name__ == "__main__":
    main()
