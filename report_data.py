"""What every part of the report shares: the runs as read from a runs folder, and how a number becomes a cell.
Used by report.py (tables 1-10), report_advmoe.py (Tables A1, A2) and figures.py."""
import csv
import json
import math
import os
import re
import statistics

from outcomes import EVAL_NAME

PAPER_NAME = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tinyimagenet": "TinyImageNet", "imagenet": "ImageNet"}
NUM_CLASSES = {"digits": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200, "imagenet": 1000}
SINGLE = (("SA", "sa"), ("RA", "ra"), ("RA-E", "ra_e"), ("RA-R", "ra_r"), ("RA (worst)", "worst"))
DUAL = (("SA", "sa"), ("RA", "ra"), ("RA-RMoE", "ra_rmoe"), ("RA-SMoE", "ra_smoe"))
ROUTE = (("same top-1 % (whole)", "route_same_whole"), ("same top-1 % (smooth)", "route_same_smooth"),
         ("same top-1 % (experts)", "route_same_experts"), ("same top-1 % (router)", "route_same_router"))
NA = "n/a"
SEED_FOLDER = re.compile(r"^(.+)-seed(\d+)$")  # run_all.sh --seeds N trains seed k >= 1 of run R in folder R-seed<k>

def read(path, problems, parse=json.load):  # None when the file is missing or unreadable (then said in problems)
    try:
        with open(path, newline="") as f:
            return parse(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, csv.Error) as exc:
        problems.append(f"{path}: unreadable ({type(exc).__name__}), treated as missing")

def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text or None

def load_runs(runs_dir, problems):
    """{folder: {args, log, diverged, has_ckpt, evals: {eval_pgd: {...}}}} for every run folder in runs_dir."""
    if not os.path.isdir(runs_dir):
        problems.append(f"{runs_dir}: no such folder; every cell is n/a")
        return {}
    runs = {}
    for name in sorted(os.listdir(runs_dir)):
        folder = os.path.join(runs_dir, name)
        files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        evals = [f for f in files if f.startswith(EVAL_NAME.format("")) and f.endswith(".json")]
        if "args.json" not in files and not evals:
            continue  # not a run, e.g. the results folder run_all.sh keeps in the runs folder
        run = runs[name] = {"evals": {}, "has_ckpt": "ckpt.pt" in files}
        for file in evals:
            value = read(os.path.join(folder, file), problems)
            if isinstance(value, dict) and "rows" in value:  # a dual model: one row per alpha
                rows = value["rows"]
                value["rows"] = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
            if isinstance(value, dict):
                run["evals"][file[:-5]] = value
            elif value is not None:
                problems.append(f"{os.path.join(folder, file)}: not a JSON object, treated as missing")
        args, diverged = (read(os.path.join(folder, file), problems) for file in ("args.json", "diverged.json"))
        run["args"] = args if isinstance(args, dict) else None
        run["log"] = read(os.path.join(folder, "log.csv"), problems, lambda f: [
            {k: number(v) for k, v in row.items() if k is not None} for row in csv.DictReader(f)])
        run["diverged"] = diverged if "diverged.json" not in files or isinstance(diverged, dict) else \
            {"message": "diverged.json present" if diverged is None else str(diverged)}
    return runs

def collapse_sa(num_classes):
    """SA (%) at or below which a run counts as collapsed: twice chance (Table 9's status and claims.md alike)."""
    return 200 / num_classes

def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

def fmt(v):
    return f"{v:.2f}" if finite(v) else NA

def fmt_eps(eps, preset):
    if not finite(eps):
        return NA
    k = eps * 255
    return f"{round(k)}/255" if preset != "digits" and k >= 1 and abs(k - round(k)) < 1e-4 else f"{eps:g}"

def cell(values):
    """Our number from its value in each seed: the value itself, or mean ± sample std over the seeds that have it."""
    have = [v for v in values if finite(v)]
    if len(values) == 1 or not have:
        return fmt(values[0] if len(values) == 1 else None)
    return f"{fmt(statistics.mean(have))} ± {fmt(statistics.stdev(have)) if len(have) > 1 else NA}"

def merge(values, folders):
    """One record of per-seed numbers: the numbers of one seed; else their means, sample stds and each seed's."""
    if len(values) == 1:
        return dict(values[0])
    have = {k: [v[k] for v in values if finite(v.get(k))] for k in dict.fromkeys(k for v in values for k in v)}
    return {**{k: statistics.mean(h) if h else None for k, h in have.items()},
            "std": {k: statistics.stdev(h) if len(h) > 1 else None for k, h in have.items()},
            "seeds": dict(zip(folders, values))}

def pick(value, preset):  # a spec field that may differ by preset: {preset: value, "*": any other preset}
    return value.get(preset, value.get("*")) if isinstance(value, dict) else value

def describe(ev, preset):
    """How one evaluation attacked, for a table's title: the attack (its steps and step) and its test points."""
    attack = ev.get("attack")
    if attack == "aa":
        how = f"AutoAttack {ev.get('aa_version') or '(standard)'}"
    elif attack == "apgd-ce50":
        how = f"APGD-CE-{ev.get('steps', '?')} (the ICML paper's AutoAttack)"
    else:
        name = {"smooth": "smooth-attack PGD", "pgd10-advmoe": "AdvMoE PGD"}.get(attack, "PGD")
        how = f"{name}-{ev.get('steps', '?')} (step {fmt_eps(ev.get('step_size'), preset)})"
    return how + f", n={ev['n'] if finite(ev.get('n')) else NA}"
