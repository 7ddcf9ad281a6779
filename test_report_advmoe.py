"""report.py's Tables A1, A2 and Figure A2 (the AdvMoE appendix): cells over seeds, GMACs, paper cells, n/a."""
import json
import os
import re

import pytest

import report
from paper import PAPER
from test_report import PNG, write_json

# the train_at.py settings of each run (args.json), as the Makefile trains them
DENSE, SDENSE = dict(method="at", experts=1, scale=1.0), dict(method="at", experts=1, scale=0.5)
SPARSE, MOE = dict(method="sparse", experts=1, scale=0.5), dict(method="at", experts=4, scale=0.5)
ADVMOE = dict(method="advmoe", experts=4, scale=0.5)


def cnn_eval(attack, sa, ra, pathway, masked, n=200):
    """eval.py's JSON of an MoE-CNN: whole-model outcomes (nested prefixes) and the GMACs it counted."""
    bits = {key: [int(i < round(value * n / 100)) for i in range(n)] for key, value in (("clean", sa), ("whole", ra))}
    return {"attack": attack, "eps": 0.15, "step_size": 0.0375, "steps": 50, "n": n, "sa": sa, "ra": ra,
            "index": list(range(n)), "correct": bits, "gmacs": {"pathway": pathway, "masked": masked}}


def cnn_run(root, folder, flags, steps, pgd=None, aa=None, gmacs=(0.004, 0.004), log=None):
    """A train_at.py run folder: args.json, eval_pgd.json / eval_aa.json from (SA, RA) / RA, log.csv rows."""
    write_json(root / folder / "args.json", {"arch": "moe_cnn", "eps": 0.15, "eval_steps": 10, "steps": steps,
                                              **flags})
    if pgd:
        write_json(root / folder / "eval_pgd.json", cnn_eval("pgd", *pgd, *gmacs))
    if aa is not None:
        write_json(root / folder / "eval_aa.json", cnn_eval("aa", pgd[0], aa, *gmacs))
    if log:
        (root / folder / "log.csv").write_text("epoch,lr,loss,train_seconds,sa,ra,usage_0\n" + "".join(
            f"{e},0.1,1.0,2.0,{sa},{ra},0.25\n" for e, (sa, ra) in enumerate(log, 1)))


def table_lines(text):
    return [line for line in text.splitlines() if line.startswith("| ")]


def test_digits_tables_hold_seed_means_gmacs_reductions_and_say_what_is_missing(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    cnn_run(runs, "a1_dense", DENSE, 10, (98.0, 60.0), 55.0)
    cnn_run(runs, "a1_dense-seed1", DENSE, 10, (97.0, 62.0), 53.0)
    cnn_run(runs, "a1_sdense", SDENSE, 10, (96.0, 58.0), 50.0, gmacs=(0.001, 0.001))
    cnn_run(runs, "a1_moe", MOE, 10, (95.0, 57.0), gmacs=(0.0012, 0.0046))  # AutoAttack not run yet
    cnn_run(runs, "a1_advmoe", ADVMOE, 10, (96.0, 64.0), 59.0, gmacs=(0.0012, 0.0046), log=[(50, 20), (80, 40)])
    cnn_run(runs, "a1_advmoe-seed1", ADVMOE, 10, (94.0, 66.0), 60.0, gmacs=(0.0012, 0.0046))
    cnn_run(runs, "a2_dense", DENSE, 2, (99.0, 50.0))
    cnn_run(runs, "a2_sparse_r0.5", SPARSE, 2, (97.0, 45.0), gmacs=(0.0010, 0.004))  # masks differ by seed
    cnn_run(runs, "a2_sparse_r0.5-seed1", SPARSE, 2, (95.0, 47.0), gmacs=(0.0014, 0.004))
    cnn_run(runs, "a2_advmoe_r0.2", ADVMOE, 2, (90.0, 40.0), log=[(60, 30), (70, 35), (75, 36)])  # r 0.5, not 0.2
    report.main(["digits", "--runs", str(runs), "--out", str(out)])

    a1 = (out / "tableA1.md").read_text()
    assert a1.startswith("# Table A1: AdvMoE appendix") and "| preset digits | eps 0.15; PGD-50" in a1
    assert "AutoAttack (standard), n=200" in a1 and "`bash run_all.sh digits`" in a1
    assert "## backbone `moe_cnn`" in a1 and "WRN-28-10 block" in a1 and "## WRN" not in a1  # one backbone
    # dense RA (60, 62), RA-AA (55, 53), SA (98, 97); sample std |a - b| / sqrt(2); the reference of the reductions
    assert table_lines(a1) == [
        "| method | RA | RA-AA | SA | GFLOPs |",
        "| AT (Dense) | 61.00 ± 1.41 | 54.00 ± 1.41 | 97.50 ± 0.71 | 0.004 |",
        "| AT (S-Dense) | 58.00 | 50.00 | 96.00 | 0.001 (75% ↓) |",
        "| AT (Sparse) | n/a | n/a | n/a | n/a |",
        "| AT (MoE) | 57.00 | n/a | 95.00 | 0.0012 (masked 0.0046) (70% ↓) |",
        "| AdvMoE | 65.00 ± 1.41 | 59.50 ± 0.71 | 95.00 ± 1.41 | 0.0012 (masked 0.0046) (70% ↓) |"]
    assert "- n/a: not evaluated yet: `a1_moe` (eval_aa.json)." in a1 and "- n/a: not run yet: `a1_sparse`." in a1
    assert "torch.utils.flop_counter" in a1 and "no paper column" in a1

    a2 = (out / "tableA2.md").read_text()
    lines = table_lines(a2)
    assert lines[0] == "| r | method | RA | SA | GFLOPs |" and len(lines) == 1 + 13  # dense, then 4 methods x 3 r
    assert "| 1.0 | AT (Dense) | 50.00 | 99.00 | 0.004 |" in lines
    # the masks differ by seed, so the pathway is a mean ± std (0.0012 ± 0.00028), 70 % below the dense 0.004
    assert "| 0.5 | AT (Sparse) | 46.00 ± 1.41 | 96.00 ± 1.41 | 0.0012 ± 0.00028 (masked 0.004) (70% ↓) |" in lines
    assert "| 0.8 | AdvMoE | n/a | n/a | n/a |" in lines
    assert "`a2_advmoe_r0.2` was trained with scale 0.5 where the row needs 0.2 (args.json)" in a2

    blob = json.loads((out / "results.json").read_text())
    dense, sdense, sparse, moe, advmoe = blob["tables"]["tableA1"]["resnet18"]
    assert list(blob["tables"]["tableA1"]) == ["resnet18"]  # digits draws no WRN-28-10 block
    assert dense["run"] == "a1_dense" and dense["ra"] == pytest.approx(61.0) and dense["reduction_pct"] is None
    assert dense["std"]["ra_aa"] == pytest.approx(2 ** 0.5) and dense["seeds"]["a1_dense-seed1"]["ra_aa"] == 53.0
    assert moe["reduction_pct"] == pytest.approx(70.0) and moe["gmacs_masked"] == 0.0046 and moe["ra_aa"] is None
    assert sparse["ra"] is None and advmoe["paper"] is None
    a2_sparse = [r for r in blob["tables"]["tableA2"]["resnet18"] if r["run"] == "a2_sparse_r0.5"][0]
    assert a2_sparse["gmacs_pathway"] == pytest.approx(0.0012) and a2_sparse["row"] == "0.5 / AT (Sparse)"

    assert (out / "figA2.png").read_bytes()[:8] == PNG
    sa_panel = blob["figures"]["figA2"][0]  # one line per AdvMoE run with a log, its points per epoch
    plotted = {call[2]["label"]: call[1] for call in sa_panel if call[0] == "plot"}
    assert plotted == {"10-step training, r = 0.5": [[1, 2], [50, 80]],
                       "2-step training, r = 0.2": [[1, 2, 3], [60, 70, 75]]}


def test_paper_presets_show_the_appendix_numbers_and_cifar100_says_it_has_none(tmp_path):
    for preset in ("cifar10", "cifar100"):
        (tmp_path / "none").mkdir(exist_ok=True)
        report.main([preset, "--runs", str(tmp_path / "none"), "--out", str(tmp_path / preset)])
    a1, a2 = ((tmp_path / "cifar10" / f"table{t}.md").read_text() for t in ("A1", "A2"))
    assert "## ResNet-18\n" in a1 and "## WRN-28-10\n" in a1
    # RA: ours, ours under the paper's attack (the AdvMoE code's PGD-10), the paper's; RA-AA, SA; RA (worst); GFLOPs
    assert ("| AdvMoE | n/a | n/a | 52.22 ± 0.14 | n/a | 46.44 ± 0.09 | n/a | 79.62 ± 0.12 | n/a | n/a | "
            "0.15 (72% ↓) |") in a1
    assert ("| AT (Dense) | n/a | n/a | 52.35 ± 0.18 | n/a | 46.49 ± 0.11 | n/a | 81.45 ± 0.15 | n/a | n/a | "
            "5.25 |") in a1
    assert "| 0.8 | AdvMoE | n/a | n/a | 52.38 ± 0.14 | n/a | 81.44 ± 0.13 | n/a | n/a | 0.37 (31% ↓) |" in a2
    assert "| 1.0 | AT (Dense) | n/a | n/a | 51.75 ± 0.12 | n/a | 83.54 ± 0.15 | n/a | n/a | 5.25 |" in a2  # WRN
    assert ("| r | method | RA | RA (paper's attack) | RA paper | SA | SA paper | RA (worst) | GFLOPs | "
            "GFLOPs paper |") in a2
    assert "- n/a: not run yet: `a1_dense`" in a1 and "`a1w_advmoe`" in a1
    # CIFAR-100 runs Table A2 only: its page has no other table; the columns stay, every paper cell is n/a and a note
    # says why
    assert sorted(p.name for p in (tmp_path / "cifar100").glob("table*")) == ["tableA2.md"]
    text = (tmp_path / "cifar100" / "tableA2.md").read_text()
    body = [line for line in table_lines(text) if "paper" not in line]  # the headers out
    cells = {c.strip() for line in body for c in line.split("|")[1:-1]}
    assert "paper cells are n/a on cifar100" in text and "RA paper" in text and "±" not in text
    assert cells - {"n/a", "1.0", "0.2", "0.5", "0.8", "AT (Dense)", "AT (S-Dense)", "AT (Sparse)", "AT (MoE)",
                    "AdvMoE"} == set()
    assert "prints only its CIFAR-10 blocks" in (tmp_path / "cifar100" / "tableA2.md").read_text()
    blob = json.loads((tmp_path / "cifar10" / "results.json").read_text())
    assert blob["tables"]["tableA1"]["resnet18"][4]["paper"]["ra"] == [52.22, 0.14]


def test_the_appendix_printed_reductions_follow_from_its_gflops():
    """A transcription check: each printed reduction is 1 - GFLOPs / AT (Dense)'s, to the rounding of the printed
    GFLOPs, except WRN-28-10 at r = 0.8, which the appendix prints as 38 % (3.36 / 5.25 is 36 %)."""
    for table, width in (("tableA1", 3), ("tableA2", 2)):
        for backbone, rows in PAPER[table]["cifar10"].items():
            dense = rows["dense"][width]
            assert rows["dense"][width + 1] is None and dense in (0.54, 5.25)
            cells = [(k, None, v) for k, v in rows.items() if k != "dense" and isinstance(v, tuple)] + [
                (k, r, v) for k, by_r in rows.items() if isinstance(by_r, dict) for r, v in by_r.items()]
            assert len(cells) == (4 if table == "tableA1" else 12)
            for method, r, row in cells:
                metrics, (gflops, printed) = row[:width], row[width:]
                assert all(0 < mean < 100 and 0 < std < 1 for mean, std in metrics)
                low, high = (100 * (1 - (gflops + d) / dense) for d in (0.005, -0.005))
                known = (table, backbone, r) == ("tableA2", "wrn28_10", "0.8") and method in ("sdense", "sparse")
                assert (printed == 38) if known else low - 0.5 <= printed <= high + 0.5, (table, backbone, method, r)


def test_quick_keeps_the_train_steps_table_a1_rows_need():
    """--quick trains with 2-step PGD, but Table A1's rows name 10 steps: their runs keep them."""
    import subprocess
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run(["make", "-n", "-f", "Makefile", "QUICK=1", "RUNS=/nonexistent/runs"], cwd=here,
                          capture_output=True, text=True, timeout=120)
    trains = {m.group(1): re.findall(r"--steps (\d+)", line) for line in proc.stdout.splitlines()
              if (m := re.search(r"--out /nonexistent/runs/(\S+) --resume", line))}
    assert trains["a1_moe"] and all(steps[-1] == "10" for run, steps in trains.items() if run.startswith("a1_"))
    assert trains["rter"][-1] == "2"  # the other runs: quick's 2 steps


def test_paper_columns_have_ours_under_the_advmoe_codes_pgd10_beside_them_and_the_worst_case_apart(tmp_path):
    """cifar10: RA (paper's attack) is eval_pgd10-advmoe.json's RA, next to the paper's RA; RA (worst) is the share
    of the points that survive every evaluation of the run, at most each attack's RA."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    cnn_run(runs, "a1_advmoe", ADVMOE, 10, (90.0, 50.0), 40.0)  # nested prefixes: survivors of the 40 % survive all
    write_json(runs / "a1_advmoe" / "eval_pgd10-advmoe.json", {**cnn_eval("pgd10-advmoe", 90.0, 60.0, 0.15, 0.6),
                                                               "steps": 10, "step_size": 2 / 255})
    report.main(["cifar10", "--runs", str(runs), "--out", str(out)])
    a1 = (out / "tableA1.md").read_text()
    header = ("| method | RA | RA (paper's attack) | RA paper | RA-AA | RA-AA paper | SA | SA paper | RA (worst) | "
              "GFLOPs |")
    assert header in a1
    assert "| AdvMoE | 50.00 | 60.00 | 52.22 ± 0.14 | 40.00 | 46.44 ± 0.09 | 90.00 | 79.62 ± 0.12 | 40.00 |" in a1
    assert "AdvMoE PGD-10 (step 2/255), n=200" in a1.splitlines()[0]  # the title says how each column was attacked
    assert "the AdvMoE code's PGD-10 (eval_pgd10-advmoe.json)" in a1 and "y mod E" in a1
    advmoe = json.loads((out / "results.json").read_text())["tables"]["tableA1"]["resnet18"][4]
    assert advmoe["ra_paper_attack"] == 60.0 and advmoe["worst"] == 40.0 <= min(advmoe["ra"], advmoe["ra_aa"])
