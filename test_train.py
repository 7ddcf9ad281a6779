"""The train_*.py scripts: what a run writes, the checkpoint format, exact resume after an interruption,
extending a finished run, log columns, the divergence guard, every parameter trained, AdvMoE's two steps,
JTDMoE's lower / upper steps, every method's command line and bad flags."""
import csv
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import data
import moe
import train_advmoe
import train_at
import train_common as tc
import train_jtdmoe
import train_sparse
import train_st
from conftest import (BAD_JTDMOE, BAD_TRAIN, QUICK, TINY, assert_refused, changed, snapshot,
                      start_when_selected, succeeded, the_error_line, tiny_argv)


@pytest.fixture(scope="module", autouse=True)
def start_cli_runs_first(request):
    """This file's CLI subprocesses start before its first test and run beside the in-process tests."""
    start_when_selected(request, "train_cli")


def read_log(out):
    with open(Path(out) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- what an ST run writes

def test_st_run_writes_args_log_and_checkpoint(st_run):
    # the lock file stays (it is how a second process is refused); no temporary file may stay
    assert sorted(p.name for p in st_run.iterdir()) == [".lock", "args.json", "ckpt.pt", "log.csv"]
    args = json.loads((st_run / "args.json").read_text())
    assert args["dataset"] == "digits" and args["epochs"] == 2 and args["method"] == "st"
    assert args["arch"] == "cnn" and args["experts"] == 4 and args["topk"] == 1
    assert args["eps"] == data.dataset_info("digits").eps
    rows = read_log(st_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert {"loss", "lr", "sa", "ra", "usage_0", "usage_1", "usage_2", "usage_3"} <= set(r)
        assert None not in r, "a row has more fields than the header"
        assert math.isfinite(float(r["loss"]))
        assert 0 <= float(r["ra"]) <= float(r["sa"]) <= 100
        assert abs(sum(float(r[f"usage_{i}"]) for i in range(4)) - 1) < 1e-3
    assert float(rows[1]["loss"]) < math.log(10) + 0.05  # it learned something (chance CE is log 10)


def test_checkpoint_format(st_run):
    ckpt = torch.load(st_run / "ckpt.pt", map_location="cpu", weights_only=True)
    assert {"model", "args", "epoch", "optimizer", "scheduler", "rng", "metrics", "log"} <= set(ckpt)
    assert set(ckpt["optimizer"]) == set(ckpt["scheduler"]) == {"opt"}
    assert ckpt["epoch"] == 1  # 0-based index of the last finished epoch
    assert ckpt["metrics"]["epoch"] == 2 and "sa" in ckpt["metrics"]
    # the log travels inside the checkpoint: log.csv is exactly what it holds
    assert ckpt["log"][-1] == ckpt["metrics"] and [r["epoch"] for r in ckpt["log"]] == [1, 2]
    assert (st_run / "log.csv").read_bytes() == tc.log_csv(ckpt["log"]).encode()
    model = tc.build_model_from_args(ckpt["args"])
    model.load_state_dict(ckpt["model"])  # strict
    model2, _ = tc.model_from_checkpoint(str(st_run / "ckpt.pt"))
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])


def test_checkpoint_of_another_architecture_is_refused(st_run):
    state = torch.load(st_run / "ckpt.pt", map_location="cpu", weights_only=True)["model"]
    for other in (moe.build_moe("cnn", 3, 1, 10, (1, 8, 8)), moe.build_moe("resnet18", 4, 1, 10, (1, 8, 8))):
        with pytest.raises(ValueError, match="another architecture") as err:
            tc.load_weights(other, state, "x.pt")
        assert "\n" not in str(err.value)


def test_resume_with_other_model_flags_is_refused(st_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(st_run, out)
    saved = (out / "ckpt.pt").read_bytes()
    with pytest.raises(ValueError, match="experts") as err:
        train_st.main(tiny_argv(out, 3, "--experts", "3", "--resume"))
    assert "experts=4" in str(err.value) and "experts=3" in str(err.value)  # what it was, what was asked
    assert (out / "ckpt.pt").read_bytes() == saved


# ----------------------------------------------------------------------------- exact resume

def same_rows(row_a, row_b):
    return {k: v for k, v in row_a.items() if k != "train_seconds"} == \
           {k: v for k, v in row_b.items() if k != "train_seconds"}


def assert_same_final_state(dir_a, dir_b):
    a = torch.load(Path(dir_a) / "ckpt.pt", map_location="cpu", weights_only=True)
    b = torch.load(Path(dir_b) / "ckpt.pt", map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, st in a["optimizer"]["opt"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b["optimizer"]["opt"]["state"][k][name]), (k, name)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def assert_same_log(ref_dir, got_dir):
    ref, got = read_log(ref_dir), read_log(got_dir)
    assert [r["epoch"] for r in got] == ["1", "2"]
    assert got[1]["loss"] == ref[1]["loss"] and got[1]["sa"] == ref[1]["sa"]
    assert same_rows(got[0], ref[0]) and same_rows(got[1], ref[1])


class Interrupted(Exception):
    pass


def test_resume_after_interruption_is_exact(st_run, tmp_path, monkeypatch):
    """Stop a 2-epoch run right after epoch 1 is saved and logged; --resume must finish it bit-exactly."""
    end_epoch = tc.Run.end_epoch

    def end_epoch_then_stop(self, epoch):
        row = end_epoch(self, epoch)
        if row["epoch"] == 1:
            raise Interrupted
        return row

    with monkeypatch.context() as m:
        m.setattr(tc.Run, "end_epoch", end_epoch_then_stop)
        with pytest.raises(Interrupted):
            train_st.main(tiny_argv(tmp_path, 2))
    assert len(read_log(tmp_path)) == 1
    train_st.main(tiny_argv(tmp_path, 2, "--resume"))
    assert_same_log(st_run, tmp_path)
    assert_same_final_state(st_run, tmp_path)


def test_resume_extends_a_finished_run_exactly(tmp_path):
    """Run 2 epochs in A; run 1 epoch in B, then --epochs 2 --resume: the same epoch-2 row and weights.

    Uses --sched const: with the default cyclic schedule the learning rate of epoch 1 depends on --epochs,
    so a 1-epoch run and a 2-epoch run differ before any resume happens.
    """
    a, b = tmp_path / "a", tmp_path / "b"
    train_st.main(tiny_argv(a, 2, "--sched", "const"))
    train_st.main(tiny_argv(b, 1, "--sched", "const"))
    assert len(read_log(b)) == 1
    train_st.main(tiny_argv(b, 2, "--sched", "const", "--resume"))
    assert_same_log(a, b)
    assert_same_final_state(a, b)
    assert json.loads((b / "args.json").read_text())["epochs"] == 2


def test_log_keeps_columns_when_evaluating_every_other_epoch(tmp_path):
    """--eval-every 2: epoch 1 has no sa/ra, epoch 2 has them; log.csv must still be a well-formed table."""
    train_st.main(tiny_argv(tmp_path, 2, "--eval-every", "2", bs=512))
    rows = read_log(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert None not in r, f"row with more fields than the header: {r}"
    assert rows[0]["sa"] == "" and rows[0]["ra"] == ""
    assert rows[1].get("sa") not in (None, "") and rows[1].get("ra") not in (None, "")
    assert float(rows[1]["ra"]) <= float(rows[1]["sa"])


def test_every_sitting_records_its_machine_and_an_evaluation_its_own(tmp_path):
    """args.json keeps each sitting's machine (CPU kernels and thread count change the bits); eval JSON its own."""
    import eval as ev
    out, threads = tmp_path / "run", torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train_st.main(tiny_argv(out, 1, bs=512))
        torch.set_num_threads(1)
        train_st.main(tiny_argv(out, 2, "--resume", bs=512))
        torch.set_num_threads(2)
        result = ev.main(["--ckpt", str(out / "ckpt.pt"), "--n", "10", "--steps", "1"])["pgd"]
    finally:
        torch.set_num_threads(threads)
    args = json.loads((out / "args.json").read_text())
    assert [(m["from_epoch"], m["threads"]) for m in args["machines"]] == [(1, 2), (2, 1)]
    assert args["machine"] == {k: v for k, v in args["machines"][-1].items() if k != "from_epoch"}
    assert args["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert args["machine"]["torch"] == torch.__version__
    assert tc.load_checkpoint(str(out / "ckpt.pt"))["args"]["machines"] == args["machines"]
    saved = json.loads((out / "eval_pgd.json").read_text())
    assert saved["machine"] == {**args["machine"], "threads": 2} and saved["machine"] == result["machine"]


# ----------------------------------------------------------------------------- the divergence guard

def nan_loss_after(monkeypatch, good_calls, value=float("nan")):
    """train_st's loss turns `value` after good_calls good batches."""
    real, calls = train_st.st_loss, []

    def fake(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return torch.tensor(value, requires_grad=True) if len(calls) > good_calls else loss

    monkeypatch.setattr(train_st, "st_loss", fake)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_loss_stops_the_run_naming_the_last_checkpoint(tmp_path, monkeypatch, value):
    nan_loss_after(monkeypatch, 2, value)  # --bs 512: 2 steps per epoch, so epoch 2 step 1 goes bad
    with pytest.raises(tc.Divergence) as err:
        train_st.main(tiny_argv(tmp_path, 3, bs=512))
    msg = str(err.value)
    assert "epoch 2, step 1" in msg and str(tmp_path / "ckpt.pt") in msg and "(epoch 1)" in msg
    info = json.loads((tmp_path / "diverged.json").read_text())
    assert info["epoch"] == 2
    ckpt = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert len(read_log(tmp_path)) == 1


def test_nonfinite_loss_before_any_checkpoint(tmp_path, monkeypatch):
    nan_loss_after(monkeypatch, 1)
    with pytest.raises(tc.Divergence, match="no checkpoint was written yet"):
        train_st.main(tiny_argv(tmp_path, 1, bs=512))
    assert (tmp_path / "diverged.json").exists() and not (tmp_path / "ckpt.pt").exists()


def test_nonfinite_loss_cli_is_one_line_and_exit_3(tmp_path, monkeypatch, capsys):
    nan_loss_after(monkeypatch, 2)
    monkeypatch.delenv("MOE_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["train_st.py", *tiny_argv(tmp_path, 2, bs=512)])
    with pytest.raises(SystemExit) as exit_:
        tc.cli(train_st.main)
    assert exit_.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert str(tmp_path / "ckpt.pt") in err[0] and "step" in err[0]


def test_divergence_before_any_checkpoint_cli(train_cli):
    proc = train_cli.procs["diverge_fresh"].result()
    out = train_cli.tmp / "diverge_fresh"
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    line = the_error_line(proc)
    assert "epoch 1, step 1" in line and "no checkpoint" in line, line
    info = json.loads((out / "diverged.json").read_text())
    assert info["epoch"] == 1 and "step 1" in info["message"]
    assert not (out / "ckpt.pt").exists()


def test_divergence_names_the_last_good_checkpoint_and_keeps_it_cli(train_cli):
    proc = train_cli.procs["diverge_resume"].result()
    out = train_cli.tmp / "diverge_resume"
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    line = the_error_line(proc)
    assert "epoch 2, step 1" in line and str(out / "ckpt.pt") in line, line
    info = json.loads((out / "diverged.json").read_text())
    assert info["epoch"] == 2 and "step 1" in info["message"]
    assert (out / "ckpt.pt").read_bytes() == train_cli.good_ckpt, "the last good checkpoint must stay as it was"


# ----------------------------------------------------------------------------- AdvMoE and JTDMoE loops

def test_a_refused_start_leaves_no_run_behind(tmp_path, st_run, monkeypatch):
    """A refused --init claims nothing, and a start that failed before its first epoch ended holds no run: the same
    command, corrected, then trains without --overwrite."""
    cnn = [*QUICK, "--arch", "moe_cnn", "--scale", "0.5"]
    out = tmp_path / "sparse"
    with pytest.raises(ValueError, match="not a dense full-width network"):
        train_sparse.main([*cnn, "--epochs", "2", "--init", str(st_run / "ckpt.pt"), "--out", str(out)])
    assert not out.exists() or not [p for p in out.iterdir() if p.name != ".lock"]
    train_at.main([*cnn, "--method", "at", "--experts", "1", "--scale", "1", "--out", str(tmp_path / "dense")])
    train_sparse.main([*cnn, "--epochs", "2", "--init", str(tmp_path / "dense" / "ckpt.pt"), "--out", str(out)])
    assert len(read_log(out)) == 2

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(tc.Run, "update", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError):
        train_st.main(tiny_argv(crashed, 1))
    assert (crashed / "args.json").exists() and not (crashed / "ckpt.pt").exists()
    monkeypatch.undo()
    train_st.main(tiny_argv(crashed, 1))
    assert len(read_log(crashed)) == 1


def initial_state(monkeypatch):
    """{parameter name: value} of the model as run.start receives it (before the first step), filled when it runs."""
    seen, start = {}, tc.Run.start

    def spy(self, model, *args, **kwargs):
        seen.update({k: v.detach().clone() for k, v in model.named_parameters()})
        return start(self, model, *args, **kwargs)
    monkeypatch.setattr(tc.Run, "start", spy)
    return seen


@pytest.mark.parametrize("method", ["at", "trades"])
def test_at_and_trades_optimise_every_parameter_the_router_too(method, tmp_path, monkeypatch):
    before = initial_state(monkeypatch)
    model = train_at.main([*TINY, "--method", method, "--epochs", "1", "--bs", "400", "--out", str(tmp_path)])
    params = dict(model.named_parameters())
    ckpt = tc.load_checkpoint(str(tmp_path / "ckpt.pt"))
    assert len(ckpt["optimizer"]["opt"]["param_groups"][0]["params"]) == len(params)
    moved = {k for k, v in params.items() if not torch.equal(v.detach(), before[k])}
    assert {k for k in params if k.startswith("router.")} <= moved, "the router did not train"
    assert any(k.startswith("experts.") for k in moved)


def test_advmoe_steps_backbone_then_router_on_every_batch_from_two_shuffles(tmp_path, monkeypatch):
    """Per batch a backbone step (router fixed) then a router step (backbone fixed) on another batch of the same
    epoch's second shuffle: the backbone gets as many updates as AT (MoE)."""
    record, batches = [], []
    update, batches_of = tc.Run.update, tc.Run.batches

    def spy_batches(self, epoch):
        for x, y in batches_of(self, epoch):
            batches.append(x)
            yield x, y

    def spy(self, loss, model, *optimizers, name="loss"):
        router, backbone = snapshot(model.router), snapshot(model.experts)
        value = update(self, loss, model, *optimizers, name=name)
        part = {id(o): k for k, o in self.optimizers.items()}[id(optimizers[0])]
        record.append((self.epoch, name, part, any(changed(router, model.router)),
                       any(changed(backbone, model.experts))))
        return value

    losses_seen = []
    trades = train_at.trades_loss

    def spy_loss(model, x, y, *args):
        losses_seen.append(x)
        return trades(model, x, y, *args)

    monkeypatch.setattr(tc.Run, "update", spy)
    monkeypatch.setattr(tc.Run, "batches", spy_batches)
    monkeypatch.setattr(train_at, "trades_loss", spy_loss)
    model = train_advmoe.main([*TINY, "--epochs", "2", "--bs", "400", "--experts", "3", "--eval-every", "2",
                               "--out", str(tmp_path)])
    per_epoch = len(data.load_digits_split()[0]) // 400
    assert len(record) == 2 * 2 * per_epoch and len(batches) == 2 * per_epoch
    for i, (epoch, name, part, router_moved, backbone_moved) in enumerate(record):
        if i % 2 == 0:
            assert (name, part) == ("loss", "backbone") and backbone_moved and not router_moved, record
        else:
            assert (name, part) == ("router_loss", "router") and router_moved and not backbone_moved, record
    assert len(losses_seen) == len(record), "AdvMoE's default loss is TRADES, on both steps"
    for step, x in enumerate(batches):  # the router's batch is a batch of another shuffle, not the backbone's
        assert losses_seen[2 * step] is x and not torch.equal(losses_seen[2 * step + 1], x)
    ckpt = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    assert set(ckpt["optimizer"]) == {"router", "backbone"} and ckpt["args"]["loss"] == "trades"
    assert isinstance(model, moe.MoE) and "router_loss" in read_log(tmp_path)[0]


@pytest.mark.parametrize("upper", ["std", "both"])
def test_jtdmoe_lower_and_upper_steps_touch_the_right_moe(upper, ckpts, tmp_path, monkeypatch):
    """Lower: RT-ER on F_R, only F_R moves. Upper: CE(F_D(x), y) on the clean batch; --upper std moves only
    F_S, --upper both moves both."""
    calls, rter_models, batches = [], [], []
    batches_of, update, rter_loss = tc.Run.batches, tc.Run.update, train_jtdmoe.rter_loss

    def spy_batches(self, epoch):
        for x, y in batches_of(self, epoch):
            batches.append((x, y))
            yield x, y

    def spy_update(self, loss, dual, *optimizers, name="loss"):
        if name == "loss":  # the upper loss is the clean CE of the dual model as it is after the lower step
            x, y = batches[-1]
            with torch.no_grad():
                clean_ce = F.cross_entropy((1 - dual.alpha) * dual.std(x) + dual.alpha * dual.rob(x), y)
            assert math.isclose(loss.item(), clean_ce.item(), rel_tol=1e-5, abs_tol=1e-6)
        before = {k: snapshot(getattr(dual, k)) for k in ("std", "rob")}
        value = update(self, loss, dual, *optimizers, name=name)
        calls.append((name, {k: any(changed(before[k], getattr(dual, k))) for k in ("std", "rob")}))
        return value

    def spy_rter(model, x, y, **settings):
        rter_models.append(model)
        assert x is batches[-1][0] and y is batches[-1][1]
        return rter_loss(model, x, y, **settings)

    monkeypatch.setattr(tc.Run, "batches", spy_batches)
    monkeypatch.setattr(tc.Run, "update", spy_update)
    monkeypatch.setattr(train_jtdmoe, "rter_loss", spy_rter)
    dual = train_jtdmoe.main(["--std", str(ckpts["st"]), "--rob", str(ckpts["rter"]), *QUICK,
                              "--alpha", "0.7", "--upper", upper, "--out", str(tmp_path)])
    n = len(data.load_digits_split()[0]) // 512
    assert len(batches) == n >= 2 and len(calls) == 2 * n
    assert len(rter_models) == n and all(m is dual.rob for m in rter_models), "the lower step is RT-ER on F_R"
    assert [name for name, _ in calls] == ["lower_loss", "loss"] * n, "per batch a lower step, then an upper one"
    lower, upper_calls = [moved for _, moved in calls[0::2]], [moved for _, moved in calls[1::2]]
    assert all(c == {"std": False, "rob": True} for c in lower), calls
    expect = {"std": True, "rob": upper == "both"}
    assert all(c == expect for c in upper_calls), calls
    # after the run both MoEs differ from where they started (with --upper std, F_R through the lower step)
    for key, part in (("st", dual.std), ("rter", dual.rob)):
        start = torch.load(ckpts[key], map_location="cpu", weights_only=True)["model"]
        assert any(not torch.equal(start[k], v) for k, v in part.state_dict().items()), key
    saved = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    assert saved["args"]["upper"] == upper and set(saved["optimizer"]) == {"lower", "upper"}


# ----------------------------------------------------------------------------- the command lines

@pytest.mark.parametrize("name,method", [("at", "at"), ("trades", "trades"), ("advmoe", "advmoe"),
                                         ("rter", "rter"), ("jtdmoe", "jtdmoe")])
def test_train_cli_writes_checkpoint_and_log(train_cli, name, method):
    succeeded(train_cli.procs, name)
    out = train_cli.tmp / name
    rows = read_log(out)
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert math.isfinite(float(rows[0]["loss"])) and 0 <= float(rows[0]["sa"]) <= 100
    ckpt = tc.load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["args"]["method"] == method and ckpt["epoch"] == 0
    model, _ = tc.model_from_checkpoint(str(out / "ckpt.pt"))
    if name == "jtdmoe":
        assert isinstance(model, moe.DualMoE) and model.alpha == 0.7 and ckpt["args"]["kind"] == "dual"
        assert set(ckpt["optimizer"]) == {"lower", "upper"} and "lower_loss" in rows[0]
    else:
        assert isinstance(model, moe.MoE)
    if name == "advmoe":
        assert set(ckpt["optimizer"]) == {"router", "backbone"}
    if name == "rter":
        a = ckpt["args"]
        assert (a["beta"], a["kl_experts"], a["kl_attack"], a["second_on"]) == (6.0, "second", "separate", "clean")


@pytest.mark.parametrize("name", [*BAD_TRAIN, *BAD_JTDMOE])
def test_bad_input_gives_one_line_error(train_cli, name):
    assert_refused(train_cli.procs[name].result(), {**BAD_TRAIN, **BAD_JTDMOE}[name][2])
    assert not (train_cli.tmp / name / "ckpt.pt").exists()

