"""One check to hand to a lent GPU, no dataset needed: steps/s of ST, AT and RT-ER at the paper's shapes (bench.py:
ResNet18 experts, E = 4, top-1, batch 512, PGD-10) under each speed flag, host syncs per step, a torchrun smoke on
every visible GPU through one epoch end, AutoAttack on a few points of its checkpoint; one JSON. Each part is a
process of its own, killed with its children at its share of --budget-s, so the whole stays within the budget.

  pip install -r requirements.txt && python gpu_check.py       # about 7.5 minutes at most; results/gpu_check_cuda.json
  python gpu_check.py --quick --device cpu                      # the same parts, tiny: its test
"""
import argparse
import csv
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time

import torch

from checkpoint import atomic_write
from cli import ArgumentParser, markdown_table, number, run_main

HERE = os.path.dirname(os.path.abspath(__file__))
# cumulative: each speed flag on top of the row before, so neighbouring rows show what one flag buys
VARIANTS = {"fp32": ["--no-amp", "--no-channels-last"],
            "amp": ["--amp", "--no-channels-last"],
            "amp_channels_last": ["--amp", "--channels-last"],
            "amp_channels_last_compile": ["--amp", "--channels-last", "--compile", "--warmup", "4"]}
METHODS = {"st": "moe", "at": "at", "rter": "rter_shared"}  # method: its bench.py case
# seconds each part may take at most; compile comes last and gets what the others left
CAPS = {"bench": 75, "torchrun": 90, "autoattack": 90}
MIN_PART_S = 10  # a part with less left is skipped rather than started to be killed


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="the parts pick their own GPU index (torchrun: one per process)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (cnn experts, a few points): a CPU smoke")
    p.add_argument("--budget-s", type=number(float, 1), default=450.0, help="wall-clock seconds for every part")
    p.add_argument("--nproc", type=number(int, 1), default=None,
                   help="torchrun processes (default: every visible GPU; 1 on a CPU)")
    p.add_argument("--work", default=None, help="folder for the parts' runs and logs (default: a new temporary one)")
    p.add_argument("--out", default=None, help="JSON file (default results/gpu_check_<device>.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():  # no CUDA context here: the parts hold the GPU
        raise ValueError("--device cuda asked for, but no GPU is visible")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.nproc = args.nproc or (torch.cuda.device_count() if args.device == "cuda" else 1)
    args.work = args.work or tempfile.mkdtemp(prefix="gpu_check_")
    os.makedirs(args.work, exist_ok=True)
    args.out = args.out or os.path.join("results", f"gpu_check_{args.device}.json")
    return args


def sizes(args) -> dict:
    """The flags of each part: the paper's shapes, or tiny ones under --quick."""
    if args.quick:
        bench = ["--arch", "cnn", "--bs", "16", "--steps", "2", "--warmup", "0", "--iters", "1", "--threads", "1"]
        per_process, model, aa = 16, ["--arch", "cnn", "--eval-n", "16"], ["--n", "8", "--aa-version", "quick"]
    else:
        bench = ["--arch", "resnet18", "--experts", "4", "--bs", "512", "--steps", "10", "--warmup", "2",
                 "--iters", "5"]
        per_process, model = 256, ["--arch", "resnet18", "--amp", "--channels-last", "--eval-n", "64"]
        aa = ["--n", "16"]
    bs = per_process * args.nproc  # four steps reach the epoch's end
    train = [*model, "--train-n", str(4 * bs), "--bs", str(bs), "--epochs", "1", "--eval-steps", "2"]
    return {"bench": [*bench, "--cases", ",".join(METHODS.values())], "train": train, "aa": aa}


def run_part(name, cmd, timeout, work) -> dict:
    """Run cmd in a process group of its own, its output in WORK/<name>.log; after timeout s, kill the group."""
    log = os.path.join(work, f"{name}.log")
    print(f"{name}: {' '.join(cmd)} (at most {timeout:.0f} s)", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=HERE, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # torchrun's workers too: the whole group
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            timed_out = True
    wall = time.perf_counter() - t0
    with open(log) as f:
        tail = f.read()[-1500:]
    part = {"cmd": cmd, "rc": proc.returncode, "wall_s": round(wall, 1), "timed_out": timed_out, "log": log}
    print(f"{name}: {'timed out' if timed_out else 'rc ' + str(proc.returncode)} after {wall:.0f} s", flush=True)
    if proc.returncode != 0:
        part["log_tail"] = tail
        print(tail, flush=True)
    return part


def bench_result(path) -> dict:
    """Steps/s, host syncs (the op count; on a GPU also CUDA's) and peak memory of one bench.py run, per method."""
    with open(path) as f:
        res = json.load(f)
    cases = {m: res["cases"][c] for m, c in METHODS.items()}
    return {"device_name": res["device_name"],
            "steps_per_s": {m: 1 / c["median_s"] for m, c in cases.items()},
            "host_syncs_per_step": {m: c["host_syncs"] for m, c in cases.items()},
            "cuda_syncs_per_step": {m: c["cuda_syncs"] for m, c in cases.items()},
            "max_memory_gib": res["max_memory_gib"]}


def last_log_row(run_dir) -> dict:
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if k in ("epoch", "train_seconds", "sa", "ra")} if rows else {}


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    size = sizes(args)
    python = [sys.executable]
    res = {"device": args.device, "device_name": None, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
           "quick": args.quick, "budget_s": args.budget_s, "work": args.work, "flags": size, "parts": {},
           "steps_per_s": {}, "host_syncs_per_step": {}, "cuda_syncs_per_step": {}, "max_memory_gib": {}}

    def part(name, cmd, cap):
        left = deadline - time.perf_counter()
        if left < MIN_PART_S:
            res["parts"][name] = {"cmd": cmd, "skipped": f"{left:.0f} s of --budget-s left"}
            print(f"{name}: skipped, {left:.0f} s of the budget left", flush=True)
            return False
        res["parts"][name] = run_part(name, cmd, min(cap, left), args.work)
        return res["parts"][name]["rc"] == 0

    def bench(variant):
        out = os.path.join(args.work, f"bench_{variant}.json")
        cmd = [*python, "bench.py", "--device", args.device, *size["bench"], *VARIANTS[variant], "--out", out]
        if part(f"bench_{variant}", cmd, math.inf if "compile" in variant else CAPS["bench"]):
            got = bench_result(out)
            res["device_name"] = got.pop("device_name")
            for key, value in got.items():
                res[key][variant] = value

    for variant in [v for v in VARIANTS if "compile" not in v]:
        bench(variant)
    run_dir = os.path.join(args.work, "st")
    torchrun = [*python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    cmd = [*torchrun, "train_st.py", "--dataset", "synthetic_cifar10", *size["train"], "--device", args.device,
           "--out", run_dir, "--overwrite"]
    trained = part("torchrun", cmd, CAPS["torchrun"])
    res["torchrun"] = {"nproc": args.nproc, **(last_log_row(run_dir) if trained else {})}
    res["torchrun"]["epoch_end"] = res["torchrun"].get("epoch") == 1.0
    res["autoattack"] = {}
    if res["torchrun"]["epoch_end"]:
        eval_dir = os.path.join(args.work, "eval")
        cmd = [*python, "eval.py", "--ckpt", os.path.join(run_dir, "ckpt.pt"), "--attack", "aa", "--targets", "whole",
               *size["aa"], "--device", args.device, "--out", eval_dir]
        if part("autoattack", cmd, CAPS["autoattack"]):
            with open(os.path.join(eval_dir, "eval_aa.json")) as f:
                ev = json.load(f)
            res["autoattack"] = {"n": len(ev["correct"]["clean"]), "sa": ev["sa"], "ra": ev["ra"]}
    if args.device == "cuda":  # CPU inductor builds C++ for minutes: a GPU measurement only
        bench("amp_channels_last_compile")
    res["wall_s"] = time.perf_counter() - t_start
    failed = [name for name, p in res["parts"].items() if p.get("rc", 0) != 0 or p.get("timed_out")]
    res["failed"] = failed
    res["markdown"] = markdown(res)
    print(res["markdown"], flush=True)
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    atomic_write(args.out, json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    if failed:
        raise ValueError(f"gpu_check: {', '.join(failed)} failed; logs in {args.work}")
    return res


def markdown(res: dict) -> str:
    def counts(key, variant):  # None: not counted (CUDA's off a GPU, the op count under --compile)
        return " / ".join("-" if res[key][variant][m] is None else str(res[key][variant][m]) for m in METHODS)

    rows = [[variant, *(f"{sps[m]:.3g}" for m in METHODS), counts("host_syncs_per_step", variant),
             counts("cuda_syncs_per_step", variant)] for variant, sps in res["steps_per_s"].items()]
    t, a = res["torchrun"], res["autoattack"]
    ended = (f"epoch 1 ended in {t['train_seconds']:.1f} s, SA {t['sa']:.1f} %, PGD RA {t['ra']:.1f} %"
             if t["epoch_end"] else "no epoch end")
    return "\n".join([
        f"gpu_check: {res['device_name']} ({res['device']}), {res['gpus']} GPUs visible, torch {res['torch']}, "
        f"wall {res['wall_s']:.0f} s of {res['budget_s']:.0f}",
        markdown_table(["flags", *(f"{m} steps/s" for m in METHODS), "host syncs / step (st / at / rter)",
                        "CUDA syncs / step"], rows),
        f"torchrun, {t['nproc']} process{'es' if t['nproc'] > 1 else ''}: {ended}",
        f"AutoAttack on {a['n']} points: SA {a['sa']:.1f} %, RA {a['ra']:.1f} %" if a else "AutoAttack: not run",
        f"failed: {', '.join(res['failed'])}" if res["failed"] else "every part ran"])


if __name__ == "__main__":
    run_main(main)
