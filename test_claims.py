"""Per-point outcomes, the worst case over attacks, intervals over seeds x shared points and the claims table."""
import math
import random
import re

import numpy as np
import pytest
from scipy import stats

import claims
from outcomes import accuracy, crossed_mean, holm, interval, outcomes, p_value, verdict, worst_case


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


def test_crossed_mean_is_the_t_interval_over_points_for_one_seed_and_over_seeds_for_one_point():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(1, 50))
    mean, se, df = crossed_mean(d)
    assert mean == pytest.approx(d.mean()) and se == pytest.approx(d.std(ddof=1) / np.sqrt(50)) and df == 49
    mean, se, df = crossed_mean(d.T)
    assert se == pytest.approx(d.std(ddof=1) / np.sqrt(50)) and df == 49
    low, high = interval(mean, se, df)
    assert low < mean < high and verdict((low, high)) == "undecided"
    assert crossed_mean(np.ones((3, 10)))[1] == 0 and interval(1.0, 0.0, float("inf")) == (1.0, 1.0)
    assert verdict(interval(*crossed_mean(np.ones((3, 10))))) == "holds"


def test_a_seed_shift_widens_the_interval_and_the_t_quantile_counts_the_seeds():
    rng = np.random.default_rng(2)
    points = rng.normal(size=300)
    same = np.tile(points, (3, 1)) + rng.normal(0, 0.1, (3, 300))
    shifted = same + np.array([[-1.0], [0.0], [1.0]])
    _, se_same, df_same = crossed_mean(same)
    _, se_shifted, df_shifted = crossed_mean(shifted)
    assert se_shifted > 5 * se_same and df_shifted < 3 < df_same  # the seeds' 2 df rule the shifted interval
    low, high = interval(*crossed_mean(shifted))
    assert high - low > 1.5 * 2 * stats.norm.ppf(0.975) * se_shifted  # few seeds: a t quantile well above 1.96


def test_holm_steps_down_and_p_values_agree_with_the_intervals():
    assert holm([0.01, 0.04, 0.03, 0.5]) == [True, False, False, False]  # 0.01 < 0.05 / 4, then 0.03 > 0.05 / 3
    assert holm([0.001, 0.01, 0.02]) == [True, True, True] and holm([]) == []
    for mean in (0.5, 2.0, 3.0, -3.0):
        low, high = interval(mean, 1.0, 10)
        assert (p_value(mean, 1.0, 10) < 0.05) == (verdict((low, high)) != "undecided")


def simulated_runs(rng, seeds, points=300, logits=(1.0, 0.8), difficulty=1.5, method_by_point=0.7, seed_shift=0.5):
    """Run folders of methods a and b under the generative model: Bernoulli outcomes, logit = method + point
    difficulty (shared by all) + point-by-method effect (shared by a method's seeds) + a per-seed shift."""
    shared = rng.normal(0, difficulty, points)
    runs = {}
    for name, logit in zip("ab", logits):
        own = rng.normal(0, method_by_point, points)
        for seed in range(seeds):
            p = 1 / (1 + np.exp(-(logit + shared + own + rng.normal(0, seed_shift))))
            runs[name + (f"-seed{seed}" if seed else "")] = {"evals": {"eval_pgd": evaluation(
                "pgd", range(points), whole=(rng.random(points) < p).astype(int))}}
    return runs


def true_difference(logits=(1.0, 0.8), sd=np.sqrt(1.5 ** 2 + 0.7 ** 2 + 0.5 ** 2)) -> float:
    """E[accuracy of a] - E[accuracy of b] in pp over points and seeds (Gauss-Hermite over the summed effects)."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    return 100 * sum(sign * (w @ (1 / (1 + np.exp(-(logit + sd * z))))) / w.sum()
                     for logit, sign in zip(logits, (1, -1)))


@pytest.mark.parametrize("seeds", [3, 5])
def test_the_95_percent_interval_covers_the_true_difference_in_simulated_runs(seeds):
    """Coverage of claims.judge's interval under the generative model above, 200 simulations (DETAILS.md: 2,000,
    and the old bootstrap's coverage on the same draws)."""
    rng, truth = np.random.default_rng(seeds), true_difference()
    covered = 0
    for _ in range(200):
        low, high = claims.judge(simulated_runs(rng, seeds), "pgd", claims.versus(("a", "whole"), ("b", "whole")))["ci95"]
        covered += low <= truth <= high
    assert covered / 200 >= 0.90


def test_claims_pair_seeds_and_points_and_say_undecided_without_data():
    def run(whole, experts, router=None):
        return {"evals": {"eval_pgd": evaluation("pgd", range(len(whole)), clean=[1] * len(whole), whole=whole,
                                                 experts=experts, router=router or whole)}}
    runs = {"rter": run([1] * 80 + [0] * 20, [1] * 70 + [0] * 30), "at": run([1] * 50 + [0] * 50, [1] * 50 + [0] * 50),
            "rter-seed1": run([1] * 75 + [0] * 25, [1] * 70 + [0] * 30),
            "at-seed1": run([1] * 55 + [0] * 45, [1] * 50 + [0] * 50), "at-seed2": run([1] * 100, [1] * 100)}
    judged = claims.judge(runs, "pgd", claims.versus(("rter", "whole"), ("at", "whole")))
    assert judged["seeds"] == 2 and judged["points"] == 100  # seed 2 has no RT-ER run to pair with; points per seed
    assert judged["difference"] == pytest.approx(25.0) and judged["verdict"] == "holds"
    assert claims.judge(runs, "worst", claims.versus(("rter", "whole"), ("at", "whole")))["difference"] == pytest.approx(20.0)
    assert claims.judge(runs, "pgd", claims.versus(("trades", "whole"), ("at", "whole")))["verdict"] == "n/a"
    rows, missing, records = claims.claims_table(runs)
    assert len(records) == sum(len(c.attacks) for c in claims.CLAIMS)
    assert len(rows) == sum(r["verdict"] != "n/a" for r in records) 
    assert len(missing) == len(claims.CLAIMS) - 1  # all but the SA one (PGD's points only) lack a run or an attack


def test_a_constant_side_is_compared_point_by_point():
    runs = {"rter_b9": {"evals": {"eval_pgd": evaluation("pgd", range(10), clean=[1] + [0] * 9, whole=[0] * 10)}}}
    judged = claims.judge(runs, "pgd", claims.versus(20.0, ("rter_b9", "clean")))
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
    judged = claims.judge({"rter": a, "trades": b}, "worst", claims.versus(("rter", "whole"), ("trades", "whole")))
    assert judged["difference"] == pytest.approx(10.0) and judged["attacks"] == ["worst of pgd:whole"]
    assert claims.worst_case(list(a["evals"].values()))[0] == ["aa:whole", "pgd:whole"]  # alone it counts both


def test_a_trend_is_one_least_squares_test_over_all_its_levels():
    def run(clean):  # SA only: the first `clean` of 200 points right
        return {"evals": {"eval_pgd": evaluation("pgd", range(200), clean=[1] * clean + [0] * (200 - clean),
                                                 whole=[0] * 200)}}
    part = claims.trend(("b1", "b3", "b6"), (1, 3, 6), "clean")
    weights = np.array([w for w, _ in part])
    assert weights.sum() == pytest.approx(0) and weights @ [1, 3, 6] == pytest.approx(6 - 1)  # a line's change
    table9 = next(c for c in claims.CLAIMS if c.text == "beta 1 -> 3 -> 6 lowers SA")
    record = lambda runs: next(r for r in claims.claims_table(runs)[2] if r["claim"] == table9.text)  # noqa: E731
    assert record({"rter_b1": run(190), "rter_b3": run(150), "rter_b6": run(100)})["verdict"] == "holds"
    assert record({"rter_b1": run(100), "rter_b3": run(150), "rter_b6": run(190)})["verdict"] == "contradicted"
    linear = record({"rter_b1": run(190), "rter_b3": run(174), "rter_b6": run(150)})["parts"][0]
    assert linear["difference"] == pytest.approx((190 - 150) / 2)  # on a line: SA falls 20 pp from beta 1 to 6
    dip = record({"rter_b1": run(190), "rter_b3": run(100), "rter_b6": run(150)})  # one step up, overall down
    assert len(dip["parts"]) == 1 and dip["verdict"] == "holds"
    assert record({"rter_b1": run(190), "rter_b3": run(150)})["verdict"] == "n/a"  # beta 6 not run


def test_a_claim_of_several_comparisons_judges_each_at_a_bonferroni_level():
    """RT-ER beats ST and AT under the smooth attack: two comparisons, each at 97.5 %; holds when both do."""
    def run(k):
        return {"evals": {"eval_smooth": evaluation("smooth", range(400), smooth=[1] * k + [0] * (400 - k))}}
    smooth = next(c for c in claims.CLAIMS if "smooth attack" in c.text)
    record = lambda runs: next(r for r in claims.claims_table(runs)[2] if r["claim"] == smooth.text)  # noqa: E731
    got = record({"rter": run(300), "st": run(100), "at": run(280)})
    assert [p["level"] for p in got["parts"]] == [0.975, 0.975] and got["verdict"] == "holds"
    assert got["p"] == pytest.approx(2 * max(p["p"] for p in got["parts"]))
    alone = claims.judge({"rter": run(300), "at": run(280)}, "smooth", claims.versus(("rter", "whole"), ("at", "whole")))
    assert np.diff(alone["ci95"])[0] < np.diff(got["parts"][1]["ci95"])[0]  # 95 % alone, 97.5 % as one of two
    assert record({"rter": run(300), "st": run(100), "at": run(340)})["verdict"] == "contradicted"


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


def test_the_margin_claim_compares_each_class_on_its_own_points_in_probability():
    def dual(margins):
        ev = evaluation("pgd", range(40), clean=[1] * 40)
        return {"evals": {"eval_pgd": {"attack": "pgd", "index": ev["index"], "labels": [0] * 20 + [1] * 20,
                                       "rows": [{"alpha": 0.7, "correct": ev["correct"],
                                                 "margin_rob_points": margins}]}}}
    rng = np.random.default_rng(0)
    runs = {"dual_pretrained": dual([0.5] * 40),
            "jtdmoe_a0.7": dual((np.r_[[0.8] * 20, [0.38] * 20] + rng.normal(0, 0.01, 40)).tolist())}
    record = next(r for r in claims.claims_table(runs, classes=2)[2] if r["source"] == "Section 6.4, Table 5")
    assert [p["difference"] for p in record["parts"]] == pytest.approx([0.3, -0.12], abs=0.01)  # not x 100
    assert record["verdict"] == "contradicted"  # class 1 lost margin
    rows = claims.claims_table(runs, classes=2)[0]
    assert "prob." in next(row for row in rows if row[1] == "Section 6.4, Table 5")[6]


def test_the_routing_claim_reads_per_point_routing_when_eval_stored_it():
    ev = evaluation("pgd", range(100), clean=[1] * 100, experts=[0] * 100, router=[1] * 100)
    shares = {"st": {"evals": {"eval_pgd": {**ev, "n": 100, "route_same_experts": 97.0}}}}
    points = {"st": {"evals": {"eval_pgd": {**ev, "n": 100, "route_same_experts": 97.0,
                                            "same_route": {"experts": [1] * 50 + [0] * 3 + [1] * 47}}}}}
    share = claims.judge(shares, "pgd", claims.versus(("st", "route_same_experts"), 98.0))
    point = claims.judge(points, "pgd", claims.versus(("st", "route_same_experts"), 98.0))
    assert share["difference"] == point["difference"] == pytest.approx(-1.0)
    assert point["attacks"] == ["PGD-?:experts (routing)"] and "share only" in share["attacks"][0]


def old_paired_bootstrap(pairs, resamples=2000, seed=0) -> tuple:
    """The interval claims.md used up to 0296cab, kept to measure against: resamples seeds, then points anew in
    each drawn seed, as if every seed had its own test points; percentile interval."""
    diffs = [np.asarray(a, float) - np.asarray(b, float) for a, b in pairs]
    rng, stats_ = np.random.default_rng(seed), np.empty(resamples)
    for r in range(resamples):
        chosen = rng.integers(len(diffs), size=len(diffs))
        stats_[r] = np.concatenate([diffs[s][rng.integers(len(diffs[s]), size=len(diffs[s]))] for s in chosen]).mean()
    return tuple(np.percentile(100 * stats_, [2.5, 97.5]))


if __name__ == "__main__":  # python test_claims.py [simulations]: DETAILS.md's coverage of the old and new interval
    import sys
    simulations, truth = int(sys.argv[1]) if len(sys.argv) > 1 else 2000, true_difference()
    for seeds in (3, 5):
        rng, new, old, old_in_test = np.random.default_rng(seeds), 0, 0, 0  # the test's draws come first
        for k in range(simulations):
            runs = simulated_runs(rng, seeds)
            low, high = claims.judge(runs, "pgd", claims.versus(("a", "whole"), ("b", "whole")))["ci95"]
            new += low <= truth <= high
            bits = [[runs[name + (f"-seed{s}" if s else "")]["evals"]["eval_pgd"]["correct"]["whole"] for name in "ab"]
                    for s in range(seeds)]
            low, high = old_paired_bootstrap(bits)
            old += low <= truth <= high
            old_in_test += (low <= truth <= high) and k < 200
        print(f"{seeds} seeds, {simulations} simulations: new {new / simulations:.3f}, old {old / simulations:.3f} "
              f"(old on the test's 200 draws: {old_in_test / 200:.3f}; the test asks >= 0.90)")
