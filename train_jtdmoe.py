"""JTDMoE (Algorithm 1): joint training of the dual model F_D = (1 - alpha) F_S + alpha F_R.

Per batch: (lower) one step on the robust MoE F_R minimising the RT-ER loss (losses.rter_loss); (upper) one
step on both MoEs (--upper both) or on F_S alone (--upper std, as the public code) minimising
CE(F_D(x), y) on clean x (losses.dual_loss). Starts from an ST checkpoint (--std) and an RT-ER one (--rob).
The two forms that run_all measures:
  Algorithm 1:      --upper both                      (the upper step moves F_S and F_R)
  the public code:  --upper std --kl-experts all      (F_R frozen in the upper step; the lower KL over every expert,
                    each with its own PGD)
Each step has its own optimiser. The public script's one Adam is not the same: it clears the gradients only after the
lower step, so the next lower step applies F_S's upper gradient a second time, and F_S takes two Adam steps per batch.
--optimizers one (with --upper std) trains that way.
  python train_jtdmoe.py --std runs/digits/st/ckpt.pt --rob runs/digits/rter/ckpt.pt --alpha 0.7
"""
import contextlib
import sys

import torch

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
    p.add_argument("--optimizers", default="two", choices=("two", "one"),
                   help="two: one per step; one: the public script's single Adam, which applies F_S's upper gradient "
                        "again at the next lower step (needs --upper std)")
    return p


class PendingGrad:
    """F_S's gradients, which the single optimiser applies again at the next lower step: an optimiser-like
    state_dict / load_state_dict, so that the checkpoint keeps them and --resume goes on exactly."""

    def __init__(self, params):
        self.params = list(params)

    def state_dict(self) -> dict:
        return {"grads": [q.grad for q in self.params]}

    def load_state_dict(self, state: dict) -> None:
        for q, g in zip(self.params, state["grads"]):
            q.grad = None if g is None else torch.empty_like(q).copy_(g)


@contextlib.contextmanager
def frozen(module):
    """module's parameters out of the gradient for the block (the public script's requires_grad switch)."""
    params = [q for q in module.parameters() if q.requires_grad]
    for q in params:
        q.requires_grad_(False)
    try:
        yield
    finally:
        for q in params:
            q.requires_grad_(True)


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
    one = args.optimizers == "one"
    if one and args.upper != "std":
        raise ValueError("--optimizers one is the public script's form, whose upper step moves F_S alone: add "
                         "--upper std")
    settings = rter_settings(args)
    run = tc.Run(args)
    dual = run.prepare(DualMoE(std, rob, args.alpha, args.combine))
    if one:
        lower = upper = tc.make_optimizer(dual.parameters(), args)
        optimizers, scheds = {"opt": lower, "pending": PendingGrad(dual.std.parameters())}, {
            "opt": tc.make_scheduler(lower, args, len(run.loader))}
    else:
        lower = tc.make_optimizer(dual.rob.parameters(), args)
        upper = tc.make_optimizer(dual.parameters() if args.upper == "both" else dual.std.parameters(), args)
        optimizers, scheds = {"lower": lower, "upper": upper}, {
            "lower": tc.make_scheduler(lower, args, len(run.loader)),
            "upper": tc.make_scheduler(upper, args, len(run.loader))}
    start = run.start(dual, optimizers, scheds, {"kind": "dual", "std_args": std_args, "rob_args": rob_args})
    for epoch in range(start, args.epochs):
        dual.train()
        for x, y in run.batches(epoch):
            with run.autocast():
                lower_loss = run.loss(rter_loss, dual.rob, x, y, **settings)
            # one optimiser: the lower step clears F_R's gradient only, so F_S's from the last upper step is applied
            run.update(lower_loss, dual.rob if one else dual, lower, name="lower_loss")
            with frozen(dual.rob) if one else contextlib.nullcontext():  # F_R out of the single optimiser's step
                with run.autocast():
                    upper_loss = run.loss(dual_loss, dual, x, y)
                run.update(upper_loss, dual, upper)
            for s in scheds.values():
                s.step()
        run.end_epoch(epoch)
    return dual


if __name__ == "__main__":
    tc.cli(main)
