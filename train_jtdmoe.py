"""JTDMoE (Algorithm 1): joint training of the dual model F_D = (1 - alpha) F_S + alpha F_R.

Per batch: (lower) one step on the robust MoE F_R minimising the RT-ER loss (losses.rter_loss); (upper) one
step on both MoEs (--upper both) or on F_S alone (--upper std, as the public code) minimising
CE(F_D(x), y) on clean x (losses.dual_loss). Starts from an ST checkpoint (--std) and an RT-ER one (--rob).
The two forms that run_all measures:
  Algorithm 1:      --upper both                      (the upper step moves F_S and F_R)
  the public code:  --upper std --kl-experts all      (F_R frozen in the upper step; the lower KL over every expert,
                    each with its own PGD). Its one Adam over both steps is the two Adams here: with --upper std
                    they hold disjoint parameters, and Adam's state and a parameter-free step are per parameter.
  python train_jtdmoe.py --std runs/digits/st/ckpt.pt --rob runs/digits/rter/ckpt.pt --alpha 0.7
"""
import sys

import train_common as tc
from losses import dual_loss, rter_loss
from moe import DualMoE
from train_rter import add_rter_flags, rter_settings


def parser():
    p = add_rter_flags(tc.base_parser(__doc__, "jtdmoe"))
    p.add_argument("--std", required=True, help="checkpoint of the standard MoE (train_st.py)")
    p.add_argument("--rob", required=True, help="checkpoint of the robust MoE (train_rter.py)")
    p.add_argument("--alpha", type=tc.number(float, 0.5, 1.0), default=0.7, help="weight of the robust MoE")
    p.add_argument("--combine", default="logits", choices=("logits", "probs"), help="what the dual model mixes")
    p.add_argument("--upper", default="both", choices=("both", "std"), help="what the upper (clean CE) step updates")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    known, _ = parser().parse_known_args(argv)
    std, std_ckpt = tc.model_from_checkpoint(known.std)
    rob, rob_ckpt = tc.model_from_checkpoint(known.rob)
    std_args, rob_args = std_ckpt["args"], rob_ckpt["args"]
    if std_args["dataset"] != rob_args["dataset"]:
        raise ValueError(f"--std was trained on {std_args['dataset']}, --rob on {rob_args['dataset']}")
    # the model, its data and the attack budget come from the robust checkpoint; flags given later still win
    inherited = ["--dataset", rob_args["dataset"], "--arch", rob_args["arch"], "--experts", str(rob_args["experts"]),
                 "--topk", str(rob_args["topk"]), "--eps", str(rob_args["eps"]), "--epochs", "10",
                 "--train-n", str(rob_args.get("train_n", 0)), "--data-dir", rob_args.get("data_dir") or "data"]
    args = tc.parse_args(parser(), inherited + argv)
    settings = rter_settings(args)
    run = tc.Run(args)
    dual = run.prepare(DualMoE(std, rob, args.alpha, args.combine))
    lower = tc.make_optimizer(dual.rob.parameters(), args)
    upper = tc.make_optimizer(dual.parameters() if args.upper == "both" else dual.std.parameters(), args)
    scheds = {"lower": tc.make_scheduler(lower, args, len(run.loader)),
              "upper": tc.make_scheduler(upper, args, len(run.loader))}
    start = run.start(dual, {"lower": lower, "upper": upper}, scheds,
                      {"kind": "dual", "std_args": std_args, "rob_args": rob_args})
    for epoch in range(start, args.epochs):
        dual.train()
        for x, y in run.batches(epoch):
            with run.autocast():
                lower_loss = run.loss(rter_loss, dual.rob, x, y, **settings)
            run.update(lower_loss, dual, lower, name="lower_loss")
            with run.autocast():
                upper_loss = run.loss(dual_loss, dual, x, y)
            run.update(upper_loss, dual, upper)
            for s in scheds.values():
                s.step()
        run.end_epoch(epoch)
    return dual


if __name__ == "__main__":
    tc.cli(main)
