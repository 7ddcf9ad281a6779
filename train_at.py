"""Adversarial-training baselines of the MoE and of the MoE-CNN of AdvMoE (moe_cnn.py); losses in losses.py:

  at:     CE(F(x+d), y), d from PGD-K on the whole model                       (Madry)
  trades: CE(F(x), y) + trades_beta * KL(F(x) || F(x+d)) / B, d maximising that KL   (TRADES)
Both add balance * the Switch load-balancing loss, and one optimiser moves every parameter, the router's too.
AdvMoE is train_advmoe.py, AT (Sparse) train_sparse.py.
  python train_at.py --method trades --trades-beta 6
  python train_at.py --method at --arch moe_resnet18 --experts 1 --scale 0.5 --dataset cifar10   (AT S-Dense)
MoE-CNN runs build the AdvMoE code's router (--router ours: the runs before it) and scale a dense network's stem with
r, as the public code's dense networks (--stem full: the runs before it).
"""
import train_common as tc
from losses import at_loss, trades_loss
from moe_cnn import ROUTERS, STEMS, STES


def add_loss_flags(p, default="at", flag="--method"):
    p.add_argument(flag, default=default, choices=("at", "trades"), help="at: Madry AT; trades: the TRADES loss")
    p.add_argument("--trades-beta", type=tc.number(float, 0), default=6.0, help="TRADES robustness weight")
    return p


def add_cnn_flags(p, stem: bool = True):
    """The MoE-CNN's router (--arch moe_*, E >= 2) and the stem of its dense network of width r (AT (S-Dense))."""
    p.add_argument("--router", default="published", choices=ROUTERS,
                   help="MoE-CNN router: published (the AdvMoE code's ResNet-20) or ours (the runs before it: two "
                        "convolutions)")
    p.add_argument("--ste", default="gate", choices=STES,
                   help="where a router learning from the task loss gets the straight-through gradient: gate (through "
                        "the softmax; default) or logit (the raw score, as the AdvMoE code's GetMask; broke AT (MoE) "
                        "on digits)")
    if stem:
        p.add_argument("--stem", default="scaled", choices=STEMS,
                       help="stem of an MoE-CNN dense network of width r: scaled to round(r C) as the public code's "
                            "(default), or full (the runs before it)")
    return p


def adversarial_loss(method: str, args):
    """(loss function, its arguments after model, x, y) of --method at | trades."""
    attack = (args.eps, args.step_size, args.steps)
    if method == "trades":
        return trades_loss, (*attack, args.trades_beta, args.balance)
    return at_loss, (*attack, args.balance)


def main(argv=None):
    args = tc.parse_args(add_cnn_flags(add_loss_flags(tc.base_parser(__doc__, "at"))), argv)
    loss_fn, settings = adversarial_loss(args.method, args)
    run = tc.Run(args)
    model = run.prepare(tc.build_model_from_args(vars(args), args.pretrained))
    opt = tc.make_optimizer(model.parameters(), args)
    sched = tc.make_scheduler(opt, args, len(run.loader))
    start = run.start(model, {"opt": opt}, {"opt": sched})
    for epoch in range(start, args.epochs):
        model.train()
        for x, y in run.batches(epoch):
            with run.autocast():
                loss = run.loss(loss_fn, model, x, y, *settings)
            run.update(loss, model, opt)
            sched.step()
        run.end_epoch(epoch)
    return model


if __name__ == "__main__":
    tc.cli(main)
