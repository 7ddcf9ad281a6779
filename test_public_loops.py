"""The public codes' training loops, flag by flag: JTDMoE's single optimiser (F_S stepped twice a batch) and AdvMoE's
released router step."""
import argparse

import pytest
import torch
import torch.nn.functional as F

import moe
import train_advmoe
import train_common as tc
import train_jtdmoe
import train_rter
from conftest import QUICK, changed, snapshot


# no attack (steps 0) and no augmentation: nothing random in a step, so a hand-written loop can follow the run exactly
PUBLIC_JTDMOE = [*QUICK, "--steps", "0", "--no-augment", "--no-channels-last", "--alpha", "0.7", "--upper", "std",
                 "--kl-experts", "all", "--optimizers", "one"]


def test_jtdmoe_one_optimizer_is_the_public_scripts_loop_with_f_s_stepped_twice_a_batch(ckpts, tmp_path, monkeypatch):
    """--optimizers one ends at the weights of the public script's loop written out (one Adam over both MoEs, F_S
    frozen in the lower step and F_R in the upper one, zero_grad only after the lower step): F_S's Adam takes 2n - 1
    steps in n batches (the first lower step has no upper gradient yet), F_R's n."""
    batches, batches_of = [], tc.Run.batches

    def spy_batches(self, epoch):
        for x, y in batches_of(self, epoch):
            batches.append((x, y))
            yield x, y
    monkeypatch.setattr(tc.Run, "batches", spy_batches)
    run = train_jtdmoe.main(["--std", str(ckpts["st"]), "--rob", str(ckpts["rter"]), *PUBLIC_JTDMOE,
                             "--out", str(tmp_path)])
    saved = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    args = argparse.Namespace(**saved["args"])
    dual = moe.DualMoE(tc.model_from_checkpoint(str(ckpts["st"]))[0], tc.model_from_checkpoint(str(ckpts["rter"]))[0],
                       0.7).train()
    opt = tc.make_optimizer(dual.parameters(), args)
    sched, settings = tc.make_scheduler(opt, args, len(batches)), train_rter.rter_settings(args)

    def trainable(module, flag):
        for q in module.parameters():
            q.requires_grad_(flag)
    for x, y in batches:
        trainable(dual.std, False)
        train_jtdmoe.rter_loss(dual.rob, x, y, **settings).backward()
        opt.step()
        opt.zero_grad()
        trainable(dual.std, True), trainable(dual.rob, False)
        F.cross_entropy(dual(x), y).backward()
        opt.step()
        trainable(dual.rob, True)
        sched.step()
    assert all(torch.equal(v, dual.state_dict()[k]) for k, v in run.state_dict().items())
    n, state = len(batches), saved["optimizer"]["opt"]["state"]
    std_ids = range(len(list(dual.std.parameters())))
    assert n >= 2 and set(saved["optimizer"]) == {"opt", "pending"} and saved["args"]["optimizers"] == "one"
    assert {int(state[i]["step"]) for i in std_ids} == {2 * n - 1}
    assert {int(s["step"]) for i, s in state.items() if i not in std_ids} == {n}


def test_jtdmoe_one_optimizer_resumes_exactly_with_f_s_pending_gradient(ckpts, tmp_path):
    """F_S's last upper gradient, applied at the next epoch's first lower step, is kept in the checkpoint (--sched
    const: a cyclic rate depends on --epochs)."""
    pair = ["--std", str(ckpts["st"]), "--rob", str(ckpts["rter"]), "--sched", "const"]
    straight = train_jtdmoe.main([*pair, *PUBLIC_JTDMOE, "--epochs", "2", "--out", str(tmp_path / "a")])
    train_jtdmoe.main([*pair, *PUBLIC_JTDMOE, "--out", str(tmp_path / "b")])
    resumed = train_jtdmoe.main([*pair, *PUBLIC_JTDMOE, "--epochs", "2", "--resume", "--out", str(tmp_path / "b")])
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in straight.state_dict().items())
    with pytest.raises(ValueError, match="--upper std"):
        train_jtdmoe.main([*pair, *QUICK, "--optimizers", "one", "--out", str(tmp_path / "c")])


def test_advmoe_published_router_loss_steps_backbone_then_router_on_the_same_batch(tmp_path, monkeypatch):
    """--router-loss published (the released loop): per batch the backbone step, then the router step on that same
    batch, each with its own joint attack; the router step moves the router alone."""
    import losses
    seen, update = [], tc.Run.update
    for name in ("advmoe_backbone_loss", "advmoe_router_loss"):
        def spy(model, x, *args, fn=getattr(losses, name), name=name):
            seen.append((name, x))
            return fn(model, x, *args)
        monkeypatch.setattr(train_advmoe, name, spy)

    def spy_update(self, loss, model, *optimizers, name="loss"):
        router, backbone = snapshot(model.router), snapshot(model.stages)
        update(self, loss, model, *optimizers, name=name)
        if name == "router_loss":
            assert any(changed(router, model.router)) and not any(changed(backbone, model.stages))
    monkeypatch.setattr(tc.Run, "update", spy_update)
    train_advmoe.main([*QUICK, "--arch", "moe_cnn", "--scale", "0.5", "--out", str(tmp_path)])  # the default loop
    assert [name for name, _ in seen] == ["advmoe_backbone_loss", "advmoe_router_loss"] * (len(seen) // 2)
    assert len(seen) >= 4 and all(seen[i][1] is seen[i + 1][1] for i in range(0, len(seen), 2))
    args = tc.load_checkpoint(str(tmp_path / "ckpt.pt"))["args"]
    assert (args["router_loss"], args["router_alpha"], args["router"]) == ("published", 6.0, "published")
