"""The MoE-CNN of AdvMoE (moe_cnn.py): dense equivalence, pathway = masked reference, STE router gradient, sparse
masks, GMACs; and train_at.py's MoE-CNN methods."""
import pytest
import torch
import torch.nn.functional as F

import train_advmoe
import train_at
import train_sparse
from checkpoint import load_checkpoint, model_from_checkpoint
from moe_cnn import build_moe_cnn, gflops

DIGITS = (1, 8, 8)


def spread_router(model, seed=0):
    """A linear router with large random weights: it sends random inputs to every expert (a fresh one may not)."""
    import math
    torch.manual_seed(seed)
    model.router = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(model.in_shape),
                                                                           model.num_experts))
    weight = model.router[1].weight.data.normal_(0, 1.0)
    weight -= weight.mean(1, keepdim=True)  # inputs in [0, 1]: a common positive part would pick one expert
    return model


def test_dense_resnet18_equals_torchvision_resnet18_with_the_cifar_stem():
    """E = 1, r = 1 is torchvision's ResNet-18 (3x3 stride-1 stem, no max-pool) holding the same weights."""
    from torchvision.models import resnet18
    ref = resnet18(num_classes=10)
    ref.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    ref.maxpool = torch.nn.Identity()
    ours = build_moe_cnn("moe_resnet18", 1, 1.0, 10, (3, 32, 32))
    mine = [(k, v) for k, v in ours.state_dict().items() if not k.startswith("normalize.")]
    theirs = list(ref.state_dict().values())
    assert [v.shape for _, v in mine] == [v.shape for v in theirs]
    ours.load_state_dict({**ours.state_dict(), **{k: v for (k, _), v in zip(mine, theirs)}})
    x = torch.rand(4, 3, 32, 32)
    for mode in (True, False):
        ref.train(mode), ours.train(mode)
        torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("arch,shape", [("moe_cnn", DIGITS), ("moe_resnet18", (3, 16, 16)),
                                        ("moe_wrn28_10", (3, 16, 16))])
def test_one_experts_pathway_is_the_dense_network_of_width_r_holding_its_weights(arch, shape):
    """Routed to expert e, the MoE-CNN computes what a dense network of width r with expert e's channels computes."""
    torch.manual_seed(0)
    moe = build_moe_cnn(arch, 3, 0.5, 10, shape).eval()
    dense = build_moe_cnn(arch, 1, 0.5, 10, shape).eval()
    x, e = torch.rand(5, *shape), 2
    state = {}
    for k, v in moe.state_dict().items():
        if k.startswith("router."):
            continue
        module = moe.get_submodule(k.rsplit(".", 1)[0])
        state[k] = v.split(module.w)[e] if hasattr(module, "experts") else v  # RoutedConv: expert e's rows
    dense.load_state_dict(state)
    moe.router.net[-1].bias.data = torch.tensor([0.0, 0.0, 1e4])  # every input to expert 2
    torch.testing.assert_close(moe(x), dense(x))


@pytest.mark.parametrize("arch,shape", [("moe_cnn", DIGITS), ("moe_resnet18", (3, 16, 16)),
                                        ("moe_wrn28_10", (3, 16, 16))])
def test_selected_pathway_equals_the_masked_full_layer_reference_values_and_gradients(arch, shape):
    model = spread_router(build_moe_cnn(arch, 4, 0.5, 10, shape))
    x, y = torch.rand(32, *shape), torch.randint(0, 10, (32,))
    assert len(model.gates(x).argmax(1).unique()) >= 3  # rows really go to several experts
    for mode in (True, False):
        model.train(mode)
        grads = []
        for masked in (False, True):
            model.zero_grad()
            logits = model.forward_with_routing(x, masked=masked)[0]
            F.cross_entropy(logits, y).backward()
            grads.append((logits.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
        torch.testing.assert_close(grads[0][0], grads[1][0])
        for k in grads[0][1]:
            torch.testing.assert_close(grads[0][1][k], grads[1][1][k], rtol=1e-4, atol=1e-4, msg=k)  # float sums


def test_batched_routing_equals_routing_row_by_row():
    model = spread_router(build_moe_cnn("moe_cnn", 4, 0.5, 10, DIGITS)).eval()
    x = torch.rand(16, *DIGITS)
    rows = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(model(x), rows)


def test_router_learns_through_the_straight_through_mask():
    """Hard top-1 routing has no gradient; the factor 1 + z_e - stopgrad(z_e) gives the router one (and is 1)."""
    model = spread_router(build_moe_cnn("moe_cnn", 4, 0.5, 10, DIGITS)).train()
    x, y = torch.rand(8, *DIGITS), torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    router_grads = [p.grad for p in model.router.parameters()]
    assert all(g is not None for g in router_grads) and sum(g.abs().sum() for g in router_grads) > 0
    model.zero_grad()
    with torch.no_grad():  # the factor leaves the forward pass as it is: scaling every gate changes nothing
        before = model(x)
        model.router[1].weight.mul_(2)
        model.router[1].bias.mul_(2)
        torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("arch,shape", [("moe_cnn", DIGITS), ("moe_resnet18", (3, 16, 16)),
                                        ("moe_wrn28_10", (3, 16, 16))])
def test_a_sparse_network_computes_what_its_compact_form_computes(arch, shape):
    """compact(): the kept channels' weights in a dense network of width r, the same function in eval mode."""
    torch.manual_seed(0)
    model = build_moe_cnn(arch, 1, 1.0, 10, shape, prune=0.5)
    for m in model.masks():
        m.scores.data.normal_()  # an arbitrary mask
    x = torch.rand(6, *shape)
    model.train()
    model(x)  # running statistics that differ per channel
    model.eval()
    small = model.compact().eval()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters()) / 3
    torch.testing.assert_close(small(x), model(x))


def test_gmacs_of_s_dense_at_half_width_are_about_a_quarter_of_dense():
    x = torch.rand(2, 3, 32, 32)
    dense = gflops(build_moe_cnn("moe_resnet18", 1, 1.0, 10, (3, 32, 32)), x)
    half = gflops(build_moe_cnn("moe_resnet18", 1, 0.5, 10, (3, 32, 32)), x)
    moe = gflops(spread_router(build_moe_cnn("moe_resnet18", 4, 0.5, 10, (3, 32, 32))), x)
    sparse = gflops(build_moe_cnn("moe_resnet18", 1, 1.0, 10, (3, 32, 32), prune=0.5), x)
    assert dense["pathway"] == dense["masked"] and 0.5 < dense["pathway"] < 0.6  # the paper's 0.54 GFLOPs
    assert 0.22 < half["pathway"] / dense["pathway"] < 0.30  # a quarter, plus the full-width stem
    assert half["pathway"] < moe["pathway"] < 1.05 * half["pathway"]  # the pathway plus the small router
    assert moe["masked"] > 3.5 * moe["pathway"]  # the masked form runs all 4 experts
    assert sparse["pathway"] == pytest.approx(half["pathway"])  # its compact form is the network of width r
    assert sparse["masked"] == pytest.approx(dense["masked"])  # the dense network times its masks, no extra layer


@pytest.mark.parametrize("arch", ["moe_cnn", "moe_resnet18", "moe_wrn28_10"])
def test_sparse_starts_from_its_tables_dense_run_with_every_weight(arch, tmp_path):
    """AT (Dense) trained one step, then AT (Sparse)'s --init: at mask = all-ones the pruned net is the dense one."""
    from checkpoint import build_model_from_args, load_dense_weights
    from test_data import write_cifar
    write_cifar(tmp_path / "data", per_batch=1, n_test=2)  # 5 training images: one step of batch 5
    ckpt = str(tmp_path / "dense" / "ckpt.pt")
    train_at.main(["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"), "--arch", arch, "--method", "at",
                   "--experts", "1", "--scale", "1", "--epochs", "1", "--bs", "5", "--steps", "1", "--eval-n", "2",
                   "--eval-steps", "1", "--out", str(tmp_path / "dense")])
    dense, saved = model_from_checkpoint(ckpt)
    sparse = build_model_from_args({**saved["args"], "method": "sparse", "scale": 0.5})
    load_dense_weights(sparse, ckpt)
    for mask in sparse.masks():
        mask.kept = len(mask.scores)  # keep every channel
    x = torch.rand(2, 3, 32, 32)
    for mode in (False, True):
        dense.train(mode), sparse.train(mode)
        torch.testing.assert_close(sparse(x), dense(x))


TINY = ["--dataset", "digits", "--arch", "moe_cnn", "--scale", "0.5", "--bs", "400", "--eval-n", "40",
        "--eval-steps", "2", "--steps", "2", "--no-augment"]


def test_sparse_learns_its_mask_with_the_weights_frozen_then_fine_tunes_with_the_mask_fixed(tmp_path, monkeypatch):
    import train_common
    snapshots, end_epoch = [], train_common.Run.end_epoch

    def snapshot(self, epoch):
        snapshots.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return end_epoch(self, epoch)
    monkeypatch.setattr(train_common.Run, "end_epoch", snapshot)
    dense_out, out = tmp_path / "dense", tmp_path / "sparse"
    train_at.main([*TINY, "--method", "at", "--experts", "1", "--scale", "1", "--epochs", "1", "--out", str(dense_out)])
    dense = snapshots.pop()
    model = train_sparse.main([*TINY, "--epochs", "4", "--mask-epochs", "2", "--lr", "0.5",
                               "--init", str(dense_out / "ckpt.pt"), "--out", str(out)])
    scores = [k for k in snapshots[0] if k.endswith(".scores")]
    convs = [k for k in snapshots[0] if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
    masks = [[torch.topk(s[k].abs(), model.get_submodule(k[:-7]).kept).indices.sort().values for k in scores]
             for s in snapshots]
    assert all(torch.equal(snapshots[1][k], dense[k]) for k in convs)  # mask stage: weights as --init gave them
    assert any(not torch.equal(snapshots[1][k], snapshots[0][k]) for k in scores)  # ... and the scores learn
    for a, b in zip(masks[1], masks[3]):  # fine-tuning: the mask stays, the weights move
        assert torch.equal(a, b)
    assert all(torch.equal(snapshots[1][k], snapshots[3][k]) for k in scores)
    assert all(not torch.equal(snapshots[1][k], snapshots[3][k]) for k in convs)
    ckpt = load_checkpoint(str(out / "ckpt.pt"))
    assert set(ckpt["optimizer"]) == {"masks", "weights"} and ckpt["args"]["mask_epochs"] == 2
    loaded, _ = model_from_checkpoint(str(out / "ckpt.pt"))
    x = torch.rand(4, *DIGITS)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_moe_cnn_runs_take_the_seeds_optimiser_settings_by_default(tmp_path):
    train_advmoe.main([*TINY, "--epochs", "1", "--out", str(tmp_path / "a")])
    a = load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))["args"]
    assert (a["opt"], a["lr"], a["wd"], a["sched"], a["experts"], a["loss"]) == ("sgd", 0.1, 5e-4, "cosine", 4,
                                                                                 "trades")
    assert set(load_checkpoint(str(tmp_path / "a" / "ckpt.pt"))["optimizer"]) == {"router", "backbone"}


@pytest.mark.parametrize("script,argv,message", [
    ("train_sparse", ["--experts", "2"], "--experts 1"),
    ("train_advmoe", ["--experts", "1"], "--experts >= 2"),
    ("train_at", ["--method", "at", "--topk", "2"], "top-1"),
    ("train_at", ["--method", "at", "--arch", "cnn", "--scale", "0.5"], "MoE-CNN archs"),
    ("train_sparse", ["--epochs", "2", "--mask-epochs", "2"], "--mask-epochs"),
    ("train_advmoe", ["--router-loss", "published", "--loss", "at"], "TRADES"),
    ("train_advmoe", ["--router-loss", "published", "--arch", "cnn"], "MoE-CNN"),
])
def test_bad_moe_cnn_flags_are_one_line(tmp_path, script, argv, message):
    with pytest.raises(ValueError, match=message) as err:
        __import__(script).main([*TINY, "--epochs", "1", *argv, "--out", str(tmp_path / "x")])
    assert "\n" not in str(err.value)


def test_rter_refuses_the_moe_cnn_in_one_line(tmp_path):
    import train_rter
    with pytest.raises(ValueError, match="whole-network experts") as err:
        train_rter.main([*TINY, "--epochs", "1", "--out", str(tmp_path / "x")])
    assert "\n" not in str(err.value)


def test_eval_attacks_an_moe_cnn_whole_and_counts_its_gmacs(tmp_path):
    import eval as evaluate
    out = tmp_path / "moe"
    train_at.main([*TINY, "--method", "at", "--epochs", "1", "--out", str(out)])
    result = evaluate.main(["--ckpt", str(out / "ckpt.pt"), "--steps", "2", "--n", "30"])["pgd"]
    assert set(result["correct"]) == {"clean", "whole"} and result["ra"] <= result["sa"]
    assert 0 < result["gmacs"]["pathway"] < result["gmacs"]["masked"]
    for argv, words in ((["--targets", "experts"], "do not fit an MoE-CNN"),
                        (["--attack", "adaptive"], "takes pgd, aa, apgd-ce50")):
        with pytest.raises(ValueError, match=words) as err:
            evaluate.main(["--ckpt", str(out / "ckpt.pt"), *argv])
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the published router and stem

def test_published_router_is_the_advmoe_codes_resnet20_with_parameter_free_shortcuts():
    from moe_cnn import PublishedRouter, RouterBlock
    router = PublishedRouter(3, 4).eval()
    convs = [m for m in router.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16] * 7 + [32] * 6 + [64] * 6  # stem + 3 stages x 3 blocks x 2
    assert all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert [c.stride[0] for c in convs].count(2) == 2 and router.net[-1].in_features == 64
    blocks = [m for m in router.modules() if isinstance(m, RouterBlock)]
    assert sum(p.numel() for b in blocks for p in b.parameters()) == sum(
        p.numel() for b in blocks for m in (b.conv1, b.bn1, b.conv2, b.bn2) for p in m.parameters())
    block = blocks[3]  # 16 -> 32, stride 2: with its convolutions at zero it is relu(shortcut(x))
    for conv in (block.conv1, block.conv2):
        conv.weight.data.zero_()
    x = torch.randn(2, 16, 8, 8)
    out = block(x)
    torch.testing.assert_close(out[:, 8:24], F.relu(x[:, :, ::2, ::2]))  # subsampled, zero-padded 8 + 8 channels
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def router_logits_grad(model, x, y, ste):
    """(dL/dz, z) of the router's scores z under the straight-through form `ste`."""
    model.ste, seen = ste, []

    def keep(module, inputs, out):
        out.retain_grad()
        seen.append(out)
    handle = model.router.register_forward_hook(keep)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    handle.remove()
    return seen[0].grad, seen[0].detach()


def test_published_straight_through_hands_the_one_hot_gradient_to_the_raw_score():
    """Published (the AdvMoE code's GetMask): dL/dz is g on the selected score and 0 elsewhere, g = dL/ds. Ours passes
    the same g through the softmax: dL/dz = g p_e (onehot_e - p)."""
    model = spread_router(build_moe_cnn("moe_cnn", 4, 0.5, 10, DIGITS)).train()
    x, y = torch.rand(16, *DIGITS), torch.randint(0, 10, (16,))
    assert model.ste == "gate"  # the default: logit broke AT (MoE) on digits (DETAILS.md)
    published, z = router_logits_grad(model, x, y, "logit")
    ours, _ = router_logits_grad(model, x, y, "gate")
    idx = z.argmax(1, keepdim=True)
    onehot = torch.zeros_like(z).scatter_(1, idx, 1.0)
    assert published[onehot == 0].abs().max() == 0 and published.gather(1, idx).abs().min() > 0
    p = F.softmax(z, dim=1)
    torch.testing.assert_close(ours, published.gather(1, idx) * p.gather(1, idx) * (onehot - p))


def test_s_dense_scaled_stem_and_the_published_routers_gmacs():
    """At the paper's shape (32x32, r = 0.5) S-Dense with the public code's stem has 0.14 GMACs; the MoE-CNN's pathway
    is the dense network of width r (full stem, as the public MoE) plus its router, whichever the router."""
    x = torch.rand(2, 3, 32, 32)
    full = gflops(build_moe_cnn("moe_resnet18", 1, 0.5, 10, (3, 32, 32)), x)["pathway"]
    scaled_net = build_moe_cnn("moe_resnet18", 1, 0.5, 10, (3, 32, 32), stem="scaled")
    assert scaled_net.stem[0].out_channels == 32 and round(gflops(scaled_net, x)["pathway"], 2) == 0.14 < full
    for kind in ("published", "ours"):
        moe = build_moe_cnn("moe_resnet18", 4, 0.5, 10, (3, 32, 32), router=kind, stem="scaled")
        assert moe.stem[0].out_channels == 64  # an MoE keeps the full stem
        assert gflops(moe, x)["pathway"] == pytest.approx(full + gflops(moe.router, x)["pathway"])


def test_runs_record_router_and_stem_and_older_checkpoints_rebuild_ours(tmp_path):
    """New runs: the published router and S-Dense's scaled stem, recorded in args; a checkpoint whose args lack them
    (made before) rebuilds the two-convolution router (its straight-through form) and the full stem, and loads."""
    from moe_cnn import PublishedRouter, Router
    runs = {"advmoe": (train_advmoe, []), "advmoe_ours": (train_advmoe, ["--router", "ours"]),
            "sdense": (train_at, ["--method", "at", "--experts", "1"]),
            "sdense_full": (train_at, ["--method", "at", "--experts", "1", "--stem", "full"])}
    x = torch.rand(4, *DIGITS)
    for name, (script, argv) in runs.items():
        trained = script.main([*TINY, "--epochs", "1", *argv, "--out", str(tmp_path / name)]).eval()
        path = tmp_path / name / "ckpt.pt"
        if name.endswith(("_ours", "_full")):  # as an older run wrote it
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            del ckpt["args"]["router" if name == "advmoe_ours" else "stem"]
            torch.save(ckpt, path)
        model, _ = model_from_checkpoint(str(path))
        torch.testing.assert_close(model.eval()(x), trained(x))
        if name.startswith("advmoe"):
            assert type(model.router) is (PublishedRouter if name == "advmoe" else Router)
            assert model.ste == "gate"  # the default, and the form of the runs before
        else:
            assert model.stem[0].out_channels == (8 if name == "sdense" else 16)
