"""The quick check beside the full suite: every train script, eval.py and report.py once, end to end, on tiny digits.

    python -m pytest -q test_smoke.py

One module fixture builds a runs folder laid out as run_all.sh lays it out (RUNS/<run>/, the Makefile's run names)
by calling each script's main(argv) in process: ST, RT-ER, AT, TRADES, AdvMoE, the dense MoE-CNN and its AT (Sparse)
pruning, JTDMoE from the ST and RT-ER checkpoints; eval.py on every single model (ST under all four attacks), on
the pre-trained dual model and on the JTDMoE; report.py on the folder. The tests read what each stage wrote. The
numbers mean nothing at this size: what is checked is that every stage ran and wrote what the next one reads.
"""
import csv
import json
import re

import pytest

import eval as evaluate
import report
import train_advmoe
import train_at
import train_jtdmoe
import train_rter
import train_sparse
import train_st

N = 32  # test points of every evaluation
# 1 epoch of 8 batches of 32 (a fixed 256-image subset), a 1-step training attack, the per-epoch SA / RA 1-step PGD
TRAIN = ["--dataset", "digits", "--device", "cpu", "--train-n", "256", "--bs", "32", "--epochs", "1",
         "--steps", "1", "--eval-n", str(N), "--eval-steps", "1"]
EVAL = ["--device", "cpu", "--n", str(N), "--steps", "2", "--aa-version", "quick"]
ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the dual sweep of the Makefile's dual_pretrained
# run (the Makefile's name): (script, its flags); {runs} is the runs folder. a1_sparse prunes a1_dense in 2 epochs
# (the masks, then the weights); jtdmoe_a0.7 starts from st and rter
TRAINED = {
    "st": (train_st, []),
    "rter": (train_rter, ["--beta", "6"]),
    "at": (train_at, ["--method", "at"]),
    "trades": (train_at, ["--method", "trades"]),
    "advmoe": (train_advmoe, []),
    "a1_dense": (train_at, ["--method", "trades", "--arch", "moe_cnn", "--experts", "1", "--scale", "1"]),
    "a1_sparse": (train_sparse, ["--loss", "trades", "--arch", "moe_cnn", "--scale", "0.5", "--epochs", "2",
                                 "--init", "{runs}/a1_dense/ckpt.pt"]),
    "jtdmoe_a0.7": (train_jtdmoe, ["--alpha", "0.7", "--std", "{runs}/st/ckpt.pt", "--rob", "{runs}/rter/ckpt.pt"]),
}
EPOCHS = {"a1_sparse": 2}
# single models and the attacks eval.py runs on each (ST: every attack; AutoAttack is cut to APGD-CE)
SINGLE = {"st": "pgd,aa,smooth,adaptive", **{r: "pgd" for r in ("rter", "at", "trades", "advmoe")},
          "a1_dense": "pgd,aa", "a1_sparse": "pgd,aa"}  # Table A1's runs: PGD and AutoAttack, as the Makefile has
DUAL = {"dual_pretrained": ALPHAS, "jtdmoe_a0.7": (0.7,)}  # dual models: the alphas evaluated


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(runs folder, results folder, {run: what eval.main returned}) of the whole pipeline."""
    root = tmp_path_factory.mktemp("smoke")
    runs, results = root / "runs", root / "results"
    for name, (script, flags) in TRAINED.items():
        script.main([*TRAIN, *(f.format(runs=runs) for f in flags), "--out", str(runs / name)])
    evals = {name: evaluate.main(["--ckpt", str(runs / name / "ckpt.pt"), "--attack", attacks, *EVAL])
             for name, attacks in SINGLE.items()}
    evals["dual_pretrained"] = evaluate.main([
        "--std", str(runs / "st" / "ckpt.pt"), "--rob", str(runs / "rter" / "ckpt.pt"), "--alphas",
        ",".join(map(str, ALPHAS)), "--attack", "pgd", *EVAL, "--out", str(runs / "dual_pretrained")])
    evals["jtdmoe_a0.7"] = evaluate.main(["--ckpt", str(runs / "jtdmoe_a0.7" / "ckpt.pt"), "--attack", "pgd", *EVAL])
    report.main(["digits", "--runs", str(runs), "--out", str(results), "--quick", "--command", "test_smoke"])
    return runs, results, evals


def read_json(path):
    return json.loads(path.read_text())


def check_outcomes(correct, sa, robust):
    """Per-point outcomes: N bits per target; a robust point is clean-correct; SA and RA are the bits' means."""
    assert all(len(bits) == N and set(bits) <= {0, 1} for bits in correct.values()), correct
    clean = correct["clean"]
    for target, bits in correct.items():
        assert all(b <= c for b, c in zip(bits, clean)), target  # RA <= SA, point by point
    assert sa == pytest.approx(100 * sum(clean) / N)
    for key, (target, value) in robust.items():
        assert 0 <= value <= sa and value == pytest.approx(100 * sum(correct[target]) / N), key


@pytest.mark.parametrize("name", list(TRAINED))
def test_every_train_script_wrote_its_run(smoke, name):
    """ckpt.pt, args.json and log.csv, one row per epoch with the per-epoch SA / RA."""
    runs, _, _ = smoke
    folder = runs / name
    assert (folder / "ckpt.pt").stat().st_size > 0
    assert read_json(folder / "args.json")["train_n"] == 256
    with open(folder / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS.get(name, 1) + 1))
    last = rows[-1]
    assert 0 <= float(last["ra"]) <= float(last["sa"]) <= 100, last


@pytest.mark.parametrize("name", list(SINGLE))
def test_eval_single_model(smoke, name):
    """One eval_<attack>.json per attack, equal to what main returned, with per-point outcomes and RA <= SA."""
    runs, _, evals = smoke
    attacks = SINGLE[name].split(",")
    assert sorted(evals[name]) == sorted(attacks)
    for attack in attacks:
        ev = read_json(runs / name / f"eval_{attack}.json")
        assert ev == json.loads(json.dumps(evals[name][attack]))
        assert ev["attack"] == attack and ev["n"] == N and len(ev["index"]) == N
        assert (runs / name / f"eval_{attack}.md").exists()
        whole = "smooth" if attack == "smooth" else "whole"  # the smooth attack's whole-model target
        targets = {k: t for k, t in (("ra", whole), ("ra_e", "experts"), ("ra_r", "router")) if k in ev}
        assert "ra" in targets
        check_outcomes(ev["correct"], ev["sa"], {k: (t, ev[k]) for k, t in targets.items()})
    if name.startswith("a1_"):  # the MoE-CNN path: its cost per image
        assert read_json(runs / name / "eval_pgd.json")["gmacs"]


@pytest.mark.parametrize("name", list(DUAL))
def test_eval_dual_model_has_a_row_per_alpha(smoke, name):
    """The pre-trained dual model (--std / --rob) and the JTDMoE: one row per alpha, per-point outcomes, margins."""
    runs, _, _ = smoke
    ev = read_json(runs / name / "eval_pgd.json")
    assert ev["kind"] == ("pretrained" if name == "dual_pretrained" else "jtdmoe")
    assert [r["alpha"] for r in ev["rows"]] == pytest.approx(list(DUAL[name]))
    for row in ev["rows"]:
        check_outcomes(row["correct"], row["sa"], {k: (t, row[k]) for k, t in (("ra", "dual"), ("ra_rmoe", "rmoe"),
                                                                               ("ra_smoe", "smoe"))})
        assert len(row["margin_rob"]) == 10 and len(row["margin_rob_points"]) == N


def test_report_renders_the_runs(smoke):
    """report.py: README.md with verdict rows, claims.md, tables whose rows hold the runs' numbers, no run missing."""
    runs, results, _ = smoke
    page, claims_md = (results / "README.md").read_text(), (results / "claims.md").read_text()
    verdict = re.compile(r"^\| (.+?) \|.*\*\*(holds|contradicted|undecided)\*\*", re.M)
    judged = {m.group(1) for m in verdict.finditer(page)}
    for claim in ("Experts are more vulnerable than the router (ST MoE: RA-R > RA-E)", "RT-ER beats AT in RA",
                  "RT-ER beats TRADES in RA", "RT-ER beats AdvMoE in RA", "Dual model: RA rises as alpha rises (0.5 -> 1)",
                  "JTDMoE (Algorithm 1) beats the pre-trained dual model in RA (alpha 0.7)"):
        assert claim in judged, (claim, judged)
    assert {m.group(1) for m in verdict.finditer(claims_md)} >= judged
    blob = read_json(results / "results.json")
    assert blob["problems"] == []

    def records(node):  # every table row record of results.json
        if isinstance(node, dict):
            yield from [node] if "run" in node else [r for v in node.values() for r in records(v)]
        elif isinstance(node, list):
            yield from (r for v in node for r in records(v))

    with_numbers = {r["run"] for r in records(blob["tables"]) if isinstance(r.get("sa"), (int, float))}
    assert set(SINGLE) | set(DUAL) <= with_numbers  # every evaluated run fills a table row
    missing = " ".join(line for line in page.splitlines() if "not run yet" in line or "not evaluated yet" in line)
    assert not [r for r in [*TRAINED, *DUAL] if f"`{r}`" in missing], missing
    for text in ("| ST |", "| RT-ER |", "| TRADES |", "| AdvMoE |", "| AT (Sparse) |", "| Dual-Model (JTDMoE) |"):
        assert text in page, text
    assert (results / "table1.md").exists() and list(results.glob("*.png"))
