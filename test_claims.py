"""Per-point outcomes, the worst case over attacks, paired bootstrap intervals and the claims table."""
import math
import random

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
    rows, records = claims.claims_table(runs)
    assert len(rows) == len(records) == sum(len(c[1]) for c in claims.CLAIMS)


def test_a_constant_side_is_compared_point_by_point():
    runs = {"rter_b9": {"evals": {"eval_pgd": evaluation("pgd", range(10), clean=[1] + [0] * 9, whole=[0] * 10)}}}
    judged = claims.judge(runs, "pgd", 20.0, ("rter_b9", "clean"))
    assert judged["difference"] == pytest.approx(10.0) and judged["points"] == 10


def test_the_advmoe_claims_are_judged_under_pgd_and_the_worst_case_with_autoattack():
    def run(pgd, aa):  # MoE-CNN runs: whole-model outcomes only, under PGD and AutoAttack
        return {"evals": {f"eval_{attack}": evaluation(attack, range(100), clean=[1] * 100, whole=[1] * k + [0] * (
            100 - k)) for attack, k in (("pgd", pgd), ("aa", aa))}}
    runs = {"a1_advmoe": run(60, 50), "a1_moe": run(40, 30), "a1_sdense": run(70, 45)}
    _, records = claims.claims_table(runs)
    judged = {(r["claim"], r["attack"]): r for r in records if "(Table A1)" in r["claim"]}
    moe, sdense, sparse = (f"AdvMoE beats AT ({b}) in RA (Table A1)" for b in ("MoE", "S-Dense", "Sparse"))
    assert set(judged) == {(c, a) for c in (moe, sdense, sparse) for a in ("pgd", "worst")}
    assert judged[moe, "pgd"]["difference"] == pytest.approx(20.0) and judged[moe, "pgd"]["verdict"] == "holds"
    # PGD says S-Dense is ahead; AutoAttack breaks it more, so on the worst case AdvMoE leads
    assert judged[sdense, "pgd"]["verdict"] == "contradicted"
    assert judged[sdense, "worst"]["difference"] == pytest.approx(5.0) and judged[sdense, "worst"]["points"] == 100
    assert judged[sparse, "pgd"]["verdict"] == judged[sparse, "worst"]["verdict"] == "n/a"  # not run
