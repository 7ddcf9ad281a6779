"""bench.py end to end on the small CNN: it runs, and its JSON carries finite positive ratios (no timing goals) and
host syncs per step; its sync counter on each op; gpu_check.py's quick mode end to end on a CPU."""
import json
import math
import os
import signal
import subprocess
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


def test_bench_cnn_cpu(tmp_path):
    out = tmp_path / "b.json"
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--arch", "cnn", "--device", "cpu",
           "--iters", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    for key in ("moe_over_single", "rter_shared_over_at", "rter_separate_over_at"):
        value = res["ratios"][key]
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value)
        assert key in res["goals"]
    for kind in ("shared", "separate"):
        assert math.isfinite(res["rter_epoch"][kind]["epoch_s"]) and res["rter_epoch"][kind]["epoch_s"] > 0
    assert "| MoE top-1 step" in proc.stdout and "| PGD-50 evaluation images/s" in proc.stdout
    assert res["cases"]["pgd50_eval"]["images_per_s"] > 0
    syncs = {name: case["host_syncs"] for name, case in res["cases"].items()}
    # the reads are the dispatch's, the same in every MoE forward, fewer than one per expert: ST makes one forward,
    # AT PGD-10's ten and the update's
    assert syncs["single"] == 0 and 0 < syncs["moe"] < 4 and syncs["at"] == 11 * syncs["moe"], syncs
    assert all(case["cuda_syncs"] is None for case in res["cases"].values())  # counted on a GPU only
    assert "| host syncs / step |" in proc.stdout and f"| {syncs['at']} (" in proc.stdout


def test_bench_cases_pick_the_ratios(tmp_path):
    out = tmp_path / "b.json"
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--arch", "cnn", "--device", "cpu", "--cases", "moe,single",
           "--iters", "1", "--warmup", "0", "--threads", "1", "--bs", "8", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert list(res["cases"]) == ["moe", "single"] and list(res["ratios"]) == ["moe_over_single"]
    assert res["rter_epoch"] == {} and "RT-ER (shared) step" not in proc.stdout
    bad = subprocess.run(cmd[:-2] + ["--cases", "moe,rter", "--out", str(out)], cwd=HERE, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --cases: unknown rter")


def test_host_syncs_counts_the_ops_that_read_back():
    from bench import HostSyncs
    x = torch.arange(6.0)
    with HostSyncs() as counter:
        x.sum().item(), x.tolist(), x.nonzero(), torch.nonzero(x, as_tuple=True), torch.where(x > 2)
        bool(x[1]), int(x[1]), float(x[1]), [0, 1, 2][x[1].long()], x.cpu(), x.numpy(), x.to("cpu")
        torch.masked_select(x, x > 1), x.unique(), x[x > 2], x.repeat_interleave(torch.ones(6, dtype=torch.long))
        i = x.long()
        i.bincount(minlength=6), F.one_hot(i), torch.histc(x)  # CUDA's read min and max, or max, back
    assert counter.ops == {"item": 1, "tolist": 1, "nonzero": 2, "where": 1, "__bool__": 1, "__int__": 1,
                           "__float__": 1, "__index__": 1, "cpu": 1, "numpy": 1, "to": 1, "masked_select": 1,
                           "unique": 1, "__getitem__": 1, "repeat_interleave": 1, "bincount": 2, "one_hot": 1,
                           "histc": 1}, counter.ops
    with HostSyncs() as counter:  # shapes known without the values: nothing to wait for
        x.sum(), x[1:3], x[torch.tensor([0, 2])], x.split([2, 4]), x.to(torch.float64), torch.where(x > 2, x, 0)
        x.repeat_interleave(torch.ones(6, dtype=torch.long), output_size=6), x.repeat_interleave(2)
        F.one_hot(x.long(), 6), torch.histc(x, 6, 0, 5), torch.searchsorted(x, torch.tensor([1.5]))
    assert not counter.ops, counter.ops


def test_moe_host_reads_do_not_grow_with_the_experts():
    """The dispatch reads every expert's row count in one go, not a nonzero per expert (E reads per forward)."""
    from bench import HostSyncs
    from moe import build_moe, st_loss
    reads = []
    for experts in (4, 8):
        torch.manual_seed(0)
        moe = build_moe("cnn", experts, 1, 10, (1, 8, 8))
        x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
        with HostSyncs() as counter:
            st_loss(moe, x, y, 0.01).backward()
        reads.append(sum(counter.ops.values()))
    assert reads[0] == reads[1] < 4, reads


def test_gpu_check_kills_a_part_at_its_time(tmp_path):
    from gpu_check import run_part
    part = run_part("sleep", [sys.executable, "-c", "import time; time.sleep(60)"], 1, str(tmp_path))
    assert part["timed_out"] and part["rc"] == -signal.SIGKILL


def test_gpu_check_quick_cpu(tmp_path):
    """Every part of the GPU check, tiny, on a CPU: its JSON has every key and finite positive rates."""
    out = tmp_path / "g.json"
    cmd = [sys.executable, os.path.join(HERE, "gpu_check.py"), "--quick", "--device", "cpu", "--work",
           str(tmp_path / "work"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    res = json.loads(out.read_text())
    variants = ["fp32", "amp", "amp_channels_last"]  # compile: GPU only
    assert list(res["steps_per_s"]) == variants and res["failed"] == []
    assert set(res["parts"]) == {*(f"bench_{v}" for v in variants), "torchrun", "autoattack"}
    for variant in variants:
        rates = res["steps_per_s"][variant]
        assert set(rates) == {"st", "at", "rter"} and all(math.isfinite(r) and r > 0 for r in rates.values()), rates
        syncs = res["host_syncs_per_step"][variant]  # MoE forwards: PGD-2's 2 + 1, and f_2's 2 for RT-ER
        assert 0 < syncs["st"] < 4 and syncs["at"] == 3 * syncs["st"] and syncs["rter"] == 5 * syncs["st"], syncs
    assert res["torchrun"]["epoch_end"] and res["torchrun"]["nproc"] == 1 and res["torchrun"]["train_seconds"] > 0
    assert res["autoattack"]["n"] == 8 and 0 <= res["autoattack"]["ra"] <= res["autoattack"]["sa"] <= 100
    assert math.isfinite(res["wall_s"]) and res["wall_s"] > 0
    assert "| fp32 |" in proc.stdout and "AutoAttack on 8 points" in proc.stdout


def test_bench_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bench.py"), "--arch", "vgg", "--out",
                           str(tmp_path / "b.json")], cwd=HERE, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_bench_moe_cnn_cpu(tmp_path):
    """The MoE-CNN family: its pathway and masked steps against the dense network of width r, no attack cases."""
    out = tmp_path / "b.json"
    cmd = [sys.executable, os.path.join(HERE, "bench.py"), "--arch", "moe_cnn", "--device", "cpu", "--bs", "16",
           "--iters", "2", "--warmup", "1", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["cases"]) == {"s_dense", "moe_cnn", "moe_cnn_masked"} and res["rter_epoch"] == {}
    assert all(math.isfinite(v) and v > 0 for v in res["ratios"].values()) and len(res["ratios"]) == 2
    assert sum(res["routing_usage_last"]) == 16 and max(res["routing_usage_last"]) < 16  # rows spread over experts
    assert "| MoE-CNN step / dense width-r step" in proc.stdout and "r = 0.5, no attack" in proc.stdout


def test_threads_follow_the_cores_the_load_leaves_free(monkeypatch):
    import torch
    from cli import pick_threads
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert pick_threads(cores=2, load=3.1) == 1 and torch.get_num_threads() == 1  # a busy machine: one thread
        assert pick_threads(cores=2, load=0.2) == 2 and pick_threads(cores=8, load=2.6) == 5
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice wins
        torch.set_num_threads(2)
        assert pick_threads(cores=2, load=3.1) == 2
    finally:
        torch.set_num_threads(before)
