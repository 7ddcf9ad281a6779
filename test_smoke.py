"""Smoke tests: models, attacks, loaders, the ST training loop, checkpoints, resume and the CLI's errors.

CPU only, tiny models, the bundled digits data; the whole file runs in a few minutes on 2 cores.
    python -m pytest -q
"""
import argparse
import csv
import json
import math
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attacks
import data
import moe
import train_common as tc
import train_st
from conftest import Launched

REPO = Path(__file__).resolve().parent
# what every tiny training run shares: a short per-epoch evaluation and a cheap training attack
TINY = ["--dataset", "digits", "--device", "cpu", "--bs", "128", "--eval-n", "40", "--eval-steps", "2", "--steps", "2"]
MEAN, STD = (0.3,), (0.4,)
# the models here are tiny: one intra-op thread is as fast, and far faster when the 2 cores are shared
torch.set_num_threads(1)


def st_argv(out, epochs=2, *extra):
    return [*TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def read_log(out):
    with open(Path(out) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def tiny_moe(topk=1, experts=3, seed=0, sharpen=10.0):
    """An untrained cnn MoE on 1x8x8 inputs with a non-trivial normalisation and a sharp router."""
    torch.manual_seed(seed)
    model = moe.build_moe("cnn", experts, topk, 10, (1, 8, 8), MEAN, STD)
    with torch.no_grad():
        model.router.weight.mul_(sharpen)  # gates far from uniform, so rows route differently
    return model


def batch(n=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    x[:, :, 0, :] = 0.0  # pixels on the box boundary, where projection must clamp
    x[:, :, -1, :] = 1.0
    return x, torch.randint(0, 10, (n,), generator=g)


def all_training(model):
    return all(m.training for m in model.modules())


# ----------------------------------------------------------------------------- hand-written references

def by_hand(model, x):
    """Gates (B, E) and every expert's logits (B, E, C), computed row by row from the SPEC formulas."""
    mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
    xn = (x - mean) / std
    gates = torch.softmax(xn.flatten(1) @ model.router.weight.T + model.router.bias, dim=1)
    logits = torch.stack([torch.cat([f(xn[b:b + 1]) for f in model.experts]) for b in range(len(x))])
    return gates, logits


def topk_reference(gates_route, logits_in, k):
    """Row by row: sum over the k largest gates of gate * expert logits (gates not renormalised)."""
    rows = []
    for b in range(len(gates_route)):
        top = torch.topk(gates_route[b], k).indices
        rows.append(sum(gates_route[b, i] * logits_in[b, i] for i in top.tolist()))
    return torch.stack(rows)


# ============================================================================ CLI subprocesses

def cli_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MOE_DEBUG"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(Path(tmp_path) / "hf"), OMP_NUM_THREADS="1")
    return env


# name -> (script and flags, words the one error line must contain); train runs get tiny flags so that a
# check that wrongly lets them through ends quickly instead of training for minutes
QUICK = ["--epochs", "1", "--eval-n", "20", "--eval-steps", "1", "--bs", "512", "--device", "cpu"]
BAD_TRAIN = {
    "missing_cifar": (["--dataset", "cifar10", "--data-dir", "/nonexistent"], ["/nonexistent", "--download"]),
    "unknown_arch": (["--arch", "mlp"], ["mlp"]),
    "unknown_dataset": (["--dataset", "mnist"], ["mnist"]),
    "topk_gt_experts": (["--topk", "5", "--experts", "4"], ["topk"]),
    "one_expert": (["--experts", "1"], ["experts"]),
    "negative_eps": (["--eps", "-1"], ["eps"]),
    "vit_pretrained_offline": (["--arch", "vit_small", "--pretrained"], ["--pretrained"]),
}
BAD_EVAL = {  # {tmp}: a folder holding good.pt (the ST run's checkpoint) and damaged copies of it
    "eval_truncated": (["--ckpt", "{tmp}/truncated.pt"], ["truncated.pt"]),
    "eval_random_bytes": (["--ckpt", "{tmp}/random.pt"], ["random.pt"]),
    "eval_wrong_shapes": (["--ckpt", "{tmp}/wrong_shapes.pt"], ["wrong_shapes.pt", "architecture"]),
    "eval_missing_ckpt": (["--ckpt", "{tmp}/nothing_here.pt"], ["nothing_here.pt"]),
    "eval_negative_eps": (["--ckpt", "{tmp}/good.pt", "--eps", "-0.1"], ["eps"]),
    "eval_no_ckpt": ([], ["--ckpt"]),
}
STANDALONE = ("import sys, moe, attacks\n"
              "bad = [m for m in ('torchvision', 'timm', 'sklearn', 'pyautoattack', 'autoattack', 'data',"
              " 'train_common') if m in sys.modules]\n"
              "assert not bad, bad\n")


@pytest.fixture(scope="session", autouse=True)
def early_cli(tmp_path_factory):
    """CLI runs that need no checkpoint, started with the session so they overlap the in-process tests."""
    tmp = tmp_path_factory.mktemp("cli_train")
    env = cli_env(tmp)
    runs = {name: Launched([sys.executable, str(REPO / "train_st.py"), *flags, *QUICK, "--out", str(tmp / name)],
                           tmp, env) for name, (flags, _) in BAD_TRAIN.items()}
    runs["standalone"] = Launched([sys.executable, "-c", STANDALONE], REPO, env)
    yield runs
    for r in runs.values():
        r.stop()


@pytest.fixture(scope="session")
def cli_runs(st_run, early_cli, tmp_path_factory):
    """eval.py runs on the ST checkpoint and on damaged copies of it, started together; plus early_cli's."""
    tmp = tmp_path_factory.mktemp("cli_eval")
    good = (st_run / "ckpt.pt").read_bytes()
    (tmp / "good.pt").write_bytes(good)
    (tmp / "truncated.pt").write_bytes(good[:len(good) // 2])
    (tmp / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    ckpt = torch.load(st_run / "ckpt.pt", map_location="cpu", weights_only=True)
    ckpt["args"]["experts"] = 3  # weights of 4 experts, args saying 3
    torch.save(ckpt, tmp / "wrong_shapes.pt")
    env, eval_py = cli_env(tmp), str(REPO / "eval.py")
    runs = {name: Launched([sys.executable, eval_py, *[a.format(tmp=tmp) for a in flags]], tmp, env)
            for name, (flags, _) in BAD_EVAL.items()}
    runs["eval_ok"] = Launched([sys.executable, eval_py, "--ckpt", str(tmp / "good.pt"), "--n", "60",
                                "--steps", "5", "--out", str(tmp / "eval_out")], tmp, env)
    runs["eval_dir"] = tmp / "eval_out"
    yield {**early_cli, **runs}
    for r in runs.values():
        if isinstance(r, Launched):
            r.stop()


# ============================================================================ 2. MoE forward = formulas

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


def test_balance_loss_is_one_for_uniform_routing():
    gates = torch.full((8, 4), 0.25)
    idx = torch.arange(8).remainder(4).unsqueeze(1)  # each expert gets 2 of 8 rows
    torch.testing.assert_close(moe.balance_loss(gates, idx), torch.tensor(1.0))
    collapsed = torch.zeros(8, 1, dtype=torch.long)
    gates_c = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(8, 1)
    assert moe.balance_loss(gates_c, collapsed) > 2.5  # 4 * 1 * 0.7


# ============================================================================ 1. PGD

@pytest.mark.parametrize("target", ["whole", "experts", "router", "smooth"])
def test_pgd_stays_in_ball_and_box_and_restores_mode(target):
    model = tiny_moe(1).train()
    x, y = batch()
    eps = 0.1
    seen = []  # the model's mode while the attack runs
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append(m.training))
             for m in (model.router, model.experts[0], model.experts[1])]
    try:
        x_adv = attacks.attack(model, x, y, target, eps=eps, step=0.03, steps=5)
    finally:
        for h in hooks:
            h.remove()
    assert seen and not any(seen), "the model must be in eval mode during the attack"
    assert all_training(model), "the attack must give the model its train mode back"
    assert not x_adv.requires_grad and x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (x_adv - x).abs().max() > eps / 2, "the attack did not move"


def test_pgd_restores_eval_mode_too():
    model = tiny_moe(1).eval()
    x, y = batch(8)
    attacks.pgd(model, x, y, 0.1, 0.03, 2)
    assert not any(m.training for m in model.modules())


def test_pgd_on_plain_callable_ascends_and_projects():
    # logits (s, -s) with s = sum of pixels: CE for class 0 grows as s shrinks, so one signed step of
    # size eps from x (no random start) must land exactly on clamp(x - eps, 0, 1).
    x, _ = batch(8)
    y = torch.zeros(8, dtype=torch.long)

    def objective(z):
        s = z.flatten(1).sum(1)
        return torch.stack([s, -s], 1)

    x_adv = attacks.pgd(objective, x, y, eps=0.1, step=0.1, steps=1, init="none")
    torch.testing.assert_close(x_adv, (x - 0.1).clamp(0, 1))
    x_adv = attacks.pgd(objective, x, y, eps=0.1, step=0.03, steps=10)  # random start, converges too
    torch.testing.assert_close(x_adv, (x - 0.1).clamp(0, 1))


def test_pgd_increases_the_loss():
    model = tiny_moe(1).eval()
    x, y = batch()
    x_adv = attacks.attack(model, x, y, "whole", eps=0.1, step=0.02, steps=10)
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


@pytest.mark.parametrize("target", ["whole", "experts", "router", "smooth"])
def test_eps_zero_is_the_identity_and_ra_equals_sa(target):
    model = tiny_moe(1).train()
    x, y = batch()
    x_adv = attacks.attack(model, x, y, target, eps=0.0, step=0.03, steps=5)
    assert torch.equal(x_adv, x)
    correct, same = attacks.evaluate_attack(model, x, y, target, "pgd", eps=0.0, step=0.03, steps=5)
    assert torch.equal(correct, attacks.clean_correct(model, x, y))
    assert same.all()
    assert all_training(model)


def test_negative_budget_is_refused():
    model = tiny_moe(1)
    x, y = batch(4)
    with pytest.raises(ValueError, match="eps"):
        attacks.attack(model, x, y, "whole", eps=-0.1)
    with pytest.raises(ValueError, match="target"):
        attacks.attack(model, x, y, "nowhere", eps=0.1)


@pytest.mark.parametrize("target", ["experts", "router"])
def test_metric_is_the_full_model_at_x_adv(target):
    model = tiny_moe(1).eval()
    x, y = batch()
    torch.manual_seed(5)
    correct, same = attacks.evaluate_attack(model, x, y, target, "pgd", eps=0.2, step=0.05, steps=3)
    torch.manual_seed(5)
    x_adv = attacks.attack(model, x, y, target, eps=0.2, step=0.05, steps=3)
    with torch.no_grad():
        assert torch.equal(correct, model(x_adv).argmax(1) == y)
        assert torch.equal(same, model.gates(x_adv).argmax(1) == model.gates(x).argmax(1))


@pytest.mark.parametrize("target", ["whole", "experts", "router"])
def test_autoattack_wrapper(target, monkeypatch):
    import pyautoattack
    made = []

    class QuickAutoAttack(pyautoattack.AutoAttack):
        """The reference AutoAttack, cut to 10 iterations of APGD-CE: the full standard suite takes minutes on
        CPU, and what is tested here is the wrapper (version asked for, targets, frozen parts, projection)."""

        def __init__(self, *a, **k):
            made.append(k)
            super().__init__(*a, **k)
            self.attacks_to_run = ["apgd-ce"]
            self.apgd.n_iter, self.apgd.n_restarts = 10, 1

    monkeypatch.setattr(pyautoattack, "AutoAttack", QuickAutoAttack)
    model = tiny_moe(1)
    x, _ = batch(6)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # all points correct, so AutoAttack attacks every one
    model.train()
    x_adv = attacks.autoattack(model, x, y, target, eps=0.2, bs=8)
    assert made and all(k.get("version") == "standard" and k.get("norm") == "Linf" and k.get("eps") == 0.2
                        for k in made)
    assert all_training(model)
    assert isinstance(x_adv, torch.Tensor) and x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= 0.2 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (model.eval()(x_adv).argmax(1) != y).any(), "AutoAttack broke no point of an untrained model"
    assert torch.equal(attacks.autoattack(model, x, y, target, eps=0.0), x)


# ============================================================================ 4. component targets

def grads(output, params):
    gs = torch.autograd.grad(output.sum(), list(params), allow_unused=True, retain_graph=True)
    return [g for g in gs]


def is_zero(gs):
    return all(g is None or g.abs().sum() == 0 for g in gs)


def test_experts_target_freezes_routing_at_clean_x():
    model = tiny_moe(2).eval()
    x, _ = batch()
    z = (x + 0.3 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    objective = attacks.target_objective(model, "experts", x)
    out = objective(z)
    torch.testing.assert_close(out, model.experts_view(x, z), rtol=1e-5, atol=1e-6)
    gx, _ = by_hand(model, x)
    _, fz = by_hand(model, z.detach())
    torch.testing.assert_close(out, topk_reference(gx, fz, 2), rtol=1e-4, atol=1e-5)
    assert is_zero(grads(out, model.router.parameters())), "experts attack must not go through the router"
    assert not is_zero(grads(out, [z])) and not is_zero(grads(out, model.experts.parameters()))
    before = objective(z).detach()
    with torch.no_grad():  # gates were frozen when the objective was built
        model.router.weight.add_(torch.randn_like(model.router.weight))
    torch.testing.assert_close(objective(z).detach(), before)


def test_router_target_freezes_experts_at_clean_x():
    model = tiny_moe(1).eval()
    x, _ = batch()
    z = (x + 0.3 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    objective = attacks.target_objective(model, "router", x)
    out = objective(z)
    gz, _ = by_hand(model, z.detach())
    _, fx = by_hand(model, x)
    torch.testing.assert_close(out, (gz.unsqueeze(-1) * fx).sum(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, model.router_view(z, x), rtol=1e-5, atol=1e-6)
    assert is_zero(grads(out, model.experts.parameters())), "router attack must not go through the experts"
    assert not is_zero(grads(out, model.router.parameters())) and not is_zero(grads(out, [z]))
    before = objective(z).detach()
    with torch.no_grad():  # expert outputs were frozen when the objective was built
        for p in model.experts.parameters():
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(objective(z).detach(), before)


def test_smooth_and_whole_targets():
    model = tiny_moe(1).eval()
    x, _ = batch(8)
    with torch.no_grad():
        torch.testing.assert_close(attacks.target_objective(model, "smooth", x)(x), model.smooth(x))
    assert attacks.target_objective(model, "whole", x) is model


# ============================================================================ 5. dual model

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


def test_dual_targets_attack_the_right_model():
    std, rob = dual_pair()
    d = moe.DualMoE(std, rob, 0.7)
    x, y = batch(8)
    assert attacks.target_objective(d, "dual", x) is d
    assert attacks.target_objective(d, "rmoe", x) is d.rob
    assert attacks.target_objective(d, "smoe", x) is d.std
    d.train()
    x_adv = attacks.attack(d, x, y, "rmoe", eps=0.1, step=0.05, steps=2)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and all_training(d)


def sweep(d, x, y, alphas, targets, eps=0.1):
    import eval as ev
    torch.manual_seed(0)
    args = argparse.Namespace(attack="pgd", steps=3, bs=len(x))
    return ev.measure_dual(d, x, y, alphas, targets, args, eps, eps / 2)


def test_dual_sweep_attacks_each_moe_once_and_judges_every_alpha():
    std, rob = dual_pair()
    d = moe.DualMoE(std, rob, 0.7).eval()
    x, _ = batch(32)
    with torch.no_grad():
        y = rob(x).argmax(1)  # labels the robust MoE gets right, so accuracies are not all 0
    rows = sweep(d, x, y, [0.5, 0.7, 1.0], ["rmoe", "smoe"])
    for target, key in (("rmoe", "ra_rmoe"), ("smoe", "ra_smoe")):
        torch.manual_seed(0)
        if target == "smoe":  # the sweep attacked rmoe first: replay it to reach the same random start
            attacks.attack(d, x, y, "rmoe", 0.1, 0.05, 3)
        x_adv = attacks.attack(d, x, y, target, 0.1, 0.05, 3)
        with torch.no_grad():
            for row in rows:
                d.alpha = row["alpha"]
                assert row[key] == 100 * (d(x_adv).argmax(1) == y).sum().item() / len(y), (target, row)
                assert row["sa"] == 100 * (d(x).argmax(1) == y).float().mean().item()
    assert rows[-1]["sa"] == 100.0 and rows[-1]["ra_rmoe"] < 100.0
    # at alpha = 1 the dual model is the robust MoE, so attacking it is attacking the robust MoE
    (at_one,) = sweep(d, x, y, [1.0], ["dual"])
    assert at_one["ra"] == rows[-1]["ra_rmoe"]


def test_pretrained_vit_offline_is_a_clear_value_error(tmp_path, monkeypatch):
    # the hub is unreachable here; offline mode and an empty cache make the failure immediate instead of
    # a minute of download retries (and keep a warm cache elsewhere from hiding the error path)
    import time
    import huggingface_hub.constants as hf
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.time()
    with pytest.raises(ValueError, match="--pretrained") as err:
        moe.vit_small(10, 3, 32, pretrained=True)
    assert "\n" not in str(err.value)
    assert time.time() - t0 < 30


# ============================================================================ 6. an ST run and eval.py

@pytest.fixture(scope="session")
def st_run(tmp_path_factory):
    """A 2-epoch digits ST run (default cyclic schedule); reference for resume and input for eval.py."""
    out = tmp_path_factory.mktemp("st")
    train_st.main(st_argv(out, 2))
    return out


def test_st_run_writes_args_log_and_checkpoint(st_run):
    assert sorted(p.name for p in st_run.iterdir()) == ["args.json", "ckpt.pt", "log.csv"]  # no temp files
    args = json.loads((st_run / "args.json").read_text())
    assert args["dataset"] == "digits" and args["epochs"] == 2 and args["method"] == "st"
    assert args["arch"] == "cnn" and args["experts"] == 4 and args["topk"] == 1
    assert args["eps"] == data.dataset_info("digits").eps
    rows = read_log(st_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert {"loss", "lr", "sa", "ra", "usage_0", "usage_1", "usage_2", "usage_3"} <= set(r)
        assert None not in r, "a row has more fields than the header"
        assert math.isfinite(float(r["loss"]))
        assert 0 <= float(r["ra"]) <= float(r["sa"]) <= 100
        assert abs(sum(float(r[f"usage_{i}"]) for i in range(4)) - 1) < 1e-3
    assert float(rows[1]["loss"]) < math.log(10) + 0.05  # it learned something (chance CE is log 10)


def test_checkpoint_format(st_run):
    ckpt = torch.load(st_run / "ckpt.pt", map_location="cpu", weights_only=True)
    assert {"model", "args", "epoch", "optimizer", "scheduler", "scaler", "rng", "metrics"} <= set(ckpt)
    assert ckpt["epoch"] == 1  # 0-based index of the last finished epoch
    assert ckpt["metrics"]["epoch"] == 2 and "sa" in ckpt["metrics"]
    model = tc.build_model_from_args(ckpt["args"])
    model.load_state_dict(ckpt["model"])  # strict
    model2, _ = tc.model_from_checkpoint(str(st_run / "ckpt.pt"))
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])


def test_checkpoint_of_another_architecture_is_refused(st_run):
    state = torch.load(st_run / "ckpt.pt", map_location="cpu", weights_only=True)["model"]
    for other in (moe.build_moe("cnn", 3, 1, 10, (1, 8, 8)), moe.build_moe("resnet18", 4, 1, 10, (1, 8, 8))):
        with pytest.raises(ValueError, match="another architecture") as err:
            tc.load_weights(other, state, "x.pt")
        assert "\n" not in str(err.value)


def test_resume_with_other_model_flags_is_refused(st_run, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(st_run, out)
    with pytest.raises(ValueError, match="experts"):
        train_st.main(st_argv(out, 3, "--experts", "3", "--resume"))


def test_eval_cli_on_st_checkpoint(st_run, cli_runs):
    proc = cli_runs["eval_ok"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("|")]
    assert lines[0].replace(" ", "").startswith("|sa|ra|ra_e|ra_r|worst|route_same_whole|")
    assert len(lines) == 3  # header, separator, one row
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert all(float(c) >= 0 for c in cells)
    res = json.loads((cli_runs["eval_dir"] / "eval_pgd.json").read_text())
    for key in ("sa", "ra", "ra_e", "ra_r", "worst", "route_same_whole", "route_same_experts",
                "route_same_router"):
        assert 0 <= res[key] <= 100, key
    assert res["n"] == 60 and res["steps"] == 5 and res["eps"] == data.dataset_info("digits").eps
    assert res["worst"] == min(res["ra"], res["ra_e"], res["ra_r"])
    assert res["ra"] <= res["sa"]
    assert float(cells[0]) == pytest.approx(res["sa"], abs=0.006)


# ============================================================================ 7. exact resume

def same_rows(row_a, row_b):
    return {k: v for k, v in row_a.items() if k != "train_seconds"} == \
           {k: v for k, v in row_b.items() if k != "train_seconds"}


def assert_same_final_state(dir_a, dir_b):
    a = torch.load(Path(dir_a) / "ckpt.pt", map_location="cpu", weights_only=True)
    b = torch.load(Path(dir_b) / "ckpt.pt", map_location="cpu", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, st in a["optimizer"]["opt"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, b["optimizer"]["opt"]["state"][k][name]), (k, name)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


class Interrupted(Exception):
    pass


def test_resume_after_interruption_is_exact(st_run, tmp_path, monkeypatch):
    """Stop a 2-epoch run right after epoch 1 is saved and logged; --resume must finish it bit-exactly."""
    log = tc.Run.log

    def log_then_stop(self, row):
        log(self, row)
        if row["epoch"] == 1:
            raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(tc.Run, "log", log_then_stop)
        with pytest.raises(Interrupted):
            train_st.main(st_argv(tmp_path, 2))
    assert len(read_log(tmp_path)) == 1
    train_st.main(st_argv(tmp_path, 2, "--resume"))
    ref, got = read_log(st_run), read_log(tmp_path)
    assert [r["epoch"] for r in got] == ["1", "2"]
    assert got[1]["loss"] == ref[1]["loss"] and got[1]["sa"] == ref[1]["sa"]
    assert same_rows(got[0], ref[0]) and same_rows(got[1], ref[1])
    assert_same_final_state(st_run, tmp_path)


def test_resume_extends_a_finished_run_exactly(tmp_path):
    """Run 2 epochs in A; run 1 epoch in B, then --epochs 2 --resume: the same epoch-2 row and weights.

    Uses --sched const: with the default cyclic schedule the learning rate of epoch 1 depends on --epochs,
    so a 1-epoch run and a 2-epoch run differ before any resume happens.
    """
    a, b = tmp_path / "a", tmp_path / "b"
    train_st.main(st_argv(a, 2, "--sched", "const"))
    train_st.main(st_argv(b, 1, "--sched", "const"))
    assert len(read_log(b)) == 1
    train_st.main(st_argv(b, 2, "--sched", "const", "--resume"))
    ra, rb = read_log(a), read_log(b)
    assert [r["epoch"] for r in rb] == ["1", "2"]
    assert rb[1]["loss"] == ra[1]["loss"] and rb[1]["sa"] == ra[1]["sa"]
    assert same_rows(ra[0], rb[0]) and same_rows(ra[1], rb[1])
    assert_same_final_state(a, b)
    assert json.loads((b / "args.json").read_text())["epochs"] == 2


def test_log_keeps_columns_when_evaluating_every_other_epoch(tmp_path):
    """--eval-every 2: epoch 1 has no sa/ra, epoch 2 has them; log.csv must still be a well-formed table."""
    train_st.main(st_argv(tmp_path, 2, "--eval-every", "2", "--bs", "512"))
    rows = read_log(tmp_path)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert None not in r, f"row with more fields than the header: {r}"
    assert rows[1].get("sa") not in (None, "") and rows[1].get("ra") not in (None, "")
    assert float(rows[1]["ra"]) <= float(rows[1]["sa"])


# ============================================================================ 10. NaN guard

def nan_loss_after(monkeypatch, good_calls, value=float("nan")):
    real, calls = train_st.st_loss, []

    def fake(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return torch.tensor(value, requires_grad=True) if len(calls) > good_calls else loss

    monkeypatch.setattr(train_st, "st_loss", fake)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_loss_stops_the_run_naming_the_last_checkpoint(tmp_path, monkeypatch, value):
    nan_loss_after(monkeypatch, 2, value)  # --bs 512: 2 steps per epoch, so epoch 2 step 1 goes bad
    with pytest.raises(tc.Divergence) as err:
        train_st.main(st_argv(tmp_path, 3, "--bs", "512"))
    msg = str(err.value)
    assert "epoch 2, step 1" in msg and str(tmp_path / "ckpt.pt") in msg and "(epoch 1)" in msg
    info = json.loads((tmp_path / "diverged.json").read_text())
    assert info["epoch"] == 2
    ckpt = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert len(read_log(tmp_path)) == 1


def test_nonfinite_loss_before_any_checkpoint(tmp_path, monkeypatch):
    nan_loss_after(monkeypatch, 1)
    with pytest.raises(tc.Divergence, match="no checkpoint was written yet"):
        train_st.main(st_argv(tmp_path, 1, "--bs", "512"))
    assert (tmp_path / "diverged.json").exists() and not (tmp_path / "ckpt.pt").exists()


def test_nonfinite_loss_cli_is_one_line_and_nonzero(tmp_path, monkeypatch, capsys):
    nan_loss_after(monkeypatch, 2)
    monkeypatch.delenv("MOE_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["train_st.py", *st_argv(tmp_path, 2, "--bs", "512")])
    with pytest.raises(SystemExit) as exit_:
        tc.cli(train_st.main)
    assert exit_.value.code not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert str(tmp_path / "ckpt.pt") in err[0] and "step" in err[0]


# ============================================================================ 9. bad input through the CLI

@pytest.mark.parametrize("name", [*BAD_TRAIN, *BAD_EVAL])
def test_bad_input_gives_one_line_error(cli_runs, name):
    proc = cli_runs[name].result()
    words = {**BAD_TRAIN, **BAD_EVAL}[name][1]
    assert proc.returncode is not None and proc.returncode > 0, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error:")
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_moe_and_attacks_stand_alone(early_cli):
    proc = early_cli["standalone"].result()
    assert proc.returncode == 0, proc.stderr[-2000:]


# ============================================================================ 8. datasets and loaders

def write_cifar(root, per_batch=2, n_test=3):
    """The python version of CIFAR-10. The real files are Python 2 pickles whose keys load (latin1) as str,
    which is what torchvision reads, so the keys here are str ('data', 'labels')."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        blob = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(blob, f, protocol=2)
        batches[name] = blob
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, f, protocol=2)
    return batches


def test_cifar10_loader_reads_python_batches(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar
    batches = write_cifar(tmp_path)
    # torchvision checks the md5 of every file against the real CIFAR-10; these tiny files cannot match
    with pytest.raises(FileNotFoundError, match="corrupted"):
        data.load_dataset("cifar10", str(tmp_path))
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    train, test = data.load_dataset("cifar10", str(tmp_path))
    assert isinstance(train, data.ImageTensors) and isinstance(test, data.ImageTensors)
    assert train.x.shape == (10, 3, 32, 32) and train.x.dtype == torch.uint8
    assert test.x.shape == (3, 3, 32, 32) and test.x.dtype == torch.uint8
    want_y = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert train.y.tolist() == want_y and test.y.tolist() == batches["test_batch"]["labels"]
    # a row of 'data' is 1024 red, 1024 green, 1024 blue values, row-major
    first = torch.from_numpy(batches["data_batch_1"]["data"][0]).view(3, 32, 32)
    assert torch.equal(train.x[0], first)
    last = torch.from_numpy(batches["test_batch"]["data"][2]).view(3, 32, 32)
    assert torch.equal(test.x[2], last)
    px = train.pixels(torch.arange(10))
    assert px.dtype == torch.float32 and px.min() >= 0 and px.max() <= 1


def test_missing_datasets_say_where_they_looked(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset("cifar10", str(tmp_path / "none"))
    assert str(tmp_path / "none") in str(err.value) and "--download" in str(err.value)
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200"):
        data.load_dataset("tinyimagenet", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="ImageFolder"):
        data.load_dataset("imagenet", str(tmp_path / "none"))
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("mnist", str(tmp_path))


def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error
    import torchvision.datasets.cifar as tv_cifar
    import torchvision.datasets.utils as tv_utils

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(FileNotFoundError, match="could not download CIFAR-10"):
        data.load_dataset("cifar10", str(tmp_path), download=True)
    with pytest.raises(FileNotFoundError, match="could not download TinyImageNet"):
        data.load_dataset("tinyimagenet", str(tmp_path), download=True)


def save_jpeg(path, color=None, gray=None, size=(64, 64)):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", size, gray) if gray is not None else Image.new("RGB", size, color)
    img.save(path, "JPEG", quality=95)


def test_tinyimagenet_loader_and_cache(tmp_path, monkeypatch):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n09999999", "n01111111"]  # not in sorted order: labels must follow wnids.txt
    colors = {wnids[0]: (200, 30, 30), wnids[1]: (30, 30, 200)}
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for i in range(2):
            save_jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG", colors[w])
    save_jpeg(root / "train" / wnids[1] / "images" / f"{wnids[1]}_2.JPEG", gray=120)  # a grayscale file
    val = [("val_0.JPEG", wnids[1]), ("val_1.JPEG", wnids[0]), ("val_2.JPEG", wnids[1])]
    for name, w in val:
        save_jpeg(root / "val" / "images" / name, colors[w])
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{w}\t0\t0\t63\t63\n" for name, w in val))

    train, test = data.load_dataset("tinyimagenet", str(tmp_path))
    assert train.x.shape == (5, 3, 64, 64) and train.x.dtype == torch.uint8
    assert test.x.shape == (3, 3, 64, 64)
    assert train.y.tolist() == [0, 0, 1, 1, 1]
    assert test.y.tolist() == [1, 0, 1]
    for x, y in [*zip(train.x[:4], train.y[:4]), *zip(test.x, test.y)]:
        mean_rgb = x.float().mean((1, 2))
        assert (mean_rgb - torch.tensor(colors[wnids[y]], dtype=torch.float)).abs().max() < 8
    gray = train.x[4].float()
    assert (gray[0] - gray[1]).abs().max() <= 1 and (gray[0] - gray[2]).abs().max() <= 1
    assert abs(gray.mean() - 120) < 4
    assert (root / "uint8_cache.pt").exists()

    def no_decoding(path):
        raise AssertionError("the uint8 cache should have been used")

    monkeypatch.setattr(data, "read_rgb", no_decoding)
    train2, test2 = data.load_dataset("tinyimagenet", str(tmp_path))
    assert torch.equal(train2.x, train.x) and torch.equal(train2.y, train.y)
    assert torch.equal(test2.x, test.x) and torch.equal(test2.y, test.y)


def test_imagenet_imagefolder_loader(tmp_path):
    for split in ("train", "val"):
        for c, color in (("cat", (250, 10, 10)), ("dog", (10, 250, 10))):
            for i in range(2):
                save_jpeg(tmp_path / split / c / f"{c}_{i}.JPEG", color, size=(300, 250))
    train, val = data.load_dataset("imagenet", str(tmp_path))
    assert val.classes == ["cat", "dog"] and val.targets == [0, 0, 1, 1]
    for ds in (train, val):
        x, y = ds[3]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
        assert x.min() >= 0 and x.max() <= 1
    x, y = data.test_subset(val, 0)
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 1, 1]
    assert (x[0].mean((1, 2)) - torch.tensor([250, 10, 10]) / 255).abs().max() < 0.05
    loader = data.train_loader(train, data.dataset_info("imagenet"), 2, torch.device("cpu"), seed=0, workers=0)
    assert len(loader) == 2
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 3, 224, 224) and yb.shape == (2,)


def test_digits_split():
    train, test = data.load_dataset("digits")
    assert len(train) == 1437 and len(test) == 360
    assert train.x.shape == (1437, 1, 8, 8) and train.x.dtype == torch.uint8
    for c in range(10):
        n_train, n_test = int((train.y == c).sum()), int((test.y == c).sum())
        assert abs(n_test - 0.2 * (n_train + n_test)) <= 1, (c, n_train, n_test)  # stratified
    px = train.pixels(torch.arange(len(train)))
    assert px.min() == 0 and px.max() == 1
    train2, test2 = data.load_dataset("digits")  # a fixed split
    assert torch.equal(train.y, train2.y) and torch.equal(test.x, test2.x)
    info = data.dataset_info("digits")
    assert abs(px.mean().item() - info.mean[0]) < 0.01 and abs(px.std().item() - info.std[0]) < 0.01


def id_images(n=40, shape=(3, 8, 8)):
    """Image i is constant with value i (uint8), label i: the label tells which image a batch row is."""
    x = torch.arange(1, n + 1, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, *shape).contiguous()
    return data.ImageTensors(x, torch.arange(1, n + 1), scale=float(n))


def batches_of(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_tensor_loader_is_seeded_by_seed_and_epoch():
    info = data.DatasetInfo(40, (3, 8, 8), (0.5,) * 3, (0.25,) * 3, 0.1, 2, True)
    loader = data.TensorLoader(id_images(), 8, torch.device("cpu"), True, info, seed=3)
    assert len(loader) == 5
    first = batches_of(loader, 4)
    torch.manual_seed(123)  # the global RNG must not matter
    torch.rand(10)
    again = batches_of(loader, 4)
    assert len(first) == 5
    for (x1, y1), (x2, y2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    other = batches_of(loader, 5)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other)), "epochs must reshuffle"
    other_seed = batches_of(data.TensorLoader(id_images(), 8, torch.device("cpu"), True, info, seed=4), 4)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other_seed))
    ys = torch.cat([y for _, y in first])
    assert sorted(ys.tolist()) == list(range(1, 41))  # one epoch is a permutation
    for x, y in first:  # augmentation keeps shape, range and the row's own image
        assert x.shape == (8, 3, 8, 8) and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        centre = x[:, :, 2:-2, 2:-2]  # padding 2 only ever moves zeros into the border
        assert torch.equal(centre, (y.float() / 40).view(-1, 1, 1, 1).expand_as(centre))
    assert any((x == 0).any() for x, _ in first), "random crop with padding never shifted an image"


def test_tensor_loader_without_augmentation_and_drop_last():
    loader = data.TensorLoader(id_images(n=20), 8, torch.device("cpu"), shuffle=False, info=None)
    got = list(loader)
    assert len(loader) == len(got) == 2
    assert torch.equal(torch.cat([y for _, y in got]), torch.arange(1, 17))
    assert torch.equal(got[0][0], id_images(n=20).pixels(torch.arange(8)))
    keep = data.TensorLoader(id_images(n=20), 8, torch.device("cpu"), shuffle=False, drop_last=False)
    assert len(keep) == 3 and sum(len(y) for _, y in keep) == 20
