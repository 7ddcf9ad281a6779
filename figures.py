"""Figures 2-7, A2 and routing.png of the report, each of its runs' seed 0: PNG, and what each draws for results.json.
A figure is panels of (Axes method, args, kwargs) calls, so results.json records exactly what was drawn."""
import os
import textwrap

from outcomes import EVAL_NAME
from paper import PAPER
from report_data import DUAL, describe, finite, fmt_eps

# each figure draws runs of these tables: a preset that makes none of them (report.tables) has no such figure
FIGURE_TABLES = {"fig2": ("table2",), "fig4": ("table2",), "fig5": ("table7",), "fig7": ("table3",),
                 "figA2": ("tableA1", "tableA2"), "fig3": ("table3",), "fig6": ("table4",)}
# Figure A2's runs (the Makefile's names): AdvMoE of Table A1 (10-step training) and of Table A2 (2-step, each r)
ADVMOE_RUNS = [("10-step training, r = 0.5", "a1_advmoe")] + [
    (f"2-step training, r = {r}", f"a2_advmoe_r{r}") for r in ("0.2", "0.5", "0.8")]
JTDMOE_SWEEP = [(f"JTDMoE alpha {a}", f"jtdmoe_a{a}") for a in ("0.5", "0.6", "0.7", "0.8")]  # Figure 7's runs


def on_page(report, figure):  # whether the preset makes a table whose runs the figure draws
    return bool(set(FIGURE_TABLES[figure]) & set(report.tables))


def draw(path, title, panels, size=(9, 4.3)):
    """A figure of side-by-side panels, each a list of (Axes method, args, kwargs) calls; returns the panels."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=size, dpi=120, squeeze=False)
    for ax, calls in zip(axes[0], panels):
        for method, args, kwargs in calls:
            getattr(ax, method)(*args, **kwargs)
    fig.suptitle("\n".join(textwrap.fill(part, 110) for part in title.split("\n")), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, bbox_inches="tight")  # the canvas grows to hold a long (wrapped) title whole
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
    """The figures of the tables report.tables makes, and routing.png, of each run's seed 0; returns what each draws."""
    import matplotlib
    matplotlib.use("Agg")
    seeds = report.seed_count
    p = report.preset + " (quick smoke run)" * report.quick + f", seed 0 of {seeds}" * (seeds > 1)
    arch = {run: f", arch {a}" if (a := ((report.runs.get(run) or {}).get("args") or {}).get("arch")) else ""
            for run in ("rter", "a1_advmoe")}  # said where the run exists
    base = report.evaluation("dual_pretrained", "pgd", 0.7) or {}  # Figure 7's dashed level
    data = {}
    for name, title, series in (  # SA and RA per epoch
            ("fig2", "Figure 2: AT vs RT-ER per epoch | preset {p}", [("AT", "at"), ("RT-ER", "rter")]),
            ("fig4", "Figure 4 (paper: ViT-small experts on TinyImageNet): AT vs RT-ER per epoch | preset {p}"
                     "{arch[rter]}", [("AT", "at"), ("RT-ER", "rter")]),
            ("fig5", "Figure 5: TRADES / AdvMoE / RT-ER per epoch | preset {p}",
             [("TRADES", "trades"), ("AdvMoE", "advmoe"), ("RT-ER", "rter")]),
            ("fig7", "Figure 7: JTDMoE per epoch, alpha 0.5-0.8 | preset {p}", JTDMOE_SWEEP),
            ("figA2", "Figure A2 (AdvMoE appendix): AdvMoE per epoch | preset {p}{arch[a1_advmoe]}", ADVMOE_RUNS)):
        if not on_page(report, name):
            continue
        panels = []
        for key in ("sa", "ra"):
            lines = []
            for i, (label, run) in enumerate(series):
                log = [r for r in (report.runs.get(run) or {}).get("log") or [] if finite(r.get("epoch"))
                       and finite(r.get(key))]
                lines += line([(r["epoch"], r[key]) for r in log], marker="o" if len(log) < 15 else None, label=label,
                              color=f"C{i}")
                final = (report.evaluation(run, "pgd", float(run[8:])) or {}) if name == "fig7" and log else {}
                lines += line([(log[-1]["epoch"], final[key])], marker="*", markersize=10, color=f"C{i}",
                              label=f"{label}: eval.py PGD-{final.get('steps')}, last epoch") \
                    if finite(final.get(key)) else []  # Figure 7's final RA at the run's own alpha
            if name == "fig7" and finite(base.get(key)):
                lines.append(("axhline", (base[key],), dict(color="green", linestyle="--", label=f"pre-trained dual, "
                                                            f"alpha 0.7 (PGD-{base.get('steps')}, n={base.get('n')})")))
            panels.append(panel(lines, f"{key.upper()} per epoch", "epoch", f"{key.upper()} (accuracy %)"))
        args = [a for a in ((report.runs.get(run) or {}).get("args") for _, run in series) if a and "eps" in a][:1]
        setting = "".join(f"eps {fmt_eps(a['eps'], report.preset)}, RA: PGD-{a.get('eval_steps', '?')} on "
                          f"{a.get('eval_n') or 'all'} test points (per-epoch evaluation)" for a in args)
        data[name] = draw(os.path.join(out, f"{name}.png"), title.format(p=p, arch=arch) + "\n" + (
            setting or "no run yet") + ("; dashed: pre-trained dual at alpha 0.7 (eval.py)" * (name == "fig7")), panels)
    dual_evals = report.runs.get("dual_pretrained", {}).get("evals", {})
    # Figure 6 beside the paper's points: under the paper's own attack where it ran (paper presets), else AutoAttack
    fig6_attack = "apgd-ce50" if EVAL_NAME.format("apgd-ce50") in dual_evals else "aa"
    for name, attack, alphas in (("fig3", "pgd", (0.7, 0.8, 0.9)), ("fig6", fig6_attack, (0.7,))):  # dual vs alpha
        if not on_page(report, name):
            continue
        ev = dual_evals.get(EVAL_NAME.format(attack)) or {}
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
        setting = f"{describe(ev, report.preset)} test points, eps {fmt_eps(ev.get('eps'), report.preset)}" if ev \
            else "not evaluated yet"
        data[name] = draw(os.path.join(out, f"{name}.png"), f"Figure {name[3:]}: pre-trained dual model (ST + RT-ER) "
                          f"vs alpha | preset {p}\n{setting}", panels)
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

