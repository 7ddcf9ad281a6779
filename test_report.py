"""report.py: the committed digits tables come back byte for byte from their runs, seeds, missing runs, README."""
import csv
import json
import os
import re
import subprocess

import pytest

import report

HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS = os.path.join(HERE, "results", "digits")
PNG = b"\x89PNG\r\n\x1a\n"


def write_json(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f)


def rebuild_runs(runs, root):
    """A runs folder as train_*.py and eval.py leave it, from results.json's "runs" (what report.py read)."""
    for name, run in runs.items():
        folder = os.path.join(root, name)
        os.makedirs(folder)
        for file, value in (("args.json", run["args"]), ("diverged.json", run["diverged"])):
            if value is not None:
                write_json(os.path.join(folder, file), value)
        if run["log"] is not None:  # str(float) reads back as the same float
            columns = list(dict.fromkeys(k for row in run["log"] for k in row))
            with open(os.path.join(folder, "log.csv"), "w", newline="") as f:
                csv.writer(f).writerows([columns] + [["" if row.get(c) is None else row[c] for c in columns]
                                                     for row in run["log"]])
        if run["has_ckpt"]:
            open(os.path.join(folder, "ckpt.pt"), "w").close()
        for stem, blob in run["evals"].items():  # eval.py once wrote a dual model's evaluation as dual_<attack>
            write_json(os.path.join(folder, re.sub("^dual_", "eval_", stem) + ".json"), blob)


# tables that grew since results/digits was made: rows of runs it lacks (jtdmoe_pub_a0.7, rter_b6), notes once each


def test_committed_digits_tables_come_back_from_their_runs(tmp_path):
    """results/digits = report.py(the runs it was made from, kept in its results.json), byte for byte."""
    with open(os.path.join(DIGITS, "results.json")) as f:
        committed = json.load(f)
    rebuild_runs(committed["runs"], tmp_path / "runs")
    out = tmp_path / "out"
    report.main(["digits", "--runs", str(tmp_path / "runs"), "--out", str(out), "--command", committed["command"]])
    for name in [f"table{k}" for k in range(1, 11)] + ["tableA1", "tableA2", "claims", "attacks", "README"]:
        with open(os.path.join(DIGITS, f"{name}.md")) as f:
            expected = f.read()
        made = (out / f"{name}.md").read_text()
        notes = [line for line in made.splitlines() if line.startswith("- ")]
        assert name == "README" or len(notes) == len(set(notes)), f"{name}.md says a note twice"  # README: every table
        assert made == expected, f"{name}.md differs from results/digits"
    made = json.loads((out / "results.json").read_text())
    assert made["tables"] == committed["tables"] and made["figures"] == committed["figures"]
    assert made["paper"] == committed["paper"] and made["problems"] == []


def single_eval(attack, sa, ra, ra_e, ra_r, n=400):
    """An evaluation whose per-point outcomes are nested prefixes, so RA (worst) = min(RA, RA-E, RA-R)."""
    bits = {key: [int(i < round(value * n / 100)) for i in range(n)]
            for key, value in (("clean", sa), ("whole", ra), ("experts", ra_e), ("router", ra_r))}
    return {"attack": attack, "eps": 0.15, "step_size": 0.0375, "steps": 50, "n": n, "sa": sa, "ra": ra,
            "ra_e": ra_e, "ra_r": ra_r, "index": list(range(n)), "correct": bits}


def dual_eval(attack, sa, ra, margin_rob):
    row = {"alpha": 0.7, "sa": sa, "ra": ra, "ra_rmoe": 60.0, "ra_smoe": 30.0, "margin_rob": margin_rob,
           "margin_dual": margin_rob}
    return {"attack": attack, "eps": 0.15, "step_size": 0.0375, "steps": 50, "n": 360, "rows": [row]}


def test_two_seeds_show_mean_and_sample_std(tmp_path):
    runs = tmp_path / "runs"
    write_json(runs / "rter" / "eval_pgd.json", single_eval("pgd", 90.0, 60.0, 50.0, 80.0))
    write_json(runs / "rter-seed1" / "eval_pgd.json", single_eval("pgd", 92.0, 62.5, 55.0, 84.0))
    write_json(runs / "at" / "eval_pgd.json", single_eval("pgd", 96.0, 61.0, 58.0, 89.0))  # one seed: plain cells
    write_json(runs / "at_top2" / "args.json", {"eps": 0.15})  # a second seed not evaluated yet
    write_json(runs / "at_top2-seed1" / "eval_pgd.json", single_eval("pgd", 97.0, 66.0, 68.0, 91.0))
    write_json(runs / "dual_pretrained" / "eval_pgd.json", dual_eval("pgd", 96.0, 40.0, [0.5, 0.2]))
    write_json(runs / "dual_pretrained-seed1" / "eval_pgd.json", dual_eval("pgd", 94.0, 44.0, [0.7, 0.2]))
    write_json(runs / "jtdmoe_a0.7" / "eval_pgd.json", dual_eval("pgd", 98.0, 30.0, [0.6, 0.1]))
    write_json(runs / "jtdmoe_a0.7-seed1" / "eval_pgd.json", dual_eval("pgd", 98.0, 26.0, [0.9, 0.4]))
    write_json(runs / "results" / "results.json", {})  # run_all.sh's results folder is not a run
    problems = []
    loaded = report.load_runs(str(runs), problems)
    assert "results" not in loaded and problems == []
    rep = report.Report("digits", loaded, False, "bash run_all.sh digits --seeds 2")

    text, record = rep.render("table2")
    lines = text.splitlines()
    # RT-ER: SA (90, 92) -> 91 +- 1.41; RA (60, 62.5) -> 61.25 +- 1.77; RA-E and worst (50, 55) -> 52.5 +- 3.54;
    # RA-R (80, 84) -> 82 +- 2.83 (sample std: |a - b| / sqrt(2))
    assert "| top-1 | RT-ER | 91.00 ± 1.41 | 61.25 ± 1.77 | 52.50 ± 3.54 | 82.00 ± 2.83 | 52.50 ± 3.54 |" in lines
    assert "| top-1 | AT | 96.00 | 61.00 | 58.00 | 89.00 | 58.00 |" in lines
    assert "| top-2 | AT | 97.00 ± n/a | 66.00 ± n/a | 68.00 ± n/a | 91.00 ± n/a | 66.00 ± n/a |" in lines
    assert "- mean ± std over 2 seeds" in text
    rter = record[1]
    assert rter["run"] == "rter" and rter["sa"] == pytest.approx(91.0) and rter["std"]["sa"] == pytest.approx(2 ** 0.5)
    assert rter["seeds"]["rter"]["sa"] == 90.0 and rter["seeds"]["rter-seed1"]["ra"] == 62.5

    text, record = rep.render("table3")
    assert "| Dual-Model (pre-trained) | 0.7 | 95.00 ± 1.41 | 42.00 ± 2.83 | 60.00 ± 0.00 | 30.00 ± 0.00 |" in text
    assert record["dual"][0]["seeds"]["dual_pretrained-seed1"]["ra"] == 44.0
    text, record = rep.render("table5")  # seed k of the pre-trained dual model against seed k of JTDMoE
    # class 0: pre-trained 50 / 70 -> 60 +- 14.14, JTDMoE 60 / 90 -> 75 +- 21.21, gains 10 / 20 -> 15 +- 7.07
    assert "| 0 | 60.00 ± 14.14 | 75.00 ± 21.21 | 15.00 ± 7.07 |" in text
    assert record[0]["seeds"]["dual_pretrained-seed1"]["improvement_pp"] == pytest.approx(20.0)


def test_a_target_an_evaluation_skipped_is_named_under_its_table(tmp_path):
    """n/a in a row that was evaluated says why: its attack left those targets out (not that it is missing)."""
    runs = tmp_path / "runs"
    whole_only = single_eval("aa", 80.0, 60.0, 0.0, 0.0)
    del whole_only["ra_e"], whole_only["ra_r"], whole_only["correct"]["experts"], whole_only["correct"]["router"]
    write_json(runs / "trades" / "eval_aa.json", whole_only)
    write_json(runs / "rter" / "eval_aa.json", single_eval("aa", 80.0, 60.0, 55.0, 70.0))
    rep = report.Report("digits", report.load_runs(str(runs), []), False, "bash run_all.sh digits")
    text, _ = rep.render("table7")
    assert "| TRADES | 80.00 | 60.00 | n/a | n/a |" in text and "| RT-ER | 80.00 | 60.00 | 55.00 | 70.00 |" in text
    notes = [line for line in text.splitlines() if "did not attack" in line]
    assert notes == ["- n/a: RA-E and RA-R of `trades`: their AutoAttack (standard) evaluation did not attack those "
                     "targets."]


def test_report_without_runs_writes_na_tables(tmp_path):
    """report.py on missing inputs: every file written, n/a cells, paper columns on a paper preset."""
    out = tmp_path / "out"
    (tmp_path / "none").mkdir(exist_ok=True)
    report.main(["cifar10", "--runs", str(tmp_path / "none"), "--out", str(out)])
    for k in range(1, 11):
        text = (out / f"table{k}.md").read_text()
        assert text.startswith(f"# Table {k}:") and "n/a" in text and "bash run_all.sh cifar10" in text
        cells = [c.strip() for line in text.splitlines() if line.startswith("| ") for c in line.split("|")[1:-1]]
        assert "±" not in text and all(c != "0.00" for c in cells)  # nothing made up where nothing was run
    assert "92.14" in (out / "table1.md").read_text()  # the paper's ST SA beside ours
    assert "14.42" in (out / "table5.md").read_text()  # the paper's margin improvement for dog
    for k in range(2, 8):
        assert (out / f"fig{k}.png").read_bytes()[:8] == PNG
    blob = json.loads((out / "results.json").read_text())
    assert blob["preset"] == "cifar10" and blob["runs"] == {} and blob["problems"] == []


def test_a_preset_page_has_only_the_tables_and_figures_its_runs_make(tmp_path):
    """fashion_mnist runs no E / beta sweep and no MoE-CNN: no Tables 8, 9, A1, A2, no Figure A2."""
    out = tmp_path / "out"
    (tmp_path / "none").mkdir(exist_ok=True)
    report.main(["fashion_mnist", "--runs", str(tmp_path / "none"), "--out", str(out)])
    made = sorted(p.name for p in out.iterdir())
    assert made == sorted([f"table{k}.md" for k in (1, 2, 3, 4, 5, 6, 7, 10)] + [f"fig{k}.png" for k in range(2, 8)]
                          + ["routing.png", "README.md", "claims.md", "attacks.md", "results.json"])
    page = (out / "README.md").read_text()
    assert "### Table 7:" in page and "### Table 10:" in page and "Table 8" not in page and "A2" not in page
    assert sorted(json.loads((out / "results.json").read_text())["tables"]) == sorted(
        f"table{k}" for k in (1, 2, 3, 4, 5, 6, 7, 10))


def test_results_go_inside_the_runs_folder_by_default(tmp_path):
    runs = tmp_path / "runs"
    write_json(runs / "st" / "eval_pgd.json", single_eval("pgd", 94.0, 14.0, 15.0, 56.0))
    for _ in range(2):  # the second time the results folder is there: it is not read as a run
        report.main(["digits", "--runs", str(runs)])
        blob = json.loads((runs / "results" / "results.json").read_text())
        assert list(blob["runs"]) == ["st"]
    table1 = (runs / "results" / "table1.md").read_text()
    assert "| PGD | 94.00 | 14.00 | 15.00 | 56.00 | 14.00 |" in table1
    assert "RA (worst) of `st`: share of the 400 test points" in table1
    assert "pgd:experts, pgd:router, pgd:whole" in table1
    assert (runs / "results" / "claims.md").exists() and (runs / "results" / "attacks.md").exists()


def test_readme_shows_the_committed_verdicts_side_by_side(capsys):
    """README's verdict table is claims.py's side-by-side table of every committed preset, line for line; the
    results pages it links exist, and so do the figures of every page; README stays short."""
    import claims
    with open(os.path.join(HERE, "README.md")) as f:
        readme = f.read()
    presets = sorted(p for p in os.listdir(os.path.join(HERE, "results"))
                     if os.path.isfile(os.path.join(HERE, "results", p, "results.json")))
    assert "digits" in presets
    claims.main(["--side-by-side", *[os.path.join(HERE, "results", p) for p in presets]])
    table = capsys.readouterr().out
    assert table.count("\n") > 10 and table in readme
    for preset in presets:
        page = os.path.join("results", preset, "README.md")
        assert f"({page})" in readme
        with open(os.path.join(HERE, page)) as f:
            text = f.read()
        for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
            with open(os.path.join(HERE, "results", preset, figure), "rb") as f:
                assert f.read(8) == PNG, figure
    assert len(readme.splitlines()) < 300


def test_table9_and_claims_draw_one_collapse_line(tmp_path):
    """SA 5 % is a collapse on 10 classes (twice chance 20 %), not on TinyImageNet's 200 (2 %): both files agree."""
    import claims
    for preset, sa, collapsed in (("tinyimagenet", 5.0, False), ("digits", 5.0, True), ("tinyimagenet", 0.0, True)):
        runs = {"rter_b9": {"evals": {"eval_pgd": single_eval("pgd", sa, 1.0, 1.0, 1.0)}, "log": [],
                            "diverged": None, "args": {}, "has_ckpt": True}}
        rep = report.Report(preset, runs, False, "test")
        status = rep.status("rter_b9", rep.evaluation("rter_b9", "pgd"))
        claim = next(r for r in claims.claims_table(runs, rep.num_classes)[2] if "beta 9" in r["claim"])
        assert status.startswith("collapsed") == collapsed and (claim["verdict"] == "holds") == collapsed
        assert "last good checkpoint" not in status  # it never diverged: its numbers are its final checkpoint's


def test_tinyimagenet_table5_lists_the_classes_with_numbers_only(tmp_path):
    runs = tmp_path / "runs"
    margins = [0.5, 0.2] + [float("nan")] * 198  # eval.py writes NaN for a class without test points
    write_json(runs / "dual_pretrained" / "eval_pgd.json", dual_eval("pgd", 80.0, 40.0, margins))
    write_json(runs / "jtdmoe_a0.7" / "eval_pgd.json", dual_eval("pgd", 85.0, 45.0, [0.6, 0.1] + margins[2:]))
    rep = report.Report("tinyimagenet", report.load_runs(str(runs), []), False, "test")
    text, _ = rep.render("table5")
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| 0", "| 1", "| mean"]
    assert "198 of 200 classes have no number yet" in text


def test_figure_titles_say_nothing_unknown(tmp_path, monkeypatch):
    import figures
    titles = {}
    monkeypatch.setattr(figures, "draw", lambda path, title, panels, size=None: titles.setdefault(
        os.path.basename(path), title) and panels)
    (tmp_path / "none").mkdir(exist_ok=True)
    report.main(["cifar10", "--runs", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert titles["figA2.png"] and not any("?" in t for t in titles.values()), titles


def makefile_job(tmp_path, command, **env):
    """The Makefile's JOB_SCRIPT on one stage of run x, as make runs it: (exit status, stderr)."""
    proc = subprocess.run(["make", "-s", "-f", os.path.join(HERE, "Makefile"), f"RUNS={tmp_path}", "--eval",
                           f"stage: ; $(JOB) {tmp_path}/x/train.done {command}", "stage"], cwd=HERE,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    return proc.returncode, proc.stderr


def test_a_failing_job_says_its_whole_last_line_and_leaves_it_for_run_all(tmp_path):
    advice = "cannot download the ViT-small weights: " + "x" * 400 + " -- run without --pretrained"
    code, err = makefile_job(tmp_path, f"sh -c 'echo \"{advice}\" >&2; exit 1'",
                             RUN_ALL_FAILED=str(tmp_path / "failed"))
    assert code != 0 and f"x failed (train, exit 1): {advice}; full log: " in err, err
    assert advice in (tmp_path / "failed").read_text()


def test_no_pretrained_reaches_the_vit_runs(tmp_path):
    def dry(*extra):
        proc = subprocess.run(["bash", os.path.join(HERE, "run_all.sh"), "tinyimagenet", "--dry-run", *extra],
                              cwd=HERE, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "RUNS_DIR": str(tmp_path / "runs")})
        return [line for line in proc.stdout.splitlines() if "train_rter.py" in line]
    assert dry() and all("--arch vit_small --pretrained" in line for line in dry())
    assert dry("--no-pretrained") and not any("--pretrained" in line for line in dry("--no-pretrained"))


def test_run_all_ends_with_the_failing_jobs_message(tmp_path):
    """make's own account of the stop (make: *** wait: ...) comes first; the reason is said again, last."""
    import sys
    (tmp_path / "runs" / "st").mkdir(parents=True)
    (tmp_path / "runs" / "st" / "ckpt.pt").write_bytes(b"not a checkpoint")  # --resume refuses it
    env = {**os.environ, "RUNS_DIR": str(tmp_path / "runs"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    proc = subprocess.run(["bash", os.path.join(HERE, "run_all.sh"), "digits", "--quick", "--jobs", "1"], cwd=HERE,
                          env=env, capture_output=True, text=True, timeout=300)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("run_all: st failed (train, exit 2): error: "), proc.stderr
    assert last.endswith(f"full log: {tmp_path / 'runs' / 'st' / 'train.log'}")


def test_paper_cells_have_ours_under_the_papers_attack_beside_them_and_the_worst_case_apart(tmp_path):
    """cifar10: an AutoAttack row's RA (paper's attack) cells are eval_apgd-ce50.json's, a PGD row's are its own PGD
    cells; RA (worst) is ours alone, at most every attack's RA; a dual row reads its alpha's apgd-ce50 row."""
    runs = tmp_path / "runs"
    write_json(runs / "st" / "eval_pgd.json", single_eval("pgd", 90.0, 40.0, 10.0, 60.0))
    write_json(runs / "st" / "eval_aa.json", single_eval("aa", 90.0, 12.0, 8.0, 55.0))
    write_json(runs / "st" / "eval_apgd-ce50.json", {**single_eval("apgd-ce50", 90.0, 20.0, 9.0, 58.0),
                                                      "steps": 50, "step_size": None})
    write_json(runs / "dual_pretrained" / "eval_aa.json", dual_eval("aa", 88.0, 30.0, [0.5]))
    write_json(runs / "dual_pretrained" / "eval_apgd-ce50.json", {**dual_eval("apgd-ce50", 88.0, 35.0, [0.5]),
                                                                   "steps": 50, "step_size": None})
    rep = report.Report("cifar10", report.load_runs(str(runs), []), False, "bash run_all.sh cifar10")
    text, record = rep.render("table1")
    lines = text.splitlines()
    assert "| attack | SA | SA paper | RA | RA (paper's attack) | RA paper | RA-E | RA-E (paper's attack) | RA-E " \
           "paper | RA-R | RA-R (paper's attack) | RA-R paper | RA (worst) |" in lines
    # worst: nested prefixes, so the fewest survivors of any attack:target, 8 % (AutoAttack's RA-E)
    assert "| PGD | 90.00 | 92.14 | 40.00 | 40.00 | 52.54 | 10.00 | 10.00 | 3.11 | 60.00 | 60.00 | 54.67 | 8.00 |" \
        in lines
    assert "| AutoAttack | 90.00 | 92.14 | 12.00 | 20.00 | 14.25 | 8.00 | 9.00 | 2.95 | 55.00 | 58.00 | 55.20 | " \
           "8.00 |" in lines
    assert "APGD-CE-50 (the ICML paper's AutoAttack), n=400" in lines[0] and "eval_apgd-ce50.json" in text
    assert "(ours alone: the paper has no such number)" in text
    aa_row = record[1]
    assert aa_row["paper_attack"]["attack"] == "apgd-ce50" and aa_row["paper_attack"]["ra"] == 20.0
    assert aa_row["worst"] <= min(aa_row[k] for k in ("ra", "ra_e", "ra_r")) and "paper_attack" not in record[0]
    text, record = rep.render("table4")
    assert "| Pre-trained | 88.00 | 89.81 | 30.00 | 35.00 | 33.64 | 60.00 | 60.00 | 34.20 | 30.00 | 30.00 | 14.34 |" \
        in text.splitlines()
    text, _ = rep.render("table2")  # PGD only: our attack is the paper's, no column more, the note says so
    assert "(paper's attack)" not in text and "is the paper's: our PGD (eval_pgd.json)" in text
