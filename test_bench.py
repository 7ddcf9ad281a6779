"""bench.py end to end on the small CNN: it runs, and its JSON carries finite positive ratios (no timing goals)."""
import json
import math
import os
import subprocess
import sys

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
