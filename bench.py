"""Speed ratios of SPEC section 8, all measured in one process on the same batches.

  moe / single          MoE top-1 train step (E = 4 experts, st_loss) over one expert network's train step
                        (CE), same batch, both with Adam; goal <= 1.10 (only one expert runs per row)
  rter_shared / at      RT-ER step (--kl-attack shared) over the AT step, PGD-K; goal <= 1.25
  rter_separate / at    RT-ER step (--kl-attack separate) over the AT step, PGD-K; goal <= 2.2
  RT-ER images/s and projected seconds per CIFAR-10-sized epoch (50,000 images); goal <= 60 s on one H100
  images/s of PGD-50 evaluation of the MoE (eval.py's attack, no update); peak GPU memory
  host syncs per step of each case: the tensor operations that make the host wait for the GPU (.item(), .tolist(),
                        nonzero, bool(tensor), ...), counted by a TorchFunctionMode on any device, and on a GPU also
                        the synchronisations torch.cuda.set_sync_debug_mode("warn") reports
With an MoE-CNN arch (moe_cnn.py; --scale r, default 0.5), the cost of AdvMoE's pathway MoE instead, one train step
each (CE, SGD):
  moe_cnn / s_dense     MoE-CNN (E experts, rows grouped by expert) over the dense network of width r
  masked / pathway      the same MoE-CNN computed in masked form (every expert on every row) over the pathway

Cases run interleaved, one of each per round (order reversed every other round, so slow drift hits all of
them alike); each time is one full train step (loss, backward, Adam) between device synchronisations;
the reported figure is the median over the timed rounds. Inputs are random pixels resident on the device.
On a GPU, bf16 autocast and channels_last are on by default (--no-amp / --no-channels-last turn them off)
and --compile compiles each expert (expert.compile(dynamic=True), as train_common does).

  python bench.py                          # resnet18 experts, the GPU when there is one
  python bench.py --device cpu --arch cnn  # seconds: a quick check with the small CNN on 8x8 inputs
  python bench.py --arch moe_resnet18      # the MoE-CNN's pathway against the dense network of width r
  python bench.py --cases moe,at,rter_shared   # some of the cases (the ratios whose two terms ran)
"""
import argparse
import collections
import json
import os
import platform
import statistics
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import data
import train_common as tc
from checkpoint import atomic_write
from cli import ArgumentParser, markdown_table, number, pick_device, run_main
from moe import Normalize, build_expert, build_moe, st_loss
from moe_cnn import build_moe_cnn
from attacks import evaluate_attack
from losses import at_loss, rter_loss

EPOCH_IMAGES = 50_000  # CIFAR-10 training set
GOALS = {"moe_over_single": 1.10, "rter_shared_over_at": 1.25, "rter_separate_over_at": 2.2}
EPOCH_GOAL_S = 60.0  # PGD-10 RT-ER on one H100
SHAPES = {"resnet18": ("cifar10", (3, 32, 32)), "cnn": ("digits", (1, 8, 8)),  # dataset whose mean/std we use
          "moe_resnet18": ("cifar10", (3, 32, 32)), "moe_wrn28_10": ("cifar10", (3, 32, 32)),
          "moe_cnn": ("digits", (1, 8, 8))}
CASES = {"moe": ("single", "moe", "at", "rter_shared", "rter_separate", "pgd50_eval"),
         "moe_cnn": ("s_dense", "moe_cnn", "moe_cnn_masked")}
# per family: the ratios, each (label, numerator case, denominator case); the cases are the ratios' terms
RATIOS = {"moe": {"moe_over_single": ("MoE top-1 step / single {arch} step", "moe", "single"),
                  "rter_shared_over_at": ("RT-ER (shared) step / AT step", "rter_shared", "at"),
                  "rter_separate_over_at": ("RT-ER (separate) step / AT step", "rter_separate", "at")},
          "moe_cnn": {"moe_cnn_over_s_dense": ("MoE-CNN step / dense width-r step", "moe_cnn", "s_dense"),
                      "masked_over_pathway": ("masked MoE-CNN step / pathway step", "moe_cnn_masked", "moe_cnn")}}


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--arch", default="resnet18", choices=list(SHAPES), help="cnn: 1x8x8 inputs, a quick CPU check")
    p.add_argument("--experts", type=number(int, 2), default=4, help="experts E of the MoE (top-1 routing)")
    p.add_argument("--scale", type=number(float, 0, 1), default=0.5, help="MoE-CNN archs: model scale r")
    p.add_argument("--bs", type=number(int, 1), default=None, help="batch size (default 512 on GPU, 32 on CPU)")
    p.add_argument("--warmup", type=number(int, 0), default=None, help="untimed rounds first (default per device)")
    p.add_argument("--iters", type=number(int, 1), default=None, help="timed rounds (default per device and arch)")
    p.add_argument("--steps", type=number(int, 0), default=10, help="PGD steps K of the AT and RT-ER attacks")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default on with a GPU; ignored on CPU, as in training)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format for models and data (default on with a GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile each expert (and the single network)")
    p.add_argument("--cases", default=None, help="comma list of the cases to run (default: all of the arch's)")
    p.add_argument("--threads", type=number(int, 1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--profile", action="store_true", help="then profile one step of each case: where the time goes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON file (default results/bench_<device>[_<arch>].json)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    # CPU defaults keep a resnet18 run short: a PGD-10 RT-ER step of 4 resnet18 experts at bs 32 takes
    # tens of seconds on 2 cores; the cnn case is cheap, so it gets more rounds.
    gpu_warmup = 10 if args.compile else 3  # compile: first steps trace train / eval modes and row counts
    small = args.arch in ("cnn", "moe_cnn", "moe_resnet18")  # no PGD in the MoE-CNN cases: cheap enough
    default_rounds = (gpu_warmup, 30 if small else 20) if gpu else ((2, 8) if small else (1, 2))
    args.bs = args.bs if args.bs is not None else (512 if gpu else 32)  # 512: the paper's CIFAR-10 batch
    args.warmup = args.warmup if args.warmup is not None else default_rounds[0]
    args.iters = args.iters if args.iters is not None else default_rounds[1]
    args.amp = gpu if args.amp is None else args.amp
    args.channels_last = gpu if args.channels_last is None else args.channels_last
    if args.amp and not gpu:
        print("note: --amp is ignored on CPU (training applies bf16 autocast on GPUs only)", file=sys.stderr)
        args.amp = False
    family = "moe_cnn" if args.arch.startswith("moe_") else "moe"
    args.cases = args.cases.split(",") if args.cases else list(CASES[family])
    unknown = [c for c in args.cases if c not in CASES[family]]
    if unknown:
        raise ValueError(f"--cases: unknown {', '.join(unknown)} for --arch {args.arch}; choose from "
                         f"{', '.join(CASES[family])}")
    args.device = str(device)
    if args.out is None:
        suffix = "" if args.arch == "resnet18" else f"_{args.arch}"
        args.out = os.path.join("results", f"bench_{device.type}{suffix}.json")
    return args, device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------- models and steps

# the paper's CIFAR-10 setting of the attacks and the loss
RTER = dict(eps=8 / 255, step_size=2 / 255, beta=6.0, balance=0.01, kl_experts="second", second_on="clean")


def build_cases(args, device):
    """{case: (model, optimizer, loss_fn(x, y))}; the MoE cases share one MoE and one Adam."""
    dataset, shape = SHAPES[args.arch]
    info = data.dataset_info(dataset)
    torch.manual_seed(args.seed)
    if args.arch.startswith("moe_"):  # AdvMoE's MoE-CNN, SGD as in its appendix (a small lr keeps the routing still)
        build = lambda e: tc.prepare_model(build_moe_cnn(args.arch, e, args.scale, info.num_classes, shape,  # noqa
                                                         info.mean, info.std), device, args.channels_last)
        dense, moe = build(1), build(args.experts)
        with torch.no_grad():  # a fresh router sends random pixels to one expert: spread them, as training would
            last = moe.router.net[-1].weight
            last.normal_(0, 100.0).sub_(last.mean(1, keepdim=True))
        sgd = argparse.Namespace(opt="sgd", lr=1e-4, wd=5e-4)
        opts = {id(m): tc.make_optimizer(m.parameters(), sgd) for m in (dense, moe)}
        return {"s_dense": (dense, opts[id(dense)], lambda x, y: F.cross_entropy(dense(x), y)),
                "moe_cnn": (moe, opts[id(moe)], lambda x, y: F.cross_entropy(moe(x), y)),
                "moe_cnn_masked": (moe, opts[id(moe)], lambda x, y: F.cross_entropy(
                    moe.forward_with_routing(x, masked=True)[0], y))}, moe, info, shape
    moe = build_moe(args.arch, args.experts, 1, info.num_classes, shape, info.mean, info.std)
    moe = tc.prepare_model(moe, device, args.channels_last, args.compile)
    expert = build_expert(args.arch, info.num_classes, shape[0], shape[1])
    single = tc.prepare_model(nn.Sequential(Normalize(info.mean, info.std), expert), device, args.channels_last)
    if args.compile:
        expert.compile(dynamic=True)
    lr = 1e-4  # the paper's peak rate; the value does not change the cost of a step
    adam = argparse.Namespace(opt="adam", lr=lr, wd=0.0)
    moe_opt, single_opt = tc.make_optimizer(moe.parameters(), adam), tc.make_optimizer(single.parameters(), adam)
    attack = (RTER["eps"], RTER["step_size"], args.steps)
    cases = {
        "single": (single, single_opt, lambda x, y: F.cross_entropy(single(x), y)),
        "moe": (moe, moe_opt, lambda x, y: st_loss(moe, x, y, RTER["balance"])),
        "at": (moe, moe_opt, lambda x, y: at_loss(moe, x, y, *attack, RTER["balance"])),
        "rter_shared": (moe, moe_opt, lambda x, y: rter_loss(moe, x, y, steps=args.steps, kl_attack="shared", **RTER)),
        "rter_separate": (moe, moe_opt,
                          lambda x, y: rter_loss(moe, x, y, steps=args.steps, kl_attack="separate", **RTER)),
        "pgd50_eval": (moe, None, lambda x, y: evaluate_attack(moe, x, y, "whole", "pgd", RTER["eps"],
                                                               RTER["step_size"], 50, len(x))),  # no update
    }
    return cases, moe, info, shape


def train_step(model, opt, loss_fn, x, y, autocast) -> None:
    """One update as the train scripts run it: loss under autocast, then train_common.backward_and_step (no
    optimiser: the case is its function alone, e.g. an evaluation)."""
    with autocast():
        loss = loss_fn(x, y)
    if opt is not None:
        tc.backward_and_step(loss, model, [opt])


# ----------------------------------------------------------------------------- host syncs

# what makes the host wait for the GPU: the result (a Python number, a shape that depends on the values, a CPU copy)
# must be read back before the next op can be issued
SYNC_OPS = {"item", "tolist", "nonzero", "argwhere", "masked_select", "unique", "unique_consecutive", "equal",
            "allclose", "is_nonzero", "__bool__", "__int__", "__float__", "__index__", "__format__", "cpu", "numpy",
            "__array__"}


def arg(args, kwargs, i: int, name: str, default=None):
    """The op's argument called name, or at position i."""
    return kwargs[name] if name in kwargs else args[i] if len(args) > i else default


def host_reads(name: str, args, kwargs) -> int:
    """How many device-to-host reads the op named name, called with args and kwargs, makes on a GPU."""
    if name in SYNC_OPS:
        return 1
    if name == "bincount":  # CUDA's reads the min back (its bounds check) and the max (the bin count), minlength or not
        return 1 if args[0].dtype == torch.uint8 else 2
    if name == "one_hot":  # the class count is the max unless given (CUDA skips the bounds checks)
        return int(arg(args, kwargs, 1, "num_classes", -1) == -1)
    if name == "histc":  # the range is the data's min and max unless given (min = max)
        return int(arg(args, kwargs, 2, "min", 0) == arg(args, kwargs, 3, "max", 0))
    if name == "repeat_interleave":  # the output's length is the sum of tensor repeats, unless output_size says it
        repeats = arg(args, kwargs, 1, "repeats", args[0])
        return int(isinstance(repeats, torch.Tensor) and kwargs.get("output_size") is None)
    if name in ("__getitem__", "__setitem__"):  # a boolean mask index is a nonzero
        index = args[1] if isinstance(args[1], tuple) else (args[1],)
        return int(any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index))
    if name == "where":  # the one-argument form is nonzero(as_tuple=True)
        return int(len(args) + len(kwargs) == 1)
    if name == "to":
        where = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
        return int(any(torch.device(a).type == "cpu" for a in where))
    return 0


class HostSyncs(TorchFunctionMode):
    """Counts, by op name, the device-to-host reads the torch calls would make were the tensors on a GPU, on any
    device. The mode sees one call per user-level op (it is off inside its own handler), not the ATen ops within."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        reads = host_reads(name, args, kwargs)
        if reads:
            self.ops[name] += reads
        return func(*args, **kwargs)


@contextmanager
def cuda_syncs(device: torch.device):
    """Collects, in the list it yields, the synchronisations the CUDA sync debug mode warns of (none off a GPU)."""
    if device.type != "cuda":
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # each one, not the first per call site
        before = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode(before)
    caught[:] = [w for w in caught if "synchronizing CUDA operation" in str(w.message)]


def count_host_syncs(model, opt, loss_fn, x, y, autocast, device, compiled: bool) -> dict:
    """One train step, counted: {host_syncs: ops that read back, host_sync_ops: by op, cuda_syncs: the CUDA debug
    mode's count or None}. Under --compile the op count is None: Dynamo would trace the mode into (and recompile) the
    experts, whose graphs then run without it."""
    counter = HostSyncs()
    sync(device)
    with cuda_syncs(device) as caught, (nullcontext() if compiled else counter):
        train_step(model, opt, loss_fn, x, y, autocast)
    sync(device)
    return {"host_syncs": None if compiled else sum(counter.ops.values()),
            "host_sync_ops": None if compiled else dict(counter.ops),
            "cuda_syncs": len(caught) if device.type == "cuda" else None}


# ----------------------------------------------------------------------------- the run

def run_bench(args, device) -> dict:
    cases, moe, info, shape = build_cases(args, device)
    cases = {name: cases[name] for name in args.cases}
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if args.amp else nullcontext
    gen = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    batches = []
    for _ in range(4):  # a few fixed batches, resident on the device; every case gets the same one per round
        x = torch.rand(args.bs, *shape, generator=gen)
        y = torch.randint(0, info.num_classes, (args.bs,), generator=gen)
        x = x.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        batches.append((x, y.to(device)))
    for model in {id(m): m for m, _, _ in cases.values()}.values():
        model.train()
    family = "moe_cnn" if args.arch.startswith("moe_") else "moe"
    names = list(cases)
    times = {name: [] for name in names}
    rounds = args.warmup + args.iters
    t_start = time.perf_counter()
    from tqdm import tqdm
    tty = sys.stderr.isatty()
    bar = tqdm(range(rounds), desc="bench rounds", file=sys.stderr, disable=not tty)
    for r in bar:
        x, y = batches[r % len(batches)]
        order = names if r % 2 == 0 else names[::-1]
        phase = "warmup" if r < args.warmup else "timed"
        for name in order:
            model, opt, loss_fn = cases[name]
            bar.set_postfix(case=name, phase=phase)
            sync(device)
            t0 = time.perf_counter()
            train_step(model, opt, loss_fn, x, y, autocast)
            sync(device)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        if not tty:  # plain progress lines in logs
            print(f"round {r + 1}/{rounds} ({phase}) done, {time.perf_counter() - t_start:.0f} s", file=sys.stderr,
                  flush=True)
    bar.close()
    wall = time.perf_counter() - t_start
    # a separate step per case: the counting hook's Python call per torch op must not slow the timed steps
    syncs = {name: count_host_syncs(*cases[name], *batches[0], autocast, device, args.compile) for name in names}
    profiles = {name: profile_step(*cases[name], *batches[0], autocast, device) for name in names} if args.profile \
        else None

    with torch.no_grad(), autocast():
        usage = torch.bincount(moe.gates(batches[0][0]).argmax(1), minlength=moe.num_experts)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ratios = {key: med[top] / med[bottom] for key, (_, top, bottom) in RATIOS[family].items()
              if top in med and bottom in med}
    rter = {kind: {"images_per_s": args.bs / med[f"rter_{kind}"],
                   "epoch_s": EPOCH_IMAGES * med[f"rter_{kind}"] / args.bs}
            for kind in ("shared", "separate") if f"rter_{kind}" in med}
    return {
        "device": device.type, "device_name": device_name(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "settings": {k: getattr(args, k) for k in ("arch", "experts", "bs", "warmup", "iters", "steps", "amp",
                                                   "channels_last", "compile", "seed", "cases")}
        | ({"scale": args.scale, "optimizer": "sgd"} if family == "moe_cnn" else {"optimizer": "adam", **RTER})
        | {"topk": 1, "input_shape": list(shape)},
        "cases": {name: {"median_s": med[name], "min_s": min(times[name]), "times_s": times[name],
                         "images_per_s": args.bs / med[name], **syncs[name]} for name in names},
        "ratios": ratios, "goals": {k: v for k, v in GOALS.items() if k in ratios},
        "rter_epoch": rter, "epoch_images": EPOCH_IMAGES, "epoch_goal_s": EPOCH_GOAL_S,
        "routing_usage_last": usage.tolist(), "profiles": profiles,
        "max_memory_gib": (torch.cuda.max_memory_allocated(device) / 2 ** 30) if device.type == "cuda" else None,
        "wall_s": wall,
    }


def profile_step(model, opt, loss_fn, x, y, autocast, device, top: int = 8) -> list:
    """torch.profiler on one step: the ops that take the most self time, [(op, calls, seconds)]."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train_step(model, opt, loss_fn, x, y, autocast)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [(e.key, e.count, getattr(e, key) / 1e6) for e in events]


def fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def syncs_cell(case: dict) -> str:
    """The op count (by op) and the CUDA debug mode's count, where each was taken."""
    parts = []
    if case.get("host_syncs") is not None:
        by_op = ", ".join(f"{op} {n}" for op, n in sorted(case["host_sync_ops"].items()))
        parts.append(f"{case['host_syncs']}" + (f" ({by_op})" if by_op else ""))
    if case.get("cuda_syncs") is not None:
        parts.append(f"CUDA {case['cuda_syncs']}")
    return "; ".join(parts)


def markdown(res: dict) -> str:
    s, k = res["settings"], res["settings"]["steps"]
    arch = "ResNet18" if s["arch"] == "resnet18" else s["arch"]
    what = f"r = {s['scale']}, no attack" if "scale" in s else f"PGD-{k}"
    lines = [
        f"device: {res['device_name']} ({res['device']}), torch {res['torch']}, {res['threads']} threads, "
        f"load average {res.get('load_average_start')} -> {res.get('load_average_end')}",
        f"arch {s['arch']}, E = {s['experts']}, top-1, {what}, bs {s['bs']}, amp {s['amp']}, "
        f"channels_last {s['channels_last']}, compile {s['compile']}, {s['warmup']} warmup + {s['iters']} timed "
        f"rounds (median), wall {res['wall_s']:.0f} s",
    ]
    family = "moe_cnn" if s["arch"].startswith("moe_") else "moe"
    ratios = [[label.format(arch=arch), f"{res['ratios'][key]:.2f}",
               f"<= {res['goals'][key]}" if key in res["goals"] else ""]
              for key, (label, _, _) in RATIOS[family].items() if key in res["ratios"]]
    for kind in res["rter_epoch"]:
        r = res["rter_epoch"][kind]
        ratios += [[f"PGD-{k} RT-ER ({kind}) images/s", fmt(r["images_per_s"]), ""],
                   [f"PGD-{k} RT-ER ({kind}) s per {res['epoch_images']:,}-image epoch", fmt(r["epoch_s"]),
                    f"<= {res['epoch_goal_s']:.0f} (PGD-10, one H100)"]]
    if "pgd50_eval" in res["cases"]:
        ratios.append(["PGD-50 evaluation images/s (whole MoE)", fmt(res["cases"]["pgd50_eval"]["images_per_s"]), ""])
    cases = [[name, f"{c['median_s']:.4g}", f"{c['min_s']:.4g}", fmt(c["images_per_s"]), syncs_cell(c)]
             for name, c in res["cases"].items()]
    lines += ["", markdown_table(["measure", "measured", "goal"], ratios),
              markdown_table(["case", "median s/step", "min s/step", "images/s", "host syncs / step"], cases)]
    lines.append(f"top-1 expert usage on one batch at the end: {res['routing_usage_last']}")
    for name, ops in (res.get("profiles") or {}).items():
        lines += [f"\nprofile of one {name} step (self time):",
                  markdown_table(["op", "calls", "s"], [[op, calls, f"{sec:.4f}"] for op, calls, sec in ops])]
    if res["max_memory_gib"] is not None:
        lines.append(f"peak GPU memory: {res['max_memory_gib']:.1f} GiB")
    return "\n".join(lines)


def main(argv=None):
    args, device = parse_args(argv)
    print(f"bench: {device_name(device)} ({device}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"arch {args.arch}, bs {args.bs}, {args.warmup} warmup + {args.iters} timed rounds",
          flush=True)
    load_start = load_average()
    cores = os.cpu_count() or 1
    if device.type == "cpu" and load_start and load_start[0] > cores and torch.get_num_threads() > 1:
        print(f"note: load average {load_start[0]} on {cores} cores: other jobs compete for the CPU and torch's "
              f"{torch.get_num_threads()} OpenMP threads wait on each other; --threads 1 may be much faster",
              file=sys.stderr, flush=True)
    res = run_bench(args, device)
    res["load_average_start"], res["load_average_end"] = load_start, load_average()
    text = markdown(res)
    res["markdown"] = text
    print(text, flush=True)
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    atomic_write(args.out, json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    run_main(main)
