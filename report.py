"""Tables 1-10 and Figures 2-7 of the paper from the runs of run_all.sh: markdown, PNG and results.json.
  python report.py digits --runs runs/digits          (writes runs/digits/results unless --out says where)
Reads RUNS/<run>/eval_<attack>.json (eval.py), log.csv, args.json and diverged.json; RUNS/<run>-seed<k> is seed k
of <run>. Each table is one spec in TABLES, drawn by Report.render; a missing input gives n/a cells, never an error.
"""
import argparse
import csv
import json
import math
import os
import re
import statistics
from collections import namedtuple

import claims
from cli import markdown_table
from paper import PAPER
from outcomes import EVAL_NAME, accuracy, worst_case

PAPER_NAME = {"cifar10": "CIFAR-10", "tinyimagenet": "TinyImageNet", "imagenet": "ImageNet"}
NUM_CLASSES = {"digits": 10, "cifar10": 10, "tinyimagenet": 200, "imagenet": 1000}
CLASS_NAMES = {"cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
SINGLE = (("SA", "sa"), ("RA", "ra"), ("RA-E", "ra_e"), ("RA-R", "ra_r"), ("RA (worst)", "worst"))
DUAL = (("SA", "sa"), ("RA", "ra"), ("RA-RMoE", "ra_rmoe"), ("RA-SMoE", "ra_smoe"))
ROUTE = (("same top-1 % (whole)", "route_same_whole"), ("same top-1 % (smooth)", "route_same_smooth"),
         ("same top-1 % (experts)", "route_same_experts"), ("same top-1 % (router)", "route_same_router"))
MARGINS = (("margin_rob_pretrained", 100), ("margin_rob_jtdmoe", 100), ("improvement_pp", 1), ("relative_pct", 1),
           ("margin_dual_improvement_pp", 1))  # Table 5's numbers of a class, and their scale in the table
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

def metric_values(ev, dual, worst=None):
    """Our numbers in one evaluation, None where missing; worst: the run's per-point worst case over every attack."""
    ev = ev or {}
    values = {**{k: ev.get(k) for _, k in (DUAL if dual else SINGLE)}, **({} if dual else {"worst": worst})}
    return {**values, **({} if dual else {k: ev[k] for _, k in ROUTE if k in ev})}

def class_margins(pre, jtd, c):  # Table 5's numbers of class c in one seed (None where missing)
    a, b, da, db = (ev[key][c] if isinstance((ev or {}).get(key), list) and c < len(ev[key]) and finite(ev[key][c])
                    else None for key in ("margin_rob", "margin_dual") for ev in (pre, jtd))
    gain = 100 * (b - a) if a is not None and b is not None else None
    relative = 100 * (b - a) / abs(a) if gain is not None and a != 0 else None
    dual_gain = 100 * (db - da) if da is not None and db is not None else None
    return dict(zip([k for k, _ in MARGINS], (a, b, gain, relative, dual_gain)))

class Report:
    """The runs of one preset, found by the names the table specs give them; `render` draws any spec."""

    def __init__(self, preset, runs, quick, command):
        self.preset, self.runs, self.quick, self.command = preset, runs, quick, command
        self.paper_ds, self.num_classes = preset if preset in PAPER_NAME else None, NUM_CLASSES.get(preset, 10)
        self.seeds = {}  # run: its seeds' folders, seed 0 (the run's own folder) first
        for name in sorted(runs, key=lambda folder: int(m.group(2)) if (m := SEED_FOLDER.match(folder)) else 0):
            self.seeds.setdefault(SEED_FOLDER.sub(r"\1", name), []).append(name)

    def folders(self, run):  # seed 0 (the run's own folder) first; [run] while none exists
        return self.seeds.get(run) or [run]

    def evaluation(self, folder, attack, alpha=None):  # or, alpha given, a dual model's row merged with its file
        blob = self.runs.get(folder, {}).get("evals", {}).get(EVAL_NAME.format(attack))
        if alpha is None:  # a single MoE's
            return blob
        rows = [r for r in (blob or {}).get("rows", []) if finite(r.get("alpha")) and abs(r["alpha"] - alpha) < 1e-6]
        return {**{k: v for k, v in blob.items() if k != "rows"}, **rows[0]} if rows else None

    def paper(self, table, spec, key):
        """The paper's numbers at key (a key, or a tuple of keys) of this table, or where spec["paper_from"] says."""
        elsewhere = spec.get("paper_from", {})
        table, *keys = (elsewhere[self.preset].get(key) or (None,)) if self.preset in elsewhere else \
            (table, *(key if isinstance(key, tuple) else (key,)))
        node = PAPER.get(table, {}).get(self.paper_ds or "")
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    def status(self, folder, ev):  # Table 9's column: ok, collapsed (why; whose numbers), not evaluated, not run
        if folder not in self.runs:
            return "not run"
        sa, log, diverged = (ev or {}).get("sa"), self.runs[folder]["log"] or [], self.runs[folder]["diverged"] or {}
        sa = sa if finite(sa) or not log else log[-1].get("sa")  # not evaluated: the last per-epoch SA tells too
        if not diverged and not (finite(sa) and sa <= 200 / self.num_classes):
            return "not evaluated" if ev is None else "ok"
        good = diverged["epoch"] - 1 if finite(diverged.get("epoch")) else None
        why = diverged.get("message", "diverged") if diverged else f"SA {sa:.2f} % <= 2x chance"
        return f"collapsed ({why})" + ("; no checkpoint evaluated" if ev is None else
                                       f"; numbers: last good checkpoint{f' (epoch {good})' if good else ''}")

    def notes(self, table, spec, extra, used):  # the bullets under a table: its own, then those any table may need
        out, sizes = list(extra), sorted({u["n"] for u in used if u and finite(u.get("n"))})
        if len(sizes) > 1 and len({u.get("attack") for u in used if u}) > 1:
            out.append(f"The attacks ran on different fixed test subsets (n = {', '.join(str(n) for n in sizes)}), "
                       "so SA differs between them.")
        if self.preset not in spec.get("paper_from", {}):  # there the notes say where the paper cells come from
            if self.paper_ds is None:
                out.append("The paper has no digits numbers (its tables are CIFAR-10 / TinyImageNet, Table 10 "
                           "ImageNet), so there is no paper column.")
            elif PAPER.get(table) and self.paper_ds not in PAPER[table]:
                out.append(f"The paper reports this table for {', '.join(PAPER_NAME[d] for d in PAPER[table])} only: "
                           f"paper cells are n/a on {self.preset}.")
        runs = list(dict.fromkeys(r for b in spec.get("blocks", [spec]) for r in b.get("runs") or
                                  [row.run for row in b["rows"]]))
        if "extra" not in spec:  # Table 9 says it in its status column
            out += [f"Run `{folder}` collapsed ({self.runs[folder]['diverged'].get('message', 'diverged')}); its "
                    "numbers (if any) are from its last good checkpoint." for run in runs
                    for folder in self.seeds.get(run, []) if self.runs[folder]["diverged"]]
            missing = [f"`{r}`" for r in runs if r not in self.seeds]
            out += ["n/a: not run yet: " + ", ".join(missing) + "."] if missing else []
        counts = sorted({len(self.folders(r)) for r in runs} - {1})
        if counts:
            out.append(f"mean ± std over {counts[0]}{f' to {counts[-1]}' if counts[-1] > counts[0] else ''} seeds "
                       "(sample std, over the seeds that have the number; each seed's is in results.json).")
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
        worst = {f: worst_case(list(self.runs[f]["evals"].values())) for *_, folders, _ in found for f in folders
                 if f in self.runs and not dual}  # per run folder: (attacks covered, {point: survived all})
        groups = {}  # the attacks RA (worst) covers, said once per set of runs that share them (seed 0's)
        for f in dict.fromkeys(folders[0] for *_, folders, _ in found if worst.get(folders[0], (0, 0))[1]):
            groups.setdefault((", ".join(worst[f][0]), len(worst[f][1])), []).append(f"`{f}`")
        notes = [f"RA (worst) of {', '.join(r)}: share of the {n} test points all its attacks share that survive "
                 f"every one ({c})." for (c, n), r in groups.items()]
        for row, attack, folders, evs in found:
            values = [metric_values(ev, dual, accuracy(worst[f][1]) if worst.get(f, (0, 0))[1] else None)
                      for f, ev in zip(folders, evs)]
            paper = self.paper(table, spec, row.paper or row.run)
            ours = {key: cell([v.get(key) for v in values]) for _, key in metrics + routes}
            theirs = dict(zip([k for _, k in metrics], paper or ()), worst=min(paper[1:]) if paper else None)
            lead = [row.lead] if isinstance(row.lead, str) else list(row.lead)
            cells = lead + ([f"{row.alpha:.1f}"] if block.get("alpha_column") else [])
            for _, key in metrics:
                cells += [ours[key]] + [fmt(theirs[key]) if paper else NA] * bool(self.paper_ds)
            record = {"row": " / ".join(lead), "run": row.run, "attack": attack} if not dual else {"row": lead[0] + (
                f" alpha {row.alpha}" if block.get("alpha_column") else ""), "run": row.run, "alpha": row.alpha}
            record.update(merge(values, folders), paper=list(paper) if paper else None)
            if extra_name:  # one text per seed, said once where they agree
                texts = [extra_cell(self, folder, ev) for folder, ev in zip(folders, evs)]
                record[extra_name] = "; ".join(map(": ".join, zip(folders, texts))) if len(set(texts)) > 1 else texts[0]
            rows.append(cells + [ours[key] for _, key in routes] + ([record[extra_name]] if extra_name else []))
            records.append(record)
        return header + [n for n, _ in routes] + [extra_name] * bool(extra_name), rows, used, records, notes

    def margin_block(self, table, spec, block):
        """Table 5: per class, the robust MoE's clean margin in the pre-trained dual model and in JTDMoE."""
        runs, alpha, folders = block["runs"], block["alpha"], self.folders(block["runs"][0])
        has = {a: all((self.evaluation(r, a, alpha) or {}).get("margin_rob") for r in runs) for a in ("pgd", "aa")}
        attack = "aa" if has["aa"] and not has["pgd"] else "pgd"
        pairs = [[self.evaluation(r + f[len(runs[0]):], attack, alpha) for r in runs] for f in folders]  # by seed
        lengths = [len(ev["margin_rob"]) for pair in pairs for ev in pair
                   if isinstance((ev or {}).get("margin_rob"), list)]
        count = max(lengths + [self.num_classes if self.preset in ("digits", "cifar10") else 0])  # named: every class
        names, paper = CLASS_NAMES.get(self.preset, [str(i) for i in range(count)]), self.paper(table, spec, ()) or {}
        by_class, rows, records = [[class_margins(*pair, c) for pair in pairs] for c in range(count)], [], []
        for c, values in enumerate(by_class):
            name = names[c] if c < len(names) else str(c)
            ours = [cell([None if v[k] is None else scale * v[k] for v in values]) for k, scale in MARGINS]
            rows.append([name] + ours + [fmt(paper.get(name)) if paper else NA] * bool(self.paper_ds))
            records.append({"class": name, **merge(values, folders), "paper": paper.get(name) if paper else None})
        gains = [[v[s]["improvement_pp"] for v in by_class if v[s]["improvement_pp"] is not None]
                 for s in range(len(folders))]  # each seed's, over the classes
        rows.append(["mean", NA, NA, cell([sum(g) / len(g) if g else None for g in gains]), "", ""]
                    + [fmt(sum(paper.values()) / len(paper)) if paper else NA] * bool(self.paper_ds))
        valid = [r["improvement_pp"] for r in records if finite(r["improvement_pp"])]  # each class's, over the seeds
        notes = [f"Margin = mean over the class's test points of p_y - max_(k != y) p_k of the **robust MoE F_R** "
                 f"(eval.py `margin_rob`, softmax probabilities on clean inputs, from {EVAL_NAME.format(attack)}.json),"
                 " x100. improvement = JTDMoE - pre-trained in percentage points (the paper does not define its "
                 "'improvement (%)'; we read it as percentage points); relative = improvement / |pre-trained margin|."
                 " The last column uses the dual model's own margin (`margin_dual`).",
                 f"JTDMoE improves the margin of {sum(g > 0 for g in valid)} of {len(valid)} classes." if valid else
                 f"n/a: needs {runs[0]} and {runs[1]} evaluated."]
        header = block["lead"] + ["paper improvement (%)"] * bool(self.paper_ds)
        return header, rows, [ev for pair in pairs for ev in pair], records, notes

    def render(self, table):  # one table spec of TABLES -> (its markdown, its results.json record)
        spec, texts, used, records, notes = TABLES[table], [], [], {}, []
        for block in spec.get("blocks", [spec]):
            draw = self.margin_block if block.get("kind") == "margins" else self.metric_block
            header, rows, block_used, records[block.get("key")], block_notes = draw(table, spec, block)
            texts.append((f"## {block['heading']}\n\n" if "heading" in block else "") + markdown_table(header, rows))
            used, notes = used + block_used, notes + block_notes
        fill = dict(preset=self.preset, chance=200 / self.num_classes, eval_smooth=EVAL_NAME.format("smooth") + ".json")
        notes += [note.format(**fill) for note in (pick(n, self.preset) for n in spec.get("notes", [])) if note]
        evaluated = [u for u in used if u]  # the title says how: eps, attack steps, test points (from their JSON)
        eps = sorted({fmt_eps(u.get("eps"), self.preset) for u in evaluated}) or sorted(  # else any run's budget
            {fmt_eps(r["args"]["eps"], self.preset) for r in self.runs.values() if "eps" in (r["args"] or {})})[:1]
        how = dict.fromkeys(
            (f"AutoAttack {u.get('aa_version') or '(standard)'}" if u.get("attack") == "aa" else
             f"{'smooth-attack PGD' if u.get('attack') == 'smooth' else 'PGD'}-{u.get('steps', '?')} "
             f"(step {fmt_eps(u.get('step_size'), self.preset)})") + f", n={u['n'] if finite(u.get('n')) else NA}"
            for u in evaluated)
        text = (f"# Table {table[5:]}: {pick(spec['title'], self.preset)} | preset {self.preset}"
                f"{' (quick smoke run)' if self.quick else ''} | eps {' / '.join(eps) or NA}; "
                f"{'; '.join(how) or 'attack: n/a (nothing evaluated yet)'} | `{self.command}`\n\n")
        return text + "\n".join(texts) + self.notes(table, spec, notes, used), records.get(None, records)

# ----------------------------------------------------------------------------- the tables, as data
# A table: title, lead columns, Rows (or blocks of them, each with a heading), notes (filled in: {preset}, {chance},
# {eval_smooth}); a title or note may be {preset: text, "*": other presets}. A Row: lead cells, run (its seeds are
# found by folder name), the paper's key (default: the run), attack, alpha. Report.render draws any table.
Row = namedtuple("Row", "lead run paper attack alpha", defaults=(None, None, None))
ST_AT_RTER, PRE = [Row("ST", "st"), Row("AT", "at"), Row("RT-ER", "rter")], (0.7, 0.8, 0.9)
TABLES = {
    "table1": dict(title="robustness of the MoE components of a standard-trained (ST) MoE", lead=["attack"],
                   rows=[Row("PGD", "st", "pgd"), Row("AutoAttack", "st", "aa", "aa")],
        notes=["RA attacks the whole MoE, RA-E the experts (routing frozen at clean x), RA-R the router (experts "
               "frozen at clean x); accuracy is always that of the full MoE at x_adv. RA (worst): the points that "
               "survive every attack run on the model (its paper cell: the smallest of the paper's RA columns); "
               "same top-1 % = share of points routed to the same top-1 expert at x_adv as at x (the paper reports 98 "
               "% under expert attacks)."]),
    "table2": dict(title="AT vs RT-ER under PGD, top-1 and top-2 routing", lead=["routing", "method"],
                   rows=[Row(("top-1", "AT"), "at"), Row(("top-1", "RT-ER"), "rter"),
                         Row(("top-2", "AT"), "at_top2"), Row(("top-2", "RT-ER"), "rter_top2")]),
    "table3": dict(
        title="ST / AT / RT-ER single MoEs; dual model pre-trained (alpha 0.7 0.8 0.9) and JTDMoE (alpha 0.7), PGD",
        blocks=[dict(key="single", heading="Single MoE", lead=["method"], rows=ST_AT_RTER),
                dict(key="dual", heading="Dual model F_D = (1 - alpha) F_S + alpha F_R", kind="dual",
                     lead=["model", "alpha"], alpha_column=True,
                     rows=[Row("Dual-Model (pre-trained)", "dual_pretrained", f"dual_{a}", alpha=a) for a in PRE]
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
    "table6": dict(title="ST / AT / RT-ER under the smooth attack (dense sum_i a_i f_i, all experts)",
                   lead=["method"], attack="smooth", ra_name="RA (smooth)", rows=ST_AT_RTER,
        notes=["RA (smooth): PGD through the dense smooth view sum_i a_i(x+d) f_i(x+d), accuracy of the top-1 MoE at "
               "x_adv; RA-E / RA-R are from the same {eval_smooth} run."]),
    "table7": dict(title="TRADES / AdvMoE / RT-ER under PGD and AutoAttack", blocks=[dict(
        key=attack, heading=heading, lead=["method"], attack=attack,
        rows=[Row(lead, run, (attack, run)) for lead, run in (("TRADES", "trades"), ("AdvMoE", "advmoe"),
                                                              ("RT-ER", "rter"))])
        for attack, heading in (("pgd", "PGD"), ("aa", "AutoAttack"))]),
    "table8": dict(title="RT-ER with E = 3, 4, 5 experts, PGD", lead=["E"],
                   rows=[Row("3", "rter_e3"), Row("4", "rter"), Row("5", "rter_e5")]),
    "table9": dict(title="RT-ER with beta = 1, 3, 6, 9 (beta 9 collapses in the paper), PGD", lead=["beta"],
        rows=[Row("1", "rter_b1"), Row("3", "rter_b3"), Row("6", "rter"), Row("9", "rter_b9")],
        extra=("status", Report.status),  # a column more: (its name, f(report, folder, evaluation) -> text)
        notes=["A run is marked collapsed when training diverged (diverged.json: NaN / inf loss) or its SA is at most "
               "twice chance ({chance:.2f} %). The paper's beta 9 run collapsed to 10 % (chance)."]),
    "table10": dict(
        title={"imagenet": "AT / TRADES / RT-ER, PGD (ImageNet, ViT-small experts)", "*": "AT / TRADES / RT-ER, PGD"},
        lead=["method"], rows=[Row("AT", "at"), Row("TRADES", "trades"), Row("RT-ER", "rter")],
        # off ImageNet the paper cells are the paper's numbers for these methods in its other tables (said below)
        paper_from={"cifar10": {"at": ("table2", "at"), "trades": ("table7", "pgd", "trades"), "rter": ("table2",
                                "rter")}, "tinyimagenet": {"at": ("table3", "at"), "rter": ("table3", "rter")}},
        notes=[{"imagenet": None, "*": "The paper's Table 10 is ImageNet with ViT experts (`bash run_all.sh "
                                       "imagenet`); here the same three methods on {preset}."},
               {"cifar10": "Paper cells: the paper's CIFAR-10 numbers for these methods (Tables 2 and 7), not its "
                           "ImageNet Table 10.",
                "tinyimagenet": "Paper cells: the paper's TinyImageNet numbers for these methods (Table 3; no TRADES), "
                                "not its ImageNet Table 10."}]),
}

# ----------------------------------------------------------------------------- figures (of each run's seed 0)

def draw(path, title, panels, size=(9, 4.3)):
    """A figure of side-by-side panels, each a list of (Axes method, args, kwargs) calls; returns the panels."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=size, dpi=120, squeeze=False)
    for ax, calls in zip(axes[0], panels):
        for method, args, kwargs in calls:
            getattr(ax, method)(*args, **kwargs)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return panels

def panel(lines, title, xlabel, ylabel, legend=None, **settings):  # its lines, a legend or 'no data yet', labels
    empty = ("annotate", ("no data yet (run not done)", (0.5, 0.5)), {"xycoords": "axes fraction", "ha": "center"})
    return lines + [("legend", (), legend or {"fontsize": 8}) if lines else empty, ("set_title", (title,),
                    {"fontsize": 10}), ("set", (), dict(xlabel=xlabel, ylabel=ylabel, **settings)),
                    ("grid", (), {"alpha": 0.3})]

def line(points, **style):
    return [("plot", tuple(zip(*points)), {"markersize": 4, **style})] if points else []  # none without points

def figures(report, out):
    """Figures 2-7 and routing.png, of each run's seed 0; returns what each one draws, for results.json."""
    import matplotlib
    matplotlib.use("Agg")
    seeds = max(map(len, report.seeds.values()), default=1)
    p = report.preset + " (quick smoke run)" * report.quick + f", seed 0 of {seeds}" * (seeds > 1)
    arch = ((report.runs.get("rter") or {}).get("args") or {}).get("arch", "?")
    base = report.evaluation("dual_pretrained", "pgd", 0.7) or {}  # Figure 7's dashed level
    jt, data = [(f"JTDMoE alpha {a}", f"jtdmoe_a{a}") for a in ("0.5", "0.6", "0.7", "0.8")], {}
    for name, title, series in (  # SA and RA per epoch
            ("fig2", "Figure 2: AT vs RT-ER per epoch | preset {p}", [("AT", "at"), ("RT-ER", "rter")]),
            ("fig4", "Figure 4 (paper: ViT-small experts on TinyImageNet): AT vs RT-ER per epoch | preset {p}, "
                     "{arch} experts", [("AT", "at"), ("RT-ER", "rter")]),
            ("fig5", "Figure 5: TRADES / AdvMoE / RT-ER per epoch | preset {p}",
             [("TRADES", "trades"), ("AdvMoE", "advmoe"), ("RT-ER", "rter")]),
            ("fig7", "Figure 7: JTDMoE per epoch, alpha 0.5-0.8 | preset {p}", jt)):
        panels = []
        for key in ("sa", "ra"):
            lines = []
            for label, run in series:
                log = [r for r in (report.runs.get(run) or {}).get("log") or [] if finite(r.get("epoch"))
                       and finite(r.get(key))]
                lines += line([(r["epoch"], r[key]) for r in log], marker="o" if len(log) < 15 else None, label=label)
            if name == "fig7" and finite(base.get(key)):
                lines.append(("axhline", (base[key],), dict(color="green", linestyle="--", label=f"pre-trained dual, "
                                                            f"alpha 0.7 (PGD-{base.get('steps')}, n={base.get('n')})")))
            panels.append(panel(lines, f"{key.upper()} per epoch", "epoch", f"{key.upper()} (accuracy %)"))
        args = [a for a in ((report.runs.get(run) or {}).get("args") for _, run in series) if a and "eps" in a][:1]
        setting = "".join(f"eps {fmt_eps(a['eps'], report.preset)}, RA: PGD-{a.get('eval_steps', '?')} on "
                          f"{a.get('eval_n') or 'all'} test points (per-epoch evaluation)" for a in args)
        data[name] = draw(os.path.join(out, f"{name}.png"), title.format(p=p, arch=arch) + "\n" + (
            setting or "no run yet") + ("; dashed: pre-trained dual at alpha 0.7 (eval.py)" * (name == "fig7")), panels)
    for name, attack, alphas in (("fig3", "pgd", (0.7, 0.8, 0.9)), ("fig6", "aa", (0.7,))):  # the dual model vs alpha
        ev = report.runs.get("dual_pretrained", {}).get("evals", {}).get(EVAL_NAME.format(attack)) or {}
        rows = sorted((r for r in ev.get("rows", []) if finite(r.get("alpha"))), key=lambda r: r["alpha"])
        paper = PAPER["table3" if attack == "pgd" else "table4"].get(report.paper_ds or "")  # its dual-model rows
        points = paper and {a: dict(zip(("sa", "ra", "ra_rmoe", "ra_smoe"), paper[f"dual_{a}" if attack == "pgd"
                                                                                  else "pretrained"])) for a in alphas}
        panels = []
        for title, metrics, ylabel in (("clean accuracy", DUAL[:1], "SA (accuracy %)"), (
                "under attack on the dual / robust / standard MoE", DUAL[1:], "robust accuracy %")):
            lines = []
            for i, (label, key) in enumerate(metrics):  # the paper's in the same colour as ours
                ours = line([(r["alpha"], r[key]) for r in rows if finite(r.get(key))], marker="o", color=f"C{i}",
                            label=f"{label} (ours)")
                lines += ours + line([(a, v[key]) for a, v in (points or {}).items()] * bool(ours), linestyle="none",
                                     marker="s", fillstyle="none", color=f"C{i}", label=f"{label} (paper)")
            panels.append(panel(lines, title, "alpha (weight of the robust MoE)", ylabel, xlim=(0.45, 1.05)))
        what = f"AutoAttack {ev.get('aa_version') or '(standard)'}" if attack == "aa" else f"PGD-{ev.get('steps', '?')}"
        data[name] = draw(os.path.join(out, f"{name}.png"), f"Figure {name[3:]}: pre-trained dual model (ST + RT-ER) "
                          f"vs alpha | preset {p}\n{what}, eps {fmt_eps(ev.get('eps'), report.preset)}, "
                          f"n={ev.get('n', NA)} test points", panels)
    shares = data["routing"] = {}  # each run's last per-epoch expert usage
    for run, rec in sorted(report.runs.items()):
        last = [r for r in rec["log"] or [] if finite(r.get("usage_0"))][-1:]
        if last:
            usage = sorted((k for k in last[0] if k.startswith("usage_")), key=lambda k: int(k[6:]))
            shares[run] = [100 * last[0][k] for k in usage]
    widest = max(shares.values(), key=len, default=[])  # its bars name the experts in the legend
    bars = [("barh", (i, share), dict(left=sum(row[:e]), color=f"C{e}", label=f"expert {e}" if row is widest else None))
            for i, row in enumerate(shares.values()) for e, share in enumerate(row)]
    bars += [("set_yticks", (range(len(shares)), list(shares)), {}), ("invert_yaxis", (), {})] if shares else []
    legend = dict(fontsize=8, ncol=len(widest), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    draw(os.path.join(out, "routing.png"), f"Expert usage at each run's last evaluation | preset {p}\n(a collapsed "
         "router sends every point to one expert)", [panel(bars, "", "share of clean test points routed to each expert "
         "as top-1 (%)", "run", legend, xlim=(0, 100))], size=(8, 2.2 + 0.3 * max(len(shares), 1)))
    return data

def clean(value):  # a JSON-safe copy: NaN / inf become null (eval.py writes NaN for a class without test points)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    return [clean(v) for v in value] if isinstance(value, (list, tuple)) else value

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=["digits", "cifar10", "tinyimagenet", "imagenet"])
    ap.add_argument("--runs", help="runs folder (default runs/<preset>, with --quick runs/<preset>-quick)")
    ap.add_argument("--out", help="results folder (default RUNS/results; the committed results/ stays as it is)")
    ap.add_argument("--quick", action="store_true", help="the runs are a run_all.sh --quick smoke run")
    ap.add_argument("--command", help="the command that produced the runs (for the titles)")
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
    blob = {"preset": args.preset, "quick": args.quick, "command": command, "runs_dir": os.path.abspath(runs_dir),
            "problems": problems, "tables": tables, "figures": figures(report, out), "paper": PAPER,
            "runs": claims.compact(report.runs)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(clean(blob), f, indent=1, sort_keys=True, allow_nan=False, default=str)
    claims.write(report.runs, out)
    print(f"wrote {out}: table1-10.md, claims.md, attacks.md, fig2-7.png, routing.png, results.json")
    for p in problems:
        print(f"warning: {p}")

if __name__ == "__main__":
    main()
