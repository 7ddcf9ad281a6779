"""AdvMoE (AdvMoE paper, appendix B; public code OPTML-Group/Robust-MoE-CNN, train_moe.py): per batch one step on the
backbone (experts and every other layer) and one step on the router, the router's on a batch of a second,
independently shuffled pass over the training set, each minimising the same robust loss w.r.t. its own parameters:

  backbone: min L(theta, x, y)    router: min L(phi, x', y')
  L = TRADES (--loss trades, beta 6) or Madry AT (--loss at)
So the backbone gets as many updates per epoch as AT (MoE); each part has its own optimiser and schedule.
  python train_advmoe.py --arch moe_resnet18 --scale 0.5 --dataset cifar10 --steps 2
"""
import train_common as tc
from train_at import add_loss_flags, adversarial_loss


def main(argv=None):
    args = tc.parse_args(add_loss_flags(tc.base_parser(__doc__, "advmoe"), default="trades", flag="--loss"), argv)
    loss_fn, settings = adversarial_loss(args.loss, args)
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
        for (x, y), (x_router, y_router) in zip(run.batches(epoch), run.second_shuffle(epoch)):
            with run.autocast():
                loss = run.loss(loss_fn, model, x, y, *settings)
            run.update(loss, model, opts["backbone"])
            with run.autocast():
                router_loss = run.loss(loss_fn, model, x_router, y_router, *settings)
            run.update(router_loss, model, opts["router"], name="router_loss")
            for s in scheds.values():
                s.step()
        run.end_epoch(epoch)
    return model


if __name__ == "__main__":
    tc.cli(main)
