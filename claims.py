"""A verdict for every claim of the papers that a preset can test: claims.md from the runs' per-point outcomes.

Each claim says "A - B > 0" for two measures A and B: (run, target, alpha), target `clean` for SA, or a constant
in percent. Per seed, A and B are compared on the test points both were evaluated on (paired), and a bootstrap
over seeds and points gives the 95 % interval of the difference: holds / contradicted / undecided (outcomes.py).
Also attacks.md: PGD-50, AutoAttack and the adaptive attack compared point by point on each single MoE.
  python claims.py runs/digits [--out runs/digits/results]
"""
import argparse
import os
import re

import numpy as np

from outcomes import CLEAN, EVAL_NAME, outcomes, paired_bootstrap, verdict, worst_case

PGD_AND_WORST = ("pgd", "worst")
# (claim, attacks it is judged under, A, B): the paper says A - B > 0
CLAIMS = [
    ("Experts are more vulnerable than the router (ST MoE: RA-R > RA-E)", ("pgd",),
     ("st", "router"), ("st", "experts")),
    ("Experts are more vulnerable than the router (AT MoE: RA-R > RA-E)", ("pgd",),
     ("at", "router"), ("at", "experts")),
    ("RT-ER beats AT in RA", PGD_AND_WORST, ("rter", "whole"), ("at", "whole")),
    ("RT-ER beats AT in RA-E", ("pgd",), ("rter", "experts"), ("at", "experts")),
    ("RT-ER beats TRADES in RA", PGD_AND_WORST, ("rter", "whole"), ("trades", "whole")),
    ("RT-ER beats AdvMoE in RA", PGD_AND_WORST, ("rter", "whole"), ("advmoe", "whole")),
    ("Dual model: SA falls as alpha rises (alpha 0.5 vs 0.9)", ("pgd",),
     ("dual_pretrained", CLEAN, 0.5), ("dual_pretrained", CLEAN, 0.9)),
    ("Dual model: RA rises as alpha rises (alpha 0.9 vs 0.5)", PGD_AND_WORST,
     ("dual_pretrained", "dual", 0.9), ("dual_pretrained", "dual", 0.5)),
    ("JTDMoE beats the pre-trained dual model in SA (alpha 0.7)", ("pgd",),
     ("jtdmoe_a0.7", CLEAN, 0.7), ("dual_pretrained", CLEAN, 0.7)),
    ("JTDMoE beats the pre-trained dual model in RA (alpha 0.7)", PGD_AND_WORST,
     ("jtdmoe_a0.7", "dual", 0.7), ("dual_pretrained", "dual", 0.7)),
    ("RT-ER with beta 9 collapses (SA at most twice chance, 20 %)", ("pgd",), 20.0, ("rter_b9", CLEAN)),
    ("Top-2 routing keeps RT-ER's gain over AT in RA", PGD_AND_WORST, ("rter_top2", "whole"), ("at_top2", "whole")),
    ("E = 3 experts keep RT-ER's gain over AT (E = 4) in RA", PGD_AND_WORST, ("rter_e3", "whole"), ("at", "whole")),
    ("E = 5 experts keep RT-ER's gain over AT (E = 4) in RA", PGD_AND_WORST, ("rter_e5", "whole"), ("at", "whole")),
    # the AdvMoE appendix (MoE-CNN, 10-step PGD training, r = 0.5); the worst case counts its AutoAttack too
    ("AdvMoE beats AT (MoE) in RA (Table A1)", PGD_AND_WORST, ("a1_advmoe", "whole"), ("a1_moe", "whole")),
    ("AdvMoE beats AT (S-Dense) in RA (Table A1)", PGD_AND_WORST, ("a1_advmoe", "whole"), ("a1_sdense", "whole")),
    ("AdvMoE beats AT (Sparse) in RA (Table A1)", PGD_AND_WORST, ("a1_advmoe", "whole"), ("a1_sparse", "whole")),
]


def seeds_of(runs: dict, run: str) -> dict:
    """{seed: run record} for a run's folders: `run` is seed 0, `run-seed<k>` seed k."""
    found = {0: runs[run]} if run in runs else {}
    for name, record in runs.items():
        match = re.fullmatch(re.escape(run) + r"-seed(\d+)", name)
        if match:
            found[int(match.group(1))] = record
    return found


def measure(record: dict, attack: str, target: str, alpha: float = None) -> dict:
    """{test index: survived} of one run folder under one attack ('worst': every attack that ran on it)."""
    evals = record.get("evals", {})
    if attack == "worst":
        return worst_case(list(evals.values()), alpha)[1] if target != CLEAN else {}
    return outcomes(evals.get(EVAL_NAME.format(attack)), alpha).get(target, {})


def judge(runs: dict, attack: str, a, b) -> dict:
    """Difference A - B in percentage points, its 95 % interval, verdict, and how many seeds and points it rests on."""
    sides = [(side, None if isinstance(side, float) else seeds_of(runs, side[0])) for side in (a, b)]
    seeds = sorted(set.intersection(*[set(s) for _, s in sides if s is not None]))
    pairs = []
    for seed in seeds:
        points = [(side, measure(s[seed], attack, *side[1:]) if s is not None else None) for side, s in sides]
        shared = sorted(set.intersection(*[set(p) for _, p in points if p is not None]))
        pairs.append([[p[i] for i in shared] if p is not None else [side / 100.0] * len(shared) for side, p in points])
    estimate, interval = paired_bootstrap(pairs)
    return {"difference": estimate, "ci95": interval, "verdict": verdict(interval),
            "seeds": len([p for p in pairs if len(p[0])]), "points": sum(len(p[0]) for p in pairs)}


def describe(side) -> str:
    if isinstance(side, float):
        return f"{side:g} %"
    run, target = side[0], {CLEAN: "SA", "whole": "RA", "experts": "RA-E", "router": "RA-R", "dual": "RA"}[side[1]]
    return f"{target} of `{run}`" + (f" at alpha {side[2]}" if len(side) > 2 else "")


def claims_table(runs: dict) -> tuple:
    """(markdown, records) of every claim under each of its attacks."""
    rows, records = [], []
    for claim, attacks, a, b in CLAIMS:
        for attack in attacks:
            r = judge(runs, attack, a, b)
            low, high = r["ci95"]
            rows.append([claim, "PGD" if attack == "pgd" else "worst case", describe(a), describe(b),
                         f"{r['difference']:+.2f}", f"[{low:+.2f}, {high:+.2f}]", f"{r['seeds']} x {r['points']}",
                         f"**{r['verdict']}**"])
            records.append({"claim": claim, "attack": attack, **r})
    return rows, records


def mean_std(values) -> str:
    """One seed's number, or mean ± sample std over seeds."""
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "n/a"
    return f"{values[0]:.2f}" if len(values) == 1 else f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def attack_table(runs: dict) -> list:
    """Per single MoE with AutoAttack and adaptive results: how the attacks compare, point by point, on AA's points."""
    rows = []
    for run in sorted({re.sub(r"-seed\d+$", "", name) for name in runs}):
        per_seed = []
        for record in seeds_of(runs, run).values():
            got = {a: measure(record, a, "whole") for a in ("pgd", "aa", "adaptive")}
            if not all(got.values()):
                continue
            on_aa = sorted(got["aa"])
            survived = {a: [got[a][i] for i in on_aa] for a in got}
            worst = measure(record, "worst", "whole")
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
    return rows


def write(runs: dict, out: str) -> None:
    """claims.md and attacks.md of a preset's runs into the results folder out."""
    from checkpoint import atomic_write
    from cli import markdown_table
    rows, _ = claims_table(runs)
    atomic_write(os.path.join(out, "claims.md"), markdown_table(
        ["claim", "attack", "A", "B", "A - B (pp)", "95 % CI", "seeds x points", "verdict"], rows))
    atomic_write(os.path.join(out, "attacks.md"), markdown_table(
        ["run", "PGD-50 RA (all)", "PGD-50 RA (AA points)", "AutoAttack RA", "adaptive RA (AA points)",
         "adaptive RA (all)", "points AA breaks, adaptive not", "points adaptive breaks, AA not",
         "RA (worst, every attack)", "seeds x AA points"], attack_table(runs)))


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
    p.add_argument("runs", help="runs folder of a preset (e.g. runs/digits)")
    p.add_argument("--out", default=None, help="results folder (default <runs>/results)")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.runs, "results")
    os.makedirs(out, exist_ok=True)
    write(report.load_runs(args.runs, []), out)
    print(f"wrote {out}/claims.md and attacks.md")


if __name__ == "__main__":
    main()
