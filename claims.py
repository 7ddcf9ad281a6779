"""A verdict for every claim of the papers that a preset can test: claims.md from the runs' per-point outcomes.

Each claim says "A - B > t" (t: 0 unless the claim names a tolerance) for measures A and B: (run, target, alpha),
target `clean` for SA, or a constant in percent; a claim of several comparisons holds only when each one does.
Per seed, A and B are compared on the test points both were evaluated on (paired), and a bootstrap over seeds and
points gives the 95 % interval of the difference: holds / contradicted / undecided (outcomes.py). The worst case of
A and B runs over the same (attack:target) set: the ones both faced. Also attacks.md: PGD, AutoAttack and the
adaptive attack compared point by point on each single MoE.
  python claims.py runs/digits [--out runs/digits/results] [--preset digits]
  python claims.py --side-by-side results/digits results/fashion_mnist     (README's verdict table)
"""
import argparse
import json
import os
import re
from collections import namedtuple

import numpy as np

from outcomes import CLEAN, EVAL_NAME, outcomes, paired_bootstrap, verdict, worst_case
from report_data import NUM_CLASSES, collapse_sa

COLLAPSE = "collapse"  # a constant side: the SA at or below which a run counts as collapsed (report_data.collapse_sa)
MARGIN = "margin"  # target of Table 5's claim: per-point margin of the robust MoE F_R, per class (eval.py fields below)
MARGIN_POINTS, LABELS = "margin_rob_points", "labels"  # row[...]: per point p_y - max_k!=y p_k; ev[...]: true class
STABLE = -2.0  # "RA remains stable" (Figure 7) gives no tolerance; we read it as: at most 2 pp lower
# a claim: its text, where the paper says it, the attacks it is judged under ("worst": the worst case over the
# attacks A and B both faced), its comparisons (A, B), and t in "A - B > t"
Claim = namedtuple("Claim", "text source attacks parts threshold", defaults=(0.0,))
RA3 = ("pgd", "aa", "worst")


def chain(runs, target, falls=False):
    """The comparisons saying target rises (falls) along runs, one per step."""
    sides = [(run, target) for run in runs]
    return tuple((b, a) if falls else (a, b) for a, b in zip(sides[1:], sides))


JTDMOE = (("JTDMoE (Algorithm 1)", "jtdmoe_a0.7"), ("JTDMoE (public code's form)", "jtdmoe_pub_a0.7"))
FIG7 = ("0.5", "0.6", "0.8")
CLAIMS = [
    Claim("Experts are more vulnerable than the router (ST MoE: RA-R > RA-E)", "Section 4.1, Table 1",
          ("pgd", "aa"), ((("st", "router"), ("st", "experts")),)),
    Claim("Expert attacks leave at least 98 % of points routed to the same expert (ST MoE)", "Section 3",
          ("pgd", "aa"), ((("st", "route_same_experts"), 98.0),)),
    Claim("RT-ER beats AT in RA", "Section 6.2, Tables 2-3", RA3, ((("rter", "whole"), ("at", "whole")),)),
    Claim("RT-ER beats AT in RA-E", "Section 6.2, Table 3", ("pgd", "aa"), ((("rter", "experts"), ("at", "experts")),)),
    Claim("RT-ER costs less than 1.3 pp of SA against AT", "Section 6.2", ("pgd",),
          ((("rter", CLEAN), ("at", CLEAN)),), -1.3),
    Claim("RT-ER beats ST and AT under the smooth attack", "Appendix A.3, Table 6", ("smooth",),
          ((("rter", "whole"), ("st", "whole")), (("rter", "whole"), ("at", "whole")))),
    Claim("Top-2 routing: RT-ER beats AT in RA", "Table 2", RA3, ((("rter_top2", "whole"), ("at_top2", "whole")),)),
    Claim("RT-ER beats TRADES in RA", "Appendix A.3, Table 7", RA3, ((("rter", "whole"), ("trades", "whole")),)),
    Claim("RT-ER beats AdvMoE in RA", "Appendix A.3, Table 7", RA3, ((("rter", "whole"), ("advmoe", "whole")),)),
    Claim("SA rises with the number of experts (E = 3 -> 4 -> 5)", "Appendix A.3, Table 8", ("pgd",),
          chain(("rter_e3", "rter", "rter_e5"), CLEAN)),
    Claim("RA rises with the number of experts (E = 3 -> 4 -> 5)", "Appendix A.3, Table 8 (caption)", ("pgd",),
          chain(("rter_e3", "rter", "rter_e5"), "whole")),
    Claim("beta 1 -> 3 -> 6 lowers SA", "Appendix A.3, Table 9", ("pgd",),
          chain(("rter_b1", "rter_b3", "rter_b6"), CLEAN, falls=True)),
    *[Claim(f"beta 1 -> 3 -> 6 raises {name}", "Appendix A.3, Table 9", ("pgd",),
            chain(("rter_b1", "rter_b3", "rter_b6"), target)) for name, target in
      (("RA", "whole"), ("RA-E", "experts"), ("RA-R", "router"))],
    Claim("RT-ER with beta 9 collapses (SA at most twice chance)", "Appendix A.3, Table 9", ("pgd",),
          ((COLLAPSE, ("rter_b9", CLEAN)),)),
    Claim("Dual model: SA falls as alpha rises (0.7 -> 0.9)", "Section 6.3, Table 3", ("pgd",),
          ((("dual_pretrained", CLEAN, 0.7), ("dual_pretrained", CLEAN, 0.9)),)),
    Claim("Dual model: RA rises as alpha rises (0.7 -> 0.9)", "Section 6.3, Table 3", RA3,
          ((("dual_pretrained", "dual", 0.9), ("dual_pretrained", "dual", 0.7)),)),
    *[Claim(f"{name} beats the pre-trained dual model in {measure} (alpha 0.7)", source, attacks,
            (((run, target, 0.7), ("dual_pretrained", target, 0.7)),))
      for name, run in JTDMOE for measure, target, attacks, source in (
          ("SA", CLEAN, ("pgd",), "Section 6.4, Table 3"), ("RA", "dual", RA3, "Section 6.4, Tables 3-4"),
          ("RA-RMoE", "rmoe", ("pgd", "aa"), "Section 6.4, Tables 3-4"),
          ("RA-SMoE", "smoe", ("pgd", "aa"), "Section 6.4, Tables 3-4"))],
    Claim("JTDMoE improves the robust MoE's margin for every class (alpha 0.7)", "Section 6.4, Table 5", ("pgd",),
          MARGIN),
    Claim(f"JTDMoE improves SA over the pre-trained dual model at alpha {' / '.join(FIG7)}", "Appendix A.5, Figure 7",
          ("pgd",), tuple(((f"jtdmoe_a{a}", CLEAN, float(a)), ("dual_pretrained", CLEAN, float(a))) for a in FIG7)),
    Claim(f"JTDMoE keeps RA (at most {-STABLE:g} pp lower) at alpha {' / '.join(FIG7)}", "Appendix A.5, Figure 7",
          ("pgd",), tuple(((f"jtdmoe_a{a}", "dual", float(a)), ("dual_pretrained", "dual", float(a))) for a in FIG7),
          STABLE),
    # the AdvMoE appendix (MoE-CNN, 10-step PGD training, r = 0.5)
    *[Claim(f"AdvMoE beats AT ({b}) in RA", "AdvMoE appendix, Table A1", RA3,
            ((("a1_advmoe", "whole"), (f"a1_{run}", "whole")),)) for b, run in
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


def attack_name(ev: dict) -> str:
    """How eval.py ran an attack, from its JSON: PGD-50, AutoAttack (version), smooth PGD-50, adaptive PGD-50."""
    attack, steps = ev.get("attack", "?"), ev.get("steps", "?")
    if attack == "aa":
        return f"AutoAttack {ev.get('aa_version') or '(standard)'}"
    return {"pgd": "", "smooth": "smooth ", "adaptive": "adaptive "}.get(attack, f"{attack} ") + f"PGD-{steps}"


def measure(record: dict, attack: str, target: str, alpha: float = None, only=None) -> tuple:
    """({test index: outcome}, names of the attacks behind it) of one run folder: survived (0/1), a margin, or a
    routing share; attack 'worst': every attack:target in `only` (default: all that ran on it)."""
    evals = record.get("evals", {})
    if attack == "worst":
        covered, points = worst_case(list(evals.values()), alpha, only) if target != CLEAN else ([], {})
        return points, [f"worst of {', '.join(covered)}"] if points else []
    ev = evals.get(EVAL_NAME.format(attack)) or {}
    if target.startswith("route_same"):  # eval.py keeps the share only; as 0/1 points it bootstraps the same
        n, share = ev.get("n"), ev.get(target)
        k = round(share * n / 100) if isinstance(share, (int, float)) and isinstance(n, int) else None
        return ({i: i < k for i in range(n)}, [f"{attack_name(ev)}:experts (routing)"]) if k is not None else ({}, [])
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


def judge(runs: dict, attack: str, a, b, threshold: float = 0.0, classes: int = 10) -> dict:
    """A - B in percentage points, its 95 % interval, verdict of A - B > threshold, the attacks behind it, and how
    many seeds and points it rests on."""
    sides = [collapse_sa(classes) if s == COLLAPSE else s for s in (a, b)]
    found = [None if isinstance(s, float) else seeds_of(runs, s[0]) for s in sides]
    seeds = sorted(set.intersection(*[set(f) for f in found if f is not None]))
    pairs, names = [], set()
    for seed in seeds:
        only = None  # the worst case of each side over the attack:targets both faced
        if attack == "worst":
            faced = [set(worst_case(list(f[seed].get("evals", {}).values()), s[2] if len(s) > 2 else None)[0])
                     for s, f in zip(sides, found) if f is not None]
            only = set.intersection(*faced)
        got = [measure(f[seed], attack, *s[1:], only=only) if f is not None else None for s, f in zip(sides, found)]
        shared = sorted(set.intersection(*[set(g[0]) for g in got if g is not None]))
        names.update(n for g in got if g is not None and shared for n in g[1])
        pairs.append([[float(g[0][i]) for i in shared] if g is not None else [s / 100.0] * len(shared)
                      for s, g in zip(sides, got)])
    estimate, (low, high) = paired_bootstrap(pairs)
    return {"difference": estimate, "ci95": (low, high), "verdict": verdict((low - threshold, high - threshold)),
            "attacks": sorted(names), "seeds": len([p for p in pairs if len(p[0])]),
            "points": sum(len(p[0]) for p in pairs)}


def parts_of(claim: Claim, classes: int) -> tuple:
    """The comparisons of a claim; Table 5's: one per class, JTDMoE's margin against the pre-trained one."""
    if claim.parts != MARGIN:
        return claim.parts
    return tuple(((run, f"{MARGIN}:{c}", 0.7), ("dual_pretrained", f"{MARGIN}:{c}", 0.7))
                 for run in ("jtdmoe_a0.7",) for c in range(classes))


def combine(judged: list) -> tuple:
    """(verdict, weakest comparison) of a claim that holds only when each comparison does."""
    verdicts = [j["verdict"] for j in judged]
    have = [j for j in judged if j["verdict"] != "n/a"]
    weakest = min(have, key=lambda j: j["ci95"][0], default=judged[0])
    if not have:
        return "n/a", weakest
    if "contradicted" in verdicts:
        return "contradicted", min((j for j in have if j["verdict"] == "contradicted"), key=lambda j: j["ci95"][1])
    return ("holds" if all(v == "holds" for v in verdicts) else "undecided"), weakest


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


def claims_table(runs: dict, classes: int = 10) -> tuple:
    """(markdown rows, claims without data, records) of every claim under each of its attacks."""
    rows, missing, records = [], [], []
    for claim in CLAIMS:
        parts, missing_before = parts_of(claim, classes), len(missing)
        for attack in claim.attacks:
            judged = [judge(runs, attack, a, b, claim.threshold, classes) for a, b in parts]
            result, weakest = combine(judged)
            records.append({"claim": claim.text, "source": claim.source, "attack": attack, "verdict": result,
                            "parts": [{"a": describe(a, classes), "b": describe(b, classes), **j}
                                      for (a, b), j in zip(parts, judged)]})
            if result == "n/a":
                missing.append(attack)
                continue
            a, b = parts[judged.index(weakest)]
            low, high = weakest["ci95"]
            rows.append([claim.text, claim.source, "; ".join(weakest["attacks"]), describe(a, classes),
                         describe(b, classes), f"{claim.threshold:+g}",
                         f"{weakest['difference']:+.2f}" + (f" (weakest of {len(parts)})" if len(parts) > 1 else ""),
                         f"[{low:+.2f}, {high:+.2f}]", f"{weakest['seeds']} x {weakest['points']}", f"**{result}**"])
        if len(missing) > missing_before:  # said once per claim: the attacks it lacks, and what it needs
            needed = ", ".join(f"`{r}`" for r in sorted({s[0] for ab in parts for s in ab if isinstance(s, tuple)}))
            missing[missing_before:] = [f"{claim.text} ({', '.join(missing[missing_before:])}): needs {needed}"
                                        + (f" with eval.py's `{MARGIN_POINTS}` and `{LABELS}`" if claim.parts == MARGIN
                                           else " evaluated")]
    return rows, missing, records


def verdicts(rows: list) -> dict:
    """Claim text -> its claims.md row under the last of its attacks with data (the strongest: the worst case)."""
    return {row[0]: row for row in rows}


def side_by_side(presets: dict) -> str:
    """A markdown table of every claim's verdict on each preset ({name: verdicts(...)}), one row per claim."""
    from cli import markdown_table
    rows = []
    for claim in dict.fromkeys(c.text for c in CLAIMS):
        got = [found[claim] for found in presets.values() if claim in found]
        if not got:
            continue
        attacks = got[0][2]
        under = f"worst case of {attacks.count(',') + 1} attack:targets" if attacks.startswith("worst of") else \
            "; ".join(dict.fromkeys(a.split(":")[0].split(" (PGD")[0] for a in attacks.split("; ")))
        cells = [f"{row[9]} {row[6].split(' (')[0]} {row[7]} ({row[8]})" if row else "not run"
                 for row in (found.get(claim) for found in presets.values())]
        rows.append([claim, got[0][1], under, *cells])
    return markdown_table(["claim", "source in the paper", "judged under", *presets], rows)


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
    notes = ["A claim of several comparisons holds only when each does; its row shows the weakest one.",
             f"Collapsed: SA at most twice chance ({collapse_sa(classes):g} %), the same line Table 9 draws."]
    if rows:
        notes.append(f"{len(rows)} rows have a verdict, each on a 95 % interval: were every true difference exactly "
                     f"at its threshold, about {0.05 * len(rows):.1f} of them would still read holds or contradicted "
                     "by chance (rows of one claim share their runs, so they err together, not independently).")
    notes += [f"No data yet: {m}." for m in missing]
    atomic_write(os.path.join(out, "claims.md"), (markdown_table(
        ["claim", "source in the paper", "attacks (attack:target)", "A", "B", "holds if A - B >", "A - B (pp)",
         "95 % CI", "seeds x points", "verdict"], rows) if rows else "No claim has data on this preset.\n")
        + "".join(f"\n- {n}" for n in notes) + "\n")
    names, attack_rows = attack_table(runs)
    atomic_write(os.path.join(out, "attacks.md"), markdown_table(
        ["run", f"{names['pgd']} RA (all)", f"{names['pgd']} RA (AA points)", f"{names['aa']} RA",
         f"{names['adaptive']} RA (AA points)", f"{names['adaptive']} RA (all)", "points AA breaks, adaptive not",
         "points adaptive breaks, AA not", "RA (worst, every attack)", "seeds x AA points"], attack_rows))
    return rows


def compact(runs: dict) -> dict:
    """A copy of the runs whose per-point outcomes are strings of 0/1 (results.json stays small)."""
    def squeeze(value, key=None):
        if key == "correct" and isinstance(value, dict):
            return {t: "".join(str(int(b)) for b in bits) for t, bits in value.items()}
        if isinstance(value, dict):
            return {k: squeeze(v, k) for k, v in value.items()}
        if key == "index" and isinstance(value, list):
            return ",".join(map(str, value))
        return [squeeze(v) for v in value] if isinstance(value, list) else value
    return squeeze(runs)


def main(argv=None):
    import report  # the runs are read the way the tables read them
    from cli import ArgumentParser
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="?", help="runs folder of a preset (e.g. runs/digits)")
    p.add_argument("--side-by-side", nargs="+", metavar="RESULTS", default=None,
                   help="print the verdicts of the results folders given (results.json of report.py) side by side")
    p.add_argument("--out", default=None, help="results folder (default <runs>/results)")
    p.add_argument("--preset", default=None, help="its preset (default: the runs folder's name, e.g. digits-quick)")
    args = p.parse_args(argv)
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
    out = args.out or os.path.join(args.runs, "results")
    preset = args.preset or os.path.basename(os.path.normpath(args.runs)).removesuffix("-quick")
    os.makedirs(out, exist_ok=True)
    write(report.load_runs(args.runs, []), out, NUM_CLASSES.get(preset, 10))
    print(f"wrote {out}/claims.md and attacks.md")


if __name__ == "__main__":
    main()
