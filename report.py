"""The paper's Tables 1-10 and Figures 2-7, the AdvMoE appendix's Tables A1-A2 and Figure A2, from the runs of
run_all.sh: markdown, PNG and results.json.
  python report.py digits --runs runs/digits          (writes runs/digits/results unless --out says where)
Reads RUNS/<run>/eval_<attack>.json (eval.py), log.csv, args.json and diverged.json; RUNS/<run>-seed<k> is seed k
of <run>. Each table is one spec in TABLES (A1, A2: report_advmoe.py), drawn by Report.render; figures.py draws the
figures. A missing input gives n/a cells, never an error.
"""
import argparse
import json
import math
import os
import re
from collections import namedtuple

import claims
from cli import ArgumentParser, markdown_table
from figures import figures
from paper import PAPER, PAPER_ATTACK, PAPER_ATTACK_TEXT
from outcomes import EVAL_NAME, accuracy, worst_case
from report_advmoe import ADVMOE_TABLES, cost_block
from report_data import (DUAL, NA, NUM_CLASSES, PAPER_NAME, ROUTE, SEED_FOLDER, SINGLE, cell, collapse_sa, describe,
                         finite, fmt, fmt_eps, load_runs, merge, pick)

CLASS_NAMES = {"cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
               "fashion_mnist": ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                                 "bag", "ankle boot"]}
MARGINS = (("margin_rob_pretrained", 100), ("margin_rob_jtdmoe", 100), ("improvement_pp", 1), ("relative_pct", 1),
           ("margin_dual_improvement_pp", 1))  # Table 5's numbers of a class, and their scale in the table
KIND = {"pgd": "PGD", "aa": "AutoAttack", "smooth": "smooth-attack"}  # the rows of an attack, in a note

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
        self.tables = tables_of(preset)  # what this preset's run_all.sh makes
        self.seeds = {}  # run: its seeds' folders, seed 0 (the run's own folder) first
        for name in sorted(runs, key=lambda folder: int(m.group(2)) if (m := SEED_FOLDER.match(folder)) else 0):
            self.seeds.setdefault(SEED_FOLDER.sub(r"\1", name), []).append(name)

    def blocks(self, spec):  # the blocks of a table drawn on this preset (a block's `skip` names those it is not)
        return [b for b in spec.get("blocks", [spec]) if self.preset not in b.get("skip", ())]

    def runs_of(self, spec):  # the runs a table reads on this preset, in order
        return list(dict.fromkeys(r for b in self.blocks(spec)
                                  for r in b.get("runs") or [row.run for row in b["rows"]]))

    @property
    def seed_count(self):  # the most seeds any run has
        return max(map(len, self.seeds.values()), default=1)

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
        if not diverged and not (finite(sa) and sa <= collapse_sa(self.num_classes)):
            return "not evaluated" if ev is None else "ok"
        good = diverged["epoch"] - 1 if finite(diverged.get("epoch")) else None
        why = diverged.get("message", "diverged") if diverged else f"SA {sa:.2f} % <= 2x chance"
        return f"collapsed ({why})" + ("; no checkpoint evaluated" if ev is None else "" if not diverged else
                                       f"; numbers: last good checkpoint{f' (epoch {good})' if good else ''}")

    def notes(self, table, spec, extra, used):  # the bullets under a table: its own, then those any table may need
        out, sizes = list(dict.fromkeys(extra)), sorted({u["n"] for u in used if u and finite(u.get("n"))})  # once
        if len(sizes) > 1 and len({u.get("attack") for u in used if u}) > 1:
            out.append(f"The attacks ran on different fixed test subsets (n = {', '.join(str(n) for n in sizes)}), "
                       "so SA differs between them.")
        if self.preset not in spec.get("paper_from", {}):  # there the notes say where the paper cells come from
            if self.paper_ds is None:
                out.append(spec.get("no_paper_note", "The paper has no {preset} numbers (its tables are CIFAR-10 / "
                                    "TinyImageNet, Table 10 ImageNet), so there is no paper column.").format(
                    preset=self.preset))
            elif PAPER.get(table) and self.paper_ds not in PAPER[table]:
                out.append(f"The paper reports this table for {', '.join(PAPER_NAME[d] for d in PAPER[table])} only: "
                           f"paper cells are n/a on {self.preset}.")
        runs = self.runs_of(spec)
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
        """One row per Row: a single MoE (SA RA RA-E RA-R worst, routing) or a dual model at alpha (kind "dual"); on a
        paper preset each paper cell has ours under the paper's attack beside it where the row's attack is not it."""
        dual, (extra_name, extra_cell) = block.get("kind") == "dual", block.get("extra", (None, None))
        found = [(row, row.attack or block.get("attack", "pgd"), self.folders(row.run)) for row in block["rows"]]
        found = [(row, attack, folders, [self.evaluation(f, attack, row.alpha) for f in folders])
                 for row, attack, folders in found]
        theirs_by = {attack: PAPER_ATTACK.get(attack, attack) for _, attack, *_ in found} if self.paper_ds else {}
        beside = any(attack != theirs for attack, theirs in theirs_by.items())  # a column of ours under theirs
        under = [[self.evaluation(f, theirs_by[attack], row.alpha) for f in folders] if beside else evs
                 for row, attack, folders, evs in found]
        used = [ev for *_, evs in found for ev in evs]
        metrics = [(block.get("ra_name", "RA") if n == "RA" else n, k) for n, k in (DUAL if dual else SINGLE)]
        attacked = [k for _, k in metrics if k not in ("sa", "worst")]  # what an attack measures; worst: every one
        routes = [] if dual else [(n, k) for n, k in ROUTE if any(ev and finite(ev.get(k)) for ev in used)]
        header = list(block["lead"]) + [h for n, k in metrics for h in [n] + [f"{n} (paper's attack)"] * (
            beside and k in attacked) + [f"{n} paper"] * (bool(self.paper_ds) and k != "worst")]
        rows, records = [], []
        worst = {f: worst_case(list(self.runs[f]["evals"].values())) for *_, folders, _ in found for f in folders
                 if f in self.runs and not dual}  # per run folder: (attacks covered, {point: survived all})
        groups = {}  # the attacks RA (worst) covers, said once per set of runs that share them (seed 0's)
        for f in dict.fromkeys(folders[0] for *_, folders, _ in found if worst.get(folders[0], (0, 0))[1]):
            groups.setdefault((", ".join(worst[f][0]), len(worst[f][1])), []).append(f"`{f}`")
        notes = [f"RA (worst) of {', '.join(r)}: share of the {n} test points all its attacks share that survive "
                 f"every one ({c})." for (c, n), r in groups.items()]
        if theirs_by:  # what the attack beside the paper's cells is
            notes.append(f"{' / '.join(n for n, k in metrics if k in attacked)} (paper's attack): ours under the "
                         "attack behind the paper's cells, beside them: " + "; ".join(
                             f"{KIND.get(a, a)} rows {PAPER_ATTACK_TEXT[t]}" for a, t in theirs_by.items()) + "."
                         if beside else "The attack of our cells beside the paper's is the paper's: " + "; ".join(
                             PAPER_ATTACK_TEXT[t] for t in theirs_by.values()) + ".")
        skipped = {}  # (attack, the n/a metrics) -> runs evaluated without those targets
        for (row, attack, folders, evs), under_evs in zip(found, under):
            values = [metric_values(ev, dual, accuracy(worst[f][1]) if worst.get(f, (0, 0))[1] else None)
                      for f, ev in zip(folders, evs)]
            paper = self.paper(table, spec, row.paper or row.run)
            ours = {key: cell([v.get(key) for v in values]) for _, key in metrics + routes}
            theirs_values = [{k: (ev or {}).get(k) for k in attacked} for ev in under_evs]
            below = {key: cell([v[key] for v in theirs_values]) for key in attacked}
            theirs = dict(zip([k for _, k in metrics], paper or ()))
            lead = [row.lead] if isinstance(row.lead, str) else list(row.lead)
            cells = lead + ([f"{row.alpha:.1f}"] if block.get("alpha_column") else [])
            for _, key in metrics:
                cells += [ours[key]] + ([below[key]] if beside and key in attacked else []) + [
                    fmt(theirs.get(key)) if paper else NA] * (bool(self.paper_ds) and key != "worst")
            record = {"row": " / ".join(lead), "run": row.run, "attack": attack} if not dual else {"row": lead[0] + (
                f" alpha {row.alpha}" if block.get("alpha_column") else ""), "run": row.run, "alpha": row.alpha}
            record.update(merge(values, folders), paper=list(paper) if paper else None)
            if beside and theirs_by[attack] != attack:
                record["paper_attack"] = {"attack": theirs_by[attack], **merge(theirs_values, folders)}
                used += under_evs
            if extra_name:  # one text per seed, said once where they agree
                texts = [extra_cell(self, folder, ev) for folder, ev in zip(folders, evs)]
                record[extra_name] = "; ".join(map(": ".join, zip(folders, texts))) if len(set(texts)) > 1 else texts[0]
            rows.append(cells + [ours[key] for _, key in routes] + ([record[extra_name]] if extra_name else []))
            records.append(record)
            evaluated = next((ev for ev in evs if ev), None)
            unattacked = [n for n, key in metrics if not any(finite(v.get(key)) for v in values)]
            if evaluated and unattacked and not dual:  # not on every target (fashion_mnist: AutoAttack on its claims')
                skipped.setdefault((claims.attack_name(evaluated), " and ".join(unattacked)), []).append(f"`{row.run}`")
        notes += [f"n/a: {cells} of {', '.join(runs)}: their {name} evaluation did not attack those targets."
                  for (name, cells), runs in skipped.items()]
        return header + [n for n, _ in routes] + [extra_name] * bool(extra_name), rows, used, records, notes

    def margin_block(self, table, spec, block):
        """Table 5: per class, the robust MoE's clean margin in the pre-trained dual model and in JTDMoE."""
        runs, alpha, folders = block["runs"], block["alpha"], self.folders(block["runs"][0])
        has = {a: all((self.evaluation(r, a, alpha) or {}).get("margin_rob") for r in runs) for a in ("pgd", "aa")}
        attack = "aa" if has["aa"] and not has["pgd"] else "pgd"
        pairs = [[self.evaluation(r + f[len(runs[0]):], attack, alpha) for r in runs] for f in folders]  # by seed
        lengths = [len(ev["margin_rob"]) for pair in pairs for ev in pair
                   if isinstance((ev or {}).get("margin_rob"), list)]
        count = max(lengths + [self.num_classes if self.num_classes <= 10 else 0])  # named: every class
        names, paper = CLASS_NAMES.get(self.preset, [str(i) for i in range(count)]), self.paper(table, spec, ()) or {}
        by_class, rows, records = [[class_margins(*pair, c) for pair in pairs] for c in range(count)], [], []
        shown = [c for c, values in enumerate(by_class)  # past 10 classes (TinyImageNet: 200), those with a number
                 if count <= 10 or any(v is not None for seed in values for v in seed.values())]
        for c, values in ((c, by_class[c]) for c in shown):
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
                 f"n/a: needs {runs[0]} and {runs[1]} evaluated."] + ([
                 f"{count - len(shown)} of {count} classes have no number yet; their rows are left out."]
                 if len(shown) < count else [])
        header = block["lead"] + ["paper improvement (%)"] * bool(self.paper_ds)
        return header, rows, [ev for pair in pairs for ev in pair], records, notes

    def render(self, table):  # one table spec of TABLES -> (its markdown, its results.json record)
        spec, texts, used, records, notes = TABLES[table], [], [], {}, []
        for block in self.blocks(spec):
            draw = {"margins": self.margin_block, "cost": lambda *a: cost_block(self, *a)}.get(block.get("kind"),
                                                                                                self.metric_block)
            header, rows, block_used, records[block.get("key")], block_notes = draw(table, spec, block)
            heading = block.get("heading")  # a text, or f(report, block) -> text
            heading = heading(self, block) if callable(heading) else heading
            texts.append((f"## {heading}\n\n" if heading else "") + markdown_table(header, rows))
            used, notes = used + block_used, notes + block_notes
        fill = dict(preset=self.preset, chance=collapse_sa(self.num_classes),
                    eval_smooth=EVAL_NAME.format("smooth") + ".json")
        notes += [note.format(**fill) for note in (pick(n, self.preset) for n in spec.get("notes", [])) if note]
        evaluated = [u for u in used if u]  # the title says how: eps, attack steps, test points (from their JSON)
        eps = sorted({fmt_eps(u.get("eps"), self.preset) for u in evaluated}) or sorted(  # else any run's budget
            {fmt_eps(r["args"]["eps"], self.preset) for r in self.runs.values() if "eps" in (r["args"] or {})})[:1]
        how = dict.fromkeys(describe(u, self.preset) for u in evaluated)
        text = (f"# Table {table[5:]}: {pick(spec['title'], self.preset)} | preset {self.preset}"
                f"{' (quick smoke run)' if self.quick else ''} | eps {' / '.join(eps) or NA}; "
                f"{'; '.join(how) or 'attack: n/a (nothing evaluated yet)'} | `{self.command}`\n\n")
        return text + "\n".join(texts) + self.notes(table, spec, notes, used), records.get(None, records)

# ----------------------------------------------------------------------------- the tables, as data
# A table: title, lead columns, Rows (or blocks of them, each with a heading), notes (filled in: {preset}, {chance},
# {eval_smooth}); a title or note may be {preset: text, "*": other presets}. A Row: lead cells, run (its seeds are
# found by folder name), the paper's key (default: the run), attack, alpha. Report.render draws any table; a block's
# `kind` picks its drawer (metrics by default, "margins", "cost": report_advmoe.py), `skip` the presets without it.
Row = namedtuple("Row", "lead run paper attack alpha", defaults=(None, None, None))
JTDMOE = (("", "jtdmoe_a0.7"), (", public code", "jtdmoe_pub_a0.7"))  # (row name's suffix, run): the two forms
JTDMOE_NOTE = ("JTDMoE is run `jtdmoe_a0.7` (Algorithm 1: the upper step trains both MoEs); `jtdmoe_pub_a0.7` is the "
               "authors' public code's form (upper step on F_S only, KL over all experts); both get the paper's "
               "JTDMoE cells.")
ST_AT_RTER, PRE = [Row("ST", "st"), Row("AT", "at"), Row("RT-ER", "rter")], (0.7, 0.8, 0.9)
TABLE1_NOTE = ("RA attacks the whole MoE, RA-E the experts (routing frozen at clean x), RA-R the router (experts "
               "frozen at clean x); accuracy is always that of the full MoE at x_adv. RA (worst): the points that "
               "survive every attack run on the model{}; same top-1 % = share of points routed to the same top-1 "
               "expert at x_adv as at x (the paper reports 98 % under expert attacks).")
OLD_WORST = " (its paper cell: the smallest of the paper's RA columns)"  # the committed CPU presets' words, kept
TABLES = {
    "table1": dict(title="robustness of the MoE components of a standard-trained (ST) MoE", lead=["attack"],
                   rows=[Row("PGD", "st", "pgd"), Row("AutoAttack", "st", "aa", "aa")],
        notes=[{p: TABLE1_NOTE.format(worst) for p, worst in (("digits", OLD_WORST), ("fashion_mnist", OLD_WORST),
                                                               ("*", " (ours alone: the paper has no such number)"))}]),
    "table2": dict(title="AT vs RT-ER under PGD, top-1 and top-2 routing", lead=["routing", "method"],
                   rows=[Row(("top-1", "AT"), "at"), Row(("top-1", "RT-ER"), "rter"),
                         Row(("top-2", "AT"), "at_top2"), Row(("top-2", "RT-ER"), "rter_top2")]),
    "table3": dict(
        title="ST / AT / RT-ER single MoEs; dual model pre-trained (alpha 0.7 0.8 0.9) and JTDMoE (alpha 0.7), PGD",
        blocks=[dict(key="single", heading="Single MoE", lead=["method"], rows=ST_AT_RTER),
                dict(key="dual", heading="Dual model F_D = (1 - alpha) F_S + alpha F_R", kind="dual",
                     lead=["model", "alpha"], alpha_column=True,
                     rows=[Row("Dual-Model (pre-trained)", "dual_pretrained", f"dual_{a}", alpha=a) for a in PRE]
                     + [Row(f"Dual-Model (JTDMoE{form})", run, "jtdmoe_0.7", alpha=0.7) for form, run in JTDMOE])],
        notes=["Dual rows: RA attacks the dual model, RA-RMoE the robust MoE alone, RA-SMoE the standard MoE alone; "
               "accuracy is always that of the dual model at x_adv. The pre-trained dual model mixes runs `st` and "
               "`rter`; " + JTDMOE_NOTE]),
    "table4": dict(title="pre-trained dual model vs JTDMoE at alpha 0.7 under AutoAttack", kind="dual", attack="aa",
                   lead=["method"], rows=[Row("Pre-trained", "dual_pretrained", "pretrained", alpha=0.7)]
                   + [Row(f"JTDMoE{form}", run, "jtdmoe", alpha=0.7) for form, run in JTDMOE],
                   notes=[JTDMOE_NOTE]),
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
        rows=[Row("1", "rter_b1"), Row("3", "rter_b3"), Row("6", "rter_b6", "rter"), Row("9", "rter_b9"),
              Row("6 (Eq. 2: run `rter`)", "rter")],
        extra=("status", Report.status),  # a column more: (its name, f(report, folder, evaluation) -> text)
        notes=["A run is marked collapsed when training diverged (diverged.json: NaN / inf loss) or its SA is at most "
               "twice chance ({chance:.2f} %; claims.md draws the same line). The paper's beta 9 run collapsed to "
               "10 % (chance).", "Rows 1-9 train with the KL over all experts, the L_rob Table 9's text writes "
               "(sum_i KL(f_Ri(x + delta), f_Ri(x))); the last row is run `rter` (Eq. 2: the KL on the "
               "second-ranked expert f_2 only), the paper's beta 6 cells beside both."]),
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
TABLES.update(ADVMOE_TABLES)  # Tables A1, A2 (the AdvMoE appendix): their specs and block drawer live there
# the tables whose runs a preset's run_all.sh makes (the Makefile's experiment lists); any other preset: every table
PRESET_TABLES = {"fashion_mnist": "1 2 3 4 5 6 7 10", "cifar100": "A2", "imagenet": "10",
                 "tinyimagenet": "1 2 3 4 5 6 7 8 9 10"}  # the AdvMoE appendix is CIFAR (and digits) only

def tables_of(preset):
    return ["table" + t for t in PRESET_TABLES[preset].split()] if preset in PRESET_TABLES else list(TABLES)

def clean(value):  # a JSON-safe copy: NaN / inf become null (eval.py writes NaN for a class without test points)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    return [clean(v) for v in value] if isinstance(value, (list, tuple)) else value

def results_page(preset, command, seeds, claim_rows, texts, figure_names) -> str:
    """README.md of a results folder: the verdicts, then each table (texts: name -> markdown) and figure, one page."""
    tables = [re.sub("^#", "###", text, flags=re.M) for text in texts.values()]
    return "\n".join([
        f"# Results: {preset}", "",
        f"Made by `{command}` ({seeds} seed{'s' * (seeds > 1)}); report.py writes this page with the tables and "
        "figures beside it. Definitions: the main README's Conventions.", "",
        "## Verdicts", "",
        "Each claim under the strongest attack set it was judged with: verdict, the contrast C in pp (A - B, or a "
        "trend's least-squares change), its 95 % interval, the attack set, seeds x points per seed, and whether a "
        "decided verdict survives Holm's correction. Every claim under each of its attacks, with the model behind "
        "the intervals: [claims.md](claims.md); the attacks compared point by point: [attacks.md](attacks.md).", "",
        claims.side_by_side({preset: claims.verdicts(claim_rows)}) if claim_rows else "No claim has data yet.\n",
        "## Tables", "", *tables,
        "## Figures", "", *[f"![{name}]({name}.png)\n" for name in sorted(figure_names)]])


def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=list(NUM_CLASSES))
    ap.add_argument("--runs", help="runs folder (default runs/<preset>, with --quick runs/<preset>-quick)")
    ap.add_argument("--out", help="results folder (default RUNS/results; the committed results/ stays as it is)")
    ap.add_argument("--quick", action="store_true", help="the runs are a run_all.sh --quick smoke run")
    ap.add_argument("--command", help="the command that produced the runs (for the titles)")
    args = ap.parse_args(argv)
    runs_dir = args.runs or os.path.join("runs", args.preset + ("-quick" if args.quick else ""))
    if not os.path.isdir(runs_dir):  # n/a tables from a mistyped folder would read like runs that failed
        ap.error(f"{runs_dir}: no such runs folder (bash run_all.sh {args.preset} makes it)")
    out = args.out or os.path.join(runs_dir, "results")
    command = args.command or f"bash run_all.sh {args.preset}" + (" --quick" if args.quick else "")
    os.makedirs(out, exist_ok=True)
    problems, tables, texts = [], {}, {}
    report = Report(args.preset, load_runs(runs_dir, problems), args.quick, command)
    for table in report.tables:
        texts[table], tables[table] = report.render(table)
        with open(os.path.join(out, f"{table}.md"), "w") as f:
            f.write(texts[table])
    blob = {"preset": args.preset, "quick": args.quick, "command": command, "runs_dir": os.path.abspath(runs_dir),
            "problems": problems, "tables": tables, "figures": figures(report, out), "paper": PAPER,
            "runs": claims.compact(report.runs)}
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(clean(blob), f, indent=1, sort_keys=True, allow_nan=False, default=str)
    claim_rows = claims.write(report.runs, out, report.num_classes)
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(results_page(args.preset, command, report.seed_count, claim_rows, texts, blob["figures"]))
    print(f"wrote {out}: README.md, {', '.join(t + '.md' for t in texts)}, claims.md, attacks.md, "
          f"{', '.join(f + '.png' for f in sorted(blob['figures']))}, results.json")
    for p in problems:
        print(f"warning: {p}")

if __name__ == "__main__":
    main()
