"""Command-line plumbing shared by every script: one-line errors, checked numeric flags, the device, markdown."""
import argparse
import math
import os
import platform
import re
import sys

import torch


class Divergence(RuntimeError):
    """The loss became NaN or inf."""


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


def pick_device(name: str = "auto", local_rank: int = None) -> torch.device:
    """auto | cpu | cuda | cuda:N -> a torch.device (cuda:local_rank under torchrun); one line if no GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} asked for, but no GPU is visible")
        if local_rank is not None:
            name = f"cuda:{local_rank}"
        elif name == "cuda":  # an index, which torch.cuda.set_device and fork_rng need (torch 2.11 refuses "cuda")
            name = f"cuda:{torch.cuda.current_device()}"
        torch.cuda.set_device(torch.device(name))
    elif name != "cpu":
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    return torch.device(name)



def machine() -> dict:
    """What this process computes on. Kernels differ by CPU capability, oneDNN version and thread count (sums split
    differently), so a number is reproducible bit for bit only on the machine recorded with it."""
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:  # not Linux
        pass
    onednn = re.search(r"(?:oneDNN|MKL-DNN) v(\d+(?:\.\d+)*)", torch.__config__.show())  # MKL-DNN: oneDNN's old name
    # str(): torch.__version__ is a str subclass, which the checkpoint's weights_only loading refuses
    return {"cpu": cpu or platform.processor() or platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": str(torch.__version__),
            "onednn": onednn.group(1) if onednn else None, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def pick_threads(cores: int = None, load: float = None) -> int:
    """Torch's CPU threads: the cores the machine's load leaves free, at least 1; OMP_NUM_THREADS, when set, wins.
    OpenMP threads wait on each other, so a busy core stalls them all: at load 3 on 2 cores a digits evaluation took
    15 s with 2 threads and 9.5 s with 1 (measured)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = cores or os.cpu_count() or 1
    try:
        load = os.getloadavg()[0] if load is None else load
    except OSError:  # no load average on this system
        return torch.get_num_threads()
    threads = max(1, min(cores, int(cores - load + 0.5)))
    torch.set_num_threads(threads)
    return threads


def run_main(main) -> None:
    """Run main() with pick_threads(); every user-facing failure is one `error:` line on stderr (MOE_DEBUG=1 shows
    tracebacks)."""
    pick_threads()
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
    except OSError as exc:  # read-only or full disk, a file where a folder should be, ...
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; continue with the same command and --resume", file=sys.stderr)
        sys.exit(130)
