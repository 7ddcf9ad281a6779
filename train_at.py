"""Adversarial-training baselines (losses in losses.py) for the MoE and for the MoE-CNN of AdvMoE (moe_cnn.py):

  at:     CE(F(x+d), y), d from PGD-K on the whole model
  trades: CE(F(x), y) + trades_beta * KL(F(x) || F(x+d)) / B, d maximising that KL
  advmoe: the AT loss, w.r.t. the router parameters on even batches and all the others on odd ones
  sparse: AT (Sparse), HYDRA-style: the AT loss w.r.t. the structured channel masks for --mask-epochs epochs (weights
          frozen), then w.r.t. the weights with the masks fixed; --scale is the share of channels kept
All add balance * the Switch load-balancing loss at the input the CE is taken on.
  python train_at.py --method advmoe --arch moe_resnet18 --scale 0.5 --dataset cifar10 --steps 2
  python train_at.py --method at --arch moe_resnet18 --experts 1 --scale 0.5 --dataset cifar10   (AT S-Dense)
  python train_at.py --method sparse --arch moe_resnet18 --scale 0.5 --dataset cifar10 --init runs/.../ckpt.pt
"""
import argparse

import train_common as tc
from losses import at_loss, trades_loss


def main(argv=None):
    p = tc.base_parser(__doc__, "at")
    p.add_argument("--method", default="at", choices=("at", "trades", "advmoe", "sparse"))
    p.add_argument("--trades-beta", type=tc.number(float, 0), default=6.0, help="TRADES robustness weight")
    p.add_argument("--mask-epochs", type=tc.number(int, 1), default=None,
                   help="sparse: epochs of mask learning before the fine-tuning (default: half of --epochs)")
    p.add_argument("--init", default=None, help="sparse: start from the weights of this dense checkpoint (HYDRA "
                                                 "prunes a pre-trained network; default: random weights)")
    args = tc.parse_args(p, argv)
    sparse = args.method == "sparse"
    args.mask_epochs = (args.mask_epochs or args.epochs // 2) if sparse else None
    if sparse and not 0 < args.mask_epochs < args.epochs:
        raise ValueError(f"--mask-epochs must leave epochs to fine-tune: 0 < {args.mask_epochs} < --epochs "
                         f"{args.epochs}")
    run = tc.Run(args)
    model = run.prepare(tc.build_model_from_args(vars(args), args.pretrained))
    router = list(model.router.parameters()) if getattr(model, "router", None) is not None else []
    masks = [q for m in model.masks() for q in m.parameters()] if sparse else []
    others = [q for q in model.parameters() if all(q is not r for r in router + masks)]
    stages = {"opt": (others, args.epochs)}
    if args.method == "advmoe":  # two optimisers, so each part keeps its own moments
        if not router:
            raise ValueError("AdvMoE alternates router and expert updates: it needs --experts >= 2")
        stages = {"router": (router, args.epochs), "experts": (others, args.epochs)}
    elif sparse:  # each stage has its own optimiser and a full schedule of its own length
        stages = {"masks": (masks, args.mask_epochs), "weights": (others, args.epochs - args.mask_epochs)}
    opts = {k: tc.make_optimizer(params, args) for k, (params, _) in stages.items()}
    scheds = {k: tc.make_scheduler(opts[k], argparse.Namespace(**{**vars(args), "epochs": epochs}), len(run.loader))
              for k, (_, epochs) in stages.items()}
    start = run.start(model, opts, scheds)
    if sparse and args.init and start == 0:
        tc.load_dense_weights(model, args.init)
    attack = (args.eps, args.step_size, args.steps)
    for epoch in range(start, args.epochs):
        active = ("masks" if epoch < args.mask_epochs else "weights") if sparse else None
        if sparse:  # only the active stage's parameters learn: the mask is fixed while the weights fine-tune
            for k, (params, _) in stages.items():
                for q in params:
                    q.requires_grad_(k == active)
        model.train()
        for i, (x, y) in enumerate(run.batches(epoch)):
            with run.autocast():
                if args.method == "trades":
                    loss = run.loss(trades_loss, model, x, y, *attack, args.trades_beta, args.balance)
                else:
                    loss = run.loss(at_loss, model, x, y, *attack, args.balance)
            if args.method == "advmoe":  # AdvMoE: router and experts updated on different mini-batches
                step = epoch * len(run.loader) + i
                part = "router" if step % 2 == 0 else "experts"
            else:
                part = active or "opt"
            run.update(loss, model, opts[part])
            for k, s in scheds.items():
                if k == part or not sparse:
                    s.step()
        run.end_epoch(epoch)
    return model


if __name__ == "__main__":
    tc.cli(main)
