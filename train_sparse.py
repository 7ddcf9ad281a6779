"""AT (Sparse) of the AdvMoE appendix, HYDRA-style structured pruning of a dense MoE-CNN network (moe_cnn.py):

  stage 1 (--mask-epochs, default half of --epochs): min over the channel-mask scores of L, the weights frozen
  stage 2 (the rest):                                min over the weights of L, the mask fixed
L = Madry AT (--loss at) or TRADES (--loss trades, as the public code trains its baselines); --scale r is the share
of channels kept. Each stage has its own optimiser and a full schedule of its own length; --init starts from the
weights of a dense (AT (Dense)) checkpoint, as HYDRA prunes a pre-trained network.
  python train_sparse.py --arch moe_resnet18 --scale 0.5 --dataset cifar10 --init runs/cifar10/dense/ckpt.pt
"""
import argparse

import train_common as tc
from train_at import add_loss_flags, adversarial_loss


def main(argv=None):
    p = add_loss_flags(tc.base_parser(__doc__, "sparse"), flag="--loss")
    p.add_argument("--mask-epochs", type=tc.number(int, 1), default=None,
                   help="epochs of mask learning before the fine-tuning (default: half of --epochs)")
    p.add_argument("--init", default=None, help="start from the weights of this dense checkpoint (HYDRA prunes a "
                                                 "pre-trained network; default: random weights)")
    args = tc.parse_args(p, argv)
    args.mask_epochs = args.mask_epochs or args.epochs // 2
    if not 0 < args.mask_epochs < args.epochs:
        raise ValueError(f"--mask-epochs must leave epochs to fine-tune: 0 < {args.mask_epochs} < --epochs "
                         f"{args.epochs}")
    loss_fn, settings = adversarial_loss(args.loss, args)
    run = tc.Run(args)
    model = tc.build_model_from_args(vars(args), args.pretrained)
    if args.init:  # checked before run.start claims the folder; --resume then restores the run's own weights
        tc.load_dense_weights(model, args.init)
    model = run.prepare(model)
    masks = [q for m in model.masks() for q in m.parameters()]
    weights = [q for q in model.parameters() if all(q is not m for m in masks)]
    stages = {"masks": (masks, args.mask_epochs), "weights": (weights, args.epochs - args.mask_epochs)}
    opts = {k: tc.make_optimizer(params, args) for k, (params, _) in stages.items()}
    scheds = {k: tc.make_scheduler(opts[k], argparse.Namespace(**{**vars(args), "epochs": n}), len(run.loader))
              for k, (_, n) in stages.items()}
    start = run.start(model, opts, scheds)
    for epoch in range(start, args.epochs):
        stage = "masks" if epoch < args.mask_epochs else "weights"
        for k, (params, _) in stages.items():  # only the stage's own parameters learn
            for q in params:
                q.requires_grad_(k == stage)
        model.train()
        for x, y in run.batches(epoch):
            with run.autocast():
                loss = run.loss(loss_fn, model, x, y, *settings)
            run.update(loss, model, opts[stage])
            scheds[stage].step()
        run.end_epoch(epoch)
    return model


if __name__ == "__main__":
    tc.cli(main)
