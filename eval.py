"""Every metric of the paper for one checkpoint or a dual model; JSON and a markdown row out.

Single MoE:  SA, RA (whole), RA-E (experts), RA-R (router), routing consistency, worst case.
Dual model:  SA, RA (dual), RA-RMoE, RA-SMoE for each alpha, and per-class margins of the robust MoE.
  python eval.py --ckpt runs/digits/st/ckpt.pt
  python eval.py --ckpt runs/digits/rter/ckpt.pt --attack aa
  python eval.py --std runs/digits/st/ckpt.pt --rob runs/digits/rter/ckpt.pt --alphas 0.5,0.6,0.7,0.8,0.9,1.0
  python eval.py --ckpt runs/digits/jtdmoe/ckpt.pt      (a JTDMoE checkpoint is a dual model)
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import train_common as tc
from attacks import adversarial_batches, clean_correct, eval_mode, evaluate_attack
from moe import DualMoE, check_alpha

SINGLE_TARGETS = {"pgd": ("whole", "experts", "router"), "aa": ("whole", "experts", "router"),
                  "smooth": ("smooth", "experts", "router")}
DUAL_TARGETS = ("dual", "rmoe", "smoe")
ALPHA_FREE = ("rmoe", "smoe")  # attacks on one MoE of the pair: one attack serves every alpha
COLUMN = {"whole": "ra", "smooth": "ra", "dual": "ra", "experts": "ra_e", "router": "ra_r",
          "rmoe": "ra_rmoe", "smoe": "ra_smoe"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a single-MoE or JTDMoE checkpoint")
    p.add_argument("--std", help="standard MoE checkpoint of a pre-trained dual model")
    p.add_argument("--rob", help="robust MoE checkpoint of a pre-trained dual model")
    p.add_argument("--alphas", default=None, help="comma list of alpha for dual models (default 0.7, or the JTDMoE's)")
    p.add_argument("--combine", default=None, help="logits | probs (dual models; default logits or the JTDMoE's)")
    p.add_argument("--attack", default="pgd", help="pgd | aa | smooth")
    p.add_argument("--targets", default=None,
                   help="comma list of attack targets to run (default: all of the table: whole,experts,router "
                        "for a single MoE, dual,rmoe,smoe for a dual model)")
    p.add_argument("--eps", type=float, default=None, help="l_inf budget in pixel units (default: the run's)")
    p.add_argument("--step-size", type=float, default=None, help="PGD step (default eps/4)")
    p.add_argument("--steps", type=int, default=50, help="PGD steps")
    p.add_argument("--n", type=int, default=0, help="evaluate a fixed subset of n test points (0: all)")
    p.add_argument("--bs", type=int, default=256)
    p.add_argument("--data-dir", default=None, help="default: the run's")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default: beside the checkpoint)")
    args = p.parse_args(argv)
    if bool(args.ckpt) == bool(args.std or args.rob) or bool(args.std) != bool(args.rob):
        raise ValueError("give either --ckpt PATH, or both --std PATH and --rob PATH")
    if args.attack not in SINGLE_TARGETS:
        raise ValueError(f"unknown attack {args.attack!r}; choose pgd, aa or smooth")
    if args.targets:
        args.targets = args.targets.split(",")
        unknown = [t for t in args.targets if t not in COLUMN]
        if unknown:
            raise ValueError(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(COLUMN)}")
    if args.eps is not None and args.eps < 0:
        raise ValueError(f"eps must be >= 0, got {args.eps}")
    return args


def load_models(args):
    """(model, run args of the robust / single MoE, is_dual)."""
    if args.ckpt:
        model, ckpt = tc.model_from_checkpoint(args.ckpt, combine=args.combine)
        run_args = ckpt["args"]
        if isinstance(model, DualMoE):
            run_args = {**run_args["rob_args"], "alpha": run_args["alpha"]}
        return model, run_args, isinstance(model, DualMoE)
    std, std_ckpt = tc.model_from_checkpoint(args.std)
    rob, rob_ckpt = tc.model_from_checkpoint(args.rob)
    for key in ("dataset",):
        if std_ckpt["args"][key] != rob_ckpt["args"][key]:
            raise ValueError(f"--std and --rob were trained on different {key}s")
    return DualMoE(std, rob, 0.7, args.combine or "logits"), rob_ckpt["args"], True


@torch.no_grad()
def class_margins(model, x, y, num_classes: int, bs: int = 512):
    """Mean probability margin p_y - max_{k != y} p_k of model per true class (Table 5)."""
    with eval_mode(model):
        probs = torch.cat([F.softmax(model(x[s:s + bs]), 1) for s in range(0, len(x), bs)])
    true = probs.gather(1, y[:, None]).squeeze(1)
    other = probs.scatter(1, y[:, None], -1.0).amax(1)
    margin = true - other
    return [margin[y == c].mean().item() if (y == c).any() else float("nan") for c in range(num_classes)]


def measure(model, x, y, targets, args, eps, step) -> dict:
    """SA and accuracy of the full model under the attack of each target, in percent."""
    out = {"sa": 100 * clean_correct(model, x, y).float().mean().item()}
    attack_name = "aa" if args.attack == "aa" else "pgd"
    with tqdm(total=len(x) * len(targets), desc=f"{args.attack} eps={eps:.4g}", leave=False) as bar:
        for target in targets:
            correct, same = evaluate_attack(model, x, y, target, attack_name, eps, step, args.steps, args.bs, bar)
            out[COLUMN[target]] = 100 * correct.float().mean().item()
            if same is not None:
                out[f"route_same_{target}"] = 100 * same.float().mean().item()
    return out


def measure_dual(model, x, y, alphas, targets, args, eps, step) -> list:
    """One row per alpha: SA and the dual model's accuracy under each target's attack, in percent."""
    rows = []
    for alpha in alphas:
        model.alpha = alpha
        rows.append({"alpha": alpha, "sa": 100 * clean_correct(model, x, y).float().mean().item()})
    attack_name = "aa" if args.attack == "aa" else "pgd"
    attacks_run = sum(1 if t in ALPHA_FREE else len(alphas) for t in targets)
    with eval_mode(model), tqdm(total=len(x) * attacks_run, desc=f"{args.attack} eps={eps:.4g}", leave=False) as bar:
        for target in targets:
            groups = [rows] if target in ALPHA_FREE else [[row] for row in rows]
            for group in groups:
                model.alpha = group[0]["alpha"]
                correct = torch.zeros(len(group))
                for batch, x_adv in adversarial_batches(model, x, y, target, attack_name, eps, step, args.steps,
                                                        args.bs):
                    with torch.no_grad():
                        for j, row in enumerate(group):
                            model.alpha = row["alpha"]
                            correct[j] += (model(x_adv).argmax(1) == y[batch]).sum().item()
                    bar.update(len(x_adv))
                for j, row in enumerate(group):
                    row[COLUMN[target]] = 100 * correct[j].item() / len(y)
    return rows


def markdown(rows, columns) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c])
                                            for c in columns) + " |\n" for r in rows)


def main(argv=None):
    args = parse_args(argv)
    model, run_args, dual = load_models(args)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model = model.to(device).eval()
    if run_args.get("channels_last"):  # evaluate in the memory format the run trained in
        model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(args.seed)
    info = data.dataset_info(run_args["dataset"])
    _, test = data.load_dataset(run_args["dataset"], args.data_dir or run_args.get("data_dir", "data"))
    x, y = (t.to(device) for t in data.test_subset(test, args.n))
    eps = run_args["eps"] if args.eps is None else args.eps
    step = eps / 4 if args.step_size is None else args.step_size
    base = {"attack": args.attack, "eps": eps, "step_size": step, "steps": args.steps, "n": len(y),
            "dataset": run_args["dataset"], "ckpt": args.ckpt or {"std": args.std, "rob": args.rob}}
    out_dir = args.out or os.path.dirname(os.path.abspath(args.ckpt or args.rob))
    os.makedirs(out_dir, exist_ok=True)

    if not dual:
        result = {**base, **measure(model, x, y, args.targets or SINGLE_TARGETS[args.attack], args, eps, step)}
        columns = [c for c in ("sa", "ra", "ra_e", "ra_r") if c in result]
        if all(c in result for c in ("ra", "ra_e", "ra_r")):
            result["worst"] = min(result["ra"], result["ra_e"], result["ra_r"])
            columns.append("worst")
        rows, name = [result], f"eval_{args.attack}"
        columns += [k for k in result if k.startswith("route_same")]
    else:
        if args.attack == "smooth":
            raise ValueError("the smooth attack is defined for single MoEs; use pgd or aa for dual models")
        given = args.alphas.split(",") if args.alphas else [run_args.get("alpha", 0.7)]
        alphas = [check_alpha(float(a)) for a in given]
        rows = measure_dual(model, x, y, alphas, args.targets or DUAL_TARGETS, args, eps, step)
        for row in rows:
            model.alpha = row["alpha"]
            row["margin_rob"] = class_margins(model.rob, x, y, info.num_classes)
            row["margin_dual"] = class_margins(model, x, y, info.num_classes)
        result = {**base, "kind": "jtdmoe" if args.ckpt else "pretrained", "rows": rows}
        columns = [c for c in ("alpha", "sa", "ra", "ra_rmoe", "ra_smoe") if c in rows[0]]
        name = f"dual_{args.attack}"
    table = markdown(rows, columns)
    # written whole or not at all: run_all.sh reuses any JSON it finds
    tc.atomic_write(os.path.join(out_dir, name + ".md"), table)
    tc.atomic_write(os.path.join(out_dir, name + ".json"), json.dumps(result, indent=1))
    print(table, end="")
    print(f"wrote {os.path.join(out_dir, name + '.json')}")
    return result


if __name__ == "__main__":
    tc.cli(main)
