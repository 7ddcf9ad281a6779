"""Tables 1-10 and Figures 2-7 of the paper from the runs of run_all.sh: markdown, PNG and results.json.

  python report.py digits --runs runs/digits --out results/digits

Reads RUNS/<run>/eval_<attack>.json and dual_<attack>.json (eval.py), log.csv, args.json and diverged.json
(train_*.py). A missing input (a run not done yet) gives "n/a" cells, never an error. For the cifar10,
tinyimagenet and imagenet presets the paper's numbers (transcribed below) are shown beside ours.
"""
import argparse
import csv
import json
import math
import os

# ----------------------------------------------------------------------------- the paper's numbers
# Zhang, Xu, Hu, Wang, "Optimizing Robustness and Accuracy in Mixture of Experts: A Dual-Model Approach",
# ICML 2025. Rows: (SA, RA, RA-E, RA-R) for single MoEs, (SA, RA, RA-RMoE, RA-SMoE) for dual models, in %.
PAPER = {
    "table1": {  # ST MoE, PGD-50 and AutoAttack
        "cifar10": {"pgd": (92.14, 52.54, 3.11, 54.67), "aa": (92.14, 14.25, 2.95, 55.2)},
        "tinyimagenet": {"pgd": (82.05, 34.53, 29.21, 59.0), "aa": (82.05, 14.24, 26.11, 58.95)},
    },
    "table2": {  # AT vs RT-ER under PGD, top-1 and top-2 routing (CIFAR-10)
        "cifar10": {"at": (79.08, 53.74, 73.85, 78.91), "rter": (77.81, 69.09, 75.71, 72.28),
                    "at_top2": (79.20, 54.65, 74.66, 76.09), "rter_top2": (78.78, 70.05, 76.2, 72.35)},
    },
    "table3": {  # single MoEs under PGD; dual models (pre-trained at 0.7 / 0.8 / 0.9, JTDMoE at 0.7) under PGD
        "cifar10": {"st": (92.14, 52.54, 3.11, 54.67), "at": (79.08, 53.74, 73.85, 78.91),
                    "rter": (77.81, 69.09, 75.71, 72.28),
                    "dual_0.7": (89.81, 67.81, 79.47, 52.93), "dual_0.8": (87.58, 68.27, 77.25, 54.99),
                    "dual_0.9": (83.27, 70.73, 75.03, 60.87), "jtdmoe_0.7": (92.29, 74.62, 85.42, 68.73)},
        "tinyimagenet": {"st": (82.05, 34.53, 29.21, 59.00), "at": (70.77, 50.94, 42.09, 83.81),
                         "rter": (68.51, 56.79, 46.32, 81.26),
                         "dual_0.7": (80.74, 53.11, 68.92, 47.39), "dual_0.8": (77.89, 55.27, 65.94, 55.16),
                         "dual_0.9": (74.2, 56.58, 61.95, 62.80), "jtdmoe_0.7": (84.91, 57.39, 69.58, 53.32)},
    },
    "table4": {  # pre-trained dual vs JTDMoE at alpha 0.7 under AutoAttack
        "cifar10": {"pretrained": (89.81, 33.64, 34.20, 14.34), "jtdmoe": (92.29, 54.55, 51.13, 45.55)},
        "tinyimagenet": {"pretrained": (80.74, 51.27, 56.25, 26.88), "jtdmoe": (84.91, 52.91, 60.98, 28.82)},
    },
    "table5": {  # per-class margin improvement (%) of JTDMoE over the pre-trained dual model, alpha 0.7
        "cifar10": {"airplane": 5.11, "automobile": 3.49, "bird": 7.5, "cat": 5.55, "deer": 10.27,
                    "dog": 14.42, "frog": 6.46, "horse": 4.03, "ship": 1.25, "truck": 4.58},
    },
    "table6": {  # smooth (dense) attack
        "cifar10": {"st": (92.14, 46.02, 3.11, 54.67), "at": (79.08, 51.03, 73.85, 78.91),
                    "rter": (77.81, 68.96, 75.71, 72.28)},
    },
    "table7": {  # TRADES / AdvMoE / RT-ER under PGD and AutoAttack
        "cifar10": {"pgd": {"trades": (83.81, 52.54, 72.72, 76.63), "advmoe": (76.83, 58.67, 73.79, 74.03),
                            "rter": (77.81, 69.09, 75.71, 72.28)},
                    "aa": {"trades": (83.81, 38.90, 54.72, 56.84), "advmoe": (76.83, 44.17, 54.62, 55.06),
                           "rter": (75.92, 54.36, 57.86, 54.84)}},
    },
    "table8": {  # RT-ER with E experts
        "cifar10": {"rter_e3": (75.85, 69.03, 74.79, 72.42), "rter": (77.81, 69.09, 75.71, 72.28),
                    "rter_e5": (79.77, 70.00, 76.51, 71.86)},
    },
    "table9": {  # RT-ER with beta (beta 9 collapses to chance)
        "cifar10": {"rter_b1": (81.68, 64.13, 68.67, 69.64), "rter_b3": (79.91, 65.92, 70.75, 72.05),
                    "rter": (77.81, 69.09, 75.71, 72.28), "rter_b9": (10.0, 10.0, 10.0, 10.0)},
    },
    "table10": {  # ImageNet, ViT experts
        "imagenet": {"at": (60.32, 44.64, 43.06, 70.24), "trades": (61.94, 45.54, 43.75, 70.37),
                     "rter": (68.38, 56.16, 44.99, 70.82)},
    },
}
PAPER_NAME = {"cifar10": "CIFAR-10", "tinyimagenet": "TinyImageNet", "imagenet": "ImageNet"}
NUM_CLASSES = {"digits": 10, "cifar10": 10, "tinyimagenet": 200, "imagenet": 1000}
CLASS_NAMES = {"cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
               "digits": [str(i) for i in range(10)]}
SINGLE = (("SA", "sa"), ("RA", "ra"), ("RA-E", "ra_e"), ("RA-R", "ra_r"))
DUAL = (("SA", "sa"), ("RA", "ra"), ("RA-RMoE", "ra_rmoe"), ("RA-SMoE", "ra_smoe"))
ROUTE = (("same top-1 % (whole)", "route_same_whole"), ("same top-1 % (smooth)", "route_same_smooth"),
         ("same top-1 % (experts)", "route_same_experts"), ("same top-1 % (router)", "route_same_router"))
NA = "n/a"


# ----------------------------------------------------------------------------- reading the runs

def read_json(path, problems):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable ({type(exc).__name__}), treated as missing")
        return None


def number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text if text not in ("", None) else None
    return value


def read_log(path, problems):
    try:
        with open(path, newline="") as f:
            return [{k: number(v) for k, v in row.items() if k is not None} for row in csv.DictReader(f)]
    except FileNotFoundError:
        return None
    except (OSError, csv.Error) as exc:
        problems.append(f"{path}: unreadable ({type(exc).__name__}), treated as missing")
        return None


def load_runs(runs_dir, problems):
    """{run name: {args, log, diverged, evals: {eval_pgd: {...}, dual_aa: {...}}}} for every folder in runs_dir."""
    runs = {}
    if not os.path.isdir(runs_dir):
        problems.append(f"{runs_dir}: no such folder; every cell is n/a")
        return runs
    for name in sorted(os.listdir(runs_dir)):
        folder = os.path.join(runs_dir, name)
        if not os.path.isdir(folder):
            continue
        evals = {}
        for file in sorted(os.listdir(folder)):
            if file.endswith(".json") and file.startswith(("eval_", "dual_")):
                value = read_json(os.path.join(folder, file), problems)
                if isinstance(value, dict) and file.startswith("dual_"):
                    rows = value.get("rows")
                    value["rows"] = [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []
                if isinstance(value, dict):
                    evals[file[:-5]] = value
                elif value is not None:
                    problems.append(f"{os.path.join(folder, file)}: not a JSON object, treated as missing")
        args = read_json(os.path.join(folder, "args.json"), problems)
        diverged = read_json(os.path.join(folder, "diverged.json"), problems)
        if os.path.exists(os.path.join(folder, "diverged.json")) and not isinstance(diverged, dict):
            diverged = {"message": "diverged.json present" if diverged is None else str(diverged)}
        runs[name] = {"args": args if isinstance(args, dict) else None,
                      "log": read_log(os.path.join(folder, "log.csv"), problems),
                      "diverged": diverged,
                      "has_ckpt": os.path.exists(os.path.join(folder, "ckpt.pt")),
                      "evals": evals}
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
    if preset != "digits" and k >= 1 and abs(k - round(k)) < 1e-4:
        return f"{round(k)}/255"
    return f"{eps:g}"


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class Report:
    def __init__(self, preset, runs, quick, command):
        self.preset, self.runs, self.quick, self.command = preset, runs, quick, command
        self.paper_ds = preset if preset in PAPER_NAME else None
        self.num_classes = NUM_CLASSES.get(preset, 10)
        self.tables = {}  # what results.json gets per table

    # -- access

    def single(self, run, attack):
        return self.runs.get(run, {}).get("evals", {}).get(f"eval_{attack}")

    def dual(self, run, attack, alpha):
        """The row for alpha of a dual-model evaluation, with the file's attack settings merged in."""
        blob = self.runs.get(run, {}).get("evals", {}).get(f"dual_{attack}")
        if not blob:
            return None
        for row in blob.get("rows", []):
            if finite(row.get("alpha")) and abs(row["alpha"] - alpha) < 1e-6:
                return {**{k: v for k, v in blob.items() if k != "rows"}, **row}
        return None

    def paper(self, table, *keys):
        node = PAPER.get(table, {}).get(self.paper_ds or "", None)
        for k in keys:
            if not isinstance(node, dict):
                return None
            node = node.get(k)
        return node

    def status(self, run, sa=None):
        """ok | collapsed (why) | not run | not evaluated."""
        rec = self.runs.get(run)
        if rec is None:
            return "not run"
        if rec.get("diverged"):
            d = rec["diverged"]
            return f"collapsed ({d.get('message', 'diverged')})" if isinstance(d, dict) else "collapsed"
        if finite(sa) and sa <= 200.0 / self.num_classes:
            return f"collapsed (SA {sa:.2f} % <= 2x chance)"
        return "ok"

    # -- the title line and notes

    def describe(self, used):
        """eps, attack steps and test points of the evaluations used (read from their JSON)."""
        used = [u for u in used if u]
        eps = sorted({fmt_eps(u.get("eps"), self.preset) for u in used})
        if not eps:  # nothing evaluated yet: the budget of any run
            eps = sorted({fmt_eps(r["args"].get("eps"), self.preset) for r in self.runs.values()
                          if isinstance(r.get("args"), dict) and "eps" in r["args"]})[:1]
        parts = []
        for u in used:
            n = u.get("n") if finite(u.get("n")) else NA
            if u.get("attack") == "aa":
                what = f"AutoAttack {u['aa_version']}" if u.get("aa_version") else "AutoAttack (standard)"
            else:
                name = "smooth-attack PGD" if u.get("attack") == "smooth" else "PGD"
                what = f"{name}-{u.get('steps', '?')} (step {fmt_eps(u.get('step_size'), self.preset)})"
            text = f"{what}, n={n}"
            if text not in parts:
                parts.append(text)
        return (f"eps {' / '.join(eps) if eps else NA}; "
                + ("; ".join(parts) if parts else "attack: n/a (nothing evaluated yet)"))

    def title(self, number, what, used):
        return (f"# Table {number}: {what} | preset {self.preset}{' (quick smoke run)' if self.quick else ''} | "
                f"{self.describe(used)} | `{self.command}`\n\n")

    def notes(self, table, runs, extra=(), paper_note=True, used=()):
        out = list(extra)
        sizes = sorted({u.get("n") for u in used if u and finite(u.get("n"))})
        if len(sizes) > 1:
            out.append(f"The attacks ran on different fixed test subsets (n = {', '.join(str(n) for n in sizes)}), "
                       "so SA differs between them.")
        if not paper_note:
            pass
        elif self.paper_ds is None:
            out.append("The paper has no digits numbers (its tables are CIFAR-10 / TinyImageNet, Table 10 ImageNet), "
                       "so there is no paper column.")
        elif PAPER.get(table) and self.paper_ds not in PAPER[table]:
            have = ", ".join(PAPER_NAME[d] for d in PAPER[table])
            out.append(f"The paper reports this table for {have} only: paper cells are n/a on {self.preset}.")
        for run in runs:
            st = self.status(run)
            if st.startswith("collapsed"):
                out.append(f"Run `{run}` {st}; its numbers (if any) are from its last good checkpoint.")
        missing = [r for r in runs if r not in self.runs]
        if missing:
            out.append("n/a: not run yet: " + ", ".join(f"`{r}`" for r in missing) + ".")
        if self.quick:
            out.append("Quick smoke run (2 epochs, tiny attacks): checks the pipeline, the numbers mean nothing.")
        return "".join(f"\n- {n}" for n in out) + ("\n" if out else "")

    # -- single-MoE rows

    @staticmethod
    def routes(evals):
        """The routing-consistency columns some of these evaluations have."""
        return [(n, k) for n, k in ROUTE if any(ev and finite(ev.get(k)) for ev in evals)]

    def single_header(self, lead, routes=(), ra_name="RA"):
        header = list(lead)
        for name, _ in SINGLE:
            name = ra_name if name == "RA" else name
            header += [name] + ([f"{name} paper"] if self.paper_ds else [])
        header += ["worst"] + (["worst paper"] if self.paper_ds else [])
        return header + [n for n, _ in routes]

    def metric_cells(self, metrics, ev, paper):
        """Our value of each (name, key) metric, the paper's beside it on paper presets; and the record."""
        cells, record = [], {}
        for i, (_, key) in enumerate(metrics):
            cells.append(fmt(ev.get(key)))
            if self.paper_ds:
                cells.append(fmt(paper[i]) if paper else NA)
            record[key] = ev.get(key)
        return cells, record

    def single_cells(self, ev, paper, routes=()):
        ev = ev or {}
        cells, record = self.metric_cells(SINGLE, ev, paper)
        worst = ev.get("worst")
        if not finite(worst) and all(finite(ev.get(k)) for k in ("ra", "ra_e", "ra_r")):
            worst = min(ev["ra"], ev["ra_e"], ev["ra_r"])
        cells.append(fmt(worst))
        if self.paper_ds:
            cells.append(fmt(min(paper[1:])) if paper else NA)
        record["worst"] = worst
        for _, key in routes:
            cells.append(fmt(ev.get(key)))
        record.update({k: ev.get(k) for _, k in ROUTE if k in ev})
        record["paper"] = list(paper) if paper else None
        return cells, record

    def dual_header(self, lead):
        header = list(lead)
        for name, _ in DUAL:
            header += [name] + ([f"{name} paper"] if self.paper_ds else [])
        return header

    def dual_cells(self, ev, paper):
        cells, record = self.metric_cells(DUAL, ev or {}, paper)
        record["paper"] = list(paper) if paper else None
        return cells, record

    def single_table(self, lead, specs, attack, ra_name="RA", extra_cells=None, extra_header=()):
        """specs: (lead cells, run, paper row or None); returns (markdown table, used evals, records)."""
        used = [self.single(run, attack) for _, run, _ in specs]
        routes = self.routes(used)
        rows, records = [], []
        for (lead_cells, run, paper), ev in zip(specs, used):
            cells, rec = self.single_cells(ev, paper, routes)
            more = extra_cells(run, ev, rec) if extra_cells else []
            rows.append(list(lead_cells) + cells + more)
            records.append({"row": " / ".join(lead_cells), "run": run, "attack": attack, **rec})
        header = self.single_header(lead, routes, ra_name) + list(extra_header)
        return md_table(header, rows), used, records

    # ----------------------------------------------------------------------------- the tables

    def table1(self):
        used = [self.single("st", "pgd"), self.single("st", "aa")]
        routes = self.routes(used)
        rows, rec = [], []
        for label, attack, ev in (("PGD", "pgd", used[0]), ("AutoAttack", "aa", used[1])):
            cells, r = self.single_cells(ev, self.paper("table1", attack), routes)
            rows.append([label] + cells)
            rec.append({"row": label, "run": "st", "attack": attack, **r})
        text = self.title(1, "robustness of the MoE components of a standard-trained (ST) MoE", used)
        text += md_table(self.single_header(["attack"], routes), rows)
        text += self.notes("table1", ["st"], used=used, extra=[
            "RA attacks the whole MoE, RA-E the experts (routing frozen at clean x), RA-R the router (experts frozen "
            "at clean x); accuracy is always that of the full MoE at x_adv. worst = min(RA, RA-E, RA-R); same top-1 % "
            "= share of points routed to the same top-1 expert at x_adv as at x (the paper reports 98 % under expert "
            "attacks)."])
        self.tables["table1"] = rec
        return text

    def table2(self):
        specs = [(["top-1", "AT"], "at", self.paper("table2", "at")),
                 (["top-1", "RT-ER"], "rter", self.paper("table2", "rter")),
                 (["top-2", "AT"], "at_top2", self.paper("table2", "at_top2")),
                 (["top-2", "RT-ER"], "rter_top2", self.paper("table2", "rter_top2"))]
        body, used, rec = self.single_table(["routing", "method"], specs, "pgd")
        text = self.title(2, "AT vs RT-ER under PGD, top-1 and top-2 routing", used) + body
        text += self.notes("table2", ["at", "rter", "at_top2", "rter_top2"])
        self.tables["table2"] = rec
        return text

    def table3(self):
        specs = [(["ST"], "st", self.paper("table3", "st")), (["AT"], "at", self.paper("table3", "at")),
                 (["RT-ER"], "rter", self.paper("table3", "rter"))]
        body, used, rec = self.single_table(["method"], specs, "pgd")
        dual_rows, dual_rec = [], []
        for label, run, alpha, key in (("Dual-Model (pre-trained)", "dual_pretrained", 0.7, "dual_0.7"),
                                       ("Dual-Model (pre-trained)", "dual_pretrained", 0.8, "dual_0.8"),
                                       ("Dual-Model (pre-trained)", "dual_pretrained", 0.9, "dual_0.9"),
                                       ("Dual-Model (JTDMoE)", "jtdmoe_a0.7", 0.7, "jtdmoe_0.7")):
            ev = self.dual(run, "pgd", alpha)
            used.append(ev)
            cells, r = self.dual_cells(ev, self.paper("table3", key))
            dual_rows.append([label, f"{alpha:.1f}"] + cells)
            dual_rec.append({"row": f"{label} alpha {alpha}", "run": run, "alpha": alpha, **r})
        text = self.title(3, "ST / AT / RT-ER single MoEs; dual model pre-trained (alpha 0.7 0.8 0.9) and "
                             "JTDMoE (alpha 0.7), PGD", used)
        text += "## Single MoE\n\n" + body + "\n## Dual model F_D = (1 - alpha) F_S + alpha F_R\n\n"
        text += md_table(self.dual_header(["model", "alpha"]), dual_rows)
        text += self.notes("table3", ["st", "at", "rter", "dual_pretrained", "jtdmoe_a0.7"],
                           ["Dual rows: RA attacks the dual model, RA-RMoE the robust MoE alone, RA-SMoE the "
                            "standard MoE alone; accuracy is always that of the dual model at x_adv. The pre-trained "
                            "dual model mixes runs `st` and `rter`; JTDMoE is run `jtdmoe_a0.7`."])
        self.tables["table3"] = {"single": rec, "dual": dual_rec}
        return text

    def table4(self):
        rows, used, rec = [], [], []
        for label, run, key in (("Pre-trained", "dual_pretrained", "pretrained"), ("JTDMoE", "jtdmoe_a0.7", "jtdmoe")):
            ev = self.dual(run, "aa", 0.7)
            used.append(ev)
            cells, r = self.dual_cells(ev, self.paper("table4", key))
            rows.append([label] + cells)
            rec.append({"row": label, "run": run, "alpha": 0.7, **r})
        text = self.title(4, "pre-trained dual model vs JTDMoE at alpha 0.7 under AutoAttack", used)
        text += md_table(self.dual_header(["method"]), rows)
        text += self.notes("table4", ["dual_pretrained", "jtdmoe_a0.7"])
        self.tables["table4"] = rec
        return text

    def table5(self):
        attack = "pgd"
        pre, jtd = self.dual("dual_pretrained", attack, 0.7), self.dual("jtdmoe_a0.7", attack, 0.7)
        if not (pre and pre.get("margin_rob")) or not (jtd and jtd.get("margin_rob")):
            pre2, jtd2 = self.dual("dual_pretrained", "aa", 0.7), self.dual("jtdmoe_a0.7", "aa", 0.7)
            if pre2 and jtd2 and pre2.get("margin_rob") and jtd2.get("margin_rob"):
                attack, pre, jtd = "aa", pre2, jtd2
        def listed(ev, key):
            value = (ev or {}).get(key)
            return value if isinstance(value, list) else []
        m_pre, m_jtd = listed(pre, "margin_rob"), listed(jtd, "margin_rob")
        d_pre, d_jtd = listed(pre, "margin_dual"), listed(jtd, "margin_dual")
        count = max(len(m_pre), len(m_jtd), self.num_classes if self.preset in CLASS_NAMES else 0)
        names = CLASS_NAMES.get(self.preset, [str(i) for i in range(count)])
        paper = self.paper("table5") or {}
        at = lambda seq, i: seq[i] if i < len(seq) and finite(seq[i]) else None  # noqa: E731
        rows, rec, gains = [], [], []
        for c in range(count):
            a, b = at(m_pre, c), at(m_jtd, c)
            gain = 100 * (b - a) if a is not None and b is not None else None
            rel = 100 * (b - a) / abs(a) if gain is not None and a != 0 else None
            da, db = at(d_pre, c), at(d_jtd, c)
            dgain = 100 * (db - da) if da is not None and db is not None else None
            name = names[c] if c < len(names) else str(c)
            row = [name, fmt(100 * a if a is not None else None), fmt(100 * b if b is not None else None),
                   fmt(gain), fmt(rel), fmt(dgain)]
            if self.paper_ds:
                row.append(fmt(paper.get(name)) if paper else NA)
            rows.append(row)
            gains.append(gain)
            rec.append({"class": name, "margin_rob_pretrained": a, "margin_rob_jtdmoe": b, "improvement_pp": gain,
                        "relative_pct": rel, "margin_dual_improvement_pp": dgain,
                        "paper": paper.get(name) if paper else None})
        valid = [g for g in gains if g is not None]
        summary = ["mean", NA, NA, fmt(sum(valid) / len(valid)) if valid else NA, "", ""]
        if self.paper_ds:
            summary.append(fmt(sum(paper.values()) / len(paper)) if paper else NA)
        rows.append(summary)
        header = ["class", "margin pre-trained (%)", "margin JTDMoE (%)", "improvement (pp)", "relative (%)",
                  "dual-model margin improvement (pp)"] + (["paper improvement (%)"] if self.paper_ds else [])
        text = self.title(5, "per-class margin improvement of JTDMoE over the pre-trained dual model, alpha 0.7",
                          [pre, jtd])
        text += md_table(header, rows)
        improved = sum(g > 0 for g in valid)
        extra = [f"Margin = mean over the class's test points of p_y - max_(k != y) p_k of the **robust MoE F_R** "
                 f"(eval.py `margin_rob`, softmax probabilities on clean inputs, from dual_{attack}.json), x100. "
                 "improvement = JTDMoE - pre-trained in percentage points (the paper does not define its "
                 "'improvement (%)'; we read it as percentage points); relative = improvement / |pre-trained margin|. "
                 "The last column uses the dual model's own margin (`margin_dual`).",
                 f"JTDMoE improves the margin of {improved} of {len(valid)} classes." if valid else
                 "n/a: needs dual_pretrained and jtdmoe_a0.7 evaluated."]
        text += self.notes("table5", ["dual_pretrained", "jtdmoe_a0.7"], extra)
        self.tables["table5"] = rec
        return text

    def table6(self):
        specs = [(["ST"], "st", self.paper("table6", "st")), (["AT"], "at", self.paper("table6", "at")),
                 (["RT-ER"], "rter", self.paper("table6", "rter"))]
        body, used, rec = self.single_table(["method"], specs, "smooth", ra_name="RA (smooth)")
        text = self.title(6, "ST / AT / RT-ER under the smooth attack (dense sum_i a_i f_i, all experts)", used) + body
        text += self.notes("table6", ["st", "at", "rter"],
                           ["RA (smooth): PGD through the dense smooth view sum_i a_i(x+d) f_i(x+d), accuracy of the "
                            "top-1 MoE at x_adv; RA-E / RA-R are from the same eval_smooth.json run."])
        self.tables["table6"] = rec
        return text

    def table7(self):
        text_blocks, used, rec = [], [], {}
        for attack, label in (("pgd", "PGD"), ("aa", "AutoAttack")):
            specs = [(["TRADES"], "trades", self.paper("table7", attack, "trades")),
                     (["AdvMoE"], "advmoe", self.paper("table7", attack, "advmoe")),
                     (["RT-ER"], "rter", self.paper("table7", attack, "rter"))]
            body, u, r = self.single_table(["method"], specs, attack)
            used += u
            rec[attack] = r
            text_blocks.append(f"## {label}\n\n" + body)
        text = self.title(7, "TRADES / AdvMoE / RT-ER under PGD and AutoAttack", used) + "\n".join(text_blocks)
        text += self.notes("table7", ["trades", "advmoe", "rter"], used=used)
        self.tables["table7"] = rec
        return text

    def table8(self):
        specs = [(["3"], "rter_e3", self.paper("table8", "rter_e3")), (["4"], "rter", self.paper("table8", "rter")),
                 (["5"], "rter_e5", self.paper("table8", "rter_e5"))]
        body, used, rec = self.single_table(["E"], specs, "pgd")
        text = self.title(8, "RT-ER with E = 3, 4, 5 experts, PGD", used) + body
        text += self.notes("table8", ["rter_e3", "rter", "rter_e5"])
        self.tables["table8"] = rec
        return text

    def table9(self):
        def status_cell(run, ev, rec):
            sa = (ev or {}).get("sa")
            log = (self.runs.get(run) or {}).get("log") or []
            if not finite(sa) and log and finite(log[-1].get("sa")):
                sa = log[-1]["sa"]  # not evaluated: the last per-epoch SA tells a collapse too
            status = self.status(run, sa)
            if status == "ok" and ev is None:
                status = "not evaluated" if run in self.runs else "not run"
            if status.startswith("collapsed"):
                d = (self.runs.get(run) or {}).get("diverged") or {}
                good = d.get("epoch") - 1 if isinstance(d, dict) and finite(d.get("epoch")) else None
                if ev is not None:
                    status += f"; numbers: last good checkpoint{f' (epoch {good})' if good else ''}"
                else:
                    status += "; no checkpoint evaluated"
            rec["status"] = status
            return [status]

        specs = [([beta], run, self.paper("table9", run))
                 for beta, run in (("1", "rter_b1"), ("3", "rter_b3"), ("6", "rter"), ("9", "rter_b9"))]
        body, used, rec = self.single_table(["beta"], specs, "pgd", extra_cells=status_cell, extra_header=["status"])
        text = self.title(9, "RT-ER with beta = 1, 3, 6, 9 (beta 9 collapses in the paper), PGD", used) + body
        text += self.notes("table9", [], [
            f"A run is marked collapsed when training diverged (diverged.json: NaN / inf loss) or its SA is at most "
            f"twice chance ({200.0 / self.num_classes:.2f} %). The paper's beta 9 run collapsed to 10 % (chance)."])
        self.tables["table9"] = rec
        return text

    def table10(self):
        if self.preset == "imagenet":
            papers = {r: self.paper("table10", r) for r in ("at", "trades", "rter")}
            extra = []
        else:
            source = {"cifar10": {"at": PAPER["table2"]["cifar10"]["at"],
                                  "trades": PAPER["table7"]["cifar10"]["pgd"]["trades"],
                                  "rter": PAPER["table2"]["cifar10"]["rter"]},
                      "tinyimagenet": {"at": PAPER["table3"]["tinyimagenet"]["at"],
                                       "rter": PAPER["table3"]["tinyimagenet"]["rter"]}}.get(self.preset, {})
            papers = {r: source.get(r) for r in ("at", "trades", "rter")}
            extra = [f"The paper's Table 10 is ImageNet with ViT experts (`bash run_all.sh imagenet`); here the same "
                     f"three methods on {self.preset}."]
            if self.paper_ds:
                extra.append(f"Paper cells: the paper's {PAPER_NAME[self.preset]} numbers for these methods "
                             f"({'Tables 2 and 7' if self.preset == 'cifar10' else 'Table 3; no TRADES'}), "
                             f"not its ImageNet Table 10.")
        specs = [(["AT"], "at", papers["at"]), (["TRADES"], "trades", papers["trades"]),
                 (["RT-ER"], "rter", papers["rter"])]
        body, used, rec = self.single_table(["method"], specs, "pgd")
        text = self.title(10, "AT / TRADES / RT-ER, PGD" + (" (ImageNet, ViT-small experts)"
                                                            if self.preset == "imagenet" else ""), used) + body
        # on cifar10 / tinyimagenet the paper cells come from its other tables (said in `extra`)
        text += self.notes("table10", ["at", "trades", "rter"], extra, paper_note=self.preset in ("imagenet", "digits"))
        self.tables["table10"] = rec
        return text


# ----------------------------------------------------------------------------- figures

def curve(rec, key):
    xs, ys = [], []
    for row in (rec or {}).get("log") or []:
        if finite(row.get("epoch")) and finite(row.get(key)):
            xs.append(row["epoch"])
            ys.append(row[key])
    return xs, ys


def per_epoch_setting(report, runs):
    for run in runs:
        a = (report.runs.get(run) or {}).get("args")
        if isinstance(a, dict) and "eps" in a:
            n = a.get("eval_n")
            where = "all test points" if not n else f"{n} test points"
            return (f"eps {fmt_eps(a['eps'], report.preset)}, RA: PGD-{a.get('eval_steps', '?')} on {where} "
                    f"(per-epoch evaluation)")
    return "no run yet"


def no_data(ax, what="no data yet (run not done)"):
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="gray")


def figure_curves(report, path, title, series, baseline=None):
    """SA (left) and RA (right) per epoch for each (label, run); baseline: (label, sa, ra) dashed lines."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3), dpi=120)
    data = {}
    for ax, key, name in ((axes[0], "sa", "SA"), (axes[1], "ra", "RA")):
        drawn, last = False, 0
        for label, run in series:
            xs, ys = curve(report.runs.get(run), key)
            data.setdefault(run, {})[key] = {"epoch": xs, key: ys}
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, markersize=4, label=label)
                drawn, last = True, max(last, max(xs))
        if last:
            ax.set_xlim(0, last + 1)
        if baseline and finite(baseline[1 if key == "sa" else 2]):
            ax.axhline(baseline[1 if key == "sa" else 2], color="green", linestyle="--", label=baseline[0])
            drawn = True
        if drawn:
            ax.legend(fontsize=8)
        else:
            no_data(ax)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{name} (accuracy %)")
        ax.set_title(f"{name} per epoch", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return data


def figure_alpha(report, path, title, attack, paper_points=None):
    """Pre-trained dual model against alpha: SA (left), RA / RA-RMoE / RA-SMoE (right)."""
    import matplotlib.pyplot as plt
    blob = (report.runs.get("dual_pretrained") or {}).get("evals", {}).get(f"dual_{attack}") or {}
    rows = sorted((r for r in blob.get("rows", []) if finite(r.get("alpha"))), key=lambda r: r["alpha"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3), dpi=120)
    groups = ((axes[0], (("SA", "sa"),), "SA (accuracy %)"),
              (axes[1], (("RA", "ra"), ("RA-RMoE", "ra_rmoe"), ("RA-SMoE", "ra_smoe")), "robust accuracy %"))
    for ax, keys, ylabel in groups:
        drawn = False
        for name, key in keys:
            pts = [(r["alpha"], r[key]) for r in rows if finite(r.get(key))]
            if pts:
                drawn = True
                line, = ax.plot(*zip(*pts), marker="o", markersize=4, label=f"{name} (ours)")
                if paper_points:
                    pp = [(a, v[key]) for a, v in paper_points.items() if key in v]
                    if pp:
                        ax.plot(*zip(*pp), linestyle="none", marker="s", fillstyle="none", color=line.get_color(),
                                label=f"{name} (paper)")
        if drawn:
            ax.legend(fontsize=8)
        else:
            no_data(ax)
        ax.set_xlabel("alpha (weight of the robust MoE)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.45, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_title("clean accuracy", fontsize=10)
    axes[1].set_title("under attack on the dual / robust / standard MoE", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return {"rows": [{k: r.get(k) for k in ("alpha", "sa", "ra", "ra_rmoe", "ra_smoe")} for r in rows],
            "paper": paper_points}


def figure_routing(report, path, title):
    """Share of clean test points each expert gets as top-1, at each run's last evaluation: one bar per run."""
    import matplotlib.pyplot as plt
    shares = {}
    for run, rec in sorted(report.runs.items()):
        rows = [r for r in (rec or {}).get("log") or [] if finite(r.get("usage_0"))]
        if rows:
            keys = sorted((k for k in rows[-1] if k.startswith("usage_")), key=lambda k: int(k[6:]))
            shares[run] = [100 * rows[-1][k] for k in keys]
    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.3 * max(len(shares), 1)), dpi=120)
    for i, row in enumerate(shares.values()):
        left = 0.0
        for e, share in enumerate(row):
            ax.barh(i, share, left=left, color=f"C{e}", label=f"expert {e}")
            left += share
    if shares:
        ax.set_yticks(range(len(shares)), list(shares))
        ax.invert_yaxis()
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one legend entry per expert
        ax.legend(unique.values(), unique.keys(), fontsize=8, ncol=len(unique), loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), frameon=False)
    else:
        no_data(ax)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of clean test points routed to each expert as top-1 (%)")
    ax.set_ylabel("run")
    ax.set_title(title, fontsize=10, pad=26)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return shares


def figures(report, out):
    import matplotlib
    matplotlib.use("Agg")
    p, q = report.preset, " (quick smoke run)" if report.quick else ""
    data = {}
    setting = per_epoch_setting(report, ["at", "rter"])
    data["fig2"] = figure_curves(report, os.path.join(out, "fig2.png"),
                                 f"Figure 2: AT vs RT-ER per epoch | preset {p}{q}\n{setting}",
                                 [("AT", "at"), ("RT-ER", "rter")])
    arch = ((report.runs.get("rter") or {}).get("args") or {}).get("arch", "?")
    data["fig4"] = figure_curves(report, os.path.join(out, "fig4.png"),
                                 f"Figure 4 (paper: ViT-small experts on TinyImageNet): AT vs RT-ER per epoch | preset "
                                 f"{p}{q}, {arch} experts\n{setting}",
                                 [("AT", "at"), ("RT-ER", "rter")])
    data["fig5"] = figure_curves(report, os.path.join(out, "fig5.png"),
                                 f"Figure 5: TRADES / AdvMoE / RT-ER per epoch | preset {p}{q}\n"
                                 f"{per_epoch_setting(report, ['trades', 'advmoe', 'rter'])}",
                                 [("TRADES", "trades"), ("AdvMoE", "advmoe"), ("RT-ER", "rter")])
    base = report.dual("dual_pretrained", "pgd", 0.7)
    baseline = None
    if base:
        baseline = (f"pre-trained dual, alpha 0.7 (PGD-{base.get('steps')}, n={base.get('n')})",
                    base.get("sa"), base.get("ra"))
    jt = [f"jtdmoe_a{a}" for a in ("0.5", "0.6", "0.7", "0.8")]
    data["fig7"] = figure_curves(report, os.path.join(out, "fig7.png"),
                                 f"Figure 7: JTDMoE per epoch, alpha 0.5-0.8 | preset {p}{q}\n"
                                 f"{per_epoch_setting(report, jt)}; dashed: pre-trained dual at alpha 0.7 (eval.py)",
                                 [(f"JTDMoE alpha {r[-3:]}", r) for r in jt], baseline)
    data["fig7"]["baseline"] = list(baseline) if baseline else None
    for name, attack, label in (("fig3", "pgd", "PGD"), ("fig6", "aa", "AutoAttack")):
        blob = (report.runs.get("dual_pretrained") or {}).get("evals", {}).get(f"dual_{attack}") or {}
        if attack == "aa":
            what = f"AutoAttack {blob['aa_version']}" if blob.get("aa_version") else "AutoAttack (standard)"
        else:
            what = f"PGD-{blob.get('steps', '?')}"
        paper_points = None
        if report.paper_ds in ("cifar10", "tinyimagenet"):
            keys = ("sa", "ra", "ra_rmoe", "ra_smoe")
            if attack == "pgd":
                paper_points = {a: dict(zip(keys, PAPER["table3"][report.paper_ds][f"dual_{a}"]))
                                for a in (0.7, 0.8, 0.9)}
            else:
                paper_points = {0.7: dict(zip(keys, PAPER["table4"][report.paper_ds]["pretrained"]))}
        data[name] = figure_alpha(report, os.path.join(out, f"{name}.png"),
                                  f"Figure {name[3:]}: pre-trained dual model (ST + RT-ER) vs alpha | preset {p}{q}\n"
                                  f"{what}, eps {fmt_eps(blob.get('eps'), p)}, n={blob.get('n', NA)} test points",
                                  attack, paper_points)
    data["routing"] = figure_routing(report, os.path.join(out, "routing.png"),
                                     f"Expert usage at each run's last evaluation | preset {p}{q}\n"
                                     f"(a collapsed router sends every point to one expert)")
    return data


# ----------------------------------------------------------------------------- main

def clean(value):
    """JSON-safe copy: NaN / inf become null (eval.py writes NaN for a class without test points)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=["digits", "cifar10", "tinyimagenet", "imagenet"])
    ap.add_argument("--runs", default=None, help="runs folder (default runs/<preset>)")
    ap.add_argument("--out", default=None, help="results folder (default results/<preset>)")
    ap.add_argument("--quick", action="store_true", help="the runs are a run_all.sh --quick smoke run")
    ap.add_argument("--command", default=None, help="the command that produced the runs (for the titles)")
    args = ap.parse_args(argv)
    runs_dir = args.runs or os.path.join("runs", args.preset + ("-quick" if args.quick else ""))
    out = args.out or os.path.join("results", args.preset + ("-quick" if args.quick else ""))
    command = args.command or f"bash run_all.sh {args.preset}" + (" --quick" if args.quick else "")
    os.makedirs(out, exist_ok=True)
    problems = []
    runs = load_runs(runs_dir, problems)
    report = Report(args.preset, runs, args.quick, command)
    for k in range(1, 11):
        path = os.path.join(out, f"table{k}.md")
        with open(path, "w") as f:
            f.write(getattr(report, f"table{k}")())
        print(f"wrote {path}")
    figs = figures(report, out)
    names = [f"fig{k}.png" for k in range(2, 8)] + ["routing.png"]
    print(f"wrote {', '.join(os.path.join(out, name) for name in names)}")
    blob = {"preset": args.preset, "quick": args.quick, "command": command, "runs_dir": os.path.abspath(runs_dir),
            "problems": problems, "tables": report.tables, "figures": figs,
            "paper": PAPER, "runs": runs}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(clean(blob), f, indent=1, sort_keys=True, allow_nan=False, default=str)
    print(f"wrote {os.path.join(out, 'results.json')}")
    for p in problems:
        print(f"warning: {p}")


if __name__ == "__main__":
    main()
