"""JTDMoE (Algorithm 1): joint training of the dual model F_D = (1 - alpha) F_S + alpha F_R.

Per batch: (lower) one step on the robust MoE F_R minimising the RT-ER loss; (upper) one step on
both MoEs (--upper both) or on F_S alone (--upper std, as the public code) minimising CE(F_D(x), y)
on clean x. Starts from an ST checkpoint (--std) and an RT-ER checkpoint (--rob).
  python train_jtdmoe.py --std runs/digits/st/ckpt.pt --rob runs/digits/rter/ckpt.pt --alpha 0.7
"""
import sys

import torch.nn.functional as F

import train_common as tc
from moe import DualMoE, check_alpha
from train_rter import add_rter_flags, check_rter_args, rter_loss


def parser():
    p = add_rter_flags(tc.base_parser(__doc__, "jtdmoe"))
    p.add_argument("--std", required=True, help="checkpoint of the standard MoE (train_st.py)")
    p.add_argument("--rob", required=True, help="checkpoint of the robust MoE (train_rter.py)")
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the robust MoE, in [0.5, 1]")
    p.add_argument("--combine", default="logits", help="logits | probs: what the dual model mixes")
    p.add_argument("--upper", default="both", help="both | std: what the upper (clean CE) step updates")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    known, _ = parser().parse_known_args(argv)
    std, std_ckpt = tc.model_from_checkpoint(known.std)
    rob, rob_ckpt = tc.model_from_checkpoint(known.rob)
    std_args, rob_args = std_ckpt["args"], rob_ckpt["args"]
    if std_args["dataset"] != rob_args["dataset"]:
        raise ValueError(f"--std was trained on {std_args['dataset']}, --rob on {rob_args['dataset']}")
    # the model and the attack budget come from the robust checkpoint; flags given later still win
    inherited = ["--dataset", rob_args["dataset"], "--arch", rob_args["arch"], "--experts", str(rob_args["experts"]),
                 "--topk", str(rob_args["topk"]), "--eps", str(rob_args["eps"]), "--epochs", "10"]
    args = tc.parse_args(parser(), inherited + argv)
    check_alpha(args.alpha)
    check_rter_args(args)
    if args.upper not in ("both", "std"):
        raise ValueError(f"--upper must be both or std, got {args.upper!r}")
    run = tc.Run(args)
    dual = run.prepare(DualMoE(std, rob, args.alpha, args.combine))
    lower = run.optimizer(dual.rob.parameters())
    upper = run.optimizer(dual.parameters() if args.upper == "both" else dual.std.parameters())

    def train_step(x, y):
        lower_loss = run.step(rter_loss(dual.rob, x, y, args), lower)
        return {"loss": run.step(F.cross_entropy(dual(x), y), upper), "lower_loss": lower_loss}

    extra = {"kind": "dual", "std_args": std_args, "rob_args": rob_args}
    return run.fit(dual, {"lower": lower, "upper": upper}, train_step, extra)


if __name__ == "__main__":
    tc.cli(main)
