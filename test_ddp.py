"""DDP through torchrun (gloo on CPU): two processes train one digits epoch through DistributedDataParallel and end
with identical weights, the weights of one process averaging the two half-batches' gradients by hand, and an
evaluation sharded over both that covers every test point once and equals a one-process evaluation."""
import os
import subprocess
import sys

import pytest
import torch

import data
import train_common as tc
from moe import st_loss

HERE = os.path.dirname(os.path.abspath(__file__))
ARGV = ["--epochs", "1", "--bs", "128", "--eval-n", "40", "--eval-steps", "2", "--no-channels-last"]
EACH_RANK = """
import os, sys, torch, train_st, train_common as tc
model = train_st.main(sys.argv[1:])
out, rank = sys.argv[sys.argv.index("--out") + 1], os.environ["RANK"]
torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
run = tc.Run(tc.parse_args(tc.base_parser("", "st"), sys.argv[1:]))  # joins the same process group
points = run.evaluate_points(model, bs=16)  # 3 batches: rank 0 attacks two, rank 1 one
torch.save(points, os.path.join(out, f"points{rank}.pt"))
"""


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    script, out = tmp_path / "each_rank.py", tmp_path / "run"
    script.write_text(EACH_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(script), *ARGV, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": HERE, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_ddp_ranks_stay_in_sync_and_write_one_run(two_processes):
    out = two_processes
    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert torch.load(out / "ckpt.pt", weights_only=True)["epoch"] == 0
    assert len((out / "log.csv").read_text().splitlines()) == 2  # header and epoch 1, written once


def reference_weights(argv):
    """What two processes compute, in one: per global batch, each half's loss and gradients, averaged, one step."""
    args = tc.parse_args(tc.base_parser("", "st"), argv)
    torch.manual_seed(args.seed)  # rank 0's seed: DDP starts both processes from rank 0's weights
    info = data.dataset_info(args.dataset)
    train, _ = data.load_dataset(args.dataset)
    model = tc.build_model_from_args(vars(args))
    halves = [data.train_loader(train, info, args.bs, torch.device("cpu"), args.seed, True, 0, rank, 2)
              for rank in (0, 1)]
    opt = tc.make_optimizer(model.parameters(), args)
    sched = tc.make_scheduler(opt, args, len(halves[0]))
    model.train()
    for batches in zip(*halves):
        grads = []
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            st_loss(model, x, y, args.balance).backward()
            grads.append([p.grad for p in model.parameters()])
        for p, g0, g1 in zip(model.parameters(), *grads):  # an expert no row of either half reached: no gradient
            p.grad = None if g0 is None and g1 is None else ((g0 if g0 is not None else 0) + (
                g1 if g1 is not None else 0)) / 2
        opt.step()
        sched.step()
    return model.state_dict()


def test_ddp_reaches_the_weights_of_gradients_averaged_by_hand(two_processes):
    ddp = torch.load(two_processes / "rank0.pt", weights_only=True)
    reference = reference_weights(ARGV)
    for k in reference:
        torch.testing.assert_close(ddp[k], reference[k], rtol=1e-4, atol=1e-5, msg=k)


def test_sharded_evaluation_covers_every_point_once_and_equals_one_process(two_processes):
    clean, robust = torch.load(two_processes / "points0.pt", weights_only=True)
    assert len(clean) == len(robust) == 40
    assert torch.equal(torch.load(two_processes / "points1.pt", weights_only=True)[1], robust)  # gathered on both
    run = tc.Run(tc.parse_args(tc.base_parser("", "st"), ARGV + ["--out", str(two_processes)]))
    model = tc.build_model_from_args(vars(run.args))
    model.load_state_dict(torch.load(two_processes / "rank0.pt", weights_only=True))
    one_clean, one_robust = run.evaluate_points(model, bs=16)
    assert torch.equal(one_clean, clean) and torch.equal(one_robust, robust)
    assert robust.sum() < clean.sum() or clean.sum() == 0  # the attack did something (RA <= SA, here below)
