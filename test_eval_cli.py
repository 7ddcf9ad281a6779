"""eval.py: the alpha sweep of a dual model, and the command line on an ST, a JTDMoE and a pre-trained pair
of checkpoints, and on bad input. (To be merged with test_eval.py.)"""
import argparse
import json

import pytest
import torch

import attacks
import data
import eval as ev
import moe
from conftest import BAD_EVAL, assert_refused, batch, start_when_selected, succeeded, tiny_moe


@pytest.fixture(scope="module", autouse=True)
def start_cli_runs_first(request):
    """This file's CLI subprocesses start before its first test and run beside the in-process tests."""
    start_when_selected(request, "eval_cli")


# ----------------------------------------------------------------------------- the dual sweep (in process)

def sweep(d, x, y, alphas, targets, eps=0.1):
    torch.manual_seed(0)
    args = argparse.Namespace(attack="pgd", steps=3, bs=len(x))
    return ev.measure_dual(d, x, y, alphas, targets, args, eps, eps / 2)


def test_dual_sweep_attacks_each_moe_once_and_judges_every_alpha():
    std, rob = tiny_moe(1, seed=0), tiny_moe(1, seed=1)
    d = moe.DualMoE(std, rob, 0.7).eval()
    x, _ = batch(32)
    with torch.no_grad():
        y = rob(x).argmax(1)  # labels the robust MoE gets right, so accuracies are not all 0
    rows = sweep(d, x, y, [0.5, 0.7, 1.0], ["rmoe", "smoe"])
    for target, key in (("rmoe", "ra_rmoe"), ("smoe", "ra_smoe")):
        torch.manual_seed(0)
        if target == "smoe":  # the sweep attacked rmoe first: replay it to reach the same random start
            attacks.attack(d, x, y, "rmoe", 0.1, 0.05, 3)
        x_adv = attacks.attack(d, x, y, target, 0.1, 0.05, 3)
        with torch.no_grad():
            for row in rows:
                d.alpha = row["alpha"]
                assert row[key] == 100 * (d(x_adv).argmax(1) == y).sum().item() / len(y), (target, row)
                assert row["sa"] == 100 * (d(x).argmax(1) == y).float().mean().item()
    assert rows[-1]["sa"] == 100.0 and rows[-1]["ra_rmoe"] < 100.0
    # at alpha = 1 the dual model is the robust MoE, so attacking it is attacking the robust MoE
    (at_one,) = sweep(d, x, y, [1.0], ["dual"])
    assert at_one["ra"] == rows[-1]["ra_rmoe"]


# ----------------------------------------------------------------------------- the command line

def result_of(eval_cli, name, attack="pgd"):
    """The JSON an eval.py run wrote into its --out folder (single MoE and dual model alike)."""
    return json.loads((eval_cli.tmp / name / f"eval_{attack}.json").read_text())


def test_eval_cli_on_st_checkpoint(eval_cli):
    proc = succeeded(eval_cli.procs, "eval_ok")
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert lines[0].replace(" ", "").startswith("|sa|ra|ra_e|ra_r|worst|route_same_whole|")
    assert len(lines) == 3  # header, separator, one row
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert all(float(c) >= 0 for c in cells)
    res = result_of(eval_cli, "eval_ok")
    for key in ("sa", "ra", "ra_e", "ra_r", "worst", "route_same_whole", "route_same_experts",
                "route_same_router"):
        assert 0 <= res[key] <= 100, key
    assert res["n"] == 60 and res["steps"] == 5 and res["eps"] == data.dataset_info("digits").eps
    assert res["worst"] == min(res["ra"], res["ra_e"], res["ra_r"])
    assert res["ra"] <= res["sa"]
    assert float(cells[0]) == pytest.approx(res["sa"], abs=0.006)


def test_eval_cli_on_jtdmoe_checkpoint_gives_a_dual_row(eval_cli):
    succeeded(eval_cli.procs, "eval_jtd")
    result = result_of(eval_cli, "eval_jtd")
    assert result["kind"] == "jtdmoe" and result["n"] == 40
    (row,) = result["rows"]
    assert row["alpha"] == 0.7
    for key in ("sa", "ra", "ra_rmoe", "ra_smoe"):
        assert 0 <= row[key] <= 100 and (row[key] * 40 / 100) == pytest.approx(round(row[key] * 40 / 100))
    assert (eval_cli.tmp / "eval_jtd" / "eval_pgd.md").exists()


def test_eval_cli_pretrained_pair_at_alpha_one_is_the_robust_moe(eval_cli):
    succeeded(eval_cli.procs, "eval_pair")
    succeeded(eval_cli.procs, "eval_rob")
    pair, rob = result_of(eval_cli, "eval_pair"), result_of(eval_cli, "eval_rob")
    assert pair["kind"] == "pretrained" and [r["alpha"] for r in pair["rows"]] == [0.5, 1.0]
    assert pair["n"] == rob["n"] == 40
    at_one = pair["rows"][1]
    assert at_one["sa"] == rob["sa"], (at_one["sa"], rob["sa"])


BAD_EVAL_WORDS = {**{name: words for name, (_, words) in BAD_EVAL.items()}, "bad_eval_alpha": ["alpha", "0.4"]}


@pytest.mark.parametrize("name", list(BAD_EVAL_WORDS))
def test_bad_input_gives_one_line_error(eval_cli, name):
    assert_refused(eval_cli.procs[name].result(), BAD_EVAL_WORDS[name])
    assert not list((eval_cli.tmp / name).glob("*.json")), "a refused evaluation wrote a result"
