"""DDP through torchrun (gloo on CPU): two processes train one digits epoch and end with identical weights."""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SAVE_EACH_RANK = """
import os, sys, torch, train_st
model = train_st.main(sys.argv[1:])
torch.save(model.state_dict(), os.path.join(sys.argv[sys.argv.index("--out") + 1], f"rank{os.environ['RANK']}.pt"))
"""


def test_ddp_ranks_stay_in_sync(tmp_path):
    script = tmp_path / "each_rank.py"
    script.write_text(SAVE_EACH_RANK)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(script), "--epochs", "1", "--bs", "128", "--eval-n", "40", "--eval-steps", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": HERE, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = torch.load(out / "rank0.pt", weights_only=True)
    rank1 = torch.load(out / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert torch.load(out / "ckpt.pt", weights_only=True)["epoch"] == 0 and (out / "log.csv").exists()
