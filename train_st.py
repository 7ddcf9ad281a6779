"""Standard training (ST) of an MoE: CE(F(x), y) + balance * Switch load-balancing loss."""
import torch.nn.functional as F

import train_common as tc
from moe import balance_loss


def st_loss(model, x, y, balance: float):
    logits, gates, idx = model.forward_with_routing(x)
    return F.cross_entropy(logits, y) + balance * balance_loss(gates, idx)


def main(argv=None):
    args = tc.parse_args(tc.base_parser(__doc__, "st"), argv)
    run = tc.Run(args)
    model = run.build_moe()
    opt = run.optimizer(model.parameters())
    return run.fit(model, {"opt": opt}, lambda x, y: {"loss": run.step(st_loss(model, x, y, args.balance), opt)})


if __name__ == "__main__":
    tc.cli(main)
