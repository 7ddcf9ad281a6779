"""Every metric of the paper for one checkpoint or a dual model; JSON and a markdown table per attack.

Single MoE:  SA, RA (whole), RA-E (experts), RA-R (router), routing consistency; `adaptive` attacks hard routing.
Dual model:  SA, RA (dual), RA-RMoE, RA-SMoE for each alpha, and per-class margins of the robust MoE.
MoE-CNN (moe_cnn.py: AdvMoE's MoE, dense and sparse networks): SA, RA, and GMACs per image (pathway and masked).
The papers' own attacks, for their columns: apgd-ce50 (the ICML paper's '50-step AutoAttack': APGD-CE, 50 iterations)
and pgd10-advmoe (the AdvMoE code's PGD-10 on CE(F(x+d), y) + 6 CE(router(x+d), y mod E); single models).
Each attack writes OUT/eval_<attack>.json and .md (OUT: the run folder of --ckpt; for --std/--rob a
folder of its own beside the robust run, dual_<std run>+<rob run>), with every test point's outcome, so that
RA (worst), the points surviving every attack run on the model so far, is printed after each attack.
  python eval.py --ckpt runs/digits/st/ckpt.pt
  python eval.py --ckpt runs/digits/rter/ckpt.pt --attack pgd,aa,smooth
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
import checkpoint
import cli
from attacks import (AA_VERSIONS, ADVMOE_BETA, PAPER_STEPS, adversarial_batches, clean_correct, eval_mode,
                     evaluate_attack, robust_correct)
from moe import DualMoE, check_alpha
from moe_cnn import MoECNN, gflops
from outcomes import EVAL_NAME, accuracy, worst_case

SINGLE_TARGETS = {"pgd": ("whole", "experts", "router"), "aa": ("whole", "experts", "router"),
                  "smooth": ("smooth", "experts", "router"), "adaptive": ("whole",),
                  "apgd-ce50": ("whole", "experts", "router"), "pgd10-advmoe": ("whole",)}
AA_FAMILY = ("aa", "apgd-ce50")  # AutoAttack's code, and its cost: --aa-n, --aa-targets and --aa-alphas apply
SINGLE_ONLY = ("smooth", "adaptive", "pgd10-advmoe")  # attacks defined on one MoE's experts or router
DUAL_TARGETS = ("dual", "rmoe", "smoe")
ALPHA_FREE = ("rmoe", "smoe")  # attacks on one MoE of the pair: one attack serves every alpha
COLUMN = {"whole": "ra", "smooth": "ra", "dual": "ra", "experts": "ra_e", "router": "ra_r",
          "rmoe": "ra_rmoe", "smoe": "ra_smoe"}
# what the JSON says of a cut-down AutoAttack; the standard version gets no key (report titles rely on it)
AA_VERSION_NOTE = {"quick": "quick: APGD-CE only, 10 iterations"}
# what the JSON says of the papers' own attacks (key "about")
PAPER_ATTACK_NOTE = {
    "apgd-ce50": "APGD-CE alone (pyautoattack, custom version), 50 iterations, 1 restart, step 2 eps halved on APGD's "
                 "schedule: the ICML paper's '50-step AutoAttack'",
    "pgd10-advmoe": f"the AdvMoE code's PGD-10 (utils/eval_utils.py adv_val): uniform start, 10 signed steps on "
                    f"CE(F(x+d), y) + {ADVMOE_BETA:g} CE(router(x+d), y mod E)"}


def result_name(attack: str) -> str:
    """The file name (no extension) of one attack's results: run_all's Makefile expects the same."""
    return EVAL_NAME.format(attack)


def comma_list(item):
    """An argparse type: a comma list, each item checked by item() (ValueError: one line)."""
    def parse(text):
        try:
            return list(dict.fromkeys(item(t.strip()) for t in text.split(",")))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))
    return parse


def attack_name(text: str) -> str:
    if text not in SINGLE_TARGETS:
        raise ValueError(f"unknown attack {text!r}; choose from {', '.join(SINGLE_TARGETS)}")
    return text


def target_name(text: str) -> str:
    if text not in COLUMN:
        raise ValueError(f"unknown target {text!r}; choose from {', '.join(COLUMN)}")
    return text


def alpha_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"alpha {text!r} is not a number") from None
    return check_alpha(value)


def parse_args(argv=None):
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="a single-MoE or JTDMoE checkpoint")
    p.add_argument("--std", help="standard MoE checkpoint of a pre-trained dual model")
    p.add_argument("--rob", help="robust MoE checkpoint of a pre-trained dual model")
    p.add_argument("--alphas", type=comma_list(alpha_value), default=None,
                   help="comma list of alpha in [0.5, 1] for dual models (default 0.7, or the JTDMoE's)")
    p.add_argument("--combine", choices=("logits", "probs"), default=None,
                   help="dual models (default logits or the JTDMoE's)")
    p.add_argument("--attack", type=comma_list(attack_name), default=["pgd"],
                   help="comma list of pgd | aa | smooth | adaptive | apgd-ce50 | pgd10-advmoe; one process runs "
                        "them all, each writes its own files (adaptive: PGD that steers the router to each expert in "
                        "turn; single MoEs). The papers' own attacks: apgd-ce50, APGD-CE with 50 iterations (the ICML "
                        "paper's '50-step AutoAttack'; --aa-n, --aa-targets, --aa-alphas apply); pgd10-advmoe, the "
                        "AdvMoE code's PGD-10 on CE(F) + 6 CE(router, y mod E) (single models, whole)")
    p.add_argument("--aa-version", choices=AA_VERSIONS, default="standard",
                   help="AutoAttack: standard, or quick (APGD-CE alone, 10 iterations; smoke runs, labelled so)")
    p.add_argument("--targets", type=comma_list(target_name), default=None,
                   help="comma list of attack targets to run (default: all of the table: whole,experts,router "
                        "for a single MoE, dual,rmoe,smoe for a dual model)")
    p.add_argument("--aa-targets", type=comma_list(target_name), default=None,
                   help="AutoAttack's targets, where they are fewer than the other attacks' (it costs the most)")
    p.add_argument("--aa-alphas", type=comma_list(alpha_value), default=None,
                   help="AutoAttack's alphas of a dual model, where they are fewer than --alphas (some of them)")
    p.add_argument("--eps", type=cli.number(float, 0, 1), default=None,
                   help="l_inf budget in pixel units (default: the run's)")
    p.add_argument("--step-size", type=cli.number(float, 0), default=None, help="PGD step (default eps/4)")
    p.add_argument("--steps", type=cli.number(int, 0), default=50, help="PGD steps")
    p.add_argument("--n", type=cli.number(int, 0), default=0, help="evaluate a fixed subset of n test points (0: all)")
    p.add_argument("--aa-n", type=cli.number(int, 0), default=None,
                   help="test points for AutoAttack, far costlier than PGD (default and at most: --n, a subset of "
                        "its points)")
    p.add_argument("--smooth-n", type=cli.number(int, 0), default=None,
                   help="test points for the smooth attack, which runs every expert on every point (default and "
                        "at most: --n, a subset of its points)")
    p.add_argument("--keep-done", action="store_true",
                   help="skip an attack whose JSON in the output folder is newer than the checkpoint: after a kill, "
                        "run_all redoes only the attacks that had not finished")
    p.add_argument("--bs", type=cli.number(int, 1), default=256)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="the model in bf16 autocast, the attack's own arithmetic in fp32 (default: as the run "
                        "trained, which is bf16 only on a GPU with --amp); on a GPU also TF32 and cudnn.benchmark")
    p.add_argument("--data-dir", default=None, help="default: the run's")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=cli.number(int), default=0)
    p.add_argument("--out", default=None, help="output folder (default: the --ckpt's run folder; for --std/--rob "
                                               "dual_<std run>+<rob run> beside the robust run)")
    args = p.parse_args(argv)
    if bool(args.ckpt) == bool(args.std or args.rob) or bool(args.std) != bool(args.rob):
        p.error("give either --ckpt PATH, or both --std PATH and --rob PATH")
    if args.data_dir and not os.path.isdir(args.data_dir):  # fashion_mnist would fall back to the Debian folder
        p.error(f"--data-dir {args.data_dir}: no such folder")
    return args


def run_of(path: str):
    """(folder, name) of the run a checkpoint belongs to: runs/digits/st/ckpt.pt -> (runs/digits, st)."""
    path = os.path.abspath(path)
    path = os.path.dirname(path) if os.path.basename(path) == "ckpt.pt" else os.path.splitext(path)[0]
    return os.path.split(path)


def default_out(args) -> str:
    """The --ckpt's run folder; a pair gets a folder of its own, so the robust run's own results stay."""
    if args.ckpt:
        return os.path.dirname(os.path.abspath(args.ckpt))
    (parent, rob), (_, std) = run_of(args.rob), run_of(args.std)
    return os.path.join(parent, f"dual_{std}+{rob}")


def load_models(args):
    """(model, run args of the robust / single MoE, is_dual)."""
    if args.ckpt:
        model, ckpt = checkpoint.model_from_checkpoint(args.ckpt, combine=args.combine)
        run_args = ckpt["args"]
        if isinstance(model, DualMoE):
            run_args = {**run_args["rob_args"], "alpha": run_args["alpha"]}
        return model, run_args, isinstance(model, DualMoE)
    std, std_ckpt = checkpoint.model_from_checkpoint(args.std)
    rob, rob_ckpt = checkpoint.model_from_checkpoint(args.rob)
    if std_ckpt["args"]["dataset"] != rob_ckpt["args"]["dataset"]:
        raise ValueError("--std and --rob were trained on different datasets")
    return DualMoE(std, rob, 0.7, args.combine or "logits"), rob_ckpt["args"], True


def run_alphas(args, run_args) -> list:
    """The alphas a dual model is evaluated at: --alphas, else the JTDMoE's own, else 0.7."""
    return args.alphas or [check_alpha(run_args.get("alpha", 0.7))]


def check_fit(args, dual: bool, cnn: bool = False, alphas=()) -> None:
    """Attacks, targets and alphas the model can take, before any work (ValueError: one line); alphas: run_alphas."""
    kind, allowed = ("a dual model", DUAL_TARGETS) if dual else ("a single MoE", ("whole", "experts", "router",
                                                                                  "smooth"))
    if cnn:  # its experts are channel groups inside each layer, not networks: only the whole model is attacked
        kind, allowed = "an MoE-CNN (moe_cnn.py)", ("whole",)
        if "smooth" in args.attack or "adaptive" in args.attack:
            raise ValueError("the smooth and adaptive attacks need whole-network experts; an MoE-CNN takes pgd, aa, "
                             "apgd-ce50 or pgd10-advmoe")
    for flag, targets in (("--targets", args.targets), ("--aa-targets", args.aa_targets)):
        wrong = [t for t in targets or () if t not in allowed]
        if wrong:
            raise ValueError(f"{flag}: target(s) {', '.join(wrong)} do not fit {kind}; "
                             f"choose from {', '.join(allowed)}")
    for attack in SINGLE_ONLY:
        if dual and attack in args.attack:
            raise ValueError(f"the {attack} attack is defined for single MoEs; use pgd or aa for dual models")
    if not dual and (args.alphas or args.aa_alphas):
        flag = "--alphas" if args.alphas else "--aa-alphas"
        raise ValueError(f"{flag} is for dual models (--std/--rob or a JTDMoE checkpoint)")
    extra = [a for a in args.aa_alphas or () if a not in alphas]
    if extra:  # AutoAttack only narrows the sweep: an alpha of its own would have no PGD row to pair with
        raise ValueError(f"--aa-alphas {', '.join(map(str, extra))} not among the alphas evaluated "
                         f"({', '.join(map(str, alphas))}); add them to --alphas")


def check_points(args, total: int) -> None:
    """Test-point counts the test set holds; AutoAttack's and the smooth attack's points must lie inside the other
    attacks' (a prefix of one permutation: data.subset_index), since RA (worst) pairs them (ValueError: one line)."""
    size = lambda n: total if n <= 0 else n  # noqa: E731 (0: all)
    said = lambda n: f"{n} (all {total})" if n <= 0 else str(n)  # noqa: E731
    for flag, n in (("--n", args.n), ("--aa-n", args.aa_n), ("--smooth-n", args.smooth_n)):
        if n is not None and n > total:
            raise ValueError(f"{flag} {n} is more than the {total} test points")
        if n is not None and size(n) > size(args.n):
            raise ValueError(f"{flag} {said(n)} is more than --n {said(args.n)}: its points must lie inside the other "
                             "attacks'")


@torch.no_grad()
def point_margins(model, x, y, bs: int = 512):
    """Per point, the probability margin p_y - max_{k != y} p_k of model on clean x."""
    with eval_mode(model):
        probs = torch.cat([F.softmax(model(x[s:s + bs]), 1) for s in range(0, len(x), bs)])
    return probs.gather(1, y[:, None]).squeeze(1) - probs.scatter(1, y[:, None], -1.0).amax(1)


def class_margins(margin, y, num_classes: int):
    """Mean of the per-point margins per true class (Table 5)."""
    return [margin[y == c].mean().item() if (y == c).any() else float("nan") for c in range(num_classes)]


def attack_kind(args):
    """(attack for attacks.py, AutoAttack version or None): smooth is PGD on other targets."""
    name = "pgd" if args.attack == "smooth" else args.attack
    return name, (args.aa_version if name == "aa" else None)


def bits(correct) -> list:
    return correct.int().tolist()


def measure(model, x, y, targets, args, eps, step) -> dict:
    """SA and accuracy of the full model under the attack args.attack of each target, in percent, and per point."""
    clean = clean_correct(model, x, y)
    out = {"sa": 100 * clean.float().mean().item(), "correct": {"clean": bits(clean)}}
    name, version = attack_kind(args)
    with tqdm(total=len(x) * len(targets), desc=f"{args.attack} eps={eps:.4g}", leave=False) as bar:
        for target in targets:
            correct, same = evaluate_attack(model, x, y, target, name, eps, step, args.steps, args.bs, bar, version)
            out[COLUMN[target]] = 100 * correct.float().mean().item()
            out["correct"][target] = bits(correct)
            if same is not None:
                out[f"route_same_{target}"] = 100 * same.float().mean().item()
                out.setdefault("same_route", {})[target] = bits(same)
    return out


def measure_dual(model, x, y, alphas, targets, args, eps, step) -> list:
    """One row per alpha: SA and the dual model's accuracy under each target's attack, in percent."""
    rows = []
    for alpha in alphas:
        model.alpha = alpha
        clean = clean_correct(model, x, y)
        rows.append({"alpha": alpha, "sa": 100 * clean.float().mean().item(), "correct": {"clean": bits(clean)}})
    name, version = attack_kind(args)
    attacks_run = sum(1 if t in ALPHA_FREE else len(alphas) for t in targets)
    with eval_mode(model), tqdm(total=len(x) * attacks_run, desc=f"{args.attack} eps={eps:.4g}", leave=False) as bar:
        for target in targets:
            groups = [rows] if target in ALPHA_FREE else [[row] for row in rows]
            for group in groups:
                model.alpha = group[0]["alpha"]
                correct = [[] for _ in group]
                for batch, x_adv in adversarial_batches(model, x, y, target, name, eps, step, args.steps, args.bs,
                                                        version):
                    with torch.no_grad():
                        for j, row in enumerate(group):
                            model.alpha = row["alpha"]
                            correct[j].append(robust_correct(model, x[batch], x_adv, y[batch]))
                    bar.update(len(x_adv))
                for j, row in enumerate(group):
                    row[COLUMN[target]] = 100 * torch.cat(correct[j]).float().mean().item()
                    row["correct"][target] = bits(torch.cat(correct[j]))
    return rows


def evaluate(model, x, y, index, dual, run_args, args, eps, step, num_classes):
    """(JSON dict, markdown table) of one attack, args.attack; index: the test points' indices."""
    result = {"attack": args.attack, "eps": eps, "step_size": None if args.attack == "apgd-ce50" else step,
              "steps": PAPER_STEPS.get(args.attack, args.steps), "n": len(y),
              "dataset": run_args["dataset"], "ckpt": args.ckpt or {"std": args.std, "rob": args.rob},
              "machine": cli.machine(), "index": index}
    if args.attack == "aa" and args.aa_version in AA_VERSION_NOTE:
        result["aa_version"] = AA_VERSION_NOTE[args.aa_version]
    if args.attack in PAPER_ATTACK_NOTE:
        result["about"] = PAPER_ATTACK_NOTE[args.attack]
    if not dual:
        cnn = isinstance(model, MoECNN)
        targets = args.targets or (("whole",) if cnn else SINGLE_TARGETS[args.attack])
        result.update(measure(model, x, y, targets, args, eps, step))
        if cnn:  # the cost of one image, counted by torch's flop counter on test images
            result["gmacs"] = gflops(model, x[:64])
        columns = [c for c in ("sa", "ra", "ra_e", "ra_r") if c in result]
        columns += [k for k in result if k.startswith("route_same")]
        return result, cli.markdown_table(columns, [[result[c] for c in columns]])
    rows = measure_dual(model, x, y, run_alphas(args, run_args), args.targets or DUAL_TARGETS, args, eps, step)
    rob_margins = point_margins(model.rob, x, y)
    for row in rows:
        model.alpha = row["alpha"]
        row["margin_rob"] = class_margins(rob_margins, y, num_classes)
        row["margin_dual"] = class_margins(point_margins(model, x, y), y, num_classes)
        row["margin_rob_points"] = [round(m, 6) for m in rob_margins.tolist()]
    result.update(kind="jtdmoe" if args.ckpt else "pretrained", rows=rows, labels=y.tolist())
    columns = [c for c in ("alpha", "sa", "ra", "ra_rmoe", "ra_smoe") if c in rows[0]]
    return result, cli.markdown_table(columns, [[row[c] for c in columns] for row in rows])


def main(argv=None):
    args = parse_args(argv)
    model, run_args, dual = load_models(args)
    check_fit(args, dual, isinstance(model, MoECNN), run_alphas(args, run_args) if dual else ())
    eps = run_args.get("eps") if args.eps is None else args.eps
    if eps is None:
        raise ValueError(f"{args.ckpt or args.rob} records no eps; pass --eps")
    step = eps / 4 if args.step_size is None else args.step_size
    device = cli.pick_device(args.device)
    amp = (bool(run_args.get("amp")) and device.type == "cuda") if args.amp is None else args.amp
    if amp and device.type == "cuda":  # what a bf16 run's numbers already allow; the batch shapes repeat
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    model = model.to(device).eval()
    if run_args.get("channels_last"):  # evaluate in the memory format the run trained in
        model = model.to(memory_format=torch.channels_last)
    info = data.dataset_info(run_args["dataset"])
    _, test = data.load_dataset(run_args["dataset"], args.data_dir or run_args.get("data_dir", "data"))
    check_points(args, len(test))
    out_dir = args.out or default_out(args)
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    newest_ckpt = max(os.path.getmtime(path) for path in (args.ckpt, args.std, args.rob) if path)
    for attack in args.attack:
        path = os.path.join(out_dir, result_name(attack))
        if args.keep_done and os.path.exists(path + ".json") and os.path.getmtime(path + ".json") > newest_ckpt:
            with open(path + ".json") as f:
                results[attack] = json.load(f)
            print(f"kept {path}.json: newer than the checkpoint (--keep-done)")
            continue
        torch.manual_seed(args.seed)  # each attack as if it ran alone: its numbers do not depend on the list
        one = argparse.Namespace(**{**vars(args), "attack": attack})
        if attack in AA_FAMILY:
            one.targets, one.alphas = args.aa_targets or args.targets, args.aa_alphas or args.alphas
        n = args.aa_n if attack in AA_FAMILY else args.smooth_n if attack == "smooth" else None
        n = args.n if n is None else n
        x, y = (t.to(device) for t in data.test_subset(test, n))
        index = data.subset_index(len(test), n).tolist()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            result, table = evaluate(model, x, y, index, dual, run_args, one, eps, step, info.num_classes)
        result["precision"] = "bf16 autocast" if amp else "fp32"
        # written whole or not at all: run_all's make takes any JSON it finds as done
        checkpoint.atomic_write(path + ".md", table)
        checkpoint.atomic_write(path + ".json", json.dumps(result, indent=1))
        print(table, end="")
        print(f"wrote {path}.json")
        print_worst_case(out_dir, result)
        results[attack] = result
    return results


def print_worst_case(out_dir: str, result: dict) -> None:
    """RA (worst) over every evaluation in out_dir that used this eps, on the points they share."""
    evals = []
    for name in sorted(os.listdir(out_dir)):
        if name.startswith(result_name("")) and name.endswith(".json"):
            with open(os.path.join(out_dir, name)) as f:
                ev = json.load(f)
            if ev.get("eps") == result["eps"] and "index" in ev:
                evals.append(ev)
    for alpha in [row["alpha"] for row in result.get("rows", [])] or [None]:
        covered, survived = worst_case(evals, alpha)
        print(f"RA (worst){f' at alpha {alpha:g}' if alpha is not None else ''}: {accuracy(survived):.2f} % of "
              f"{len(survived)} points survive every attack so far ({', '.join(covered)})")


if __name__ == "__main__":
    cli.run_main(main)
