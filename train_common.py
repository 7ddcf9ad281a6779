"""What every train script shares: flags, the epoch loop, checkpoints, logging, the divergence guard, DDP.

A train script builds its model(s) and optimiser(s), defines a `train_step(x, y) -> dict` that calls
`run.step(loss, *optimizers)` for each update, and hands both to `run.fit`.
"""
import argparse
import csv
import io
import json
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext

import torch
import torch.distributed as dist

import data
from attacks import clean_correct, evaluate_attack
from moe import ARCHS, DualMoE, MoE, build_moe, check_routing

# per dataset: what a flag left unset becomes. digits balances harder: at 0.01 every digits router
# collapsed onto one expert (measured), which leaves RT-ER's second expert untrained by the CE. channels_last
# made a digits RT-ER epoch 26 % faster on CPU (oneDNN's small convolutions); on GPUs it is a choice.
DEFAULTS = {
    "digits": dict(arch="cnn", epochs=30, bs=64, lr=1e-3, eval_n=0, balance=0.1, channels_last=True),
    "cifar10": dict(arch="resnet18", epochs=130, bs=512, lr=1e-4, eval_n=1000, balance=0.01, channels_last=False),
    "tinyimagenet": dict(arch="vit_small", epochs=10, bs=128, lr=1e-4, eval_n=1000, balance=0.01,
                         channels_last=False),
    "imagenet": dict(arch="vit_small", epochs=10, bs=256, lr=1e-4, eval_n=1000, balance=0.01, channels_last=False),
}
CKPT = "ckpt.pt"
# AdvMoE steps one of two optimisers per batch while both schedules advance; the warning is noise there
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")


class Divergence(RuntimeError):
    """The loss became NaN or inf."""


# ----------------------------------------------------------------------------- flags

class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one `error:` line on stderr (exit 2), not the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def number(kind=float, low=None, high=None):
    """An argparse type: a finite int / float in [low, high], else one clear line."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
            where = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"{text} is not a finite number in {where}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def markdown_table(header, rows) -> str:
    """A markdown table; float cells with two decimals, other cells as str()."""
    cell = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]) + "\n"


def base_parser(description: str, method: str) -> argparse.ArgumentParser:
    p = ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.set_defaults(method=method)
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="digits", help="digits | cifar10 | tinyimagenet | imagenet")
    g.add_argument("--data-dir", default="data", help="where the dataset lives (or is downloaded to)")
    g.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    g.add_argument("--arch", default=None, help=f"expert architecture: {' | '.join(ARCHS)} (default per dataset)")
    g.add_argument("--experts", type=int, default=4, help="number of experts E")
    g.add_argument("--topk", type=int, default=1, help="experts selected per input")
    g.add_argument("--pretrained", action="store_true", help="start vit_small experts from ImageNet weights")
    g.add_argument("--balance", type=float, default=None,
                   help="weight of the Switch load-balancing loss (default 0.1 on digits, else 0.01)")
    g.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None)
    g.add_argument("--bs", type=int, default=None, help="global batch size")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate")
    g.add_argument("--opt", default="adam", help="adam | sgd")
    g.add_argument("--wd", type=float, default=0.0, help="weight decay")
    g.add_argument("--sched", default="cyclic", help="cyclic (lr/2 -> lr -> lr/2 over the run) | cosine | const")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("attack budget (pixel units)")
    g.add_argument("--eps", type=float, default=None, help="l_inf budget (default per dataset)")
    g.add_argument("--step-size", type=float, default=None, help="PGD step (default eps/4)")
    g.add_argument("--steps", type=int, default=10, help="PGD steps of the training attack")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default runs/<dataset>/<method>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--eval-every", type=int, default=1, help="epochs between SA / RA evaluations")
    g.add_argument("--eval-n", type=int, default=None, help="test points for per-epoch SA / RA (0: all)")
    g.add_argument("--eval-steps", type=int, default=50, help="PGD steps of the per-epoch RA")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default on for digits, off otherwise)")
    g.add_argument("--compile", action="store_true", help="torch.compile each expert")
    g.add_argument("--workers", type=int, default=8, help="data-loader workers (ImageFolder datasets)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse, fill the per-dataset defaults and check ranges (ValueError with one clear line)."""
    args = parser.parse_args(argv)
    info = data.dataset_info(args.dataset)
    for key, value in DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.arch not in ARCHS:
        raise ValueError(f"unknown arch {args.arch!r}; choose one of {', '.join(ARCHS)}")
    check_routing(args.experts, args.topk)
    if args.eps is None:
        args.eps = info.eps
    if args.eps < 0:
        raise ValueError(f"eps must be >= 0, got {args.eps}")
    if args.balance < 0:
        raise ValueError(f"--balance must be >= 0, got {args.balance}")
    if args.step_size is None:
        args.step_size = args.eps / 4
    for key in ("epochs", "bs", "steps", "eval_every"):
        if getattr(args, key) < (0 if key == "steps" else 1):
            raise ValueError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.opt not in ("adam", "sgd"):
        raise ValueError(f"unknown optimiser {args.opt!r}; choose adam or sgd")
    if args.sched not in ("cyclic", "cosine", "const"):
        raise ValueError(f"unknown schedule {args.sched!r}; choose cyclic, cosine or const")
    if getattr(args, "beta", 0) < 0:
        raise ValueError(f"beta must be >= 0, got {args.beta}")
    args.out = args.out or os.path.join("runs", args.dataset, args.method)
    return args


def pick_device(name: str = "auto", local_rank: int = None) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device (cuda:local_rank under torchrun); one line if no GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} asked for, but no GPU is visible")
        if local_rank is not None:
            name = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(name))
    elif name != "cpu":
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    return torch.device(name)


# ----------------------------------------------------------------------------- checkpoints

def atomic_save(obj, path: str) -> None:
    """torch.save that leaves either the old file or the whole new one, never a torn one."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write(path: str, text: str) -> None:
    """Write a text file whole or not at all (run_all.sh reuses any result file it finds)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint dict with weights_only=True; a one-line ValueError when missing or damaged."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip reader, unpickler and EOF errors all mean a damaged file
        raise ValueError(f"checkpoint {path} is truncated or corrupted ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of this toolkit (no 'model' / 'args')")
    return ckpt


def load_weights(module: torch.nn.Module, state: dict, path: str) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ValueError(f"checkpoint {path} holds another architecture than this model ({detail})") from None


def build_model_from_args(a: dict, pretrained: bool = False) -> MoE:
    """The MoE described by a run's args (a dict), untrained unless pretrained."""
    info = data.dataset_info(a["dataset"])
    return build_moe(a["arch"], a["experts"], a["topk"], info.num_classes, info.shape, info.mean, info.std,
                     pretrained=pretrained)


def model_from_checkpoint(path: str, alpha: float = None, combine: str = None):
    """(model, ckpt) for a single-MoE or a JTDMoE checkpoint; dual models take alpha/combine from it unless given."""
    ckpt = load_checkpoint(path)
    a = ckpt["args"]
    if a.get("kind") == "dual":
        model = DualMoE(build_model_from_args(a["std_args"]), build_model_from_args(a["rob_args"]),
                        a["alpha"] if alpha is None else alpha, combine or a.get("combine", "logits"))
    else:
        model = build_model_from_args(a)
    load_weights(model, ckpt["model"], path)
    return model, ckpt


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- the run

def make_scheduler(args, optimizer, steps_per_epoch: int):
    total = max(1, args.epochs * steps_per_epoch)
    if args.sched == "cyclic":  # one triangle lr/2 -> lr -> lr/2 (public code: CyclicLR 5e-5 .. 1e-4)
        return torch.optim.lr_scheduler.CyclicLR(optimizer, args.lr / 2, args.lr, step_size_up=max(1, total // 2),
                                                 cycle_momentum=False)
    if args.sched == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


class Run:
    """Device, data, run folder and the training loop of one training run."""

    def __init__(self, args):
        self.args = args
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.device = self.pick_device(args.device)
        torch.manual_seed(args.seed + self.rank)
        self.info = data.dataset_info(args.dataset)
        self.train_set, self.test_set = data.load_dataset(args.dataset, args.data_dir, args.download)
        if args.bs % self.world:
            raise ValueError(f"--bs {args.bs} is not divisible by the {self.world} processes")
        self.loader = data.train_loader(self.train_set, self.info, args.bs, self.device, args.seed,
                                        not args.no_augment, args.workers, self.rank, self.world)
        x_test, y_test = data.test_subset(self.test_set, args.eval_n)
        self.x_test, self.y_test = x_test.to(self.device), y_test.to(self.device)
        self.ckpt_path = os.path.join(args.out, CKPT)
        self.log_path = os.path.join(args.out, "log.csv")
        self.model = None
        self.epoch = self.global_step = 0
        self.saved_epoch = 0  # epochs done in the checkpoint this run wrote or resumed from
        if self.is_main:
            os.makedirs(args.out, exist_ok=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def pick_device(self, name: str) -> torch.device:
        return pick_device(name, int(os.environ.get("LOCAL_RANK", 0)) if self.world > 1 else None)

    def autocast(self):
        if self.args.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the device and apply --channels-last / --compile (state_dict keys unchanged)."""
        model = model.to(self.device)
        if self.args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.args.compile:
            for moe in [m for m in model.modules() if isinstance(m, MoE)]:
                for expert in moe.experts:
                    expert.compile(dynamic=True)
        return model

    def build_moe(self) -> MoE:
        return self.prepare(build_model_from_args(vars(self.args), self.args.pretrained))

    def optimizer(self, params) -> torch.optim.Optimizer:
        params = list(params)
        if self.args.opt == "sgd":
            return torch.optim.SGD(params, self.args.lr, momentum=0.9, weight_decay=self.args.wd, nesterov=True)
        return torch.optim.Adam(params, self.args.lr, weight_decay=self.args.wd)

    # -- one update

    def step(self, loss: torch.Tensor, *optimizers) -> float:
        """Backward and update with the given optimisers; every gradient of the model is cleared first."""
        value = loss.item()
        if not math.isfinite(value):
            raise Divergence(f"loss became {value}")
        self.model.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:  # average gradients across processes (unused experts get zeros, so shapes agree)
            for opt in optimizers:
                for group in opt.param_groups:
                    for p in group["params"]:
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        dist.all_reduce(p.grad)
                        p.grad /= self.world
        for opt in optimizers:
            opt.step()
        return value

    # -- evaluation during training

    def evaluate(self, model) -> dict:
        """SA and PGD RA on the test subset, plus top-1 expert usage of each MoE on clean inputs."""
        a = self.args
        with self.autocast():
            sa = clean_correct(model, self.x_test, self.y_test).float().mean().item()
            ra = evaluate_attack(model, self.x_test, self.y_test, "whole", "pgd", a.eps, a.step_size,
                                 a.eval_steps)[0].float().mean().item()
            metrics = {"sa": 100 * sa, "ra": 100 * ra}
            moes = {"": model} if isinstance(model, MoE) else {"std_": model.std, "rob_": model.rob}
            with torch.no_grad():
                for prefix, moe in moes.items():
                    counts = torch.bincount(moe.gates(self.x_test).argmax(1), minlength=moe.num_experts)
                    for i, c in enumerate(counts.tolist()):
                        metrics[f"{prefix}usage_{i}"] = round(c / len(self.x_test), 4)
        return metrics

    # -- the loop

    def fit(self, model, optimizers: dict, train_step, extra_args: dict = None):
        """Train model for args.epochs with train_step(x, y) -> dict of floats; checkpoint every epoch."""
        a = self.args
        self.model = model
        schedulers = {k: make_scheduler(a, o, len(self.loader)) for k, o in optimizers.items()}
        saved_args = {**vars(a), **(extra_args or {})}
        start = 0
        if a.resume and os.path.exists(self.ckpt_path):
            start = self.restore(model, optimizers, schedulers, saved_args)
        elif a.resume:
            print(f"no checkpoint in {a.out}: starting a new run")
        if self.world > 1:  # every process starts from rank 0's weights (each seeded its own init)
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, 0)
        if self.is_main:
            if os.path.exists(os.path.join(a.out, "diverged.json")):
                os.remove(os.path.join(a.out, "diverged.json"))
            with open(os.path.join(a.out, "args.json"), "w") as f:
                json.dump(saved_args, f, indent=1)
            self.trim_log(start)
        from tqdm import tqdm
        for epoch in range(start, a.epochs):
            self.epoch = epoch
            model.train()
            self.loader.set_epoch(epoch)
            sums, count, t0 = {}, 0, time.time()
            bar = tqdm(self.loader, desc=f"{a.method} epoch {epoch + 1}/{a.epochs}", leave=False,
                       disable=not self.is_main or None)
            for i, (x, y) in enumerate(bar):
                if a.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                self.global_step = epoch * len(self.loader) + i
                try:
                    with self.autocast():
                        stats = train_step(x, y)
                except Divergence as exc:
                    self.diverged(f"{exc} at epoch {epoch + 1}, step {i + 1}")
                for s in schedulers.values():
                    s.step()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                bar.set_postfix(loss=f"{stats['loss']:.3f}")
            row = {"epoch": epoch + 1, "lr": optimizers[next(iter(optimizers))].param_groups[0]["lr"]}
            row.update({k: v / max(count, 1) for k, v in sums.items()})
            row["train_seconds"] = round(time.time() - t0, 2)
            if self.is_main and ((epoch + 1) % a.eval_every == 0 or epoch + 1 == a.epochs):
                row.update(self.evaluate(model))
            if self.is_main:
                self.save(model, optimizers, schedulers, saved_args, epoch, row)
                self.log(row)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                               if "usage" not in k), flush=True)
            if self.world > 1:
                dist.barrier()
        return model

    def save(self, model, optimizers, schedulers, saved_args, epoch, metrics):
        atomic_save({
            "model": model.state_dict(), "args": saved_args, "epoch": epoch,
            "optimizer": {k: o.state_dict() for k, o in optimizers.items()},
            "scheduler": {k: s.state_dict() for k, s in schedulers.items()},
            "scaler": None,  # bf16 autocast needs no loss scaling
            "rng": rng_state(), "metrics": metrics,
        }, self.ckpt_path)
        self.saved_epoch = epoch + 1

    def restore(self, model, optimizers, schedulers, saved_args) -> int:
        ckpt = load_checkpoint(self.ckpt_path)
        for key in ("dataset", "arch", "experts", "topk", "method"):
            if key in ckpt["args"] and ckpt["args"][key] != saved_args.get(key):
                raise ValueError(f"--resume: {self.ckpt_path} was made with {key}={ckpt['args'][key]!r}, "
                                 f"this run asks for {saved_args.get(key)!r}")
        load_weights(model, ckpt["model"], self.ckpt_path)
        for k, o in optimizers.items():
            o.load_state_dict(ckpt["optimizer"][k])
        for k, s in schedulers.items():
            s.load_state_dict(ckpt["scheduler"][k])
        set_rng_state(ckpt["rng"])
        print(f"resuming {self.ckpt_path} after epoch {ckpt['epoch'] + 1}")
        self.saved_epoch = ckpt["epoch"] + 1
        return ckpt["epoch"] + 1

    def log(self, row: dict) -> None:
        """Append a row to log.csv; a row with new columns (first evaluation) rewrites the header."""
        self.write_log(self.read_log() + [row])

    def read_log(self) -> list:
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path, newline="") as f:
            return list(csv.DictReader(f))

    def write_log(self, rows: list) -> None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.log_path, text.getvalue())

    def trim_log(self, start: int) -> None:
        """Keep only log rows of epochs before `start` (a fresh run starts an empty log)."""
        if os.path.exists(self.log_path):
            self.write_log([row for row in self.read_log() if int(row["epoch"]) <= start])

    def diverged(self, message: str):
        last = (f"last good checkpoint: {self.ckpt_path} (epoch {self.saved_epoch})" if self.saved_epoch
                else "no checkpoint was written yet")
        text = f"training diverged: {message}; {last}"
        if self.is_main:
            with open(os.path.join(self.args.out, "diverged.json"), "w") as f:
                json.dump({"message": message, "epoch": self.epoch + 1}, f)
        raise Divergence(text)


def cli(main) -> None:
    """Run main(); user errors become one line on stderr and a non-zero exit (MOE_DEBUG=1 shows tracebacks)."""
    if os.environ.get("MOE_DEBUG"):
        return main()
    try:
        main()
    except Divergence as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(3)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; continue with the same command and --resume", file=sys.stderr)
        sys.exit(130)
