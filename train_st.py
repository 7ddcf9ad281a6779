"""Standard training (ST) of an MoE: CE(F(x), y) + balance * Switch load-balancing loss (moe.st_loss)."""
import train_common as tc
from moe import st_loss


def main(argv=None):
    args = tc.parse_args(tc.base_parser(__doc__, "st"), argv)
    run = tc.Run(args)
    model = run.prepare(tc.build_model_from_args(vars(args), args.pretrained))
    opt = tc.make_optimizer(model.parameters(), args)
    sched = tc.make_scheduler(opt, args, len(run.loader))
    start = run.start(model, {"opt": opt}, {"opt": sched})
    for epoch in range(start, args.epochs):
        model.train()
        for x, y in run.batches(epoch):
            with run.autocast():
                loss = run.loss(st_loss, model, x, y, args.balance)
            run.update(loss, model, opt)
            sched.step()
        run.end_epoch(epoch)
    return model


if __name__ == "__main__":
    tc.cli(main)
