"""What every train script shares: flags, checkpoint and log as one unit, exact resume, the divergence guard, DDP.

A train script shows its own loop (nanoGPT style) and leans on `Run` for the rest:
    run = Run(args); model = run.prepare(...); start = run.start(model, optimizers, schedulers)
    for epoch in range(start, args.epochs):
        for x, y in run.batches(epoch): run.update(loss, model, optimizer); scheduler.step()
        run.end_epoch(epoch)
"""
import argparse
import atexit
import contextlib
import fcntl
import glob
import json
import os
import time

import torch
import torch.distributed as dist

import data
from attacks import clean_correct, evaluate_attack
from checkpoint import (atomic_save, atomic_write, build_model_from_args, load_checkpoint, load_weights,  # noqa: F401
                        load_dense_weights, log_csv, model_from_checkpoint, read_log, rng_state, set_rng_state)
from cli import ArgumentParser, Divergence, machine, number, pick_device, run_main as cli  # noqa: F401
import moe_cnn
from moe import ARCHS, DualMoE, MoE, check_routing

# per dataset: what a flag left unset becomes. digits balances harder: at 0.01 every digits router
# collapsed onto one expert (measured), which leaves RT-ER's second expert untrained by the CE. channels_last
# made a digits RT-ER epoch 26 % faster on CPU (oneDNN's small convolutions); on GPUs it is a choice.
DEFAULTS = {
    "digits": dict(arch="cnn", epochs=30, bs=64, lr=1e-3, eval_n=0, balance=0.1, channels_last=True),
    # Fashion-MNIST: the digits settings (not tuned on it); per-epoch RA on 1,000 of its 10,000 test images
    "fashion_mnist": dict(arch="cnn", epochs=30, bs=64, lr=1e-3, eval_n=1000, balance=0.1, channels_last=True),
    "cifar10": dict(arch="resnet18", epochs=130, bs=512, lr=1e-4, eval_n=1000, balance=0.01, channels_last=False),
    "cifar100": dict(arch="resnet18", epochs=130, bs=512, lr=1e-4, eval_n=1000, balance=0.01, channels_last=False),
    # TinyImageNet: batch 512 and the training attack's step 2/255 (= eps) of the public code (tinyimagenet_RT_ER.py)
    "tinyimagenet": dict(arch="vit_small", epochs=10, bs=512, lr=1e-4, eval_n=1000, balance=0.01, channels_last=False,
                         step_size=2 / 255),
    "imagenet": dict(arch="vit_small", epochs=10, bs=256, lr=1e-4, eval_n=1000, balance=0.01, channels_last=False),
}
DEFAULTS.update({name: DEFAULTS[real] for name, (real, _, _) in data.SYNTHETIC.items()})  # paper shapes, random pixels
OPTIMISER = dict(opt="adam", wd=0.0, sched="cyclic")  # the ICML paper's MoE runs
# MoE-CNN runs (AdvMoE appendix B): SGD momentum 0.9, weight decay 5e-4, lr 0.1, cosine, 100 epochs, batch 128;
# AT (Sparse) learns its mask for 100 epochs, then fine-tunes for 100
CNN_METHODS = ("st", "at", "trades", "advmoe", "sparse")  # RT-ER and JTDMoE need whole-network experts
MOE_CNN_DEFAULTS = dict(opt="sgd", wd=5e-4, lr=0.1, sched="cosine", epochs=100, bs=128)
# the only settings --resume may change: how long, where and how fast it runs, how often it is evaluated
RESUMABLE = ("epochs", "out", "data_dir", "download", "device", "workers", "compile", "eval_every", "eval_n",
             "eval_steps")
RUN_MODE = ("resume", "overwrite", "resumed", "machine", "machines")  # how and where it ran, not what the run is
CHECK_EVERY = 50  # steps between host reads of the losses' finiteness (and the progress bar's loss)
RUN_FILES = ("ckpt.pt", "log.csv", "args.json")  # their presence means a folder holds a run
STALE_ONCE_TRAINED = ("diverged.json", "eval_*.json", "eval_*.md", "dual_*.json", "dual_*.md")


# ----------------------------------------------------------------------------- flags

def base_parser(description: str, method: str) -> argparse.ArgumentParser:
    p = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(method=method)
    nonneg, count = number(float, 0), number(int, 0)
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default="digits", choices=list(DEFAULTS))
    g.add_argument("--data-dir", default="data", help="where the dataset lives (or is downloaded to)")
    g.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    g.add_argument("--arch", default=None, choices=ARCHS + moe_cnn.ARCHS,
                   help="expert architecture (default per dataset); moe_*: the MoE-CNN of AdvMoE (moe_cnn.py)")
    g.add_argument("--experts", type=number(int, 1), default=None,
                   help="number of experts E (default 4; MoE-CNN: 1 is the dense network of width --scale)")
    g.add_argument("--scale", type=number(float, 0, 1), default=1.0,
                   help="MoE-CNN model scale r: an expert's share of the dense layer's channels")
    g.add_argument("--topk", type=number(int, 1), default=1, help="experts selected per input")
    g.add_argument("--pretrained", action="store_true", help="start vit_small experts from ImageNet weights")
    g.add_argument("--balance", type=nonneg, default=None,
                   help="weight of the Switch load-balancing loss (default 0.1 on digits, fashion_mnist, else 0.01)")
    g.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    g.add_argument("--train-n", type=count, default=0,
                   help="train on a fixed class-balanced subset of N training images, the same for every seed (0: all)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=number(int, 1), default=None)
    g.add_argument("--bs", type=number(int, 1), default=None, help="global batch size")
    g.add_argument("--lr", type=nonneg, default=None, help="peak learning rate")
    g.add_argument("--opt", default=None, choices=("adam", "sgd"), help="default adam; MoE-CNN archs: sgd")
    g.add_argument("--wd", type=nonneg, default=None, help="weight decay (default 0; MoE-CNN archs: 5e-4)")
    g.add_argument("--sched", default=None, choices=("cyclic", "cosine", "const"),
                   help="cyclic: lr/2 -> lr -> lr/2 over the run (default; MoE-CNN archs: cosine)")
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("attack budget (pixel units, images in [0, 1])")
    g.add_argument("--eps", type=number(float, 0, 1), default=None, help="l_inf budget (default per dataset)")
    g.add_argument("--step-size", type=nonneg, default=None, help="PGD step (default eps/4; TinyImageNet 2/255)")
    g.add_argument("--steps", type=count, default=10, help="PGD steps of the training attack")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default runs/<dataset>/<method>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (a new run if it has none)")
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out instead of refusing")
    g.add_argument("--eval-every", type=number(int, 1), default=1, help="epochs between SA / RA evaluations")
    g.add_argument("--eval-n", type=count, default=None, help="test points for per-epoch SA / RA (0: all)")
    g.add_argument("--eval-steps", type=count, default=50, help="PGD steps of the per-epoch RA")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default on for digits, fashion_mnist, off otherwise)")
    g.add_argument("--compile", action="store_true", help="torch.compile each expert")
    g.add_argument("--workers", type=count, default=8, help="data-loader workers (ImageFolder datasets)")
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse and fill the per-dataset defaults; what argparse cannot check is a one-line ValueError."""
    args = parser.parse_args(argv)
    arch = args.arch or DEFAULTS[args.dataset]["arch"]
    cnn = arch in moe_cnn.ARCHS
    defaults = {**DEFAULTS[args.dataset], **OPTIMISER, **(MOE_CNN_DEFAULTS if cnn else {}),
                "experts": 1 if args.method == "sparse" else 4}
    if cnn and args.dataset in ("digits", "fashion_mnist"):  # the appendix's 100 epochs are for CIFAR; these keep 30
        defaults["epochs"] = DEFAULTS[args.dataset]["epochs"]
    if args.method == "sparse":
        defaults["epochs"] *= 2
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if cnn:
        if args.method not in CNN_METHODS:
            raise ValueError(f"the MoE-CNN archs train with {', '.join(CNN_METHODS)} (train_st.py, train_at.py); "
                             f"{args.method} needs the whole-network experts of --arch {', '.join(ARCHS)}")
        if args.topk != 1:
            raise ValueError(f"an MoE-CNN routes each input to one expert (top-1), got --topk {args.topk}")
        if args.method == "sparse" and args.experts != 1:
            raise ValueError("AT (Sparse) prunes a dense network: --experts 1 (its --scale is the share it keeps)")
    else:
        check_routing(args.experts, args.topk)
        if args.scale != 1.0 or args.method == "sparse":
            raise ValueError(f"--scale and train_sparse.py are for the MoE-CNN archs ({', '.join(moe_cnn.ARCHS)}), "
                             f"not --arch {arch}")
    args.eps = data.dataset_info(args.dataset).eps if args.eps is None else args.eps
    args.step_size = args.eps / 4 if args.step_size is None else args.step_size
    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    args.out = args.out or os.path.join("runs", args.dataset, args.method)
    return args


# ----------------------------------------------------------------------------- optimisation

def make_optimizer(params, args) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) or Adam, fused: one kernel over every tensor. An MoE has E times a network's tensors, and
    the per-tensor loop cost a 4-expert ResNet18 step 6 % on CPU (0.17 s of Adam against 0.07 s fused, measured)."""
    if args.opt == "sgd":
        return torch.optim.SGD(list(params), args.lr, momentum=0.9, weight_decay=args.wd, fused=True)
    return torch.optim.Adam(list(params), args.lr, weight_decay=args.wd, fused=True)


def make_scheduler(optimizer, args, steps_per_epoch: int):
    total = max(1, args.epochs * steps_per_epoch)
    if args.sched == "cyclic":  # one triangle lr/2 -> lr -> lr/2 (public code: CyclicLR 5e-5 .. 1e-4)
        return torch.optim.lr_scheduler.CyclicLR(optimizer, args.lr / 2, args.lr, step_size_up=max(1, total // 2),
                                                 cycle_momentum=False)
    if args.sched == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def prepare_model(model: torch.nn.Module, device, channels_last: bool = False, compile: bool = False):
    """Move to the device, channels_last memory format, torch.compile each expert (state_dict keys unchanged)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        for moe in [m for m in model.modules() if isinstance(m, MoE)]:
            for expert in moe.experts:
                expert.compile(dynamic=True)
    return model


def curve_due(epoch: int, every: int, epochs: int) -> bool:
    """Whether epoch (0-based) ends with the per-epoch curve evaluation: every `every` epochs and after the last."""
    return (epoch + 1) % every == 0 or epoch + 1 == epochs


def backward_and_step(loss, model, optimizers) -> None:
    """Clear every gradient of model, backward (under DDP: gradients averaged over the processes), step each one."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()


class LossOf(torch.nn.Module):
    """Lets DDP see a loss that a function of the model computes: DDP(LossOf(model))(fn, *args) = fn(*args), so that
    the losses keep calling the model's own methods (gates, component views) and DDP still averages the gradients."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


# ----------------------------------------------------------------------------- one training run

class Run:
    """Device, data and run folder of one training run; its checkpoint holds the weights and the log together."""

    def __init__(self, args):
        self.args, self.rank, self.world = args, 0, 1
        torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
        # the device first: it picks the backend, and NCCL's object collectives use the GPU set_device chose
        self.device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)) if torchrun else None)
        if torchrun:
            if not dist.is_initialized():  # a second Run in the same process joins the same group
                # NCCL has no CPU side: every collective here takes tensors on self.device
                cuda = self.device.type == "cuda"
                dist.init_process_group("nccl" if cuda else "gloo", device_id=self.device if cuda else None)
                atexit.register(dist.destroy_process_group)  # gloo's threads left running at exit abort the process
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(args.seed + self.rank)
        self.info = data.dataset_info(args.dataset)
        self.train_set, self.test_set = data.load_dataset(args.dataset, args.data_dir, args.download)
        self.train_set = data.train_subset(self.train_set, args.train_n)  # seed 0 always: one subset for every run
        if args.bs % self.world:
            raise ValueError(f"--bs {args.bs} is not divisible by the {self.world} processes")
        self.loader = data.train_loader(self.train_set, self.info, args.bs, self.device, args.seed,
                                        not args.no_augment, args.workers, self.rank, self.world)
        x_test, y_test = data.test_subset(self.test_set, args.eval_n)
        self.x_test, self.y_test = x_test.to(self.device), y_test.to(self.device)
        self.ckpt_path, self.log_path = os.path.join(args.out, "ckpt.pt"), os.path.join(args.out, "log.csv")
        self.rows, self.epoch, self.step, self.saved_epoch, self.ddp = [], 0, 0, 0, None
        self.stepped = None  # the optimiser of the last update: the log's lr is its (AT (Sparse) steps one per stage)
        self.second_loader = None  # AdvMoE's router batches, made on first use

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def prepare(self, model):
        return prepare_model(model, self.device, self.args.channels_last, self.args.compile)

    def autocast(self):
        if self.args.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def start(self, model, optimizers: dict, schedulers: dict, extra_args: dict = None) -> int:
        """Claim the run folder, restore a checkpoint under --resume; returns the first epoch to train."""
        a = self.args
        self.model, self.optimizers, self.schedulers = model, optimizers, schedulers
        self.saved_args = {**vars(a), **(extra_args or {}), "machine": machine()}
        if self.is_main:
            self.claim_folder()
        start = 0
        if a.resume and os.path.exists(self.ckpt_path):
            start = self.restore()
        elif a.resume:
            print(f"no checkpoint in {a.out}: starting a new run")
        # every sitting's machine, not only this one's: a resumed run's epochs may come from several
        self.saved_args["machines"] = self.saved_args.get("machines", []) + [
            {"from_epoch": start + 1, **self.saved_args["machine"]}]
        if self.world > 1:  # DDP starts every process from rank 0's weights (each seeded its own init). Top-k routing
            # leaves experts without gradient in a step: find_unused_parameters marks them ready (DDP's own way)
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                LossOf(model), device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        if self.is_main:
            if start < a.epochs:  # what was measured on the old weights no longer describes the run
                for pattern in STALE_ONCE_TRAINED:
                    for path in glob.glob(os.path.join(a.out, pattern)):
                        os.remove(path)
            atomic_write(os.path.join(a.out, "args.json"), json.dumps(self.saved_args, indent=1))
            atomic_write(self.log_path, log_csv(self.rows))
        return start

    def claim_folder(self) -> None:
        """Create --out, lock it for this process, clear torn temporary files, refuse to mix with another run."""
        a = self.args
        os.makedirs(a.out, exist_ok=True)
        self.lock = open(os.path.join(a.out, ".lock"), "a")
        try:  # a POSIX record lock: per process, so a second run in this same process may take it again
            fcntl.lockf(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another process is training in {a.out}; wait for it or choose another --out") from None
        for tmp in glob.glob(os.path.join(a.out, "*.tmp*")):  # left by a kill or a full disk during a save
            os.remove(tmp)
        found = [f for f in RUN_FILES if os.path.exists(os.path.join(a.out, f))]
        if found and "ckpt.pt" not in found and not read_log(self.log_path):  # a start that failed before epoch 1
            found = []
        if found and not a.resume:
            if not a.overwrite:
                raise ValueError(f"{a.out} holds another run ({', '.join(found)}): continue it with --resume, "
                                 "replace it with --overwrite, or choose another --out")
            for pattern in RUN_FILES + STALE_ONCE_TRAINED:
                for path in glob.glob(os.path.join(a.out, pattern)):
                    os.remove(path)

    def restore(self) -> int:
        """Load weights, optimisers, schedules, RNG and log; refuse settings that would change the run's meaning."""
        ckpt = load_checkpoint(self.ckpt_path)
        old, new = {"train_n": 0, **ckpt["args"]}, self.saved_args  # runs from before --train-n trained on all
        differ = [k for k in old if k in new and k not in RESUMABLE + RUN_MODE and old[k] != new[k]]
        if differ:
            flags = ", ".join("--" + k.replace("_", "-") for k in RESUMABLE)
            raise ValueError(
                f"--resume: {self.args.out} was made with {', '.join(f'{k}={old[k]!r}' for k in differ)}; this run "
                f"asks for {', '.join(f'{k}={new[k]!r}' for k in differ)}. Only {flags} may change on resume "
                "(--overwrite starts the run anew)")
        changed = {k: [old.get(k), new[k]] for k in RESUMABLE if k in old and old[k] != new[k]}
        new["resumed"] = old.get("resumed", []) + ([{"after_epoch": ckpt["epoch"] + 1, "changed": changed}]
                                                   if changed else [])
        new["machines"] = old.get("machines", [])  # start() adds this sitting's
        load_weights(self.model, ckpt["model"], self.ckpt_path)
        for k, o in self.optimizers.items():
            o.load_state_dict(ckpt["optimizer"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(ckpt["scheduler"][k])
        set_rng_state(ckpt["rng"])
        self.rows = ckpt.get("log") or [r for r in read_log(self.log_path) if int(r["epoch"]) <= ckpt["epoch"] + 1]
        if os.path.exists(self.log_path) and open(self.log_path, newline="").read() != log_csv(self.rows):
            print(f"{self.log_path} did not match the checkpoint (torn or stale): rewritten from it")
        self.saved_epoch = ckpt["epoch"] + 1
        print(f"resuming {self.ckpt_path} after epoch {self.saved_epoch}")
        return self.saved_epoch

    def batches(self, epoch: int):
        """The epoch's training batches (x, y) on the device, with a progress bar; sets the epoch's meters."""
        from tqdm import tqdm
        a = self.args
        self.epoch, self.sums, self.counts, self.first_bad, self.t0 = epoch, {}, {}, {}, time.time()
        self.loader.set_epoch(epoch)
        bar = tqdm(self.loader, desc=f"{a.method} epoch {epoch + 1}/{a.epochs}", leave=False,
                   disable=not self.is_main or None)
        for self.step, (x, y) in enumerate(bar):
            yield self.memory_format(x), y
            if (self.step + 1) % CHECK_EVERY == 0:  # the only host reads of the loop
                self.check_finite()
                bar.set_postfix(loss=f"{float(self.sums.get('loss', 0.0)) / max(self.counts.get('loss', 1), 1):.3f}")

    def memory_format(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.args.channels_last else x

    def second_shuffle(self, epoch: int):
        """The epoch's training batches in a second, independently seeded order (AdvMoE's router batches)."""
        a = self.args
        if self.second_loader is None:
            self.second_loader = data.train_loader(self.train_set, self.info, a.bs, self.device, a.seed + 1_000_003,
                                                   not a.no_augment, a.workers, self.rank, self.world)
        self.second_loader.set_epoch(epoch)
        return ((self.memory_format(x), y) for x, y in self.second_loader)

    def loss(self, fn, *args, **kwargs) -> torch.Tensor:
        """fn(*args, **kwargs), a loss of the model; under torchrun computed inside DDP, which averages its gradients
        in the backward pass. Attacks inside fn differentiate w.r.t. the input only: nothing is synchronised there."""
        return self.ddp(fn, *args, **kwargs) if self.ddp is not None else fn(*args, **kwargs)

    def update(self, loss: torch.Tensor, model, *optimizers, name: str = "loss") -> None:
        """One step: clear every gradient of model, backward, average over processes, step. The loss is summed and
        checked for finiteness on the device (the first bad step kept there), read back only by check_finite."""
        value = loss.detach().double()
        bad = self.first_bad.get(name, torch.full((2,), -1.0, dtype=torch.float64, device=value.device))
        here = torch.stack([torch.full((), float(self.step), dtype=torch.float64, device=value.device), value])
        self.first_bad[name] = torch.where((bad[0] < 0) & ~torch.isfinite(value), here, bad)
        backward_and_step(loss, model, optimizers)
        self.stepped = optimizers[0]
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def check_finite(self) -> None:
        """Stop the run, naming the step, if a loss of this epoch became NaN or inf (every CHECK_EVERY steps and at
        the epoch's end, before anything is saved: the last good checkpoint stays as it was)."""
        for name, (step, value) in ((k, v.tolist()) for k, v in self.first_bad.items()):
            if step >= 0:
                self.diverged(f"{name} became {value} at epoch {self.epoch + 1}, step {int(step) + 1}")

    def end_epoch(self, epoch: int) -> dict:
        """Evaluate when due, then write checkpoint (with the whole log inside) and log.csv; returns the log row."""
        a = self.args
        self.check_finite()
        sums = {k: torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float64, device=self.device),
                                torch.tensor(float(self.counts[k]), dtype=torch.float64, device=self.device)])
                for k in self.sums}
        if self.world > 1:  # the epoch's mean losses over every process's batches, on the group's device
            for pair in sums.values():
                dist.all_reduce(pair)
        lr_of = self.stepped or next(iter(self.optimizers.values()))
        row = {"epoch": epoch + 1, "lr": lr_of.param_groups[0]["lr"],
               **{k: (pair[0] / pair[1]).item() for k, pair in sums.items()},
               "train_seconds": round(time.time() - self.t0, 2)}
        if curve_due(epoch, a.eval_every, a.epochs):  # every process attacks its share
            row.update(self.evaluate(self.model))
        if self.is_main:
            self.rows.append(row)
            atomic_save({"model": self.model.state_dict(), "args": self.saved_args, "epoch": epoch,
                         "optimizer": {k: o.state_dict() for k, o in self.optimizers.items()},
                         "scheduler": {k: s.state_dict() for k, s in self.schedulers.items()},
                         "rng": rng_state(), "metrics": row, "log": self.rows}, self.ckpt_path)
            self.saved_epoch = epoch + 1
            atomic_write(self.log_path, log_csv(self.rows))  # a kill before this line: --resume rewrites it
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if "usage" not in k), flush=True)
        if self.world > 1:
            dist.barrier()
        return row

    def evaluate_points(self, model, bs: int = 256):
        """Per test point (clean correct, correct under PGD on the whole model), in test-subset order. The batches are
        shared out over the processes and gathered; batch b's random start is seeded by b alone, so any number of
        processes gives the numbers of one."""
        a = self.args
        starts = list(range(0, len(self.x_test), bs))
        mine = {}
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), self.autocast():
            for b in starts[self.rank::self.world]:
                torch.manual_seed(a.seed * 1_000_003 + b)
                x, y = self.x_test[b:b + bs], self.y_test[b:b + bs]
                robust = evaluate_attack(model, x, y, "whole", "pgd", a.eps, a.step_size, a.eval_steps, bs)[0]
                mine[b] = (clean_correct(model, x, y).cpu(), robust.cpu())
        parts = [mine]
        if self.world > 1:
            parts = [None] * self.world
            dist.all_gather_object(parts, mine)
        found = {b: v for part in parts for b, v in part.items()}
        assert sorted(found) == starts and sum(map(len, parts)) == len(starts), "a test batch went missing or twice"
        return tuple(torch.cat([found[b][i] for b in starts]) for i in (0, 1))

    def evaluate(self, model) -> dict:
        """SA and PGD RA on the test subset (sharded over the processes), plus top-1 expert usage of each MoE."""
        clean, robust = self.evaluate_points(model)
        metrics = {"sa": 100 * clean.float().mean().item(), "ra": 100 * robust.float().mean().item()}
        moes = {"std_": model.std, "rob_": model.rob} if isinstance(model, DualMoE) else {"": model}
        with torch.no_grad(), self.autocast():
            for prefix, moe in ((p, m) for p, m in moes.items() if m.num_experts > 1):
                counts = torch.bincount(moe.gates(self.x_test).argmax(1), minlength=moe.num_experts)
                for i, c in enumerate(counts.tolist()):
                    metrics[f"{prefix}usage_{i}"] = round(c / len(self.x_test), 4)
        return metrics

    def diverged(self, message: str):
        last = (f"last good checkpoint: {self.ckpt_path} (epoch {self.saved_epoch})" if self.saved_epoch
                else "no checkpoint was written yet")
        if self.is_main:
            atomic_write(os.path.join(self.args.out, "diverged.json"),
                         json.dumps({"message": message, "epoch": self.epoch + 1}))
        raise Divergence(f"training diverged: {message}; {last}")
