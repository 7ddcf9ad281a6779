"""moe.py against the formulas: routing, batched dispatch, component views, the dual model, the balance loss,
the ST loss, expert builders and the stand-alone import."""
from urllib.parse import urlparse

import pytest
import torch
import torch.nn.functional as F

import moe
from bench import HostSyncs
from conftest import batch, by_hand, start_when_selected, tiny_moe, topk_reference


@pytest.fixture(scope="module", autouse=True)
def start_cli_runs_first(request):
    """This file's CLI subprocesses start before its first test and run beside the in-process tests."""
    start_when_selected(request, "standalone_import")


# ----------------------------------------------------------------------------- the MoE forward is the formula

@pytest.mark.parametrize("topk", [1, 2])
@torch.no_grad()
def test_moe_output_matches_row_by_row_reference(topk):
    model = tiny_moe(topk).eval()
    x, _ = batch()
    gates, logits = by_hand(model, x)
    assert len(set(gates.argmax(1).tolist())) >= 2, "test needs rows routed to different experts"
    expected = topk_reference(gates, logits, topk)
    out, g, idx = model.forward_with_routing(x)
    torch.testing.assert_close(g, gates, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.sum(1), torch.ones(len(x)))
    assert torch.equal(idx.sort(1).values, gates.topk(topk, 1).indices.sort(1).values)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    # a row's output does not depend on which other rows share its batch
    torch.testing.assert_close(torch.cat([model(x[b:b + 1]) for b in range(len(x))]), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("topk", [1, 2])
@torch.no_grad()
def test_channels_last_moe_computes_the_same_function(topk):
    x, _ = batch()
    expected = tiny_moe(topk).eval()(x)
    model = tiny_moe(topk).eval().to(memory_format=torch.channels_last)  # the digits default
    assert model.experts[0].features[2].weight.is_contiguous(memory_format=torch.channels_last)
    for inputs in (x, x.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(model(inputs), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("topk", [1, 2])
@torch.no_grad()
def test_dispatch_runs_each_expert_once_on_its_rows(topk):
    model = tiny_moe(topk).eval()
    x, _ = batch()
    calls = {i: [] for i in range(model.num_experts)}
    hooks = [e.register_forward_pre_hook(lambda m, inp, i=i: calls[i].append(inp[0].shape[0]))
             for i, e in enumerate(model.experts)]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    assert all(len(c) <= 1 for c in calls.values()), f"an expert ran more than once: {calls}"
    assert sum(sum(c) for c in calls.values()) == topk * len(x)  # each row reaches exactly k experts


def per_expert_scan(model, x, idx, weights):
    """MoE.dispatch as it was up to 0296cab: a nonzero() per expert (a host sync each); the committed runs used it."""
    xn, out = model.normalize(x), None
    for i, expert in enumerate(model.experts):
        rows, slots = (idx == i).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        y = expert(xn[rows]) * weights[rows, slots].unsqueeze(1).to(xn.dtype)
        out = (y.new_zeros(x.shape[0], y.shape[1]) if out is None else out).index_add(0, rows, y.to(y.dtype))
    return out


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("train", [False, True])
def test_dispatch_equals_the_per_expert_scan_bit_for_bit_with_one_host_read(topk, train):
    x, y = batch()
    grads = []
    for dispatch in (None, per_expert_scan):
        torch.manual_seed(0)
        model = tiny_moe(topk).train(train)
        gates = model.gates(x)
        idx = gates.topk(topk, 1).indices
        args = (x, idx, gates.gather(1, idx))
        out = model.dispatch(*args) if dispatch is None else dispatch(model, *args)
        F.cross_entropy(out, y).backward()
        grads.append([out.detach()] + [p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))  # same rows, same order, same sums: the same bits
    with HostSyncs() as reads:  # the reads each call would make were x on a GPU
        model(x)
    assert dict(reads.ops) == {"tolist": 1}, reads.ops


@pytest.mark.parametrize("topk", [1, 2])
@torch.no_grad()
def test_component_views_match_formulas(topk):
    model = tiny_moe(topk).eval()
    x0, _ = batch(seed=1)
    x1 = (x0 + 0.2 * torch.randn_like(x0)).clamp(0, 1)
    g0, f0 = by_hand(model, x0)
    g1, f1 = by_hand(model, x1)
    # experts view: routing of x0, experts on x1
    torch.testing.assert_close(model.experts_view(x0, x1), topk_reference(g0, f1, topk), rtol=1e-4, atol=1e-5)
    # router view: soft gates of x1 over all experts, experts on x0
    torch.testing.assert_close(model.router_view(x1, x0), (g1.unsqueeze(-1) * f0).sum(1), rtol=1e-4, atol=1e-5)
    # smooth: sum_i a_i(x) f_i(x) over all experts
    torch.testing.assert_close(model.smooth(x1), (g1.unsqueeze(-1) * f1).sum(1), rtol=1e-4, atol=1e-5)
    for i in range(model.num_experts):
        torch.testing.assert_close(model.expert_logits(x1, i), f1[:, i], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.gates(x1), g1, rtol=1e-5, atol=1e-6)
    # with x0 == x1 the experts view is the model itself
    torch.testing.assert_close(model.experts_view(x0, x0), model(x0))


def test_router_receives_gradient_top1():
    model = tiny_moe(1).train()
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    assert model.router.weight.grad is not None
    assert model.router.weight.grad.abs().sum() > 0
    assert model.router.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("experts,topk", [(1, 1), (4, 5), (4, 0)])
def test_bad_routing_is_refused(experts, topk):
    with pytest.raises(ValueError):
        moe.build_moe("cnn", experts, topk, 10, (1, 8, 8))


def test_unknown_arch_is_refused():
    with pytest.raises(ValueError, match="unknown arch"):
        moe.build_moe("mlp", 2, 1, 10, (1, 8, 8))


# ----------------------------------------------------------------------------- balance loss and ST loss

def test_balance_loss_is_one_for_uniform_routing():
    gates = torch.full((8, 4), 0.25)
    idx = torch.arange(8).remainder(4).unsqueeze(1)  # each expert gets 2 of 8 rows
    torch.testing.assert_close(moe.balance_loss(gates, idx), torch.tensor(1.0))
    collapsed = torch.zeros(8, 1, dtype=torch.long)
    gates_c = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)
    assert moe.balance_loss(gates_c, collapsed) > 2.5  # 4 * 1 * 0.7


@pytest.mark.parametrize("topk", [1, 2])
def test_st_loss_is_cross_entropy_plus_weighted_balance_loss(topk):
    model = tiny_moe(topk)
    x, y = batch(12)
    with torch.no_grad():
        gates, logits = by_hand(model, x)
        ce = -torch.log_softmax(topk_reference(gates, logits, topk), 1).gather(1, y[:, None]).mean()
        # E * sum_i (share of routing slots given to i) * (mean gate of i)
        shares = torch.zeros(model.num_experts)
        for row in gates.topk(topk, 1).indices:
            shares[row] += 1 / (len(x) * topk)
        balance = model.num_experts * (shares * gates.mean(0)).sum()
    torch.testing.assert_close(moe.st_loss(model, x, y, 0.0).detach(), ce, rtol=0, atol=1e-5)
    torch.testing.assert_close(moe.st_loss(model, x, y, 0.5).detach(), ce + 0.5 * balance, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- the dual model

def dual_pair():
    return tiny_moe(1, seed=0), tiny_moe(1, seed=1)


@pytest.mark.parametrize("alpha", [0.49, 1.01, -0.5, 0.0, 2.0])
def test_dual_alpha_outside_range_is_refused(alpha):
    std, rob = dual_pair()
    with pytest.raises(ValueError, match="alpha"):
        moe.DualMoE(std, rob, alpha)


def test_dual_bad_combine_is_refused():
    std, rob = dual_pair()
    with pytest.raises(ValueError, match="combine"):
        moe.DualMoE(std, rob, 0.7, combine="max")


@torch.no_grad()
def test_dual_combinations():
    std, rob = dual_pair()
    std.eval(), rob.eval()
    x, _ = batch()
    fs, fr = std(x), rob(x)
    for alpha in (0.5, 0.7, 1.0):
        d = moe.DualMoE(std, rob, alpha).eval()
        torch.testing.assert_close(d(x), (1 - alpha) * fs + alpha * fr)
        p = moe.DualMoE(std, rob, alpha, combine="probs").eval()
        out = p(x)
        torch.testing.assert_close(out.exp().sum(1), torch.ones(len(x)))
        mixture = (1 - alpha) * F.softmax(fs, 1) + alpha * F.softmax(fr, 1)
        torch.testing.assert_close(out, mixture.log(), rtol=1e-4, atol=1e-5)
    for combine in ("logits", "probs"):  # alpha = 1 is the robust MoE alone
        d = moe.DualMoE(std, rob, 1.0, combine).eval()
        assert torch.equal(d(x).argmax(1), fr.argmax(1))
        torch.testing.assert_close(F.softmax(d(x), 1), F.softmax(fr, 1), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- expert builders, stand-alone import

def test_pretrained_vit_offline_is_a_clear_value_error(tmp_path, monkeypatch):
    # the hub unreachable: one probe of it, then the (empty) cache only, instead of a minute of download retries
    import socket
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))  # a warm cache elsewhere must not hide the error
    monkeypatch.setattr(moe, "HUB_OFFLINE", None)  # probed once a process: here, in this test
    looked_up = []  # every host name looked up: the first step of any connection
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: looked_up.append(host) or [])
    with pytest.raises(ValueError, match="--pretrained") as err:
        moe.vit_small(10, 3, pretrained=True)
    assert "\n" not in str(err.value) and "unreachable" in str(err.value)
    assert looked_up == [urlparse(hf.ENDPOINT).hostname], looked_up


def test_moe_and_attacks_stand_alone(standalone_import):
    proc = standalone_import.result()
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_pretrained_vit_reads_a_local_stand_in_offline_and_sees_224_pixels(tmp_path, monkeypatch):
    """With the hub unreachable, --pretrained reads the cache; the expert resizes 64 x 64 inputs to 224 x 224."""
    import huggingface_hub.constants as hf
    from conftest import vit_stand_in
    from safetensors.torch import load_file
    saved = load_file(str(vit_stand_in(tmp_path)))
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(moe, "HUB_OFFLINE", True)
    expert = moe.vit_small(200, 3, pretrained=True)
    assert torch.equal(expert.vit.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])
    assert expert.vit.head.out_features == 200 and expert.vit.pos_embed.shape[1] == 197  # 14 x 14 patches + class
    seen = []
    expert.vit.patch_embed.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    assert expert(torch.rand(2, 3, 64, 64)).shape == (2, 200) and seen == [(2, 3, 224, 224)]


def test_vit_moe_on_tinyimagenet_routes_224_pixel_inputs_and_its_experts_take_them_as_they_are(monkeypatch):
    """New TinyImageNet runs: the router is Linear(3 * 224 * 224, E), and the ViT expert no longer resizes."""
    from checkpoint import build_model_from_args
    model = build_model_from_args(dict(dataset="tinyimagenet", arch="vit_small", experts=2, topk=1))
    assert model.router.in_features == 3 * 224 * 224
    monkeypatch.setattr(moe.F, "interpolate", lambda *a, **k: pytest.fail("a 224 x 224 input was resized"))
    x = torch.rand(1, 3, 224, 224)
    assert torch.equal(model.experts[0](x), model.experts[0].vit(x))


def test_a_tinyimagenet_checkpoint_from_before_the_224_resize_rebuilds_at_64(tmp_path):
    """Its args are those of a new run; the router's width (E, 3 * 64 * 64) says the side it trained at."""
    import data
    from checkpoint import model_from_checkpoint
    info = data.dataset_info("tinyimagenet")
    args = dict(dataset="tinyimagenet", arch="cnn", experts=2, topk=1)
    old = moe.build_moe("cnn", 2, 1, 200, (3, 64, 64), info.mean, info.std)
    torch.save({"model": old.state_dict(), "args": args}, tmp_path / "single.pt")
    dual = moe.DualMoE(old, moe.build_moe("cnn", 2, 1, 200, (3, 64, 64), info.mean, info.std), 0.7)
    torch.save({"model": dual.state_dict(), "args": dict(kind="dual", std_args=args, rob_args=args, alpha=0.7)},
               tmp_path / "dual.pt")
    single, _ = model_from_checkpoint(str(tmp_path / "single.pt"))
    assert single.router.in_features == 3 * 64 * 64
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(single.eval()(x), old.eval()(x))  # the same weights, the same model
    rebuilt, _ = model_from_checkpoint(str(tmp_path / "dual.pt"))
    assert rebuilt.std.router.in_features == rebuilt.rob.router.in_features == 3 * 64 * 64
