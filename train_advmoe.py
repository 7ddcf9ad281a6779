"""AdvMoE (AdvMoE paper, appendix B; public code OPTML-Group/Robust-MoE-CNN, train_moe.py): per batch one step on the
backbone (experts and every other layer), then one on the router, each with its own optimiser and schedule.
On an MoE-CNN with TRADES (the AdvMoE paper's system) by default as the released loop trains it (--router-loss
published): both steps on the same batch, each after its own attack on KL(F(x) || F(x')) + KL(R(x) || R(x'))
(losses.advmoe_perturb, R the router's scores), the router's loss
  CE(R(x), y mod E) + alpha * KL(R(x) || R(x')) / B      (--router-alpha, 6 as there)
--router-loss robust, the appendix's words (and the only form on the ICML presets' MoEs): one robust loss for both,
the router's step on a batch of a second, independently shuffled pass over the training set:
  backbone: min L(theta, x, y)    router: min L(phi, x', y')
  L = TRADES (--loss trades, beta 6) or Madry AT (--loss at)
The MoE-CNN's router is the public code's (--router ours: the runs before it).
  python train_advmoe.py --arch moe_resnet18 --scale 0.5 --dataset cifar10 --steps 2
"""
import train_common as tc
from losses import advmoe_backbone_loss, advmoe_router_loss
from moe_cnn import ARCHS as CNN_ARCHS
from train_at import add_cnn_flags, add_loss_flags, adversarial_loss


def parser():
    p = add_cnn_flags(add_loss_flags(tc.base_parser(__doc__, "advmoe"), default="trades", flag="--loss"), stem=False)
    p.add_argument("--router-loss", default=None, choices=("robust", "published"),
                   help="published (default for TRADES on an MoE-CNN): the released code's CE(R(x), y mod E) + router "
                        "KL, both attacks on both KLs; robust (default elsewhere): the router step minimises --loss on "
                        "a second shuffle's batch (the appendix)")
    p.add_argument("--router-alpha", type=tc.number(float, 0), default=6.0,
                   help="weight of the router KL under --router-loss published")
    return p


def main(argv=None):
    args = tc.parse_args(parser(), argv)
    # the released loop where it applies; with the appendix's objective the published router's logit gradient
    # diverged on digits (DETAILS.md, Table A1)
    args.router_loss = args.router_loss or ("published" if args.loss == "trades" and args.arch in CNN_ARCHS
                                            else "robust")
    public = args.router_loss == "published"
    if public and (args.loss != "trades" or args.arch not in CNN_ARCHS):
        raise ValueError("--router-loss published is the released AdvMoE loop: TRADES (--loss trades) on an MoE-CNN "
                         f"(--arch {', '.join(CNN_ARCHS)}); got --loss {args.loss} --arch {args.arch}")
    loss_fn, settings = adversarial_loss(args.loss, args)
    router_fn, router_settings = loss_fn, settings
    if public:  # settings: eps, step size, steps, beta, balance
        loss_fn, router_fn, router_settings = advmoe_backbone_loss, advmoe_router_loss, (
            *settings[:3], args.router_alpha, args.balance)
    run = tc.Run(args)
    model = run.prepare(tc.build_model_from_args(vars(args), args.pretrained))
    if getattr(model, "router", None) is None:
        raise ValueError("AdvMoE trains a router beside the experts: it needs --experts >= 2")
    router = list(model.router.parameters())
    backbone = [q for q in model.parameters() if all(q is not r for r in router)]
    opts = {"backbone": tc.make_optimizer(backbone, args), "router": tc.make_optimizer(router, args)}
    scheds = {k: tc.make_scheduler(o, args, len(run.loader)) for k, o in opts.items()}
    start = run.start(model, opts, scheds)
    for epoch in range(start, args.epochs):
        model.train()
        # the router's batch: the appendix's second shuffle, or the backbone's own (the released loop)
        batches = ((b, b) for b in run.batches(epoch)) if public else zip(run.batches(epoch), run.second_shuffle(epoch))
        for (x, y), (x_router, y_router) in batches:
            with run.autocast():
                loss = run.loss(loss_fn, model, x, y, *settings)
            run.update(loss, model, opts["backbone"])
            with run.autocast():
                router_loss = run.loss(router_fn, model, x_router, y_router, *router_settings)
            run.update(router_loss, model, opts["router"], name="router_loss")
            for s in scheds.values():
                s.step()
        run.end_epoch(epoch)
    return model


if __name__ == "__main__":
    tc.cli(main)
