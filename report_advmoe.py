"""Tables A1 and A2 of the AdvMoE appendix: MoE-CNN baselines vs AdvMoE (train_at.py), RA / SA and GFLOPs.
The specs are data (ADVMOE_TABLES, merged into report.TABLES); Report.render draws their blocks with cost_block."""
import statistics
from collections import namedtuple

from outcomes import accuracy, worst_case
from paper import ADVMOE_PAPER_ATTACK, PAPER_ATTACK_TEXT
from report_data import NA, cell, finite, fmt, merge

# A row: lead cells, run (its seeds are found by folder name), the paper's key, and the train_at.py settings the
# run must have been trained with (checked against its args.json).
CostRow = namedtuple("CostRow", "lead run paper flags")
# The five models of the appendix: (row name, run and paper key, training flags apart from --scale and --steps).
# Every row is TRADES-trained, as the public code trains its baselines (train_ori.py) and AdvMoE (train_moe.py)
METHODS = (("AT (Dense)", "dense", dict(method="trades", experts=1)),
           ("AT (S-Dense)", "sdense", dict(method="trades", experts=1)),
           ("AT (Sparse)", "sparse", dict(method="sparse", loss="trades", experts=1)),
           ("AT (MoE)", "moe", dict(method="trades", experts=4)),
           ("AdvMoE", "advmoe", dict(method="advmoe", loss="trades", experts=4)))
SCALES = ("0.2", "0.5", "0.8")  # Table A2's model scales r (run names and paper keys say them as written here)
# (column, record key, eval_<attack>.json, key in it); the paper's tuples list the same numbers in this order
A1_METRICS = [("RA", "ra", "pgd", "ra"), ("RA-AA", "ra_aa", "aa", "ra"), ("SA", "sa", "pgd", "sa")]
A2_METRICS = [("RA", "ra", "pgd", "ra"), ("SA", "sa", "pgd", "sa")]
COST = ("gflops", "reduction_pct")  # after the metrics in the paper's tuples: its GFLOPs and printed reduction
BACKBONES = (("resnet18", "ResNet-18", ""), ("wrn28_10", "WRN-28-10", "w"))  # (paper key, name, run-name infix)


def shown(value):  # a flag's value as one types it: 1.0 -> 1, 0.5 -> 0.5
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag_text(flags):
    """The command of a row: train_sparse.py / train_advmoe.py for their methods (no --method), else train_at.py."""
    method = flags.get("method")
    script = f"train_{method}.py" if method in ("sparse", "advmoe") else "train_at.py"
    return " ".join([script] + [f"--{k} {shown(v)}" for k, v in flags.items() if k != "method" or script ==
                                "train_at.py"])


def fmt_gmacs(v):  # two decimals like the paper, two significant digits below 0.1 (a digits-sized net costs ~0.001)
    return NA if not finite(v) else f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.2g}"


def cost_text(values):
    """A cost over seeds: shown once when every seed has the same (routing picks one of equal-sized experts)."""
    have = [v for v in values if finite(v)]
    if len({fmt_gmacs(v) for v in have}) <= 1:
        return fmt_gmacs(have[0] if have else None)
    return f"{fmt_gmacs(statistics.mean(have))} ± {fmt_gmacs(statistics.stdev(have))}"


def reduction_text(pct):  # the paper's "(72% ↓)"
    return "" if pct is None else f" ({abs(pct):.0f}% {'↓' if pct >= 0 else '↑'})"


def paper_text(value):  # the paper's (mean, std) as printed
    if not value:
        return NA
    return fmt(value[0]) + (f" ± {fmt(value[1])}" if value[1] is not None else "")


def seed_values(evals, metrics):
    """One seed's numbers: each metric from its evaluation, and the GMACs eval.py counted (pgd's, else aa's)."""
    values = {key: (evals.get(attack) or {}).get(field) for _, key, attack, field in metrics}
    gmacs = next((ev["gmacs"] for ev in evals.values() if isinstance((ev or {}).get("gmacs"), dict)), {})
    return {**values, "gmacs_pathway": gmacs.get("pathway"), "gmacs_masked": gmacs.get("masked")}


def backbone_heading(name):
    """A block heading: the paper's backbone and the arch its runs used (args.json); on digits that arch alone."""
    def heading(report, block):
        archs = sorted({str(args["arch"]) for row in block["rows"] for f in report.folders(row.run)
                        if "arch" in (args := (report.runs.get(f) or {}).get("args") or {})})
        used = ", ".join(f"`{a}`" for a in archs)
        if report.preset in ("digits", "fashion_mnist"):
            return f"backbone {used or 'n/a (not run yet)'}"
        return name + (f" ({used})" if used else "")
    return heading


def flag_mismatches(report, row):
    """Notes for the seeds of a row whose args.json says they were trained otherwise than the row needs."""
    out = []
    for folder in report.folders(row.run):
        args = (report.runs.get(folder) or {}).get("args") or {}
        same = {k: finite(args.get(k)) and abs(args[k] - v) < 1e-9 if isinstance(v, float) else args.get(k) == v
                for k, v in row.flags.items()}
        wrong = [f"{k} {shown(args[k])} where the row needs {shown(v)}" for k, v in row.flags.items()
                 if k in args and not same[k]]
        out += [f"`{folder}` was trained with {', '.join(wrong)} (args.json): its numbers are not this row's."] \
            if wrong else []
    return out


def worst_of(report, folder):
    """RA (worst) of one run folder: the share of the points all its attacks share that survive every one."""
    _, survived = worst_case(list((report.runs.get(folder) or {}).get("evals", {}).values()))
    return accuracy(survived) if survived else None


def cost_block(report, table, spec, block):
    """One row per CostRow: RA / SA (mean ± std over seeds), GMACs and their reduction against the block's
    reference run (AT (Dense)); the paper's cells beside ours, and on a paper preset ours under the paper's attack
    beside them and RA (worst). Returns what Report.render needs of a block."""
    metrics, with_paper = block["metrics"], bool(report.paper_ds)
    beside = [(f"{name} (paper's attack)", f"{key}_paper_attack", ADVMOE_PAPER_ATTACK[key], field)
              for name, key, attack, field in metrics if with_paper and ADVMOE_PAPER_ATTACK.get(key, attack) != attack]
    under = {key[:-len("_paper_attack")]: (name, key) for name, key, *_ in beside}  # metric -> ours under theirs
    attacks = list(dict.fromkeys(attack for _, _, attack, _ in metrics + beside))
    found = []
    for row in block["rows"]:
        folders = report.folders(row.run)
        evals = [{attack: report.evaluation(f, attack) for attack in attacks} for f in folders]
        values = [{**seed_values(evs, metrics + beside), **({"worst": worst_of(report, f)} if with_paper else {})}
                  for f, evs in zip(folders, evals)]
        found.append((row, folders, evals, values))

    def mean_pathway(values):
        have = [v["gmacs_pathway"] for v in values if finite(v["gmacs_pathway"])]
        return statistics.mean(have) if have else None
    dense = next((mean_pathway(values) for row, *_, values in found if row.run == block["reference"]), None)
    header = list(block["lead"])
    for name, key, *_ in metrics:
        header += [name] + ([under[key][0]] if key in under else []) + [f"{name} paper"] * with_paper
    header += ["RA (worst)"] * with_paper + ["GFLOPs"] + ["GFLOPs paper"] * with_paper
    rows, records, notes, unevaluated = [], [], [], []
    for row, folders, evals, values in found:
        paper = report.paper(table, spec, row.paper)
        theirs = dict(zip([key for _, key, *_ in metrics] + list(COST), paper or ()))
        pathway = mean_pathway(values)
        reduction = 100 * (1 - pathway / dense) if row.run != block["reference"] and pathway is not None \
            and dense else None
        lead = [row.lead] if isinstance(row.lead, str) else list(row.lead)
        cells = list(lead)
        for _, key, *_ in metrics:
            cells += [cell([v[key] for v in values])] + ([cell([v[under[key][1]] for v in values])] if key in under
                                                         else []) \
                + [paper_text(theirs.get(key))] * with_paper
        cells += [cell([v["worst"] for v in values])] if with_paper else []
        masked = cost_text([v["gmacs_masked"] for v in values])
        ours = cost_text([v["gmacs_pathway"] for v in values])
        cells += [ours + (f" (masked {masked})" if masked not in (ours, NA) else "") + reduction_text(reduction)]
        cells += [fmt_gmacs(theirs.get("gflops")) + reduction_text(theirs.get("reduction_pct")) if paper else NA
                  ] * with_paper
        rows.append(cells)
        records.append({"row": " / ".join(lead), "run": row.run, **merge(values, folders),
                        "reduction_pct": reduction, "paper": theirs or None})
        notes += flag_mismatches(report, row)
        unevaluated += [f"`{f}` ({', '.join(f'eval_{a}.json' for a in attacks if evs[a] is None)})"
                        for f, evs in zip(folders, evals) if f in report.runs and None in evs.values()]
    notes += ["n/a: not evaluated yet: " + ", ".join(unevaluated) + "."] if unevaluated else []
    if with_paper:  # what the attacks beside the paper's cells are, and the worst case
        notes += [f"{under[key][0]}: ours under the attack behind the paper's {name}, beside it: "
                  f"{PAPER_ATTACK_TEXT[ADVMOE_PAPER_ATTACK[key]]}." for name, key, *_ in metrics if key in under]
        notes += [f"{name}: ours beside the paper's ran the paper's attack, {PAPER_ATTACK_TEXT[attack]}."
                  for name, key, attack, _ in metrics if ADVMOE_PAPER_ATTACK.get(key) == attack]
        notes += ["RA (worst): on the test points all of a run's evaluations (eval_*.json) share (AutoAttack's, where "
                  "it ran on fewer), the share that survives every attack of them."]
    return header, rows, [ev for *_, evals, _ in found for evs in evals for ev in evs.values()], records, notes


# ----------------------------------------------------------------------------- the tables, as data

def a1_rows(infix):
    return [CostRow(lead, f"a1{infix}_{key}", key, {**flags, "scale": 1.0 if key == "dense" else 0.5, "steps": 10})
            for lead, key, flags in METHODS]


def a2_rows(infix):
    (dense_lead, dense_key, dense_flags), others = METHODS[0], METHODS[1:]
    return [CostRow(("1.0", dense_lead), f"a2{infix}_{dense_key}", dense_key, {**dense_flags, "scale": 1.0,
                                                                                 "steps": 2})] + [
        CostRow((r, lead), f"a2{infix}_{key}_r{r}", (key, r), {**flags, "scale": float(r), "steps": 2})
        for r in SCALES for lead, key, flags in others]


def blocks(rows_of, metrics, lead):
    """One block per backbone; WRN-28-10 only on the paper presets (digits runs one digits-sized backbone)."""
    return [dict(key=key, heading=backbone_heading(name), kind="cost", lead=lead, metrics=metrics,
                 rows=[r._replace(paper=(key,) + (r.paper if isinstance(r.paper, tuple) else (r.paper,)))
                       for r in rows_of(infix)], reference=rows_of(infix)[0].run,
                 skip=("digits", "fashion_mnist") if infix else ())
            for key, name, infix in BACKBONES]


ROWS_NOTE = ("Rows are these runs (`--arch` the block's backbone), every "
             "one TRADES-trained (beta 6) as the public code trains the appendix's baselines and AdvMoE: " + "; ".join(
    f"{lead} `{flag_text(flags)} --scale {'1' if key == 'dense' else 'r'}`" for lead, key, flags in METHODS) +
    "{steps}. S-Dense is the dense network at width r, Sparse a dense network whose HYDRA-style structured channel "
    "masks keep a share r, MoE / AdvMoE have 4 experts of width r each, one picked per layer and input.")
GFLOPS_NOTE = ("GFLOPs (ours): giga multiply-adds per image counted by torch.utils.flop_counter on test images (its "
               "FLOPs / 2, the paper's convention: 0.54 for ResNet-18 on 32x32 inputs), eval.py's `gmacs`: the work "
               "of the selected pathway; (masked x): the full-width masked form the network trains as (MoE: every "
               "expert's channels computed, all but the routed ones zeroed; Sparse: the dense network times its "
               "mask), shown where it differs; (x% ↓): the pathway's reduction against AT (Dense) of the block, from "
               "our means.")
NOT_DIGITS = {"digits": "The digits preset runs one backbone (its args.json `arch`, the digits-sized `moe_cnn`), so "
                        "there is no WRN-28-10 block.",
              "fashion_mnist": "The fashion_mnist preset runs none of the AdvMoE appendix's MoE-CNN runs.", "*": None}
NO_PAPER = ("The AdvMoE appendix has no {preset} numbers (its Tables A1 and A2 are CIFAR-10), so there is no "
            "paper column.")
ADVMOE_TABLES = {
    "tableA1": dict(
        title="AdvMoE appendix, 10-step PGD training: AT (Dense / S-Dense / Sparse / MoE) vs AdvMoE at r = 0.5",
        blocks=blocks(a1_rows, A1_METRICS, ["method"]), no_paper_note=NO_PAPER,
        notes=[ROWS_NOTE.replace("{steps}", ", all with `--steps 10` (train-time PGD steps) and r = 0.5"),
               "RA and SA: eval_pgd.json; RA-AA: RA under AutoAttack, eval_aa.json.", GFLOPS_NOTE, NOT_DIGITS,
               {"cifar10": "Paper cells: the appendix's CIFAR-10 numbers as printed (mean ± std; GFLOPs with its "
                           "reduction).", "*": None}]),
    "tableA2": dict(
        title="AdvMoE appendix, 2-step PGD training: model scale r = 0.2 / 0.5 / 0.8 vs AT (Dense) at r = 1",
        blocks=blocks(a2_rows, A2_METRICS, ["r", "method"]), no_paper_note=NO_PAPER,
        notes=[ROWS_NOTE.replace("{steps}", ", all with `--steps 2` (train-time PGD steps)"),
               "RA and SA: eval_pgd.json.", GFLOPS_NOTE, NOT_DIGITS,
               {"cifar10": "Paper cells: the appendix's CIFAR-10 numbers as printed (mean ± std; GFLOPs with its "
                           "reduction). As printed, WRN-28-10 at r = 0.8 reads 3.36 (38% ↓), though 3.36 / 5.25 is a "
                           "36% reduction, and ResNet-18's 0.13 / 0.14 GFLOPs at r = 0.2 are about those at r = 0.5.",
                "cifar100": "Table A2's caption names CIFAR-100 too, but the appendix prints only its CIFAR-10 "
                            "blocks.", "*": None}]),
}
