"""Tables 1-10 and Figures 2-7 of the paper from the runs of run_all.sh: markdown, PNG and results.json.

  python report.py digits --runs runs/digits            (writes runs/digits/results unless --out says where)

Reads RUNS/<run>/eval_<attack>.json (eval.py; a dual model's has a "rows" list), log.csv, args.json and
diverged.json (train_*.py); RUNS/<run>-seed<k> is seed k of <run>. Each table is one spec in TABLES, which
`render` draws. A missing input gives "n/a" cells, never an error. On the cifar10, tinyimagenet and imagenet
presets the paper's numbers (transcribed below) stand beside ours.
"""
import argparse
import csv
import json
import math
import os
import re
import statistics
from collections import namedtuple

from train_common import markdown_table

# ----------------------------------------------------------------------------- the paper's numbers
# Zhang, Xu, Hu, Wang, "Optimizing Robustness and Accuracy in Mixture of Experts: A Dual-Model Approach",
# ICML 2025. Rows: (SA, RA, RA-E, RA-R) for single MoEs, (SA, RA, RA-RMoE, RA-SMoE) for dual models, in %.
PAPER = {
    "table1": {"cifar10": {"pgd": (92.14, 52.54, 3.11, 54.67), "aa": (92.14, 14.25, 2.95, 55.2)},  # ST, PGD-50 and AA
               "tinyimagenet": {"pgd": (82.05, 34.53, 29.21, 59.0), "aa": (82.05, 14.24, 26.11, 58.95)}},
    "table2": {"cifar10": {"at": (79.08, 53.74, 73.85, 78.91), "rter": (77.81, 69.09, 75.71, 72.28),  # top-1, top-2
                           "at_top2": (79.20, 54.65, 74.66, 76.09), "rter_top2": (78.78, 70.05, 76.2, 72.35)}},
    "table3": {  # single MoEs; dual models (pre-trained at alpha 0.7 / 0.8 / 0.9, JTDMoE at 0.7); PGD
        "cifar10": {"st": (92.14, 52.54, 3.11, 54.67), "at": (79.08, 53.74, 73.85, 78.91),
                    "rter": (77.81, 69.09, 75.71, 72.28), "dual_0.7": (89.81, 67.81, 79.47, 52.93),
                    "dual_0.8": (87.58, 68.27, 77.25, 54.99), "dual_0.9": (83.27, 70.73, 75.03, 60.87),
                    "jtdmoe_0.7": (92.29, 74.62, 85.42, 68.73)},
        "tinyimagenet": {"st": (82.05, 34.53, 29.21, 59.00), "at": (70.77, 50.94, 42.09, 83.81),
                         "rter": (68.51, 56.79, 46.32, 81.26), "dual_0.7": (80.74, 53.11, 68.92, 47.39),
                         "dual_0.8": (77.89, 55.27, 65.94, 55.16), "dual_0.9": (74.2, 56.58, 61.95, 62.80),
                         "jtdmoe_0.7": (84.91, 57.39, 69.58, 53.32)}},
    "table4": {"cifar10": {"pretrained": (89.81, 33.64, 34.20, 14.34), "jtdmoe": (92.29, 54.55, 51.13, 45.55)},  # AA
               "tinyimagenet": {"pretrained": (80.74, 51.27, 56.25, 26.88), "jtdmoe": (84.91, 52.91, 60.98, 28.82)}},
    "table5": {"cifar10": {"airplane": 5.11, "automobile": 3.49, "bird": 7.5, "cat": 5.55, "deer": 10.27,  # margin
                           "dog": 14.42, "frog": 6.46, "horse": 4.03, "ship": 1.25, "truck": 4.58}},
    "table6": {"cifar10": {"st": (92.14, 46.02, 3.11, 54.67), "at": (79.08, 51.03, 73.85, 78.91),  # smooth attack
                           "rter": (77.81, 68.96, 75.71, 72.28)}},
    "table7": {"cifar10": {"pgd": {"trades": (83.81, 52.54, 72.72, 76.63), "advmoe": (76.83, 58.67, 73.79, 74.03),
                                   "rter": (77.81, 69.09, 75.71, 72.28)},
                           "aa": {"trades": (83.81, 38.90, 54.72, 56.84), "advmoe": (76.83, 44.17, 54.62, 55.06),
                                  "rter": (75.92, 54.36, 57.86, 54.84)}}},
    "table8": {"cifar10": {"rter_e3": (75.85, 69.03, 74.79, 72.42), "rter": (77.81, 69.09, 75.71, 72.28),  # E experts
                           "rter_e5": (79.77, 70.00, 76.51, 71.86)}},
    "table9": {"cifar10": {"rter_b1": (81.68, 64.13, 68.67, 69.64), "rter_b3": (79.91, 65.92, 70.75, 72.05),  # beta
                           "rter": (77.81, 69.09, 75.71, 72.28), "rter_b9": (10.0, 10.0, 10.0, 10.0)}},
    "table10": {"imagenet": {"at": (60.32, 44.64, 43.06, 70.24), "trades": (61.94, 45.54, 43.75, 70.37),  # ViT experts
                             "rter": (68.38, 56.16, 44.99, 70.82)}},
}
PAPER_NAME = {"cifar10": "CIFAR-10", "tinyimagenet": "TinyImageNet", "imagenet": "ImageNet"}
NUM_CLASSES = {"digits": 10, "cifar10": 10, "tinyimagenet": 200, "imagenet": 1000}
CLASS_NAMES = {"cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
               "digits": [str(i) for i in range(10)]}
SINGLE = (("SA", "sa"), ("RA", "ra"), ("RA-E", "ra_e"), ("RA-R", "ra_r"), ("worst", "worst"))
DUAL = (("SA", "sa"), ("RA", "ra"), ("RA-RMoE", "ra_rmoe"), ("RA-SMoE", "ra_smoe"))
ROUTE = (("same top-1 % (whole)", "route_same_whole"), ("same top-1 % (smooth)", "route_same_smooth"),
         ("same top-1 % (experts)", "route_same_experts"), ("same top-1 % (router)", "route_same_router"))
MARGINS = (("margin_rob_pretrained", 100), ("margin_rob_jtdmoe", 100), ("improvement_pp", 1), ("relative_pct", 1),
           ("margin_dual_improvement_pp", 1))  # Table 5's numbers of a class, and their scale in the table
NA = "n/a"
EVAL_NAME = "eval_{}"  # eval.py writes RUNS/<run>/eval_<attack>.json, single or dual model: the one place it is named
SEED_FOLDER = re.compile(r"(.+)-seed(\d+)")  # run_all.sh --seeds N trains seed k >= 1 of run R in the folder R-seed<k>


# ----------------------------------------------------------------------------- reading the runs

def read(path, problems, parse):
    """parse(the open file); None when it is missing or unreadable (then said in problems)."""
    try:
        with open(path, newline="") as f:
            return parse(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, csv.Error) as exc:
        problems.append(f"{path}: unreadable ({type(exc).__name__}), treated as missing")
        return None


def log_rows(f):
    """log.csv's rows; a cell is a float where it reads as one, else its text (None where empty)."""
    def number(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return text if text not in ("", None) else None
    return [{k: number(v) for k, v in row.items() if k is not None} for row in csv.DictReader(f)]


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
            value = read(os.path.join(folder, file), problems, json.load)
            if isinstance(value, dict) and "rows" in value:  # a dual model: one row per alpha
                rows = value["rows"]
                value["rows"] = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
            if isinstance(value, dict):
                run["evals"][file[:-5]] = value
            elif value is not None:
                problems.append(f"{os.path.join(folder, file)}: not a JSON object, treated as missing")
        args, diverged, run["log"] = (read(os.path.join(folder, file), problems, parse) for file, parse in
                                      (("args.json", json.load), ("diverged.json", json.load), ("log.csv", log_rows)))
        run["args"] = args if isinstance(args, dict) else None
        run["diverged"] = diverged if "diverged.json" not in files or isinstance(diverged, dict) else \
            {"message": "diverged.json present" if diverged is None else str(diverged)}
    return runs


# ----------------------------------------------------------------------------- formatting

def finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v, digits=2):
    return f"{v:.{digits}f}" if finite(v) else NA


def fmt_eps(eps, preset):
    if not finite(eps):
        return NA
    k = eps * 255
    return f"{round(k)}/255" if preset != "digits" and k >= 1 and abs(k - round(k)) < 1e-4 else f"{eps:g}"


def cell(values, seeded):
    """Our number: the one seed's value, or mean ± sample std over the seeds that have one."""
    have = [v for v in values if finite(v)]
    if not seeded or not have:
        return fmt(values[0]) if not seeded else NA
    return f"{fmt(statistics.mean(have))} ± {fmt(statistics.stdev(have)) if len(have) > 1 else NA}"


def merge(values, folders):
    """One record of per-seed numbers: the numbers of one seed; else their means, sample stds and each seed's."""
    if len(values) == 1:
        return dict(values[0])
    have = {k: [v[k] for v in values if finite(v.get(k))] for k in dict.fromkeys(k for v in values for k in v)}
    return {**{k: statistics.mean(h) if h else None for k, h in have.items()},
            "std": {k: statistics.stdev(h) if len(h) > 1 else None for k, h in have.items()},
            "seeds": dict(zip(folders, values))}


def pick(value, preset):
    """A spec field that may differ by preset: {preset: value, "*": any other preset}."""
    return value.get(preset, value.get("*")) if isinstance(value, dict) else value


def at(ev, key, i):
    """Entry i of the list ev[key] (per-class margins), None where it has no finite one."""
    seq = ev[key] if ev and isinstance(ev.get(key), list) else []
    return seq[i] if i < len(seq) and finite(seq[i]) else None


def metric_values(ev, dual):
    """Our numbers in one evaluation, None where missing; worst = min(RA, RA-E, RA-R) where eval.py left it out."""
    ev = ev or {}
    values = {k: ev.get(k) for _, k in (DUAL if dual else SINGLE)}
    if not dual and not finite(values["worst"]) and all(finite(ev.get(k)) for k in ("ra", "ra_e", "ra_r")):
        values["worst"] = min(ev["ra"], ev["ra_e"], ev["ra_r"])
    return {**values, **({} if dual else {k: ev[k] for _, k in ROUTE if k in ev})}


class Report:
    """The runs of one preset, found by the names the table specs give them; `render` draws any spec."""

    def __init__(self, preset, runs, quick, command):
        self.preset, self.runs, self.quick, self.command = preset, runs, quick, command
        self.paper_ds, self.num_classes = preset if preset in PAPER_NAME else None, NUM_CLASSES.get(preset, 10)
        seeds = {}
        for name in runs:
            m = SEED_FOLDER.fullmatch(name)
            seeds.setdefault(m.group(1) if m else name, []).append((int(m.group(2)) if m else 0, name))
        self.seeds = {run: [name for _, name in sorted(found)] for run, found in seeds.items()}
        self.most_seeds = max(map(len, self.seeds.values()), default=1)

    def folders(self, run):
        """The folders of run's seeds, seed 0 (the run's own folder) first; [run] while none exists."""
        return self.seeds.get(run) or [run]

    def blob(self, folder, attack):
        return self.runs.get(folder, {}).get("evals", {}).get(EVAL_NAME.format(attack))

    def evaluation(self, folder, attack, alpha=None):
        """A single MoE's evaluation, or (alpha given) a dual model's row for alpha with the file's settings merged in."""
        blob = self.blob(folder, attack)
        if alpha is None:
            return None if isinstance(blob, dict) and "rows" in blob else blob
        rows = [r for r in (blob or {}).get("rows", []) if finite(r.get("alpha")) and abs(r["alpha"] - alpha) < 1e-6]
        return {**{k: v for k, v in blob.items() if k != "rows"}, **rows[0]} if rows else None

    def paper(self, table, spec, key):
        """The paper's numbers at key (a key, or a tuple of keys) of this table, or where spec["paper_from"] says."""
        keys = key if isinstance(key, tuple) else (key,)
        if self.preset in spec.get("paper_from", {}):
            table, *keys = spec["paper_from"][self.preset].get(key) or (None,)
        node = PAPER.get(table, {}).get(self.paper_ds or "")
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    def status(self, folder, ev=None, column=False):
        """ok | collapsed (why) | not run; as Table 9's column (column=True) also not evaluated, and whose numbers."""
        rec = self.runs.get(folder)
        if rec is None:
            return "not run"
        sa, log, diverged = (ev or {}).get("sa"), rec.get("log") or [], rec.get("diverged") or {}
        if column and not finite(sa) and log and finite(log[-1].get("sa")):
            sa = log[-1]["sa"]  # not evaluated: the last per-epoch SA tells a collapse too
        if diverged:
            status = f"collapsed ({diverged.get('message', 'diverged')})"
        elif finite(sa) and sa <= 200.0 / self.num_classes:
            status = f"collapsed (SA {sa:.2f} % <= 2x chance)"
        else:
            return "not evaluated" if column and ev is None else "ok"
        good = diverged["epoch"] - 1 if finite(diverged.get("epoch")) else None
        if column:
            status += f"; numbers: last good checkpoint{f' (epoch {good})' if good else ''}" if ev is not None else \
                "; no checkpoint evaluated"
        return status

    def describe(self, used):
        """eps, attack steps and test points of the evaluations used (read from their JSON)."""
        used, parts = [u for u in used if u], []
        eps = sorted({fmt_eps(u.get("eps"), self.preset) for u in used})
        if not eps:  # nothing evaluated yet: the budget of any run
            eps = sorted({fmt_eps(r["args"].get("eps"), self.preset) for r in self.runs.values()
                          if isinstance(r.get("args"), dict) and "eps" in r["args"]})[:1]
        for u in used:
            if u.get("attack") == "aa":
                what = f"AutoAttack {u['aa_version']}" if u.get("aa_version") else "AutoAttack (standard)"
            else:
                name = "smooth-attack PGD" if u.get("attack") == "smooth" else "PGD"
                what = f"{name}-{u.get('steps', '?')} (step {fmt_eps(u.get('step_size'), self.preset)})"
            what += f", n={u.get('n') if finite(u.get('n')) else NA}"
            parts += [what] if what not in parts else []
        return f"eps {' / '.join(eps) if eps else NA}; " + ("; ".join(parts) or "attack: n/a (nothing evaluated yet)")

    def notes(self, table, spec, extra, used):
        """The bullet list under a table: its own notes, then those any table may need."""
        out, sizes = list(extra), sorted({u["n"] for u in used if u and finite(u.get("n"))})
        if len(sizes) > 1 and spec.get("sizes_note"):
            out.append(f"The attacks ran on different fixed test subsets (n = {', '.join(str(n) for n in sizes)}), "
                       "so SA differs between them.")
        paper_note = pick(spec.get("paper_note", True), self.preset)
        if paper_note and self.paper_ds is None:
            out.append("The paper has no digits numbers (its tables are CIFAR-10 / TinyImageNet, Table 10 ImageNet), "
                       "so there is no paper column.")
        elif paper_note and PAPER.get(table) and self.paper_ds not in PAPER[table]:
            out.append(f"The paper reports this table for {', '.join(PAPER_NAME[d] for d in PAPER[table])} only: "
                       f"paper cells are n/a on {self.preset}.")
        blocks = spec.get("blocks", [spec])
        runs = list(dict.fromkeys(r for b in blocks for r in b.get("runs") or [row.run for row in b["rows"]]))
        if spec.get("run_notes", True):  # Table 9 says it in its status column
            out += [f"Run `{folder}` {status}; its numbers (if any) are from its last good checkpoint." for run in runs
                    for folder in self.seeds.get(run, []) for status in [self.status(folder)] if status != "ok"]
            missing = [f"`{r}`" for r in runs if r not in self.seeds]
            out += ["n/a: not run yet: " + ", ".join(missing) + "."] if missing else []
        counts = sorted({len(self.folders(r)) for r in runs} - {1})
        if counts:
            out.append(f"mean ± std over {counts[0]}{f' to {counts[-1]}' if counts[-1] > counts[0] else ''} seeds "
                       "(sample std over the seeds that have the number; each seed's number is in results.json); "
                       "paper cells are the paper's single numbers.")
        if self.quick:
            out.append("Quick smoke run (2 epochs, tiny attacks): checks the pipeline, the numbers mean nothing.")
        return "".join(f"\n- {n}" for n in out) + ("\n" if out else "")

    def metric_block(self, table, spec, block):
        """One row per Row: a single MoE (SA RA RA-E RA-R worst, routing) or a dual model at alpha (kind "dual")."""
        dual, (extra_name, extra_cell) = block.get("kind") == "dual", block.get("extra", (None, None))
        found = [(row, row.attack or block.get("attack", "pgd"), self.folders(row.run)) for row in block["rows"]]
        found = [(row, attack, folders, [self.evaluation(f, attack, row.alpha) for f in folders])
                 for row, attack, folders in found]
        used = [ev for *_, evs in found for ev in evs]
        metrics = [(block.get("ra_name", "RA") if n == "RA" else n, k) for n, k in (DUAL if dual else SINGLE)]
        routes = [] if dual else [(n, k) for n, k in ROUTE if any(ev and finite(ev.get(k)) for ev in used)]
        header = list(block["lead"]) + [h for n, _ in metrics for h in [n] + [f"{n} paper"] * bool(self.paper_ds)]
        rows, records = [], []
        for row, attack, folders, evs in found:
            values, paper = [metric_values(ev, dual) for ev in evs], self.paper(table, spec, row.paper or row.run)
            ours = lambda key: cell([v.get(key) for v in values], len(folders) > 1)  # noqa: E731
            theirs = dict(zip([k for _, k in metrics], paper or ()), worst=min(paper[1:]) if paper else None)
            lead = [row.lead] if isinstance(row.lead, str) else list(row.lead)
            cells = lead + ([f"{row.alpha:.1f}"] if block.get("alpha_column") else [])
            for _, key in metrics:
                cells += [ours(key)] + [fmt(theirs[key]) if paper else NA] * bool(self.paper_ds)
            record = {"row": " / ".join(lead), "run": row.run, "attack": attack} if not dual else \
                {"row": lead[0] + (f" alpha {row.alpha}" if block.get("alpha_column") else ""), "run": row.run,
                 "alpha": row.alpha}
            record.update(merge(values, folders), paper=list(paper) if paper else None)
            if extra_name:  # one text per seed, said once where they agree
                texts = [extra_cell(self, folder, ev) for folder, ev in zip(folders, evs)]
                record[extra_name] = texts[0] if len(set(texts)) == 1 else "; ".join(map(": ".join, zip(folders, texts)))
            rows.append(cells + [ours(key) for _, key in routes] + ([record[extra_name]] if extra_name else []))
            records.append(record)
        return header + [n for n, _ in routes] + [extra_name] * bool(extra_name), rows, used, records, []

    def margin_block(self, table, spec, block):
        """Table 5: per class, the robust MoE's clean margin in the pre-trained dual model and in JTDMoE."""
        (pre_run, jtd_run), alpha, folders = block["runs"], block["alpha"], self.folders(block["runs"][0])
        has = lambda attack: all((self.evaluation(run, attack, alpha) or {}).get("margin_rob")  # noqa: E731
                                 for run in block["runs"])
        attack = "aa" if has("aa") and not has("pgd") else "pgd"
        # seed k of the pre-trained dual model goes with seed k of JTDMoE
        pairs = [[self.evaluation(run + f[len(pre_run):], attack, alpha) for run in block["runs"]] for f in folders]
        count = max([len(ev["margin_rob"]) for pair in pairs for ev in pair if isinstance((ev or {}).get("margin_rob"),
                     list)] + [self.num_classes if self.preset in CLASS_NAMES else 0])
        names, paper = CLASS_NAMES.get(self.preset, [str(i) for i in range(count)]), self.paper(table, spec, ()) or {}
        rows, records, gains = [], [], []  # gains: each class's improvement, seed by seed
        for c in range(count):
            values = []
            for pre, jtd in pairs:
                a, b, da, db = (at(ev, key, c) for key in ("margin_rob", "margin_dual") for ev in (pre, jtd))
                gain = 100 * (b - a) if a is not None and b is not None else None
                values.append(dict(zip([k for k, _ in MARGINS], (
                    a, b, gain, 100 * (b - a) / abs(a) if gain is not None and a != 0 else None,
                    100 * (db - da) if da is not None and db is not None else None))))
            name = names[c] if c < len(names) else str(c)
            rows.append([name] + [cell([None if v[k] is None else scale * v[k] for v in values], len(pairs) > 1)
                                  for k, scale in MARGINS] + [fmt(paper.get(name)) if paper else NA] * bool(self.paper_ds))
            records.append({"class": name, **merge(values, folders), "paper": paper.get(name) if paper else None})
            gains.append([v["improvement_pp"] for v in values])
        seed_gains = [[g[s] for g in gains if g[s] is not None] for s in range(len(pairs))]
        rows.append(["mean", NA, NA, cell([sum(g) / len(g) if g else None for g in seed_gains], len(pairs) > 1), "", ""]
                    + [fmt(sum(paper.values()) / len(paper)) if paper else NA] * bool(self.paper_ds))
        valid = [statistics.mean(h) for h in ([v for v in g if v is not None] for g in gains) if h]
        notes = [f"Margin = mean over the class's test points of p_y - max_(k != y) p_k of the **robust MoE F_R** "
                 f"(eval.py `margin_rob`, softmax probabilities on clean inputs, from {EVAL_NAME.format(attack)}.json),"
                 " x100. improvement = JTDMoE - pre-trained in percentage points (the paper does not define its "
                 "'improvement (%)'; we read it as percentage points); relative = improvement / |pre-trained margin|."
                 " The last column uses the dual model's own margin (`margin_dual`).",
                 f"JTDMoE improves the margin of {sum(g > 0 for g in valid)} of {len(valid)} classes." if valid else
                 f"n/a: needs {pre_run} and {jtd_run} evaluated."]
        header = block["lead"] + ["paper improvement (%)"] * bool(self.paper_ds)
        return header, rows, [ev for pair in pairs for ev in pair], records, notes

    def render(self, table):
        """One table spec of TABLES -> (its markdown, its results.json record)."""
        spec, texts, used, records, notes = TABLES[table], [], [], {}, []
        for block in spec.get("blocks", [spec]):
            draw = self.margin_block if block.get("kind") == "margins" else self.metric_block
            header, rows, block_used, records[block.get("key")], block_notes = draw(table, spec, block)
            texts.append((f"## {block['heading']}\n\n" if "heading" in block else "") + markdown_table(header, rows))
            used, notes = used + block_used, notes + block_notes
        fill = dict(preset=self.preset, chance=200.0 / self.num_classes, eval_smooth=EVAL_NAME.format("smooth") + ".json")
        notes += [note.format(**fill) for note in (pick(n, self.preset) for n in spec.get("notes", [])) if note]
        text = (f"# Table {table[5:]}: {pick(spec['title'], self.preset)} | preset {self.preset}"
                f"{' (quick smoke run)' if self.quick else ''} | {self.describe(used)} | `{self.command}`\n\n")
        return text + "\n".join(texts) + self.notes(table, spec, notes, used), records.get(None, records)


# ----------------------------------------------------------------------------- the tables, as data
# A table: a title, lead columns and Rows (or blocks of them, each with a heading), notes; Report.render draws it.
# A Row: its lead cells, its run (seeds are found by folder name), the paper's key (default: the run), attack, alpha.
# A field may be {preset: value, "*": other presets}; notes get {preset}, {chance} and {eval_smooth} filled in.
# An "extra" column: (its name, f(report, folder, evaluation) -> text).
Row = namedtuple("Row", "lead run paper attack alpha", defaults=(None, None, None))
ST_AT_RTER = [Row("ST", "st"), Row("AT", "at"), Row("RT-ER", "rter")]
TABLES = {
    "table1": dict(
        title="robustness of the MoE components of a standard-trained (ST) MoE", sizes_note=True, lead=["attack"],
        rows=[Row("PGD", "st", "pgd"), Row("AutoAttack", "st", "aa", "aa")],
        notes=["RA attacks the whole MoE, RA-E the experts (routing frozen at clean x), RA-R the router (experts frozen "
               "at clean x); accuracy is always that of the full MoE at x_adv. worst = min(RA, RA-E, RA-R); same "
               "top-1 % = share of points routed to the same top-1 expert at x_adv as at x (the paper reports 98 % "
               "under expert attacks)."]),
    "table2": dict(title="AT vs RT-ER under PGD, top-1 and top-2 routing", lead=["routing", "method"],
                   rows=[Row(("top-1", "AT"), "at"), Row(("top-1", "RT-ER"), "rter"),
                         Row(("top-2", "AT"), "at_top2"), Row(("top-2", "RT-ER"), "rter_top2")]),
    "table3": dict(
        title="ST / AT / RT-ER single MoEs; dual model pre-trained (alpha 0.7 0.8 0.9) and JTDMoE (alpha 0.7), PGD",
        blocks=[dict(key="single", heading="Single MoE", lead=["method"], rows=ST_AT_RTER),
                dict(key="dual", heading="Dual model F_D = (1 - alpha) F_S + alpha F_R", kind="dual",
                     lead=["model", "alpha"], alpha_column=True,
                     rows=[Row("Dual-Model (pre-trained)", "dual_pretrained", f"dual_{a}", alpha=a) for a in (.7, .8, .9)]
                     + [Row("Dual-Model (JTDMoE)", "jtdmoe_a0.7", "jtdmoe_0.7", alpha=0.7)])],
        notes=["Dual rows: RA attacks the dual model, RA-RMoE the robust MoE alone, RA-SMoE the standard MoE alone; "
               "accuracy is always that of the dual model at x_adv. The pre-trained dual model mixes runs `st` and "
               "`rter`; JTDMoE is run `jtdmoe_a0.7`."]),
    "table4": dict(title="pre-trained dual model vs JTDMoE at alpha 0.7 under AutoAttack", kind="dual", attack="aa",
                   lead=["method"], rows=[Row("Pre-trained", "dual_pretrained", "pretrained", alpha=0.7),
                                          Row("JTDMoE", "jtdmoe_a0.7", "jtdmoe", alpha=0.7)]),
    "table5": dict(title="per-class margin improvement of JTDMoE over the pre-trained dual model, alpha 0.7",
                   kind="margins", runs=("dual_pretrained", "jtdmoe_a0.7"), alpha=0.7,
                   lead=["class", "margin pre-trained (%)", "margin JTDMoE (%)", "improvement (pp)", "relative (%)",
                         "dual-model margin improvement (pp)"]),
    "table6": dict(
        title="ST / AT / RT-ER under the smooth attack (dense sum_i a_i f_i, all experts)", lead=["method"],
        attack="smooth", ra_name="RA (smooth)", rows=ST_AT_RTER,
        notes=["RA (smooth): PGD through the dense smooth view sum_i a_i(x+d) f_i(x+d), accuracy of the top-1 MoE at "
               "x_adv; RA-E / RA-R are from the same {eval_smooth} run."]),
    "table7": dict(title="TRADES / AdvMoE / RT-ER under PGD and AutoAttack", sizes_note=True, blocks=[
        dict(key=attack, heading=heading, lead=["method"], attack=attack, rows=[
            Row(lead, run, (attack, run)) for lead, run in (("TRADES", "trades"), ("AdvMoE", "advmoe"), ("RT-ER", "rter"))])
        for attack, heading in (("pgd", "PGD"), ("aa", "AutoAttack"))]),
    "table8": dict(title="RT-ER with E = 3, 4, 5 experts, PGD", lead=["E"],
                   rows=[Row("3", "rter_e3"), Row("4", "rter"), Row("5", "rter_e5")]),
    "table9": dict(
        title="RT-ER with beta = 1, 3, 6, 9 (beta 9 collapses in the paper), PGD", lead=["beta"], run_notes=False,
        rows=[Row("1", "rter_b1"), Row("3", "rter_b3"), Row("6", "rter"), Row("9", "rter_b9")],
        extra=("status", lambda report, folder, ev: report.status(folder, ev, column=True)),  # a column more
        notes=["A run is marked collapsed when training diverged (diverged.json: NaN / inf loss) or its SA is at most "
               "twice chance ({chance:.2f} %). The paper's beta 9 run collapsed to 10 % (chance)."]),
    "table10": dict(
        title={"imagenet": "AT / TRADES / RT-ER, PGD (ImageNet, ViT-small experts)", "*": "AT / TRADES / RT-ER, PGD"},
        lead=["method"], rows=[Row("AT", "at"), Row("TRADES", "trades"), Row("RT-ER", "rter")],
        # off ImageNet the paper cells are the paper's numbers for these methods in its other tables (said below)
        paper_from={"cifar10": {"at": ("table2", "at"), "trades": ("table7", "pgd", "trades"),
                                "rter": ("table2", "rter")},
                    "tinyimagenet": {"at": ("table3", "at"), "rter": ("table3", "rter")}},
        paper_note={"imagenet": True, "digits": True, "*": False},
        notes=[{"imagenet": None, "*": "The paper's Table 10 is ImageNet with ViT experts (`bash run_all.sh imagenet`); "
                                       "here the same three methods on {preset}."},
               {"cifar10": "Paper cells: the paper's CIFAR-10 numbers for these methods (Tables 2 and 7), not its "
                           "ImageNet Table 10.",
                "tinyimagenet": "Paper cells: the paper's TinyImageNet numbers for these methods (Table 3; no TRADES), "
                                "not its ImageNet Table 10."}]),
}


# ----------------------------------------------------------------------------- figures (seed 0 of each run)

def per_epoch_setting(report, runs):
    for a in ((report.runs.get(run) or {}).get("args") for run in runs):
        if isinstance(a, dict) and "eps" in a:
            where = f"{a['eval_n']} test points" if a.get("eval_n") else "all test points"
            return (f"eps {fmt_eps(a['eps'], report.preset)}, RA: PGD-{a.get('eval_steps', '?')} on {where} "
                    "(per-epoch evaluation)")
    return "no run yet"


def no_data(ax):
    ax.text(0.5, 0.5, "no data yet (run not done)", ha="center", va="center", transform=ax.transAxes, color="gray")


def draw(path, title, panels):
    """Side-by-side panels: (title, x label, y label, x limits, [(xs, ys, style)], xs None for a dashed level)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, len(panels), figsize=(9, 4.3), dpi=120)
    for ax, (name, xlabel, ylabel, xlim, lines) in zip(axes, panels):
        for xs, ys, style in lines:
            ax.axhline(ys, **style) if xs is None else ax.plot(xs, ys, **style)
        ax.legend(fontsize=8) if lines else no_data(ax)
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=xlim)
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        if xlabel == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def figure_curves(report, path, title, series, baseline=None):
    """SA (left) and RA (right) per epoch for each (label, run); baseline: (label, sa, ra) as dashed levels."""
    data, panels = {}, []
    for key, name, level in (("sa", "SA", 1), ("ra", "RA", 2)):
        lines = []
        for label, run in series:
            log = [r for r in (report.runs.get(run) or {}).get("log") or [] if finite(r.get("epoch"))
                   and finite(r.get(key))]
            xs, ys = [r["epoch"] for r in log], [r[key] for r in log]
            data.setdefault(run, {})[key] = {"epoch": xs, key: ys}
            lines += [(xs, ys, dict(marker="o" if len(xs) < 15 else None, markersize=4, label=label))] if xs else []
        last = max((max(xs) for xs, _, _ in lines), default=0)
        if baseline and finite(baseline[level]):
            lines.append((None, baseline[level], dict(color="green", linestyle="--", label=baseline[0])))
        panels.append((f"{name} per epoch", "epoch", f"{name} (accuracy %)", (0, last + 1) if last else None, lines))
    draw(path, title, panels)
    return data


def figure_alpha(path, title, blob, paper_points):
    """Pre-trained dual model against alpha: SA (left), RA / RA-RMoE / RA-SMoE (right); the paper's as squares."""
    rows = sorted((r for r in blob.get("rows", []) if finite(r.get("alpha"))), key=lambda r: r["alpha"])
    panels = []
    for name, metrics, ylabel in (("clean accuracy", DUAL[:1], "SA (accuracy %)"),
                                  ("under attack on the dual / robust / standard MoE", DUAL[1:], "robust accuracy %")):
        lines = []
        for i, (label, key) in enumerate(metrics):
            ours = [(r["alpha"], r[key]) for r in rows if finite(r.get(key))]
            theirs = [(a, v[key]) for a, v in (paper_points or {}).items() if key in v]
            if ours:
                lines.append((*zip(*ours), dict(marker="o", markersize=4, color=f"C{i}", label=f"{label} (ours)")))
            if ours and theirs:
                lines.append((*zip(*theirs), dict(linestyle="none", marker="s", fillstyle="none", color=f"C{i}",
                                                  label=f"{label} (paper)")))
        panels.append((name, "alpha (weight of the robust MoE)", ylabel, (0.45, 1.05), lines))
    draw(path, title, panels)
    return {"rows": [{k: r.get(k) for k in ("alpha", "sa", "ra", "ra_rmoe", "ra_smoe")} for r in rows],
            "paper": paper_points}


def figure_routing(report, path, title):
    """Share of clean test points each expert gets as top-1, at each run's last evaluation: one bar per run."""
    import matplotlib.pyplot as plt
    shares = {}
    for run, rec in sorted(report.runs.items()):
        rows = [r for r in rec.get("log") or [] if finite(r.get("usage_0"))]
        if rows:
            keys = sorted((k for k in rows[-1] if k.startswith("usage_")), key=lambda k: int(k[6:]))
            shares[run] = [100 * rows[-1][k] for k in keys]
    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.3 * max(len(shares), 1)), dpi=120)
    for i, row in enumerate(shares.values()):
        for e, share in enumerate(row):
            ax.barh(i, share, left=sum(row[:e]), color=f"C{e}", label=f"expert {e}")
    if shares:
        ax.set_yticks(range(len(shares)), list(shares))
        ax.invert_yaxis()
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one legend entry per expert
        ax.legend(unique.values(), unique.keys(), fontsize=8, ncol=len(unique), loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), frameon=False)
    else:
        no_data(ax)
    ax.set(xlim=(0, 100), xlabel="share of clean test points routed to each expert as top-1 (%)", ylabel="run")
    ax.set_title(title, fontsize=10, pad=26)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return shares


def figures(report, out):
    """Figures 2-7 and routing.png; returns what each one draws, for results.json."""
    import matplotlib
    matplotlib.use("Agg")
    p = report.preset + (" (quick smoke run)" if report.quick else "")
    p += f", seed 0 of {report.most_seeds}" if report.most_seeds > 1 else ""  # the curves are of each run's seed 0
    setting, jt = per_epoch_setting(report, ["at", "rter"]), [f"jtdmoe_a{a}" for a in ("0.5", "0.6", "0.7", "0.8")]
    arch = ((report.runs.get("rter") or {}).get("args") or {}).get("arch", "?")
    base = report.evaluation("dual_pretrained", "pgd", 0.7)
    baseline = base and (f"pre-trained dual, alpha 0.7 (PGD-{base.get('steps')}, n={base.get('n')})",
                         base.get("sa"), base.get("ra"))
    at_rter, data = [("AT", "at"), ("RT-ER", "rter")], {}
    for name, title, series in (
            ("fig2", f"Figure 2: AT vs RT-ER per epoch | preset {p}\n{setting}", at_rter),
            ("fig4", f"Figure 4 (paper: ViT-small experts on TinyImageNet): AT vs RT-ER per epoch | preset {p}, "
                     f"{arch} experts\n{setting}", at_rter),
            ("fig5", f"Figure 5: TRADES / AdvMoE / RT-ER per epoch | preset {p}\n"
                     f"{per_epoch_setting(report, ['trades', 'advmoe', 'rter'])}",
             [("TRADES", "trades"), ("AdvMoE", "advmoe"), ("RT-ER", "rter")]),
            ("fig7", f"Figure 7: JTDMoE per epoch, alpha 0.5-0.8 | preset {p}\n{per_epoch_setting(report, jt)}; "
                     "dashed: pre-trained dual at alpha 0.7 (eval.py)", [(f"JTDMoE alpha {r[-3:]}", r) for r in jt])):
        data[name] = figure_curves(report, os.path.join(out, f"{name}.png"), title, series,
                                   baseline if name == "fig7" else None)
    data["fig7"]["baseline"] = list(baseline) if baseline else None
    for name, attack, alphas in (("fig3", "pgd", (0.7, 0.8, 0.9)), ("fig6", "aa", (0.7,))):
        blob = report.blob("dual_pretrained", attack) or {}
        what = f"PGD-{blob.get('steps', '?')}"
        if attack == "aa":
            what = f"AutoAttack {blob['aa_version']}" if blob.get("aa_version") else "AutoAttack (standard)"
        paper_points = None
        if report.paper_ds in ("cifar10", "tinyimagenet"):  # the paper's dual-model rows: Table 3 (PGD), 4 (AA)
            paper = PAPER["table3" if attack == "pgd" else "table4"][report.paper_ds]
            paper_points = {a: dict(zip(("sa", "ra", "ra_rmoe", "ra_smoe"), paper[f"dual_{a}" if attack == "pgd"
                                                                              else "pretrained"])) for a in alphas}
        data[name] = figure_alpha(os.path.join(out, f"{name}.png"), f"Figure {name[3:]}: pre-trained dual model (ST + "
                                  f"RT-ER) vs alpha | preset {p}\n{what}, eps {fmt_eps(blob.get('eps'), report.preset)}"
                                  f", n={blob.get('n', NA)} test points", blob, paper_points)
    data["routing"] = figure_routing(report, os.path.join(out, "routing.png"), f"Expert usage at each run's last "
                                     f"evaluation | preset {p}\n(a collapsed router sends every point to one expert)")
    return data


# ----------------------------------------------------------------------------- main

def clean(value):
    """JSON-safe copy: NaN / inf become null (eval.py writes NaN for a class without test points)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    return [clean(v) for v in value] if isinstance(value, (list, tuple)) else value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=["digits", "cifar10", "tinyimagenet", "imagenet"])
    ap.add_argument("--runs", default=None, help="runs folder (default runs/<preset>, runs/<preset>-quick with --quick)")
    ap.add_argument("--out", default=None, help="results folder (default RUNS/results; the committed results/ stays)")
    ap.add_argument("--quick", action="store_true", help="the runs are a run_all.sh --quick smoke run")
    ap.add_argument("--command", default=None, help="the command that produced the runs (for the titles)")
    args = ap.parse_args(argv)
    runs_dir = args.runs or os.path.join("runs", args.preset + ("-quick" if args.quick else ""))
    out = args.out or os.path.join(runs_dir, "results")
    command = args.command or f"bash run_all.sh {args.preset}" + (" --quick" if args.quick else "")
    os.makedirs(out, exist_ok=True)
    problems, tables = [], {}
    report = Report(args.preset, load_runs(runs_dir, problems), args.quick, command)
    for table in TABLES:
        text, tables[table] = report.render(table)
        with open(os.path.join(out, f"{table}.md"), "w") as f:
            f.write(text)
        print(f"wrote {os.path.join(out, table)}.md")
    figs = figures(report, out)
    print(f"wrote {', '.join(os.path.join(out, f'{name}.png') for name in sorted(figs))}")
    blob = {"preset": args.preset, "quick": args.quick, "command": command, "runs_dir": os.path.abspath(runs_dir),
            "problems": problems, "tables": tables, "figures": figs, "paper": PAPER, "runs": report.runs}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(clean(blob), f, indent=1, sort_keys=True, allow_nan=False, default=str)
    print(f"wrote {os.path.join(out, 'results.json')}")
    for p in problems:
        print(f"warning: {p}")


if __name__ == "__main__":
    main()
