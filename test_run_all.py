"""run_all.sh and report.py: the quick digits pipeline end to end, its reuse on a second run, the preset checks."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_ALL = os.path.join(HERE, "run_all.sh")
PNG = b"\x89PNG\r\n\x1a\n"
STATUS = re.compile(r"^\[\s*[\d.]+s\] (\w+)\s+(\S+)")  # "[   12.3s] done      rter (...)"


def env_for(tmp_path, **extra):
    """The environment of a user whose venv is active: `python` on PATH is this interpreter."""
    env = dict(os.environ)
    bin_dir = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(bin_dir, "python")):  # e.g. only python3 there: a wrapper
        bin_dir = str(tmp_path / "bin")
        os.makedirs(bin_dir, exist_ok=True)
        with open(os.path.join(bin_dir, "python"), "w") as f:
            f.write(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        os.chmod(os.path.join(bin_dir, "python"), 0o755)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.pop("MOE_DEBUG", None)
    env.update(extra)
    return env


def run_all(args, env, cwd, timeout=1200):
    t0 = time.time()
    proc = subprocess.run(["bash", RUN_ALL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


def job_lines(stdout):
    """(status, job) for every job line run_all printed, the report's lines left out."""
    found = [STATUS.match(line) for line in stdout.splitlines()]
    return [(m.group(1), m.group(2)) for m in found if m and m.group(2) != "report"]


def show(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


QUICK = ["digits", "--quick", "--jobs", "2"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One uninterrupted quick digits pipeline: (runs, results, env, cwd, seconds, {k: table k bytes})."""
    tmp_path = tmp_path_factory.mktemp("quick")
    runs, results = tmp_path / "runs", tmp_path / "results"
    env = env_for(tmp_path, RUNS_DIR=str(runs), RESULTS_DIR=str(results))
    first, took = run_all(QUICK, env, tmp_path)
    assert first.returncode == 0, show(first)
    print(f"first quick run: {took:.1f}s")
    lines = job_lines(first.stdout)
    assert ("start", "st") in lines and ("done", "st") in lines, first.stdout
    assert re.search(r"total [\d.]+s", first.stdout)
    tables = {k: (results / f"table{k}.md").read_bytes() for k in range(1, 11) if (results / f"table{k}.md").exists()}
    return runs, results, env, tmp_path, took, tables


def test_quick_digits_end_to_end_then_everything_reused(quick):
    runs, results, env, tmp_path, took, tables = quick
    args = QUICK
    assert len(tables) == 10
    for k in range(1, 11):
        path = results / f"table{k}.md"
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"
        text = path.read_text()
        title = text.splitlines()[0]
        assert title.startswith(f"# Table {k}:") and "preset digits" in title and "eps 0.15" in title, title
        assert "bash run_all.sh digits --quick" in title, title
        assert tables[k] == path.read_bytes()
    for path in [results / f"fig{k}.png" for k in range(2, 8)] + [results / "routing.png"]:
        assert path.is_file() and path.stat().st_size > 1000, f"{path} missing or empty"
        assert path.read_bytes()[:8] == PNG, f"{path} is not a PNG"
    blob = json.loads((results / "results.json").read_text())
    assert blob["preset"] == "digits" and blob["quick"] is True
    assert {f"table{k}" for k in range(1, 11)} <= set(blob["tables"])
    assert "eval_pgd" in blob["runs"]["st"]["evals"] and blob["runs"]["st"]["log"]
    # every table found its numbers (no run of the quick pipeline is missing)
    assert "n/a" not in tables[1].decode() and "n/a" not in tables[4].decode()
    assert "AutoAttack quick" in tables[1].decode()  # the cut-down AutoAttack is labelled as such
    for name in ("st", "rter", "at", "trades", "advmoe", "rter_b9", "rter_e3", "rter_e5", "at_top2", "rter_top2"):
        assert (runs / name / "eval_pgd.json").is_file(), name
    for alpha in ("0.5", "0.6", "0.7", "0.8"):
        assert (runs / f"jtdmoe_a{alpha}" / "log.csv").is_file(), alpha
    assert (runs / "dual_pretrained" / "dual_aa.json").is_file()
    assert (runs / "st" / "train.log").is_file() and (runs / "st" / "eval.log").is_file()

    # second run: nothing trained or evaluated again, identical tables
    ckpt_time = (runs / "rter" / "ckpt.pt").stat().st_mtime_ns
    second, took2 = run_all(args, env, tmp_path)
    assert second.returncode == 0, show(second)
    print(f"second quick run: {took2:.1f}s")
    lines = job_lines(second.stdout)
    assert len(lines) == 17, second.stdout
    assert all(status == "reused" for status, _ in lines), second.stdout
    assert (runs / "rter" / "ckpt.pt").stat().st_mtime_ns == ckpt_time
    for k in range(1, 11):
        assert (results / f"table{k}.md").read_bytes() == tables[k], f"table{k}.md changed on the second run"

    # a run that collapsed (diverged.json) is reported as a collapse, not an error, and not retrained
    (runs / "rter_b9" / "diverged.json").write_text(json.dumps({"message": "loss became nan at epoch 2, step 3",
                                                                "epoch": 2}))
    third, _ = run_all(args, env, tmp_path)
    assert third.returncode == 0, show(third)
    assert "collapsed earlier" in third.stdout and "collapsed (reported as such" in third.stdout, third.stdout
    table9 = (results / "table9.md").read_text()
    assert "collapsed (loss became nan at epoch 2, step 3)" in table9 and "last good checkpoint (epoch 1)" in table9


def test_killed_midway_then_rerun_finishes_with_the_same_tables(tmp_path, quick):
    runs, results = tmp_path / "runs", tmp_path / "results"
    env = env_for(tmp_path, RUNS_DIR=str(runs), RESULTS_DIR=str(results))
    proc = subprocess.Popen(["bash", RUN_ALL, *QUICK], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:  # stop it once rter has a checkpoint after epoch 1 of 2: mid-training, with something to resume
        log = runs / "rter" / "log.csv"
        while not (log.exists() and len(log.read_text().splitlines()) >= 2):
            assert proc.poll() is None, "run_all ended before it could be killed: " + proc.stderr.read()[-2000:]
            time.sleep(0.05)
        busy, _ = run_all(QUICK, env, tmp_path, timeout=60)  # a second run_all on the same runs is refused
        assert busy.returncode == 1 and "still working in" in busy.stderr, show(busy)
        proc.send_signal(signal.SIGTERM)  # what `kill PID` sends
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Run the same command again" in err, err[-2000:]
    assert not (results / "table1.md").exists()

    rerun, _ = run_all(QUICK, env, tmp_path)
    assert rerun.returncode == 0, show(rerun)
    assert "resuming" in (runs / "rter" / "train.log").read_text()
    for k in range(1, 11):
        assert (results / f"table{k}.md").read_bytes() == quick[5][k], f"table{k}.md differs from the uninterrupted run"


def test_paper_preset_without_data_stops_before_training(tmp_path):
    runs = tmp_path / "runs"
    env = env_for(tmp_path, DATA_DIR="/nonexistent", RUNS_DIR=str(runs), RESULTS_DIR=str(tmp_path / "results"))
    proc, _ = run_all(["cifar10"], env, tmp_path, timeout=120)
    assert proc.returncode != 0, show(proc)
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1, proc.stderr
    assert "data" in message[0].lower() and "/nonexistent" in message[0], message[0]
    assert "Traceback" not in proc.stderr and not runs.exists()


def test_a_failing_job_stops_run_all_with_its_reason(tmp_path):
    runs = tmp_path / "runs"
    (runs / "st").mkdir(parents=True)
    (runs / "st" / "ckpt.pt").write_bytes(b"not a checkpoint")  # --resume must refuse it
    env = env_for(tmp_path, RUNS_DIR=str(runs), RESULTS_DIR=str(tmp_path / "results"))
    proc, _ = run_all(["digits", "--quick", "--jobs", "1"], env, tmp_path, timeout=300)
    assert proc.returncode == 1, show(proc)
    assert "st failed" in proc.stderr and "corrupted" in proc.stderr and "train.log" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (runs / "rter").exists()  # nothing after the failure started
    assert not (tmp_path / "results" / "table1.md").exists()


def test_dry_run_shows_the_paper_settings(tmp_path):
    env = env_for(tmp_path, DATA_DIR="/nonexistent", RUNS_DIR=str(tmp_path / "runs"))
    proc, _ = run_all(["cifar10", "--dry-run"], env, tmp_path, timeout=60)
    assert proc.returncode == 0, show(proc)
    out = proc.stdout
    assert ("train_rter.py --beta 6 --dataset cifar10 --arch resnet18 --amp --channels-last --data-dir /nonexistent "
            "--eval-n 1000 --epochs 130") in out
    assert "train_jtdmoe.py" in out and "--alpha 0.7" in out and "--epochs 10 " in out
    assert "--alphas 0.5,0.6,0.7,0.8,0.9,1.0" in out and "--attack aa" in out and "--attack smooth" in out
    assert out.count("would ") == 17 and not (tmp_path / "runs").exists()
    proc, _ = run_all(["imagenet", "--dry-run"], env, tmp_path, timeout=60)
    assert proc.returncode == 0 and proc.stdout.count("would ") == 3, show(proc)
    assert "--method trades --dataset imagenet --arch vit_small --pretrained" in proc.stdout


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["nope"], 2), (["digits", "--jobs", "0"], 1)])
def test_arguments(tmp_path, args, code):
    proc, _ = run_all(args, env_for(tmp_path, RUNS_DIR=str(tmp_path / "r"), RESULTS_DIR=str(tmp_path / "s")),
                      tmp_path, timeout=60)
    assert proc.returncode == code, show(proc)
    if code == 0:
        assert "usage: bash run_all.sh" in proc.stdout
    else:
        assert proc.stderr.strip() and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_report_without_runs_writes_na_tables(tmp_path):
    """report.py on missing inputs: every file written, n/a cells, paper columns on a paper preset."""
    sys.path.insert(0, HERE)
    import report
    out = tmp_path / "out"
    report.main(["cifar10", "--runs", str(tmp_path / "none"), "--out", str(out)])
    for k in range(1, 11):
        text = (out / f"table{k}.md").read_text()
        assert text.startswith(f"# Table {k}:") and "n/a" in text and "bash run_all.sh cifar10" in text
    assert "92.14" in (out / "table1.md").read_text()  # the paper's ST SA beside ours
    assert "14.42" in (out / "table5.md").read_text()  # the paper's margin improvement for dog
    for k in range(2, 8):
        assert (out / f"fig{k}.png").read_bytes()[:8] == PNG
    assert json.loads((out / "results.json").read_text())["preset"] == "cifar10"


def test_readme_shows_the_committed_digits_results():
    """README's digits tables are results/digits/table*.md verbatim, and the figure it embeds exists."""
    with open(os.path.join(HERE, "README.md")) as f:
        readme = f.read()
    for k in range(1, 11):
        with open(os.path.join(HERE, "results", "digits", f"table{k}.md")) as f:
            table = f.read().strip()
        demoted = re.sub(r"(?m)^(#+) ", r"##\1 ", table)  # README nests the tables two heading levels down
        assert demoted in readme, f"README does not show results/digits/table{k}.md as it is"
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme):
        with open(os.path.join(HERE, figure), "rb") as f:
            assert f.read(8) == PNG, figure
