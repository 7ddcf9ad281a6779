"""A run's state on disk: checkpoint and log as one unit, resume that refuses changed settings, one-line failures.

Each test is written as a probe a user would make: kill -9 at random moments, a kill between the checkpoint and
the log, a torn log, a full or read-only disk, a changed flag on --resume, a second run in the same folder.
"""
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import checkpoint
import train_common as tc
import train_rter
import train_st

REPO = Path(__file__).resolve().parent
TINY = ["--dataset", "digits", "--device", "cpu", "--experts", "3", "--bs", "256", "--eval-n", "40",
        "--eval-steps", "2"]
WALL_CLOCK = ("train_seconds",)


def st(out, epochs=3, *extra):
    return [*TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def final_state(folder):
    """(weights, optimiser state, log rows without wall-clock columns) of a finished run folder."""
    ckpt = tc.load_checkpoint(str(Path(folder) / "ckpt.pt"))
    rows = [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in tc.read_log(str(Path(folder) / "log.csv"))]
    return ckpt["model"], ckpt["optimizer"], rows


def assert_same_run(a, b):
    weights_a, opt_a, rows_a = final_state(a)
    weights_b, opt_b, rows_b = final_state(b)
    assert rows_a == rows_b
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), key
    assert opt_a["opt"]["state"].keys() == opt_b["opt"]["state"].keys()
    for i, state in opt_a["opt"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["opt"]["state"][i][name])), (i, name)


def one_error_line(proc):
    """The run failed with exactly one `error:` line on stderr and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def cli(script, argv, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *argv], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch ST run that every interrupted run must end equal to."""
    out = tmp_path_factory.mktemp("reference") / "st"
    train_st.main(st(out))
    return out


class Killed(Exception):
    """Stands for a kill -9 at a chosen line of the training code."""


# ----------------------------------------------------------------------------- checkpoint and log are one unit

def test_kill_between_checkpoint_and_log_then_resume_equals_an_uninterrupted_run(reference, tmp_path, monkeypatch):
    out = tmp_path / "st"
    real_write = tc.atomic_write

    def killed_before_epoch_2_log(path, text):
        ckpt = out / "ckpt.pt"
        if path.endswith("log.csv") and ckpt.exists() and tc.load_checkpoint(str(ckpt))["epoch"] == 1:
            raise Killed
        real_write(path, text)

    with monkeypatch.context() as m:
        m.setattr(tc, "atomic_write", killed_before_epoch_2_log)
        with pytest.raises(Killed):
            train_st.main(st(out))
    assert [r["epoch"] for r in tc.read_log(str(out / "log.csv"))] == ["1"]  # epoch 2 is only in the checkpoint
    train_st.main(st(out, 3, "--resume"))
    assert [r["epoch"] for r in tc.read_log(str(out / "log.csv"))] == ["1", "2", "3"]
    assert_same_run(out, reference)


def test_torn_log_is_rewritten_from_the_checkpoint(reference, tmp_path, capsys):
    out = tmp_path / "st"
    train_st.main(st(out))
    log = out / "log.csv"
    text = log.read_text()
    log.write_text(text[: len(text) - 9])  # cut mid-row, as a kill or a full disk would
    train_st.main(st(out, 3, "--resume"))
    assert "did not match the checkpoint" in capsys.readouterr().out
    assert_same_run(out, reference)
    log.write_text(text.splitlines()[0] + "\n")  # rows lost altogether: the same repair
    train_st.main(st(out, 3, "--resume"))
    assert_same_run(out, reference)


def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Kill -9 a random fraction of a second after epochs 1, 3, 5 are logged (mid-epoch, mid-save, mid-evaluation
    alike, on a fast or a slow machine), resume each time: the end equals an uninterrupted run."""
    argv = [*TINY, "--bs", "128", "--epochs", "8", "--out"]
    clean = cli("train_st.py", [*argv, str(tmp_path / "clean")])
    assert clean.returncode == 0, clean.stderr
    out, rng, kills = tmp_path / "killed", random.Random(0), 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for kill_after in (1, 3, 5, None):
        proc = subprocess.Popen([sys.executable, "train_st.py", *argv, str(out), "--resume"], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while kill_after and proc.poll() is None and len(tc.read_log(str(out / "log.csv"))) < kill_after:
            time.sleep(0.01)
        if kill_after and proc.poll() is None:
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            kills += 1
        assert proc.wait(timeout=300) in ((-signal.SIGKILL, 0) if kill_after else (0,)), proc.stderr.read()
    assert kills == 3
    assert not list(out.glob("*.tmp*"))
    assert_same_run(out, tmp_path / "clean")


# ----------------------------------------------------------------------------- resume refuses changed settings

@pytest.mark.parametrize("flags, named", [
    (["--beta", "3"], ["beta=6.0", "beta=3.0"]),
    (["--eps", "0.1", "--kl-attack", "shared"], ["eps=0.15", "kl_attack='separate'", "eps=0.1", "kl_attack='shared'"]),
    (["--seed", "1"], ["seed=0", "seed=1"]),
    (["--lr", "0.01"], ["lr=0.001", "lr=0.01"]),
])
def test_resume_with_changed_settings_is_refused_naming_each(tmp_path_factory, flags, named):
    out = tmp_path_factory.getbasetemp() / "rter_for_resume"
    if not (out / "ckpt.pt").exists():
        train_rter.main([*TINY, "--epochs", "1", "--steps", "1", "--out", str(out)])
    args_before = (out / "args.json").read_text()
    line = one_error_line(cli("train_rter.py", [*TINY, "--epochs", "2", "--steps", "1", "--out", str(out), "--resume",
                                                *flags]))
    assert "--resume" in line and all(n in line for n in named), line
    assert (out / "args.json").read_text() == args_before  # the run's record is untouched


def test_jtdmoe_resume_with_another_alpha_is_refused(tmp_path):
    std, rob, out = tmp_path / "st", tmp_path / "rter", tmp_path / "jtd"
    train_st.main(st(std, 1))
    train_rter.main([*TINY, "--epochs", "1", "--steps", "1", "--out", str(rob)])
    argv = ["--std", str(std / "ckpt.pt"), "--rob", str(rob / "ckpt.pt"), *TINY, "--steps", "1", "--epochs", "1",
            "--out", str(out)]
    assert cli("train_jtdmoe.py", argv).returncode == 0
    line = one_error_line(cli("train_jtdmoe.py", [*argv, "--epochs", "2", "--resume", "--alpha", "0.9"]))
    assert "alpha=0.7" in line and "alpha=0.9" in line


def test_resume_with_more_epochs_is_recorded_truthfully(tmp_path):
    out = tmp_path / "st"
    train_st.main(st(out, 1))
    train_st.main(st(out, 2, "--resume", "--eval-every", "2"))
    saved = tc.load_checkpoint(str(out / "ckpt.pt"))["args"]
    assert saved["epochs"] == 2 and saved["eval_every"] == 2
    assert saved["resumed"] == [{"after_epoch": 1, "changed": {"epochs": [1, 2], "eval_every": [1, 2]}}]
    assert '"resumed"' in (out / "args.json").read_text()


# ----------------------------------------------------------------------------- a folder holds one run

def test_a_second_run_in_the_same_folder_is_refused_unless_resume_or_overwrite(tmp_path):
    out = tmp_path / "st"
    train_st.main(st(out, 1))
    (out / "eval_pgd.json").write_text("{}")
    before = (out / "ckpt.pt").read_bytes()
    line = one_error_line(cli("train_st.py", st(out, 1, "--seed", "3")))
    assert "holds another run" in line and "--resume" in line and "--overwrite" in line
    assert (out / "ckpt.pt").read_bytes() == before
    assert cli("train_st.py", st(out, 1, "--seed", "3", "--overwrite")).returncode == 0
    assert tc.load_checkpoint(str(out / "ckpt.pt"))["args"]["seed"] == 3
    assert not (out / "eval_pgd.json").exists()  # it described the replaced run


def test_training_on_in_a_folder_drops_its_stale_evaluations(tmp_path):
    out = tmp_path / "st"
    train_st.main(st(out, 1))
    (out / "eval_pgd.json").write_text("{}")
    train_st.main(st(out, 1, "--resume"))  # finished: nothing trains, the evaluation still holds
    assert (out / "eval_pgd.json").exists()
    train_st.main(st(out, 2, "--resume"))
    assert not (out / "eval_pgd.json").exists()


def test_a_run_in_progress_keeps_a_second_process_out(tmp_path):
    out = tmp_path / "st"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert "another process is training" in one_error_line(cli("train_st.py", st(out, 1)))
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_start_leaves_no_folder(tmp_path):
    out = tmp_path / "never"
    one_error_line(cli("train_st.py", st(out, 1, "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"))))
    assert not out.exists()


# ----------------------------------------------------------------------------- the disk fails

def test_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "st"
    real_save = torch.save

    def disk_full_at_epoch_2(obj, path):
        if isinstance(obj, dict) and obj.get("epoch") == 1:
            Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
        real_save(obj, path)

    monkeypatch.setattr(sys, "argv", ["train_st.py", *st(out)])
    with monkeypatch.context() as m:
        m.setattr(checkpoint.torch, "save", disk_full_at_epoch_2)
        with pytest.raises(SystemExit) as exit_:
            tc.cli(train_st.main)
    assert exit_.value.code != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: could not write") and "ckpt.pt" in err[0], err
    assert tc.load_checkpoint(str(out / "ckpt.pt"))["epoch"] == 0  # the last good checkpoint is whole
    assert not list(out.glob("*.tmp*"))
    train_st.main(st(out, 3, "--resume"))  # space is back
    assert_same_run(out, reference)


def test_stale_temporary_files_are_removed_on_resume(tmp_path):
    out = tmp_path / "st"
    train_st.main(st(out, 1))
    (out / "ckpt.pt.tmp4242").write_bytes(b"left by a kill during a save")
    train_st.main(st(out, 2, "--resume"))
    assert not list(out.glob("*.tmp*"))


@pytest.mark.parametrize("where", ["read_only", "under_a_file"])
def test_an_unwritable_out_is_one_line(tmp_path, monkeypatch, capsys, where):
    if where == "under_a_file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    else:
        out = tmp_path / "ro" / "run"

        def read_only(path, *a, **k):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        monkeypatch.setattr(tc.os, "makedirs", read_only)
    monkeypatch.setattr(sys, "argv", ["train_st.py", *st(out, 1)])
    with pytest.raises(SystemExit) as exit_:
        tc.cli(train_st.main)
    assert exit_.value.code != 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and str(out) in err[0], err


# ----------------------------------------------------------------------------- bad flags

@pytest.mark.parametrize("flags, says", [
    (["--eps", "2"], "--eps"), (["--eps", "nan"], "--eps"), (["--balance", "nan"], "--balance"),
    (["--beta", "nan"], "--beta"), (["--beta", "-1"], "--beta"), (["--lr", "inf"], "--lr"),
    (["--betta", "6"], "--betta"), (["--epochs", "0"], "--epochs"), (["--eval-n", "-5"], "--eval-n"),
    (["--kl-attack", "bogus"], "--kl-attack"), (["--resume", "--overwrite"], "--overwrite"),
])
def test_bad_flags_are_one_line(tmp_path, flags, says):
    out = tmp_path / "rter"
    line = one_error_line(cli("train_rter.py", [*TINY, "--epochs", "1", "--out", str(out), *flags]))
    assert says in line, line
    assert not out.exists()
