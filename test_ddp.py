"""DDP through torchrun (gloo on CPU): two processes train one digits epoch through DistributedDataParallel and end
with identical weights, the weights of one process averaging the two half-batches' gradients by hand, an
evaluation sharded over both that covers every test point once and equals a one-process evaluation, and every
collective handed tensors on the run's device, as NCCL demands."""
import json
import os
import subprocess
import sys

import pytest
import torch

import data
import train_common as tc
from moe import st_loss

HERE = os.path.dirname(os.path.abspath(__file__))
# --device cpu: gloo even where a GPU is visible (the backend follows the run's device)
ARGV = ["--epochs", "1", "--bs", "128", "--eval-n", "40", "--eval-steps", "2", "--no-channels-last", "--device", "cpu"]
EACH_RANK = """
import json, os, sys, torch, torch.distributed as dist, train_st, train_common as tc
out, rank = sys.argv[sys.argv.index("--out") + 1], os.environ["RANK"]
handed = []  # [name, device of each tensor handed over] per collective train_common calls (DDP's own are C++)

def recorded(name, collective):
    def call(*args, **kwargs):
        given = [t for a in (*args, *kwargs.values()) for t in (a if isinstance(a, list) else [a])]
        handed.append([name, [str(t.device) for t in given if isinstance(t, torch.Tensor)]])
        return collective(*args, **kwargs)
    return call

for name in ("all_reduce", "reduce", "broadcast", "all_gather", "all_gather_into_tensor", "gather", "scatter",
             "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single", "all_gather_object",
             "broadcast_object_list", "gather_object", "scatter_object_list", "barrier"):
    setattr(dist, name, recorded(name, getattr(dist, name)))

def meta_by_default(method):
    # beside a GPU run a tensor made without the run's device lands on the CPU, which NCCL refuses; here it lands
    # on 'meta', which the record tells from the run's cpu
    def call(*args, **kwargs):
        with torch.device("meta"):
            return method(*args, **kwargs)
    return call

tc.Run.end_epoch, tc.Run.evaluate_points = meta_by_default(tc.Run.end_epoch), meta_by_default(tc.Run.evaluate_points)
try:
    model = train_st.main(sys.argv[1:])
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    run = tc.Run(tc.parse_args(tc.base_parser("", "st"), sys.argv[1:]))  # joins the same process group
    points = run.evaluate_points(model, bs=16)  # 3 batches: rank 0 attacks two, rank 1 one
    torch.save(points, os.path.join(out, f"points{rank}.pt"))
finally:  # a crash after a refused tensor still leaves the record
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"collectives{rank}.json"), "w") as f:
        json.dump(handed, f)
"""


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    script, out = tmp_path / "each_rank.py", tmp_path / "run"
    script.write_text(EACH_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(script), *ARGV, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": HERE, "OMP_NUM_THREADS": "1"}
    return out, subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def two_processes(launched):
    out, proc = launched
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_collective_is_handed_tensors_on_the_run_device(launched):
    """NCCL refuses a tensor off its GPU ('No backend type associated with device type cpu'): every tensor handed to
    a collective must be on the run's device (cpu here), not wherever a tensor made without a device lands."""
    out, proc = launched
    for rank in (0, 1):
        handed = json.loads((out / f"collectives{rank}.json").read_text())
        refused = [(name, devices) for name, devices in handed if any(d != "cpu" for d in devices)]
        assert not refused, f"rank {rank}: collectives handed tensors off the run's cpu: {refused}"
        names = {name for name, _ in handed}  # the record saw the epoch's end and the sharded evaluation
        assert {"all_reduce", "all_gather_object", "barrier"} <= names, (handed, proc.stderr[-3000:])


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
