"""RT-ER, robust training with expert robustification (paper Eq. 2):

  CE(F(x+d), y) + beta * KL(f_2(x) || f_2(x+d')) / B   (+ balance * Switch load-balancing loss)

d: PGD-K on the whole MoE. f_2: the best expert the router did not select (second-largest gate for
top-1), chosen at clean x (--second-on clean) or at x+d. d': PGD on f_2 alone (--kl-attack separate,
as the public code does) or d' = d (shared, cheaper). --kl-experts all sums the KL over every expert
(Appendix Table 9). The KL is F.kl_div(log f_2(x+d'), f_2(x)), the TRADES convention, summed over
classes and averaged over the batch.
"""
import torch
import torch.nn.functional as F

import train_common as tc
from attacks import attack, kl_to_clean, pgd
from moe import next_best_expert
from train_st import st_loss


def add_rter_flags(p):
    p.add_argument("--beta", type=float, default=6.0, help="weight of the expert-robustness KL")
    p.add_argument("--kl-experts", default="second", help="second | all: which experts the KL covers")
    p.add_argument("--kl-attack", default="separate", help="separate (PGD on those experts) | shared (d' = d)")
    p.add_argument("--second-on", default="clean", help="clean | adv: input whose gates pick f_2")
    return p


def check_rter_args(args):
    for flag, value, choices in (("--kl-experts", args.kl_experts, ("second", "all")),
                                 ("--kl-attack", args.kl_attack, ("separate", "shared")),
                                 ("--second-on", args.second_on, ("clean", "adv"))):
        if value not in choices:
            raise ValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    if args.kl_experts == "second" and args.topk >= args.experts:
        raise ValueError(f"RT-ER needs an expert outside the top-k: topk ({args.topk}) < experts ({args.experts})")


def rter_loss(model, x, y, args):
    x_adv = attack(model, x, y, "whole", args.eps, args.step_size, args.steps)
    loss = st_loss(model, x_adv, y, args.balance)
    if args.beta == 0:
        return loss
    if args.kl_experts == "second":
        with torch.no_grad():
            second = next_best_expert(model.gates(x if args.second_on == "clean" else x_adv), model.topk)

        def experts_out(z):
            return model.chosen_expert_logits(z, second)
    else:
        def experts_out(z):  # every expert; rows stacked as (B * E, C)
            return model.all_expert_logits(z).flatten(0, 1)
    x_kl = x_adv
    if args.kl_attack == "separate":
        repeat = 1 if args.kl_experts == "second" else model.num_experts
        x_kl = pgd(experts_out, x, y.repeat_interleave(repeat), args.eps, args.step_size, args.steps, model=model)
    kl = kl_to_clean(experts_out(x_kl), F.softmax(experts_out(x), dim=1)) / len(x)
    return loss + args.beta * kl


def main(argv=None):
    args = tc.parse_args(add_rter_flags(tc.base_parser(__doc__, "rter")), argv)
    check_rter_args(args)
    run = tc.Run(args)
    model = run.build_moe()
    opt = run.optimizer(model.parameters())
    return run.fit(model, {"opt": opt}, lambda x, y: {"loss": run.step(rter_loss(model, x, y, args), opt)})


if __name__ == "__main__":
    tc.cli(main)
