"""Per-point outcomes, the worst case over attacks, paired bootstrap intervals and the claims table."""
import math
import random
import re

import pytest

import claims
from outcomes import accuracy, outcomes, paired_bootstrap, verdict, worst_case


def evaluation(attack, index, **correct):
    return {"attack": attack, "index": list(index), "correct": {k: list(v) for k, v in correct.items()}}


def test_worst_case_is_the_points_that_survive_every_attack_on_the_points_all_share():
    pgd = evaluation("pgd", [0, 1, 2, 3, 4], clean=[1, 1, 1, 1, 0], whole=[1, 1, 0, 1, 0], experts=[1, 0, 1, 1, 0])
    aa = evaluation("aa", [1, 3, 4], clean=[1, 1, 0], whole=[1, 0, 0])
    covered, survived = worst_case([pgd, aa])
    assert covered == ["aa:whole", "pgd:experts", "pgd:whole"]
    assert survived == {1: False, 3: False, 4: False}  # 1: experts broke it; 3: AutoAttack; 4: wrong already
    covered, survived = worst_case([pgd])
    assert survived == {0: True, 1: False, 2: False, 3: True, 4: False}


def test_worst_case_is_never_above_any_single_attack_on_the_shared_points():
    rng = random.Random(0)
    for _ in range(50):
        index = rng.sample(range(40), 25)
        evals = [evaluation(a, index, whole=[rng.random() < 0.7 for _ in index],
                            experts=[rng.random() < 0.8 for _ in index]) for a in ("pgd", "aa", "adaptive")]
        _, survived = worst_case(evals)
        for ev in evals:
            for target, points in outcomes(ev).items():
                assert accuracy(survived) <= accuracy({i: points[i] for i in survived}) + 1e-9


def test_dual_outcomes_are_read_per_alpha():
    ev = {"attack": "pgd", "index": [5, 6], "rows": [{"alpha": 0.5, "correct": {"dual": [1, 0]}},
                                                  {"alpha": 0.9, "correct": {"dual": [1, 1]}}]}
    assert outcomes(ev, 0.9) == {"dual": {5: True, 6: True}}
    assert worst_case([ev], 0.5)[1] == {5: True, 6: False}


def test_bootstrap_interval_and_verdicts():
    rng = random.Random(1)
    a = [int(rng.random() < 0.8) for _ in range(300)]
    b = [int(rng.random() < 0.5) for _ in range(300)]
    diff, (low, high) = paired_bootstrap([(a, b)])
    assert low <= diff <= high and math.isclose(diff, 100 * (sum(a) - sum(b)) / 300)
    assert verdict((low, high)) == "holds"
    assert verdict(paired_bootstrap([(b, a)])[1]) == "contradicted"
    assert paired_bootstrap([(a, a)]) == (0.0, (0.0, 0.0)) and verdict((0.0, 0.0)) == "undecided"
    assert verdict(paired_bootstrap([])[1]) == "n/a"


def test_bootstrap_over_seeds_is_wider_when_seeds_disagree():
    same = [([1] * 60 + [0] * 40, [1] * 50 + [0] * 50)] * 3
    apart = [([1] * 90 + [0] * 10, [1] * 50 + [0] * 50), ([1] * 60 + [0] * 40, [1] * 50 + [0] * 50),
             ([1] * 30 + [0] * 70, [1] * 50 + [0] * 50)]
    width = lambda pairs: (lambda ci: ci[1] - ci[0])(paired_bootstrap(pairs)[1])  # noqa: E731
    assert paired_bootstrap(apart)[0] == pytest.approx(paired_bootstrap(same)[0])
    assert width(apart) > 2 * width(same)


def test_claims_pair_seeds_and_points_and_say_undecided_without_data():
    def run(whole, experts, router=None):
        return {"evals": {"eval_pgd": evaluation("pgd", range(len(whole)), clean=[1] * len(whole), whole=whole,
                                                 experts=experts, router=router or whole)}}
    runs = {"rter": run([1] * 80 + [0] * 20, [1] * 70 + [0] * 30), "at": run([1] * 50 + [0] * 50, [1] * 50 + [0] * 50),
            "rter-seed1": run([1] * 75 + [0] * 25, [1] * 70 + [0] * 30),
            "at-seed1": run([1] * 55 + [0] * 45, [1] * 50 + [0] * 50), "at-seed2": run([1] * 100, [1] * 100)}
    judged = claims.judge(runs, "pgd", ("rter", "whole"), ("at", "whole"))
    assert judged["seeds"] == 2 and judged["points"] == 200  # seed 2 has no RT-ER run to pair with
    assert judged["difference"] == pytest.approx(25.0) and judged["verdict"] == "holds"
    assert claims.judge(runs, "worst", ("rter", "whole"), ("at", "whole"))["difference"] == pytest.approx(20.0)
    assert claims.judge(runs, "pgd", ("trades", "whole"), ("at", "whole"))["verdict"] == "n/a"
    rows, missing, records = claims.claims_table(runs)
    assert len(records) == sum(len(c.attacks) for c in claims.CLAIMS)
    assert len(rows) == sum(r["verdict"] != "n/a" for r in records) 
    assert len(missing) == len(claims.CLAIMS) - 1  # all but the SA one (PGD's points only) lack a run or an attack


def test_a_constant_side_is_compared_point_by_point():
    runs = {"rter_b9": {"evals": {"eval_pgd": evaluation("pgd", range(10), clean=[1] + [0] * 9, whole=[0] * 10)}}}
    judged = claims.judge(runs, "pgd", 20.0, ("rter_b9", "clean"))
    assert judged["difference"] == pytest.approx(10.0) and judged["points"] == 10
    assert judged["attacks"] == ["clean (PGD-?'s points)"]


def test_the_advmoe_claims_are_judged_under_pgd_and_the_worst_case_with_autoattack():
    def run(pgd, aa):  # MoE-CNN runs: whole-model outcomes only, under PGD and AutoAttack
        return {"evals": {f"eval_{attack}": evaluation(attack, range(100), clean=[1] * 100, whole=[1] * k + [0] * (
            100 - k)) for attack, k in (("pgd", pgd), ("aa", aa))}}
    runs = {"a1_advmoe": run(60, 50), "a1_moe": run(40, 30), "a1_sdense": run(70, 45)}
    _, _, records = claims.claims_table(runs)
    judged = {(r["claim"], r["attack"]): r for r in records if "Table A1" in r["source"]}
    moe, sdense, sparse = (f"AdvMoE beats AT ({b}) in RA" for b in ("MoE", "S-Dense", "Sparse"))
    assert set(judged) == {(c, a) for c in (moe, sdense, sparse) for a in ("pgd", "aa", "worst")}
    part = {k: r["parts"][0] for k, r in judged.items()}
    assert part[moe, "pgd"]["difference"] == pytest.approx(20.0) and judged[moe, "pgd"]["verdict"] == "holds"
    # PGD says S-Dense is ahead; AutoAttack breaks it more, so on the worst case AdvMoE leads
    assert judged[sdense, "pgd"]["verdict"] == "contradicted"
    assert part[sdense, "worst"]["difference"] == pytest.approx(5.0) and part[sdense, "worst"]["points"] == 100
    assert part[sdense, "worst"]["attacks"] == ["worst of aa:whole, pgd:whole"]
    assert judged[sparse, "pgd"]["verdict"] == judged[sparse, "worst"]["verdict"] == "n/a"  # not run


def test_the_worst_case_of_two_runs_runs_over_the_attacks_both_faced():
    """A faced PGD and AutoAttack, B PGD only: B's missing AutoAttack must not count against A."""
    a = {"evals": {"eval_pgd": evaluation("pgd", range(100), whole=[1] * 60 + [0] * 40),
                   "eval_aa": evaluation("aa", range(100), whole=[1] * 10 + [0] * 90)}}
    b = {"evals": {"eval_pgd": evaluation("pgd", range(100), whole=[1] * 50 + [0] * 50)}}
    judged = claims.judge({"rter": a, "trades": b}, "worst", ("rter", "whole"), ("trades", "whole"))
    assert judged["difference"] == pytest.approx(10.0) and judged["attacks"] == ["worst of pgd:whole"]
    assert claims.worst_case(list(a["evals"].values()))[0] == ["aa:whole", "pgd:whole"]  # alone it counts both


def test_a_claim_of_several_comparisons_holds_only_when_each_does():
    def run(clean):  # SA only: the first `clean` of 200 points right
        return {"evals": {"eval_pgd": evaluation("pgd", range(200), clean=[1] * clean + [0] * (200 - clean),
                                                 whole=[0] * 200)}}
    table9 = next(c for c in claims.CLAIMS if c.text == "beta 1 -> 3 -> 6 lowers SA")
    record = lambda runs: next(r for r in claims.claims_table(runs)[2] if r["claim"] == table9.text)  # noqa: E731
    assert record({"rter_b1": run(190), "rter_b3": run(150), "rter_b6": run(100)})["verdict"] == "holds"
    falls_then_rises = record({"rter_b1": run(190), "rter_b3": run(100), "rter_b6": run(150)})
    assert falls_then_rises["verdict"] == "contradicted"
    assert [p["verdict"] for p in falls_then_rises["parts"]] == ["holds", "contradicted"]
    assert record({"rter_b1": run(190), "rter_b3": run(150)})["verdict"] == "undecided"  # beta 6 not run


def test_claims_md_says_no_data_instead_of_nan_rows(tmp_path):
    claims.write({}, str(tmp_path), 100)
    text = (tmp_path / "claims.md").read_text()
    assert "nan" not in text.lower() and "No claim has data" in text
    assert "RT-ER beats TRADES in RA (pgd, aa, worst): needs `rter`, `trades` evaluated" in text
    runs = {"st": {"evals": {"eval_pgd": evaluation("pgd", range(50), clean=[1] * 50, whole=[0] * 50,
                                                    experts=[0] * 50, router=[1] * 50)}}}
    claims.write(runs, str(tmp_path), 10)
    rows = [line for line in (tmp_path / "claims.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 1 and "nan" not in rows[0].lower() and "Section 4.1, Table 1" in rows[0]
    assert "PGD-?:router; PGD-?:experts" in rows[0] or "PGD-?:experts; PGD-?:router" in rows[0]


def test_every_claim_names_its_source_and_the_committed_digits_rows_name_their_attacks():
    import json
    import os
    assert all(re.search(r"(Table|Section|Figure|Appendix) [A-Z0-9]", c.source) for c in claims.CLAIMS)
    with open(os.path.join(os.path.dirname(__file__), "results", "digits", "results.json")) as f:
        runs = json.load(f)["runs"]
    rows, _, _ = claims.claims_table(runs)
    assert rows and all(row[2] and "nan" not in " ".join(row).lower() for row in rows)


def test_the_margin_claim_compares_each_class_on_its_own_points():
    def dual(margins):
        ev = evaluation("pgd", range(6), clean=[1] * 6)
        return {"evals": {"eval_pgd": {"attack": "pgd", "index": ev["index"], "labels": [0, 0, 0, 1, 1, 1],
                                       "rows": [{"alpha": 0.7, "correct": ev["correct"],
                                                 "margin_rob_points": margins}]}}}
    runs = {"dual_pretrained": dual([0.5] * 6), "jtdmoe_a0.7": dual([0.8, 0.7, 0.9, 0.4, 0.45, 0.3])}
    record = next(r for r in claims.claims_table(runs, classes=2)[2] if r["source"] == "Section 6.4, Table 5")
    assert [p["difference"] for p in record["parts"]] == pytest.approx([30.0, -11.666667])
    assert record["verdict"] == "contradicted"  # class 1 lost margin
