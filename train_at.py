"""Adversarial-training baselines for the MoE (losses in losses.py):

  at:     CE(F(x+d), y), d from PGD-K on the whole MoE
  trades: CE(F(x), y) + trades_beta * KL(F(x) || F(x+d)) / B, d maximising that KL
  advmoe: the AT loss, w.r.t. the router parameters on even batches and the expert parameters on odd ones
All add balance * the Switch load-balancing loss at the input the CE is taken on.
"""
import train_common as tc
from losses import at_loss, trades_loss


def main(argv=None):
    p = tc.base_parser(__doc__, "at")
    p.add_argument("--method", default="at", choices=("at", "trades", "advmoe"))
    p.add_argument("--trades-beta", type=tc.number(float, 0), default=6.0, help="TRADES robustness weight")
    args = tc.parse_args(p, argv)
    run = tc.Run(args)
    model = run.prepare(tc.build_model_from_args(vars(args), args.pretrained))
    if args.method == "advmoe":  # two optimisers, so each part keeps its own Adam moments
        opts = {"router": tc.make_optimizer(model.router.parameters(), args),
                "experts": tc.make_optimizer(model.experts.parameters(), args)}
    else:
        opts = {"opt": tc.make_optimizer(model.parameters(), args)}
    scheds = {k: tc.make_scheduler(o, args, len(run.loader)) for k, o in opts.items()}
    start = run.start(model, opts, scheds)
    attack = (args.eps, args.step_size, args.steps)
    for epoch in range(start, args.epochs):
        model.train()
        for i, (x, y) in enumerate(run.batches(epoch)):
            with run.autocast():
                if args.method == "trades":
                    loss = trades_loss(model, x, y, *attack, args.trades_beta, args.balance)
                else:
                    loss = at_loss(model, x, y, *attack, args.balance)
            if args.method == "advmoe":  # AdvMoE: router and experts updated on different mini-batches
                step = epoch * len(run.loader) + i
                run.update(loss, model, opts["router" if step % 2 == 0 else "experts"])
            else:
                run.update(loss, model, opts["opt"])
            for s in scheds.values():
                s.step()
        run.end_epoch(epoch)
    return model


if __name__ == "__main__":
    tc.cli(main)
