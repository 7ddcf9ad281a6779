"""run_all.sh, the Makefile and report.py: the quick digits pipeline end to end, its reuse, kills and resumes,
the lock, the preset checks, dry runs (paper settings, seeds), a stage's outcomes, the arguments."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_ALL = os.path.join(HERE, "run_all.sh")
PNG = b"\x89PNG\r\n\x1a\n"
STAGE = re.compile(r"^\[\d\d:\d\d:\d\d\] (\w+) (\S+) (\w+)")  # "[12:00:01] done st train (21s)"
QUICK = ["digits", "--quick", "--jobs", "2"]
RUNS = ["st", "rter", "at", "dual_pretrained", "jtdmoe_a0.7", "jtdmoe_pub_a0.7", "jtdmoe_a0.5", "jtdmoe_a0.6",
        "jtdmoe_a0.8", "trades", "advmoe", "rter_b1", "rter_b3", "rter_b6", "rter_b9", "rter_top2", "at_top2",
        "rter_e5", "rter_e3"]
CNN = ["dense"] + [m + "{}" for m in ("sdense", "sparse", "moe", "advmoe")]  # the MoE-CNN runs of Tables A1 / A2
A1, A2_QUICK = [f"a1_{m.format('')}" for m in CNN], [f"a2_{m.format('_r0.5')}" for m in CNN]


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
    for name in ("MOE_DEBUG", "RESULTS_DIR", "EVAL_N", "AA_N", "DATA_DIR"):
        env.pop(name, None)
    env.update(extra)
    return env


def run_all(args, env, cwd, timeout=1200):
    t0 = time.time()
    proc = subprocess.run(["bash", RUN_ALL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


def stages(stdout):
    """(outcome, run, stage) for every stage line run_all printed."""
    found = [STAGE.match(line) for line in stdout.splitlines()]
    return [m.groups() for m in found if m]


def show(proc):
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def one_line(stderr):
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def outputs(runs):
    """{path: mtime} of every checkpoint, marker and result of a runs folder."""
    paths = [p for pattern in ("*/ckpt.pt", "*/train.done", "*/eval_*.json") for p in glob.glob(str(runs / pattern))]
    return {p: os.stat(p).st_mtime_ns for p in paths}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One uninterrupted quick digits pipeline: (runs, results, env, cwd, {k: table k bytes})."""
    tmp_path = tmp_path_factory.mktemp("quick")
    runs = tmp_path / "runs"
    env = env_for(tmp_path, RUNS_DIR=str(runs))
    first, took = run_all(QUICK, env, tmp_path)
    assert first.returncode == 0, show(first)
    print(f"first quick run: {took:.1f}s")
    done = stages(first.stdout)
    for run in RUNS + A1 + A2_QUICK:  # every run trained (dual_pretrained: evaluated only) and evaluated
        assert ("done", run, "eval" if run == "dual_pretrained" else "train") in done, (run, first.stdout)
    assert not [s for s in done if s[0] not in ("start", "done")], first.stdout
    assert re.search(r"total \d+s", first.stdout)
    results = runs / "results"  # the default: a user's run never overwrites the committed results/digits
    tables = {k: (results / f"table{k}.md").read_bytes() for k in range(1, 11) if (results / f"table{k}.md").exists()}
    return runs, results, env, tmp_path, tables


def test_quick_digits_end_to_end_then_everything_reused(quick):
    runs, results, env, tmp_path, tables = quick
    assert len(tables) == 10
    for k in range(1, 11):
        text = (results / f"table{k}.md").read_text()
        title = text.splitlines()[0]
        assert title.startswith(f"# Table {k}:") and "preset digits" in title and "eps 0.15" in title, title
        assert "bash run_all.sh digits --quick" in title, title
    for path in [results / f"fig{k}.png" for k in range(2, 8)] + [results / "routing.png"]:
        assert path.is_file() and path.stat().st_size > 1000, f"{path} missing or empty"
        assert path.read_bytes()[:8] == PNG, f"{path} is not a PNG"
    blob = json.loads((results / "results.json").read_text())
    assert blob["preset"] == "digits" and blob["quick"] is True
    assert {f"table{k}" for k in range(1, 11)} <= set(blob["tables"])
    assert "eval_pgd" in blob["runs"]["st"]["evals"] and blob["runs"]["st"]["log"]
    assert "results" not in blob["runs"]  # the results folder inside the runs folder is no run
    # every table found its numbers (no run of the quick pipeline is missing)
    assert "n/a" not in tables[1].decode() and "n/a" not in tables[4].decode()
    assert "AutoAttack quick" in tables[1].decode()  # the cut-down AutoAttack is labelled as such
    every = "pgd aa smooth adaptive"  # the runs a worst-case claim compares face the same attacks
    evals = {**dict.fromkeys(["st", "rter", "at", "trades", "advmoe", "rter_top2", "at_top2"], every),
             **dict.fromkeys(["dual_pretrained", "jtdmoe_a0.7", "jtdmoe_pub_a0.7"], "pgd aa")}
    for run in RUNS:
        wanted = evals.get(run, "pgd").split()
        assert sorted(glob.glob(str(runs / run / "eval_*.json"))) == sorted(
            str(runs / run / f"eval_{a}.json") for a in wanted), run
        assert (runs / run / "train.done").is_file() == (run != "dual_pretrained"), run
    claims_md, attacks_md = ((results / name).read_text() for name in ("claims.md", "attacks.md"))
    assert claims_md.startswith("| claim |") and "| RT-ER beats AT in RA | Section 6.2, Tables 2-3 | worst of " \
        in claims_md
    assert "nan" not in claims_md
    assert all(f"| `{run}` |" in attacks_md for run in ("st", "at", "rter", "trades", "advmoe"))
    aa = json.loads((runs / "st" / "eval_aa.json").read_text())
    assert aa["aa_version"] == "quick: APGD-CE only, 10 iterations" and aa["n"] == 20
    assert json.loads((runs / "st" / "eval_pgd.json").read_text())["n"] == 40
    assert (runs / "st" / "train.log").read_text().startswith("+ python train_st.py")
    assert (runs / "st" / "eval.log").read_text().startswith("+ python eval.py --keep-done --ckpt")

    # second run: nothing trained or evaluated again, not a file rewritten, identical tables
    before = outputs(runs)
    for run in A1 + A2_QUICK:  # Table A1: PGD and AutoAttack; Table A2: PGD
        assert sorted(glob.glob(str(runs / run / "eval_*.json"))) == sorted(
            str(runs / run / f"eval_{a}.json") for a in (("aa", "pgd") if run in A1 else ("pgd",))), run
    a1_rows = [line for line in (results / "tableA1.md").read_text().splitlines() if line.startswith("| AT")]
    assert len(a1_rows) == 4 and not any("n/a" in line for line in a1_rows), a1_rows  # every A1 cell found
    assert (results / "figA2.png").read_bytes().startswith(PNG) and "tableA2" in blob["tables"]
    # every trained run's checkpoint and marker, every evaluation's JSON: the paper's runs, then Tables A1 / A2
    assert len(before) == 18 * 2 + (7 * 4 + 3 * 2 + 9) + 10 * 2 + 5 * 2 + 5
    second, took2 = run_all(QUICK, env, tmp_path)
    assert second.returncode == 0, show(second)
    print(f"second quick run: {took2:.1f}s")
    assert stages(second.stdout) == [], second.stdout
    assert outputs(runs) == before
    for k in range(1, 11):
        assert (results / f"table{k}.md").read_bytes() == tables[k], f"table{k}.md changed on the second run"

    # a run that collapsed (diverged.json) is reported as a collapse, not an error, and not retrained
    (runs / "rter_b9" / "diverged.json").write_text(json.dumps({"message": "loss became nan at epoch 2, step 3",
                                                                "epoch": 2}))
    third, _ = run_all(QUICK, env, tmp_path)
    assert third.returncode == 0, show(third)
    assert stages(third.stdout) == [] and outputs(runs) == before, third.stdout
    assert "run_all: collapsed (reported as such in the tables): rter_b9" in third.stdout, third.stdout
    table9 = (results / "table9.md").read_text()
    assert "collapsed (loss became nan at epoch 2, step 3)" in table9 and "last good checkpoint (epoch 1)" in table9


def lock_holders(lock):
    """Ids of the processes that have the lock file open."""
    pids = set()
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            if os.readlink(fd) == str(lock):
                pids.add(int(fd.split("/")[2]))
        except OSError:
            pass  # a process or descriptor gone meanwhile
    return pids


def test_killed_midway_then_rerun_finishes_with_the_same_tables(tmp_path, quick):
    """The uninterrupted run's folder less the runs that rter and at start (so the test costs a fraction of a
    pipeline): killed while they train, then run again, it must end with the same tables."""
    runs = tmp_path / "runs"
    shutil.copytree(quick[0], runs, symlinks=True)  # copy2: make sees the same dates
    for name in ["results", "rter", "at", "dual_pretrained", *[r for r in RUNS if r.startswith("jtdmoe")]]:
        shutil.rmtree(runs / name)
    (runs / "rter_b9" / "diverged.json").unlink(missing_ok=True)  # the collapse the quick test made up
    env = env_for(tmp_path, RUNS_DIR=str(runs))

    def start_and_wait_for(log, rows):
        """run_all started, once log has more than rows lines; its output goes to files (its jobs may outlive it)."""
        with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
            proc = subprocess.Popen(["bash", RUN_ALL, *QUICK], cwd=tmp_path, env=env, stdout=out, stderr=err)
        while not (log.exists() and len(log.read_text().splitlines()) > rows):
            assert proc.poll() is None, "run_all ended before it could be killed: " + show_files()
            time.sleep(0.05)
        return proc

    def show_files():
        return (tmp_path / "out.txt").read_text()[-2000:] + (tmp_path / "err.txt").read_text()[-2000:]

    def refused():
        busy, _ = run_all(QUICK, env, tmp_path, timeout=60)
        assert busy.returncode == 1 and "still working in" in one_line(busy.stderr), show(busy)

    # kill (SIGTERM) once rter has a checkpoint after epoch 1 of 2: mid-training, with something to resume
    proc = start_and_wait_for(runs / "rter" / "log.csv", 1)
    try:
        refused()  # a second run_all on the same runs
        proc.send_signal(signal.SIGTERM)  # what `kill PID` sends
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Run the same command again" in (tmp_path / "err.txt").read_text(), show_files()
    assert not (runs / "results" / "table1.md").exists()
    assert not lock_holders(runs / ".lock"), "run_all ended before its jobs"

    # kill -9 of run_all alone: its jobs go on and keep holding the lock, so a second run_all is still refused.
    # Killed once the dual sweep (after rter's last epoch, so never in the first start) has begun
    proc = start_and_wait_for(runs / "dual_pretrained" / "eval.log", 0)
    proc.kill()
    proc.wait(timeout=60)
    try:
        refused()
    finally:
        for _ in range(100):  # stop what is left, by id, as `fuser -k RUNS/.lock` would
            holders = lock_holders(runs / ".lock")
            for pid in holders:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if not holders:
                break
            time.sleep(0.2)
    assert "resuming" in (runs / "rter" / "train.log").read_text()

    rerun, _ = run_all(QUICK, env, tmp_path)
    assert rerun.returncode == 0, show(rerun)
    for k in range(1, 11):
        assert (runs / "results" / f"table{k}.md").read_bytes() == quick[4][k], \
            f"table{k}.md differs from the uninterrupted run"


def test_paper_preset_without_data_stops_before_training(tmp_path):
    runs = tmp_path / "runs"
    env = env_for(tmp_path, DATA_DIR="/nonexistent", RUNS_DIR=str(runs))
    proc, _ = run_all(["cifar10"], env, tmp_path, timeout=120)
    assert proc.returncode == 1, show(proc)
    line = one_line(proc.stderr)
    assert "data" in line.lower() and "/nonexistent/cifar-10-batches-py" in line, line
    assert not runs.exists()


def test_a_failing_job_stops_run_all_with_its_reason(tmp_path):
    runs = tmp_path / "runs"
    (runs / "st").mkdir(parents=True)
    (runs / "st" / "ckpt.pt").write_bytes(b"not a checkpoint")  # --resume must refuse it
    env = env_for(tmp_path, RUNS_DIR=str(runs))
    proc, _ = run_all(["digits", "--quick", "--jobs", "1"], env, tmp_path, timeout=300)
    assert proc.returncode == 1, show(proc)
    first = proc.stderr.strip().splitlines()[0]  # then make's own account of the stop
    assert first.startswith("run_all: st failed (train, exit 2): error: ") and "corrupted" in first, proc.stderr
    assert first.endswith(f"; full log: {runs / 'st' / 'train.log'}") and "Traceback" not in proc.stderr
    assert not (runs / "rter").exists()  # nothing after the failure started
    assert not (runs / "st" / "train.done").exists() and not (runs / "results").exists()


def stage(tmp_path, target, command):
    """The Makefile's JOB_SCRIPT on one stage, as make runs it: (exit status, stdout, stderr)."""
    proc = subprocess.run(["make", "-s", "-f", os.path.join(HERE, "Makefile"), f"RUNS={tmp_path}",
                           "--eval", f"stage: ; $(JOB) {target} {command}", "stage"],
                          cwd=HERE, capture_output=True, text=True, timeout=60, env=env_for(tmp_path))
    return proc.returncode, proc.stdout, proc.stderr


def test_a_stage_counts_a_divergence_as_done_and_skips_a_missing_checkpoint(tmp_path):
    run = tmp_path / "rter_b9"
    run.mkdir()
    (run / "ckpt.pt").write_text("the last good checkpoint")
    diverge = f"sh -c 'echo {{}} > {run}/diverged.json; echo error: training diverged at epoch 2 >&2; exit 3'"
    code, out, err = stage(tmp_path, run / "train.done", diverge)
    assert code == 0 and err == "" and "collapsed rter_b9 train" in out, (out, err)
    assert out.strip().endswith("error: training diverged at epoch 2"), out
    assert os.stat(run / "train.done").st_mtime_ns == os.stat(run / "ckpt.pt").st_mtime_ns  # dated like it

    (run / "diverged.json").unlink()  # as a training does when it starts again
    code, out, err = stage(tmp_path, run / "train.done", "sh -c 'echo not diverged >&2; exit 3'")
    assert code != 0 and "run_all: rter_b9 failed (train, exit 3): not diverged; full log: " in err, (out, err)

    code, out, err = stage(tmp_path, tmp_path / "jtdmoe_a0.7" / "train.done",
                           f"python train_jtdmoe.py --std={tmp_path}/st/ckpt.pt --out {tmp_path}/jtdmoe_a0.7")
    assert code == 0 and f"skipped jtdmoe_a0.7 train: no {tmp_path}/st/ckpt.pt" in out, (out, err)
    assert not (tmp_path / "jtdmoe_a0.7").exists()


def test_a_kill_during_an_evaluation_keeps_the_attacks_it_finished(tmp_path):
    """make deletes an interrupted recipe's targets unless they are precious: eval.py writes each JSON whole, so the
    finished ones stay, and the rerun passes --keep-done so eval.py redoes only the rest."""
    runs, fake = tmp_path / "runs", tmp_path / "fake"
    (runs / "st").mkdir(parents=True)
    for name in ("ckpt.pt", "train.done"):
        (runs / "st" / name).touch()
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "$@" >> "$0.calls"\n'  # pgd done, then the next attack hangs
                                 f'echo {{}} > {runs}/st/eval_pgd.json; touch {fake}/started; exec sleep 60\n')
    (fake / "python").chmod(0o755)
    env = env_for(tmp_path)
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    make = ["make", "-s", "-f", os.path.join(HERE, "Makefile"), f"RUNS={runs}", "PRESET=digits", "QUICK=1",
            f"{runs}/st/eval_pgd.json"]
    proc = subprocess.Popen(make, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        for _ in range(600):
            if (fake / "started").exists():
                break
            time.sleep(0.05)
        assert (fake / "started").exists(), proc.communicate(timeout=60)
        os.killpg(proc.pid, signal.SIGTERM)  # make and its job, as run_all stops them
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (runs / "st" / "eval_pgd.json").exists(), err
    calls = (fake / "python.calls").read_text().split()
    assert calls[:2] == ["eval.py", "--keep-done"] and "pgd,aa,smooth,adaptive" in calls, calls


def dry_run(args, tmp_path, **env):
    proc, _ = run_all([*args, "--dry-run"], env_for(tmp_path, DATA_DIR="/nonexistent", RUNS_DIR=str(tmp_path / "runs"),
                                                    **env), tmp_path, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", show(proc)
    assert not (tmp_path / "runs").exists()
    lines = proc.stdout.splitlines()
    trains = [line for line in lines if "/train.done python train_" in line]
    evals = [line for line in lines if " python eval.py " in line]
    return proc.stdout, trains, evals


def run_names(commands):  # the runs (folder names) that dry-run commands train or evaluate
    return {re.search(r"/runs/([^/ ]+)/", line).group(1) for line in commands}


def test_dry_run_shows_the_paper_settings(tmp_path):
    out, trains, evals = dry_run(["cifar10"], tmp_path)
    assert ("train_rter.py --beta 6 --dataset cifar10 --arch resnet18 --amp --channels-last --data-dir /nonexistent "
            "--eval-n 1000 --epochs 130") in out
    assert "train_jtdmoe.py" in out and "--alpha 0.7" in out and "--epochs 10 " in out
    assert "--alphas 0.5,0.6,0.7,0.8,0.9,1.0" in out
    # the ICML paper's '50-step AutoAttack' beside ours on every run of its tables that faces AutoAttack (Table A1's
    # AutoAttack is the standard one, ours), the sweeps PGD only
    assert f"--ckpt {tmp_path}/runs/st/ckpt.pt --attack pgd,aa,apgd-ce50,smooth,adaptive " in out
    assert f"--out {tmp_path}/runs/dual_pretrained --attack pgd,aa,apgd-ce50 " in out
    icml_aa = [line for line in evals if re.search(r"--attack [\w,-]*\baa\b", line) and "/runs/a1" not in line]
    assert len(icml_aa) == 10 and all("apgd-ce50" in line for line in icml_aa), icml_aa
    assert f"--ckpt {tmp_path}/runs/rter_b1/ckpt.pt --attack pgd " in out
    a1 = [f"{t}_{m.format('')}" for t in ("a1", "a1w") for m in CNN]
    a2 = [f"{t}_{m.format(f'_r{r}')}" for t in ("a2", "a2w") for m in CNN for r in (0.2, 0.5, 0.8)]
    assert len(trains) == 18 + 10 + 26 and len(evals) == 19 + 10 + 26
    assert run_names(trains + evals) == set(RUNS + a1 + a2)
    assert (f"train_sparse.py --loss trades --scale 0.5 --steps 10 --init {tmp_path}/runs/a1w_dense/ckpt.pt "
            "--dataset cifar10 --arch moe_wrn28_10 --amp --channels-last --data-dir /nonexistent --eval-n 1000 "
            "--epochs 200") in out  # AT (Sparse): HYDRA prunes its table's AT (Dense); 100 + 100 epochs
    assert ("train_advmoe.py --loss trades --scale 0.2 --steps 2 --step-size 0.0196078 --dataset cifar10 "
            "--arch moe_resnet18 --amp "
            "--channels-last --data-dir /nonexistent --eval-n 1000 --epochs 100") in out
    # Tables A1 / A2: the AdvMoE code's PGD-10 beside ours
    assert f"eval.py --keep-done --ckpt {tmp_path}/runs/a1_moe/ckpt.pt --attack pgd,aa,pgd10-advmoe " in out
    assert f"eval.py --keep-done --ckpt {tmp_path}/runs/a2w_dense/ckpt.pt --attack pgd,pgd10-advmoe " in out
    assert f"python report.py cifar10 --runs {tmp_path}/runs --out {tmp_path}/runs/results" in out
    out, trains, evals = dry_run(["cifar100"], tmp_path)  # Table A2 only
    assert len(trains) == 26 and all("--dataset cifar100 --arch moe_" in line for line in trains)
    assert all(line.endswith("--data-dir /nonexistent --n 0 --aa-n 0") for line in evals), evals
    assert all("--attack pgd,pgd10-advmoe " in line for line in evals), evals
    out, trains, evals = dry_run(["imagenet"], tmp_path)
    assert len(trains) == 3 and len(evals) == 3
    assert all("--attack pgd,adaptive " in line for line in evals), evals  # Table 10: PGD, the paper's attack
    assert "--method trades --dataset imagenet --arch vit_small --pretrained" in out


@pytest.mark.parametrize("preset", ["digits", "fashion_mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet"])
def test_a_preset_makes_every_run_its_tables_read_and_no_other(tmp_path, preset):
    """report.PRESET_TABLES (what a results page shows) against the Makefile's experiment lists (what run_all makes):
    a table of the page is never left 'not run yet'; the only runs no table reads are Figure 7's alpha sweep."""
    import figures
    import report
    _, trains, evals = dry_run([preset], tmp_path)
    made = run_names(trains + evals)
    page = report.Report(preset, {}, False, "")
    read = {run for table in page.tables for run in page.runs_of(report.TABLES[table])}
    assert read <= made, sorted(read - made)
    assert made - read <= {run for _, run in figures.JTDMOE_SWEEP}, sorted(made - read)


def test_seeds_run_in_seed_folders_with_their_own_st_and_rter(tmp_path):
    out, trains, evals = dry_run([*QUICK, "--seeds", "2"], tmp_path, EVAL_N="7", AA_N="3", RESULTS_DIR="res")
    assert f"--out {tmp_path}/res --command" in out  # RESULTS_DIR, relative to where run_all was started
    runs = tmp_path / "runs"
    assert len(trains) == 36 + 20 and len(evals) == 38 + 20  # + the quick Tables A1 / A2 (r = 0.5 only)
    for line in trains:
        run = re.search(r"--out (\S+) --resume$", line).group(1)
        assert (" --seed 1 " in line) == run.endswith("-seed1") and " --seed 0" not in line, line
    jtd = [line for line in trains if "jtdmoe_a0.7-seed1 " in line]
    assert len(jtd) == 1 and f"--std={runs}/st-seed1/ckpt.pt --rob={runs}/rter-seed1/ckpt.pt" in jtd[0]
    dual = [line for line in evals if "dual_pretrained-seed1/eval " in line]
    assert len(dual) == 1 and f"--std={runs}/st-seed1/ckpt.pt --rob={runs}/rter-seed1/ckpt.pt" in dual[0]
    assert f"--out {runs}/dual_pretrained-seed1 " in dual[0]
    assert all(line.endswith("--steps 5 --aa-version quick --n 7 --aa-n 3") for line in evals), evals
    assert "--command bash run_all.sh digits --quick --seeds 2 --quick" in out


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["nope"], 2), (["digits", "--jobs", "0"], 2),
                                        (["--seeds", "0"], 2), (["--jobs"], 2), (["digits", "cifar10"], 2)])
def test_arguments(tmp_path, args, code):
    proc, _ = run_all(args, env_for(tmp_path, RUNS_DIR=str(tmp_path / "r")), tmp_path, timeout=60)
    assert proc.returncode == code, show(proc)
    if code == 0:
        assert proc.stdout.startswith("usage: bash run_all.sh") and "--seeds N" in proc.stdout
    else:
        assert one_line(proc.stderr).startswith("run_all: ")
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- run_all.sh --estimate (estimate.py)

def test_estimate_schedules_jobs_as_make_does():
    """List scheduling in the dry run's order: one slot runs the jobs back to back, two share them out, and a job
    waits for the jobs whose checkpoints it reads even where a slot is free (a dependency no job makes: done)."""
    from estimate import wall_clock
    free = [("a", 10.0, []), ("b", 10.0, []), ("c", 10.0, []), ("d", 10.0, [])]
    assert [wall_clock(free, n) for n in (1, 2, 4, 8)] == [40, 20, 10, 10] and wall_clock([], 2) == 0
    jobs = [("train st", 10.0, []), ("train rter", 20.0, []), ("train jtd", 5.0, ["train st", "train rter"]),
            ("eval st", 1.0, ["train st"])]
    assert [wall_clock(jobs, n) for n in (1, 2, 3)] == [36, 25, 25]  # jtd waits for rter (20) with a slot free at 11
    assert wall_clock([("eval st", 3.0, ["train st"])], 2) == 3


def test_estimate_scales_a_job_by_its_epochs_images_and_curve():
    from estimate import curve_evaluations, training_seconds
    assert [curve_evaluations(e, k) for e, k in ((30, 2), (31, 2), (10, 3), (1, 5), (4, 1))] == [15, 16, 4, 1, 4]
    unit = {"image": 0.002, "epoch": 0.05, "point_step": 0.0001}
    job = {"epochs": 30, "images": 1408, "eval_every": 2, "eval_points": 360, "eval_steps": 20}
    seconds = training_seconds(unit, job)
    assert seconds == pytest.approx(30 * (1408 * 0.002 + 0.05) + 15 * 360 * 20 * 0.0001)
    assert training_seconds(unit, {**job, "epochs": 60}) == pytest.approx(2 * seconds)  # twice the epochs
    bare = {**unit, "epoch": 0, "point_step": 0}
    assert training_seconds(bare, {**job, "images": 2 * 1408}) == pytest.approx(2 * training_seconds(bare, job))
    assert training_seconds(unit, {**job, "eval_points": 0}) == pytest.approx(30 * (1408 * 0.002 + 0.05))


def test_estimate_reads_the_dry_run_and_the_surviving_shares(tmp_path):
    from estimate import parse_dry_run, survival, train_key
    out, trains, evals = dry_run(["digits"], tmp_path)
    jobs, runs = parse_dry_run(out.splitlines()), tmp_path / "runs"
    assert [j["stage"] for j in jobs].count("train") == len(trains) and len(jobs) == len(trains) + len(evals)
    by = {(j["stage"], os.path.basename(j["folder"])): j for j in jobs}
    pair = [str(runs / "rter"), str(runs / "st")]
    assert sorted(by["train", "jtdmoe_a0.7"]["deps"]) == pair == sorted(by["eval", "dual_pretrained"]["deps"])
    assert by["train", "a1_sparse"]["deps"] == [str(runs / "a1_dense")] and by["train", "st"]["deps"] == []
    assert by["eval", "st"]["deps"] == [str(runs / "st")]
    # the beta sweep costs the same per step (one timed kind); the number of experts does not
    assert len({train_key(by["train", f"rter_b{b}"]) for b in (1, 3, 6, 9)}) == 1
    assert train_key(by["train", "rter_e5"]) != train_key(by["train", "rter_e3"]) != train_key(by["train", "rter"])
    at = {"sa": 97.0, "ra": 40.0, "ra_e": 50.0, "ra_r": 90.0}
    dual = {"rows": [{"alpha": 0.5, "sa": 90, "ra": 10.0, "ra_rmoe": 60.0, "ra_smoe": 20.0}]}
    reference = {"runs": {"at": {"evals": {"eval_aa": at}}, "dual": {"evals": {"eval_aa": dual}}}}
    assert [survival(reference, f"/r/{run}", "aa") for run in ("at", "at-seed2", "dual")] == [0.6, 0.6, 0.3]
    assert survival(reference, "/r/at", "adaptive") == 1.0 and survival({}, "/r/st", "aa") == 1.0  # none: all


def test_estimate_times_every_run_of_the_dry_run_and_trains_nothing(tmp_path):
    """`bash run_all.sh digits --estimate`, each kind timed a very few steps (ESTIMATE_STEPS, ESTIMATE_CUT): a row per
    run of the dry run and the totals; the runs folder never made, no checkpoint left anywhere."""
    scratch, runs = tmp_path / "tmp", tmp_path / "runs"
    scratch.mkdir()
    env = env_for(tmp_path, RUNS_DIR=str(runs), TMPDIR=str(scratch), ESTIMATE_STEPS="1", ESTIMATE_CUT="50",
                  EVAL_N="40", AA_N="10")
    def default_checkpoints():  # the repo's own runs folder: a user's finished preset may be there, untouched
        return {path: os.path.getmtime(path) for path in glob.glob(f"{HERE}/runs/digits/*/ckpt.pt")}
    before = default_checkpoints()
    proc, took = run_all(["digits", "--estimate"], env, tmp_path, timeout=900)
    print(f"estimate took {took:.0f} s")
    assert proc.returncode == 0, show(proc)
    assert not runs.exists() and not list(scratch.rglob("ckpt.pt")) and not list(scratch.glob("estimate-*"))
    assert default_checkpoints() == before
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines() if line[:2] == "| "]
    rows = {c[0]: (float(c[3].replace(",", "")), float(c[4].replace(",", ""))) for c in cells[1:]}
    _, trains, evals = dry_run(["digits"], tmp_path)
    total = rows.pop("total (job-seconds)")
    assert set(rows) == run_names(trains + evals) and rows["dual_pretrained"][0] == 0
    assert all(train > 0 for run, (train, _) in rows.items() if run != "dual_pretrained")
    assert all(evaluation > 0 for _, evaluation in rows.values()) and total[0] == pytest.approx(
        sum(train for train, _ in rows.values()), abs=len(rows))
    assert len({rows[f"rter_b{b}"] for b in (1, 3, 6, 9)}) == 1  # one kind, the same epochs: the same estimate
    out = proc.stdout.replace(",", "")
    assert "machine: " in out and "load average (uptime)" in out and "torchrun --nproc_per_node 2" in out
    walls = [float(m) for m in re.findall(r"wall clock with --jobs \d: \S+ h \(([\d.]+) s\)", out)]
    jobs = float(re.search(r"job-seconds: \S+ h \(([\d.]+) s\)", out).group(1))
    assert len(walls) == 2 and walls[0] == pytest.approx(jobs, abs=1) and jobs / 2 <= walls[1] < walls[0]


def test_estimate_refuses_a_cut_that_does_not_divide_autoattacks_iterations(tmp_path):
    proc, _ = run_all(["digits", "--estimate"], env_for(tmp_path, RUNS_DIR=str(tmp_path / "runs"), ESTIMATE_CUT="7"),
                      tmp_path, timeout=120)
    assert proc.returncode == 2 and one_line(proc.stderr).startswith("error: --cut 7 does not divide 100"), show(proc)
    assert not (tmp_path / "runs").exists()
