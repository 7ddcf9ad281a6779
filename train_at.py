"""Adversarial-training baselines for the MoE: Madry AT, TRADES, AdvMoE.

  at:     CE(F(x+d), y), d from PGD-K on the whole MoE
  trades: CE(F(x), y) + trades_beta * KL(F(x) || F(x+d)) / B, d maximising that KL
  advmoe: AT loss, alternately w.r.t. router parameters and expert parameters, on alternate mini-batches
All add balance * the Switch load-balancing loss at the input the CE is taken on.
"""
import torch.nn.functional as F

import train_common as tc
from attacks import attack, kl_to_clean, trades_perturb
from moe import balance_loss
from train_st import st_loss

METHODS = ("at", "trades", "advmoe")


def at_loss(model, x, y, args):
    x_adv = attack(model, x, y, "whole", args.eps, args.step_size, args.steps)
    return st_loss(model, x_adv, y, args.balance)  # the ST loss at x + d


def trades_loss(model, x, y, args):
    x_adv = trades_perturb(model, x, args.eps, args.step_size, args.steps)
    logits, gates, idx = model.forward_with_routing(x)
    robust = kl_to_clean(model(x_adv), F.softmax(logits, dim=1)) / len(x)
    return F.cross_entropy(logits, y) + args.trades_beta * robust + args.balance * balance_loss(gates, idx)


def main(argv=None):
    p = tc.base_parser(__doc__, "at")
    p.add_argument("--method", default="at", help="at | trades | advmoe")
    p.add_argument("--trades-beta", type=float, default=6.0, help="TRADES robustness weight")
    args = tc.parse_args(p, argv)
    if args.method not in METHODS:
        raise ValueError(f"unknown method {args.method!r}; choose one of {', '.join(METHODS)}")
    if args.trades_beta < 0:
        raise ValueError(f"--trades-beta must be >= 0, got {args.trades_beta}")
    run = tc.Run(args)
    model = run.build_moe()
    if args.method == "advmoe":  # router on even batches, experts on odd ones (different mini-batches)
        optimizers = {"router": run.optimizer(model.router.parameters()),
                      "experts": run.optimizer(model.experts.parameters())}

        def train_step(x, y):
            part = "router" if run.global_step % 2 == 0 else "experts"
            return {"loss": run.step(at_loss(model, x, y, args), optimizers[part])}
    else:
        optimizers = {"opt": run.optimizer(model.parameters())}
        loss_fn = at_loss if args.method == "at" else trades_loss

        def train_step(x, y):
            return {"loss": run.step(loss_fn(model, x, y, args), optimizers["opt"])}
    return run.fit(model, optimizers, train_step)


if __name__ == "__main__":
    tc.cli(main)
