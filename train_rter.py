"""RT-ER, robust training with expert robustification (paper Eq. 2; losses.rter_loss):

  CE(F(x+d), y) + beta * KL(f_2(x) || f_2(x+d')) / B   (+ balance * Switch load-balancing loss)

d: PGD-K on the whole MoE. f_2: the best expert the router did not select (second-largest gate for
top-1), chosen at clean x (--second-on clean) or at x+d. d': PGD on f_2 alone (--kl-attack separate,
as the public code does) or d' = d (shared, cheaper). --kl-experts all sums the KL over every expert
(Appendix Table 9). The KL is F.kl_div(log f_2(x+d'), f_2(x)), the TRADES convention, summed over
classes and averaged over the batch.
"""
import train_common as tc
from losses import KL_ATTACKS, KL_EXPERTS, SECOND_ON, rter_loss


def add_rter_flags(p):
    p.add_argument("--beta", type=tc.number(float, 0), default=6.0, help="weight of the expert-robustness KL")
    p.add_argument("--kl-experts", default="second", choices=KL_EXPERTS, help="which experts the KL covers")
    p.add_argument("--kl-attack", default="separate", choices=KL_ATTACKS, help="PGD on those experts, or d' = d")
    p.add_argument("--second-on", default="clean", choices=SECOND_ON, help="input whose gates pick f_2")
    return p


def rter_settings(args) -> dict:
    """rter_loss's keyword arguments from the flags; refuses a top-k that leaves no f_2."""
    if args.kl_experts == "second" and args.topk >= args.experts:
        raise ValueError(f"RT-ER needs an expert outside the top-k: topk ({args.topk}) < experts ({args.experts})")
    return dict(eps=args.eps, step_size=args.step_size, steps=args.steps, beta=args.beta, balance=args.balance,
                kl_experts=args.kl_experts, kl_attack=args.kl_attack, second_on=args.second_on)


def main(argv=None):
    args = tc.parse_args(add_rter_flags(tc.base_parser(__doc__, "rter")), argv)
    settings = rter_settings(args)
    run = tc.Run(args)
    model = run.prepare(tc.build_model_from_args(vars(args), args.pretrained))
    opt = tc.make_optimizer(model.parameters(), args)
    sched = tc.make_scheduler(opt, args, len(run.loader))
    start = run.start(model, {"opt": opt}, {"opt": sched})
    for epoch in range(start, args.epochs):
        model.train()
        for x, y in run.batches(epoch):
            with run.autocast():
                loss = run.loss(rter_loss, model, x, y, **settings)
            run.update(loss, model, opt)
            sched.step()
        run.end_epoch(epoch)
    return model


if __name__ == "__main__":
    tc.cli(main)
