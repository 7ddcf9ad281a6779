"""The hours a run_all.sh preset will take, before anything is trained: `bash run_all.sh PRESET --estimate`.

Reads make's dry run (stdin: what would run now) and times on this machine, with the threads and the load of the real
run (--jobs processes at once, as make -j), a few steps of every kind of job:
  training    the train script itself, its own flags: a warm-up epoch, then --steps batches, in a scratch folder; and
              its per-epoch PGD curve on its test points
  evaluation  eval.py itself, each attack timed, PGD steps and AutoAttack's iterations and queries cut --cut-fold
then scales each by its job's epochs, images, test points and steps, adds a process start per job, and schedules the
jobs as make -j does: in the dry run's order, each as a slot frees and the checkpoints it reads exist.
AutoAttack and the adaptive attack stop on broken points, so their cost depends on what the model learnt: they are
timed on points of which a share survive (labelled with the model's own prediction, eps 1e-6) and the rest fail at
once (a wrong label): the share that survived them in the preset's committed results/<preset>/results.json, else all
(an upper bound). Paper presets are timed on their synthetic stand-ins (same shapes, no data); on a CPU, a what-if,
with batches of 2 images and 1 test point, scaled linearly (a CPU's time grows with the batch at those sizes), and
every attack cut 100-fold.
"""
import argparse
import contextlib
import functools
import importlib
import io
import json
import math
import multiprocessing
import os
import shlex
import subprocess
import sys
import tempfile
import time

import pyautoattack
import torch

import cli
import data
import eval as evaluation
import train_common as tc
from attacks import evaluate_attack

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_PRESETS = ("digits", "fashion_mnist")  # run_all.sh's: timed at their own batch sizes and test points on a CPU
# flags that leave the cost of a step as it is: one timed run serves every job that differs only in them
SAME_COST = {"--out", "--std", "--rob", "--init", "--resume", "--seed", "--epochs", "--train-n", "--alpha", "--beta",
             "--trades-beta", "--step-size", "--eval-every", "--eval-n", "--eval-steps", "--data-dir"}
NOT_COST = {"--ckpt", "--std", "--rob", "--out", "--keep-done", "--data-dir"}  # eval.py's flags that say where
STRUCTURE = ("dataset", "arch", "experts", "topk", "scale", "channels_last", "amp", "kind")  # what a model costs
STAND_IN = {name: synthetic for synthetic, (real, _, _) in data.SYNTHETIC.items() for name in data.DATASETS
            if name not in data.SYNTHETIC and data.DATASETS[name].shape == data.DATASETS[real].shape}
TINY_EPS = 1e-6  # no attack breaks a correct point within it, so every attack runs its whole course
# torchrun's speed-up per process: on CPU measured (DETAILS, DDP: an RT-ER epoch 3.35 s in one process, 2.95 s in
# two: 3.35 / 2.95 / 2); on GPUs not measured here, assumed (NCCL on one node)
DDP_EFFICIENCY = {"cpu": (0.57, "measured on CPU, DETAILS' DDP numbers"), "cuda": (0.9, "assumed, not measured")}


# ----------------------------------------------------------------------------- the jobs of the dry run

def flags(argv) -> list:
    """[(flag, value or None)] of a command line's arguments: --x v, --x=v, --switch."""
    pairs, i = [], 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 1
        pairs.append((name, value if eq or value else None))
        i += 1
    return pairs


def parse_dry_run(lines) -> list:
    """The jobs of make -n's lines: {stage, folder, script, argv, deps (the folders of the checkpoints it reads)}."""
    jobs = []
    for line in lines:
        words = shlex.split(line)
        if "job" not in words[:4] or len(words) < words.index("job") + 4:
            continue  # report.py's line, or make's own
        i = words.index("job")
        target, script, argv = words[i + 1], words[i + 3], words[i + 4:]
        deps = [os.path.dirname(v) for _, v in flags(argv) if v and v.endswith("/ckpt.pt")]
        jobs.append({"stage": "train" if target.endswith("train.done") else "eval", "folder": os.path.dirname(target),
                     "script": script, "argv": argv, "deps": deps})
    return jobs


def train_key(job) -> tuple:
    return (job["script"],) + tuple(p for p in flags(job["argv"]) if p[0] not in SAME_COST)


def survival(reference: dict, folder: str, attack: str) -> float:
    """The share of test points that survived attack on this run in the committed results (1 where none)."""
    runs = reference.get("runs", {})
    run = os.path.basename(folder)
    found = (runs.get(run) or runs.get(run.split("-seed")[0]) or {}).get("evals", {}).get(
        evaluation.result_name(attack))
    columns = set(evaluation.COLUMN.values())
    shares = [v for e in ([found] + found.get("rows", []) if found else []) for k, v in e.items() if k in columns]
    return round(sum(shares) / len(shares) / 100, 2) if shares else 1.0


# ----------------------------------------------------------------------------- costs and the schedule

def curve_evaluations(epochs: int, every: int) -> int:
    """How often a run evaluates its curve: every `every` epochs and after the last (train_common.Run.end_epoch)."""
    return sum(tc.curve_due(epoch, every, epochs) for epoch in range(epochs))


def training_seconds(unit: dict, job: dict) -> float:
    """A training's seconds: unit = its kind's seconds per training image (image), to end an epoch (epoch: its
    checkpoint) and per test point and PGD step of the curve (point_step); job = its epochs, images an epoch,
    eval_every, eval_points, eval_steps."""
    curve = curve_evaluations(job["epochs"], job["eval_every"]) * job["eval_points"] * job["eval_steps"]
    return job["epochs"] * (job["images"] * unit["image"] + unit["epoch"]) + curve * unit["point_step"]


def wall_clock(jobs, slots: int) -> float:
    """make -j slots: jobs (name, seconds, deps) start in list order as a slot frees and the jobs named in their deps
    have ended (deps that are no job are done)."""
    names = {name for name, _, _ in jobs}
    end, pending, now = {}, list(jobs), 0.0
    while pending:
        free = slots - sum(t > now for t in end.values())
        ready = [job for job in pending if all(end.get(d, math.inf) <= now for d in job[2] if d in names)]
        for name, seconds, _ in ready[:max(free, 0)]:
            end[name] = now + seconds
        pending = [job for job in pending if job[0] not in end]
        later = [t for t in end.values() if t > now]
        if pending and not ready and not later:
            raise ValueError("the jobs' dependencies form a cycle")
        now = min(later, default=now)
    return max(end.values(), default=0.0)


# ----------------------------------------------------------------------------- timing, in the worker processes

SHORT = {"cut": 1, "ratio": None, "clock": time.perf_counter}  # a worker's cut, the last AutoAttack's, its clock
# what the workers wrap: the scripts' own argument parsing, epochs and checkpoints, and eval.py's
PARSE_TRAIN, BATCHES, END_EPOCH, SAVE = tc.parse_args, tc.Run.batches, tc.Run.end_epoch, tc.atomic_save
PARSE_EVAL, EVALUATE = evaluation.parse_args, evaluation.evaluate


class ShortAutoAttack(pyautoattack.AutoAttack):
    """AutoAttack with each attack's iterations and queries cut SHORT['cut']-fold: the same work per iteration."""

    def run_standard_evaluation(self, *args, **kwargs):
        before = self.apgd.n_iter  # APGD-CE runs in every version
        for attack, count in ((self.apgd, "n_iter"), (self.apgd_targeted, "n_iter"), (self.fab, "n_iter"),
                              (self.square, "n_queries")):
            setattr(attack, count, max(1, getattr(attack, count) // SHORT["cut"]))
        SHORT["ratio"] = before / self.apgd.n_iter
        return super().run_standard_evaluation(*args, **kwargs)


def worker_start(cut: int) -> None:
    """A timing process: the threads a job of the real run takes (run_all's OMP_NUM_THREADS, else the load's)."""
    SHORT["cut"], SHORT["clock"] = cut, clock(cli.pick_threads())
    pyautoattack.AutoAttack = ShortAutoAttack  # attacks.py imports it at each call
    data.load_dataset = functools.cache(data.load_dataset)  # synthetic_cifar10 draws 60,000 images a call


def clock(threads: int):
    """One thread on a CPU: the process's CPU time, the wall time of a job on a core of its own (as run_all's --jobs
    up to the cores give) however busy other processes keep the machine; else the wall clock."""
    return time.process_time if threads == 1 and not torch.cuda.is_available() else time.perf_counter


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def quietly(task):
    """task's result, its output swallowed; a failure: {'error': its last line}."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            return task()
    except BaseException as exc:  # noqa: B036 (argparse's exit too)
        said = [line for line in out.getvalue().splitlines() if line.strip()]
        return {"error": said[-1] if isinstance(exc, SystemExit) and said else f"{type(exc).__name__}: {exc}"}


def time_training(script: str, argv: list, out: str, steps: int, cut: int, images: int, points: int) -> dict:
    """Seconds per training image and per curve point and PGD step of one kind of training: its script with its flags,
    2 epochs of `steps` batches (at most `images` images) in folder out."""
    seen, marks = {}, {"batches": [], "end": [], "saved": []}

    def batches(run, epoch):  # the clock as an epoch's batches begin
        marks["batches"].append(SHORT["clock"]())
        yield from BATCHES(run, epoch)

    def end_epoch(run, epoch):  # and as they end, and once the epoch is ended: the last one's checkpoint written
        marks["end"].append(SHORT["clock"]())
        row = END_EPOCH(run, epoch)
        marks["saved"].append(SHORT["clock"]())
        return row

    def save(obj, path):  # the warm-up epoch's checkpoint (half a GB for a ResNet-18 MoE) is never read
        if len(marks["end"]) > 1:
            SAVE(obj, path)

    def short(parser, argv=None):  # the run's own settings, then as few batches as will time it
        args = seen["args"] = PARSE_TRAIN(parser, argv)
        seen["real"] = {k: getattr(args, k) for k in ("epochs", "bs", "train_n", "eval_n", "eval_every", "eval_steps")}
        args.dataset, args.pretrained = STAND_IN.get(args.dataset, args.dataset), False  # no hub download
        args.train_n = min(steps * args.bs, images or steps * args.bs)
        args.epochs, args.eval_every, args.eval_n, args.out = 2, 2, 2, out  # the first epoch warms up
        args.eval_steps = max(1, args.eval_steps // cut)
        return args

    def run():
        tc.parse_args, tc.Run.batches, tc.Run.end_epoch, tc.atomic_save = short, batches, end_epoch, save
        model = importlib.import_module(script.removesuffix(".py")).main(argv)
        args, real = seen["args"], seen["real"]
        seconds = marks["end"][1] - marks["batches"][1]
        timed = args.train_n if args.train_n < args.bs else args.train_n // args.bs * args.bs
        train, test = data.load_dataset(args.dataset, args.data_dir)
        n = len(test) if real["eval_n"] <= 0 else min(real["eval_n"], len(test))
        x, y = data.test_subset(test, min(n, points or n))
        device = next(model.parameters()).device
        sync()
        start = SHORT["clock"]()
        with torch.autocast(device.type, torch.bfloat16, enabled=args.amp and device.type == "cuda"):
            evaluate_attack(model, x.to(device), y.to(device), "whole", "pgd", args.eps, args.step_size,
                            args.eval_steps, 256)  # as Run.evaluate_points
        sync()
        curve = SHORT["clock"]() - start
        return {"image": seconds / timed, "point_step": curve / (len(y) * args.eval_steps),
                "epoch": marks["saved"][1] - marks["end"][1], "real": real,
                "train_images": len(train), "test_points": len(test)}
    return quietly(run)


def time_evaluation(argv: list, shares: dict, out: str, cut: int, points: int) -> dict:
    """Seconds of each attack of an eval.py command: eval.py itself on its checkpoint, PGD steps and AutoAttack cut,
    at most `points` test points, shares[attack] of them surviving every attack; scaled back to the real command."""
    seen, timed = {}, {}

    def short(argv=None):
        args = PARSE_EVAL(argv)
        seen.update(vars(args))
        args.eps, args.out, args.keep_done = TINY_EPS, out, False
        args.steps = max(1, args.steps // cut)
        if points:
            args.n = points if args.n <= 0 else min(args.n, points)
            args.aa_n, args.smooth_n = (n if n is None else min(n if n > 0 else points, points)
                                        for n in (args.aa_n, args.smooth_n))
        return args

    def labelled(model, x, y, index, dual, run_args, args, *rest):  # eval.evaluate, on labels that set who survives
        with torch.no_grad():
            logits = model(x)
        survive = torch.arange(len(y), device=y.device) < round(shares[args.attack] * len(y))
        y = torch.where(survive, logits.argmax(1), (logits.argmax(1) + 1) % logits.shape[1])
        SHORT["ratio"] = None
        sync()
        start = SHORT["clock"]()
        result = EVALUATE(model, x, y, index, dual, run_args, args, *rest)
        sync()
        test = len(data.load_dataset(run_args["dataset"], run_args.get("data_dir", "data"))[1])
        timed[args.attack] = dict(seconds=SHORT["clock"]() - start, points=len(y), steps=args.steps,
                                  ratio=SHORT["ratio"], test=test)
        return result

    def scaled(attack, t):  # to the command's own points and steps, and AutoAttack's iterations
        family = getattr(evaluation, "AA_FAMILY", ("aa",))
        n = {**dict.fromkeys(family, seen["aa_n"]), "smooth": seen["smooth_n"]}.get(attack)
        n = seen["n"] if n is None else n
        n = t["test"] if n <= 0 else n
        fixed = attack in getattr(evaluation, "PAPER_STEPS", {})  # iterations fixed by the attack's name: not cut
        return t["seconds"] * (t["ratio"] or (1 if fixed else seen["steps"] / t["steps"])) * n / t["points"]

    def run():
        evaluation.parse_args, evaluation.evaluate = short, labelled
        evaluation.main(argv)
        return {"attacks": {attack: scaled(attack, t) for attack, t in timed.items()}}
    return quietly(run)



def call(task):
    """Pool entry point: (function name, arguments)."""
    return globals()[task[0]](*task[1:])


# ----------------------------------------------------------------------------- the estimate

def structure(args: dict) -> tuple:
    """What an evaluation's cost depends on, from a run's args.json (a dual model: both MoEs')."""
    own = tuple(args.get(k) for k in STRUCTURE) + (args.get("method") == "sparse",)
    return own + tuple(structure(args[k]) for k in ("std_args", "rob_args") if k in args)


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def process_start(jobs: int, cpu: bool) -> float:
    """Seconds to start a job's Python and import what it imports, `jobs` at once as make starts them (cpu: each
    one's CPU seconds, as the workers' clock)."""
    start, before = time.perf_counter(), os.times()
    for proc in [subprocess.Popen([sys.executable, "-c", "import train_common, eval"], cwd=HERE) for _ in range(jobs)]:
        proc.wait()
    after = os.times()
    return (after.children_user + after.children_system - before.children_user - before.children_system) / jobs \
        if cpu else time.perf_counter() - start


def run_tasks(pool, tasks: dict, what: str) -> dict:
    """{key: result} of the timing tasks {key: (function name, arguments...)}; a failure ends the estimate."""
    print(f"estimate: timing {len(tasks)} {what}", file=sys.stderr, flush=True)
    results = dict(zip(tasks, pool.map(call, list(tasks.values()), chunksize=1)))
    for key, result in results.items():
        if "error" in result:
            raise ValueError(f"timing {what} {' '.join(map(str, key))[:200]} failed: {result['error']}")
    return results


def train_settings(jobs: list, units: dict) -> dict:
    """{folder: the epochs, images an epoch and curve of its training}: its own flags, else what its script made of
    them in the timed run; train_jtdmoe.py trains on the images of its --rob run unless it says --train-n."""
    settings = {}
    for job in (j for j in jobs if j["stage"] == "train"):
        unit, given = units[train_key(job)], dict(flags(job["argv"]))
        real = {k: int(given.get("--" + k.replace("_", "-"), v)) for k, v in unit["real"].items()}
        rob = os.path.dirname(given.get("--rob", "")) if "--train-n" not in given else ""
        if rob:
            real["train_n"] = settings[rob]["train_n"] if rob in settings else read_json(
                os.path.join(rob, "args.json")).get("train_n", 0)
        n = real["train_n"] or unit["train_images"]
        settings[job["folder"]] = {**real, "images": n if n < real["bs"] else n // real["bs"] * real["bs"],
                                   "eval_points": min(real["eval_n"] or unit["test_points"], unit["test_points"])}
    return settings


def estimate(jobs: list, args, scratch: str, pool, images, points) -> dict:
    """{(stage, folder): seconds} of every job, without its process start."""
    trains = [j for j in jobs if j["stage"] == "train"]
    first = {}  # kind -> its first job, whose timed run stands for every job of the kind
    for job in trains:
        first.setdefault(train_key(job), job)
    place = {j["folder"]: os.path.join(scratch, os.path.basename(first[train_key(j)]["folder"])) for j in trains}

    def mapped(argv):  # checkpoints in the scratch folder, where the timed runs write theirs
        return [functools.reduce(lambda a, pair: a.replace(pair[0] + "/", pair[1] + "/"), place.items(), arg)
                for arg in argv]
    level, units = {}, {}
    for key, job in first.items():  # a kind is timed after the kinds whose checkpoints it reads
        level[key] = 1 + max((level[train_key(j)] for j in trains if j["folder"] in job["deps"]), default=-1)
    for depth in sorted(set(level.values())):
        units.update(run_tasks(pool, {key: ("time_training", job["script"], mapped(job["argv"]), place[job["folder"]],
                                            args.steps, args.cut, images, points)
                                      for key, job in first.items() if level[key] == depth}, "kinds of training"))
    reference = read_json(args.reference) if os.path.exists(args.reference) else {}
    tasks, evaluated = {}, {}
    for job in (j for j in jobs if j["stage"] == "eval"):
        argv = mapped(job["argv"])
        given = flags(argv)
        made = [read_json(os.path.join(os.path.dirname(v), "args.json")) for k, v in given
                if k in ("--ckpt", "--std", "--rob")]
        if all(a["dataset"] in data.SYNTHETIC for a in made):  # a stand-in's checkpoint: no data to look for
            argv = [n if v is None else f"{n}={v}" for n, v in given if n != "--data-dir"]
        shares = {a: survival(reference, job["folder"], a) for a in dict(given)["--attack"].split(",")}
        key = (tuple(structure(a) for a in made), tuple(p for p in given if p[0] not in NOT_COST), str(shares))
        tasks.setdefault(key, ("time_evaluation", argv, shares, os.path.join(scratch, f"eval{len(tasks)}"), args.cut,
                               points))
        evaluated[job["folder"]] = key
    timed = run_tasks(pool, tasks, "kinds of evaluation") if tasks else {}
    settings = train_settings(jobs, units)
    return {(j["stage"], j["folder"]): training_seconds(units[train_key(j)], settings[j["folder"]])
            if j["stage"] == "train" else sum(timed[evaluated[j["folder"]]]["attacks"].values()) for j in jobs}


def kind_labels(jobs: list) -> dict:
    """{folder: its training's script and the flags that set its cost, less those every training shares}."""
    keys = {j["folder"]: train_key(j) for j in jobs if j["stage"] == "train"}
    common = set.intersection(*(set(k[1:]) for k in keys.values())) if keys else set()
    return {folder: " ".join([key[0].removesuffix(".py").removeprefix("train_")] + [
        f"{n} {v}" if v else n for n, v in key[1:] if (n, v) not in common]) for folder, key in keys.items()}


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.2f} h ({seconds:,.0f} s)"


def render(jobs: list, seconds: dict, startup: float, args, device: str, how: str, loads: tuple, took: float) -> str:
    """The estimate as text: the machine, what was timed, a table of the runs, the totals and the wall clocks."""
    labels = kind_labels(jobs)
    runs = list(dict.fromkeys(j["folder"] for j in jobs))
    cost = {(s, f): t + startup for (s, f), t in seconds.items()}
    attacks = {j["folder"]: dict(flags(j["argv"]))["--attack"] for j in jobs if j["stage"] == "eval"}
    rows = [[os.path.basename(f), labels.get(f, "(evaluation only)"), attacks.get(f, ""),
             f"{cost.get(('train', f), 0):,.0f}", f"{cost.get(('eval', f), 0):,.0f}"] for f in runs]
    train = sum(t for (s, _), t in cost.items() if s == "train")
    total = sum(cost.values())
    rows.append(["total (job-seconds)", "", "", f"{train:,.0f}", f"{total - train:,.0f}"])
    named = [(f"{j['stage']} {j['folder']}", cost[j["stage"], j["folder"]], [f"train {d}" for d in j["deps"]])
             for j in jobs]  # for wall_clock
    m = cli.machine()
    lines = [f"estimate of `bash run_all.sh {args.preset} --jobs {args.jobs}`: the {len(jobs)} jobs make would run now "
             f"({len(runs)} runs), timed in {took:.0f} s",
             f"machine: {m['cpu']} ({m['cpu_capability']}), {os.cpu_count()} cores, GPU {m['gpu'] or 'none'}, torch "
             f"{m['torch']}; timed {args.jobs} job(s) at once, {m['threads']} thread(s) each, as the run runs them; "
             f"load average (uptime) {' '.join(f'{v:.2f}' for v in loads[0])} before, "
             f"{' '.join(f'{v:.2f}' for v in loads[1])} after",
             f"timed: {how}; + {startup:.1f} s a job to start Python",
             "", cli.markdown_table(["run", "kind", "attacks", "train s", "eval s"], rows),
             f"job-seconds: {hours(total)}: training {train:,.0f} s, evaluation {total - train:,.0f} s"]
    lines += [f"wall clock with --jobs {n}: {hours(wall_clock(named, n))}" for n in range(1, args.jobs + 1)]
    if args.jobs > 1:
        lines.append(f"(--jobs below {args.jobs}: the same job times; on a CPU such jobs take more threads each)")
        eff, why = DDP_EFFICIENCY[device]
        ddp = [(n, t / (args.jobs * eff) if n.startswith("train") else t, d) for n, t, d in named]
        lines.append(f"torchrun --nproc_per_node {args.jobs}, one job at a time (each training {args.jobs} x "
                     f"{eff} as fast: {why}; evaluations one process): {hours(wall_clock(ddp, 1))}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("preset", help="run_all.sh's preset")
    p.add_argument("--runs", required=True, help="the runs folder of the dry run (run_all.sh's)")
    p.add_argument("--jobs", type=cli.number(int, 1), default=1, help="jobs at once (run_all.sh --jobs)")
    p.add_argument("--steps", type=cli.number(int, 1), default=os.environ.get("ESTIMATE_STEPS", "3"),
                   help="training batches timed per kind (default: ESTIMATE_STEPS, else 3)")
    p.add_argument("--cut", type=cli.number(int, 1), default=os.environ.get("ESTIMATE_CUT"),
                   help="attack steps and AutoAttack iterations divided by this, a divisor of 100 (default: "
                        "ESTIMATE_CUT, else 10; 100 for a paper preset on a CPU)")
    p.add_argument("--reference", default=None, help="the committed results whose surviving shares set what "
                                                     "AutoAttack costs (default results/<preset>/results.json)")
    args = p.parse_args(argv)
    if args.cut and 100 % args.cut:
        p.error(f"--cut {args.cut} does not divide 100 (ESTIMATE_CUT sets it): AutoAttack's attacks would not be cut "
                "evenly")
    args.runs = os.path.abspath(args.runs)
    args.reference = args.reference or os.path.join(HERE, "results", args.preset, "results.json")
    return args


def main(argv=None):
    args = parse_args(argv)
    jobs = parse_dry_run(sys.stdin)
    if not jobs:
        print(f"estimate: make would run nothing for preset {args.preset}: every job is done")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = device == "cpu" and args.preset not in CPU_PRESETS  # paper shapes on a CPU: a what-if, coarsely timed
    images, points = (2, 1) if small else (None, 256 if device == "cuda" else None)  # GPU: one eval batch
    args.cut = args.cut or (100 if small else 10)
    start, before = time.perf_counter(), os.getloadavg()
    cpu = clock(torch.get_num_threads()) is time.process_time  # the workers' threads: run_all's, as this process's
    startup = process_start(args.jobs, cpu)
    how = (f"{args.steps} training batches a kind after a warm-up epoch"
           + (f" ({images} images a batch, {points} test point an evaluation)" if images else "")
           + f"; attacks' steps and AutoAttack's iterations cut {args.cut}-fold and multiplied back; in "
           + ("CPU seconds of each job's one thread: its wall clock on a core of its own, whatever else loads the "
              "machine now" if cpu else "wall-clock seconds, under the load above"))
    pool = multiprocessing.get_context("spawn").Pool(args.jobs, worker_start, (args.cut,))
    try:
        with tempfile.TemporaryDirectory(prefix="estimate-") as scratch:
            seconds = estimate(jobs, args, scratch, pool, images, points)
    finally:
        pool.close()
        pool.join()
    print(render(jobs, seconds, startup, args, device, how, (before, os.getloadavg()), time.perf_counter() - start))


if __name__ == "__main__":
    cli.run_main(main)
