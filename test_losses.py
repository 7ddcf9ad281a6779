"""losses.py against hand computations: TRADES, RT-ER (every flag), RT-ER with beta = 0 is AT, and the
AdvMoE partial steps (router or experts alone) and the AdvMoE code's objective (joint attack, router loss)."""
import copy
import types

import pytest
import torch
import torch.nn.functional as F

import attacks
import losses
import moe
import train_common as tc
from conftest import batch, changed, hand_expert, hand_gates, hand_moe, snapshot, tiny_moe

EPS, STEP, STEPS = 0.3, 0.1, 3  # a large budget: the perturbed outputs move far from the clean ones
ATTACK = dict(eps=EPS, step_size=STEP, steps=STEPS)
BALANCE, BETA = 0.5, 6.0


def sharp_moe(experts, topk):
    return tiny_moe(topk=topk, experts=experts, sharp_heads=True)


def small_batch(n=12):
    return batch(n, box_edges=False)


def hand_ce(logits, y):
    return -torch.log(torch.softmax(logits, 1)).gather(1, y[:, None]).mean()


def hand_kl(clean_logits, adv_logits):
    """sum over rows and classes of p_clean * (log p_clean - log p_adv)."""
    p, q = torch.softmax(clean_logits, 1), torch.softmax(adv_logits, 1)
    return (p * (torch.log(p) - torch.log(q))).sum()


def hand_pgd(objective, x, y, eps=EPS, step=STEP, steps=STEPS):
    """l_inf PGD written out: uniform start, signed ascent of the summed CE, projection on ball and box."""
    def proj(z):
        return torch.min(torch.max(z, x - eps), x + eps).clamp(0.0, 1.0)
    z = proj(x + torch.empty_like(x).uniform_(-eps, eps))
    for _ in range(steps):
        z.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(objective(z), y, reduction="sum"), z)
        z = proj(z.detach() + step * g.sign())
    return z.detach()


def rows_by_expert(model, z, which):
    """Per row b, the logits of expert which[b] on z[b] (each expert run on its own rows)."""
    out = None
    for i in range(model.num_experts):
        rows = which == i
        if rows.any():
            y = hand_expert(model, i, z[rows])
            if out is None:
                out = y.new_zeros(len(z), y.shape[1])
            out[rows] = y
    return out


def hand_at(model, x_adv, y):
    """CE(F(x + d), y) + balance * L_bal at x + d."""
    logits, gates, idx = hand_moe(model, x_adv)
    return hand_ce(logits, y) + BALANCE * moe.balance_loss(gates, idx)


# ----------------------------------------------------------------------------- TRADES

@pytest.mark.parametrize("topk,experts", [(1, 3), (2, 4)])
def test_trades_loss_matches_hand_computation(topk, experts):
    model = sharp_moe(experts, topk)
    x, y = small_batch()
    torch.manual_seed(5)
    got = losses.trades_loss(model, x, y, **ATTACK, beta=BETA, balance=BALANCE)
    torch.manual_seed(5)
    x_adv = attacks.trades_perturb(model, x, EPS, STEP, STEPS)
    with torch.no_grad():
        logits, gates, idx = hand_moe(model, x)
        adv_logits, _, _ = hand_moe(model, x_adv)
        kl = hand_kl(logits, adv_logits) / len(x)
        expected = hand_ce(logits, y) + BETA * kl + BALANCE * moe.balance_loss(gates, idx)
    assert kl > 1e-4, "the TRADES perturbation did not move the output: the test would not see the KL term"
    torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-5)
    # the perturbation maximises the KL: it beats its own starting point (x + 0.001 N(0, 1))
    torch.manual_seed(5)
    x_start = attacks.project(x + 0.001 * torch.randn_like(x), x, EPS)
    with torch.no_grad():
        assert hand_kl(logits, hand_moe(model, x_start)[0]) < 0.5 * hand_kl(logits, adv_logits)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


# ----------------------------------------------------------------------------- RT-ER

RTER_CASES = [  # (experts, topk, kl_attack, kl_experts, second_on)
    (3, 1, "shared", "second", "clean"),
    (3, 1, "separate", "second", "clean"),
    (3, 1, "shared", "all", "clean"),
    (3, 1, "separate", "all", "clean"),
    (3, 1, "separate", "second", "adv"),
    (4, 2, "separate", "second", "clean"),
    (4, 2, "shared", "second", "clean"),
]


def rter_by_hand(model, x, y, kl_attack, kl_experts, second_on, seed, rank=None):
    """The RT-ER loss from its definition; rank: which gate rank is f_2 (default topk, the best unselected)."""
    rank = model.topk if rank is None else rank
    E = model.num_experts
    torch.manual_seed(seed)
    x_adv = hand_pgd(model, x, y)  # PGD on the whole MoE
    with torch.no_grad():
        second = hand_gates(model, x if second_on == "clean" else x_adv).argsort(1, descending=True)[:, rank]
    if kl_experts == "second":
        def out(z):
            return rows_by_expert(model, z, second)
        labels = y
    else:  # every expert on its own copy of the batch, each copy attacked on its own expert
        every = torch.arange(E).repeat(len(x))

        def out(z):
            return rows_by_expert(model, z, every)
        labels = y.repeat_interleave(E)
    x_in = x if kl_experts == "second" else x.repeat_interleave(E, 0)
    x_kl = x_adv if kl_experts == "second" else x_adv.repeat_interleave(E, 0)
    x_kl = x_kl if kl_attack == "shared" else hand_pgd(out, x_in, labels)
    with torch.no_grad():
        base = hand_at(model, x_adv, y)
        if kl_experts == "second":
            kl = hand_kl(out(x), out(x_kl)) / len(x)
        else:
            kl = sum(hand_kl(hand_expert(model, i, x), hand_expert(model, i, x_kl[i::E])) for i in range(E)) / len(x)
    return base + BETA * kl, kl, second, x_kl


@pytest.mark.parametrize("experts,topk,kl_attack,kl_experts,second_on", RTER_CASES)
def test_rter_loss_matches_hand_computation(experts, topk, kl_attack, kl_experts, second_on):
    model = sharp_moe(experts, topk)
    x, y = small_batch()
    flags = dict(kl_attack=kl_attack, kl_experts=kl_experts, second_on=second_on)
    torch.manual_seed(7)
    got = losses.rter_loss(model, x, y, **ATTACK, beta=BETA, balance=BALANCE, **flags)
    expected, kl, second, x_kl = rter_by_hand(model, x, y, **flags, seed=7)
    torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-5)
    assert BETA * kl > 1e-3, "the KL term is negligible: the test would not see it"
    copies = len(x_kl) // len(x)
    assert (x_kl - x.repeat_interleave(copies, 0)).abs().max() <= EPS + 1e-6 and x_kl.min() >= 0 and x_kl.max() <= 1
    if kl_experts == "all" and kl_attack == "separate":  # each expert's copy of a point is attacked on its own
        assert copies == experts and not torch.equal(x_kl[0::experts], x_kl[1::experts])
    if kl_experts == "second":
        assert len(second.unique()) > 1, "every row has the same f_2: the per-row choice would go untested"
        # the choice of f_2 matters: the expert ranked just above or below it gives another loss
        for rank in (topk - 1, topk + 1):
            if rank < experts:
                other = rter_by_hand(model, x, y, **flags, seed=7, rank=rank)[0]
                assert (other - expected).abs() > 1e-4


def test_rter_flags_change_the_loss():
    """shared vs separate, second vs all: each flag gives a different loss on the same batch and seed."""
    model = sharp_moe(3, 1)
    x, y = small_batch()
    values = {}
    for kl_attack in ("shared", "separate"):
        for kl_experts in ("second", "all"):
            torch.manual_seed(3)
            values[kl_attack, kl_experts] = losses.rter_loss(model, x, y, **ATTACK, beta=BETA, balance=BALANCE,
                                                             kl_experts=kl_experts, kl_attack=kl_attack).item()
    assert len({round(v, 5) for v in values.values()}) == 4, values


@pytest.mark.parametrize("kl_attack,kl_experts", [("separate", "second"), ("shared", "all")])
@pytest.mark.parametrize("topk,experts", [(1, 3), (2, 4)])
def test_rter_with_beta_zero_is_at(kl_attack, kl_experts, topk, experts):
    model = sharp_moe(experts, topk)
    x, y = small_batch()
    torch.manual_seed(11)
    rter = losses.rter_loss(model, x, y, **ATTACK, beta=0.0, balance=BALANCE, kl_experts=kl_experts,
                            kl_attack=kl_attack)
    torch.manual_seed(11)
    at = losses.at_loss(model, x, y, **ATTACK, balance=BALANCE)
    assert torch.equal(rter, at)
    # and the AT loss is CE(F(x + d)) + balance at x + d, d from PGD on the whole MoE
    torch.manual_seed(11)
    x_adv = hand_pgd(model, x, y)
    with torch.no_grad():
        torch.testing.assert_close(at.detach(), hand_at(model, x_adv, y), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- AdvMoE partial steps

def test_advmoe_steps_touch_only_their_own_parameters():
    model = sharp_moe(3, 1)
    x, y = small_batch(16)
    flags = types.SimpleNamespace(opt="adam", lr=1e-2, wd=0.0)
    # the two optimisers and the update step exactly as train_at.main and Run.update use them
    opt_router = tc.make_optimizer(model.router.parameters(), flags)
    opt_experts = tc.make_optimizer(model.experts.parameters(), flags)

    router0, experts0 = snapshot(model.router), snapshot(model.experts)
    torch.manual_seed(0)
    tc.backward_and_step(losses.at_loss(model, x, y, **ATTACK, balance=BALANCE), model, [opt_router])
    assert all(changed(router0, model.router)), "the router step did not update the router"
    assert not any(changed(experts0, model.experts)), "the router step changed expert parameters"

    router1, experts1 = snapshot(model.router), [snapshot(e) for e in model.experts]
    torch.manual_seed(1)
    with torch.no_grad():  # the experts the AT loss routes to: top-1 at x_adv
        routed = set(model.gates(attacks.attack(model, x, y, "whole", EPS, STEP, STEPS)).argmax(1).tolist())
    torch.manual_seed(1)
    tc.backward_and_step(losses.at_loss(model, x, y, **ATTACK, balance=BALANCE), model, [opt_experts])
    assert not any(changed(router1, model.router)), "the expert step changed the router"
    moved = {i for i, (s, e) in enumerate(zip(experts1, model.experts)) if any(changed(s, e))}
    assert moved == routed, (moved, routed)  # every expert given rows is updated, the others are not
    assert moved


# ----------------------------------------------------------------------------- AdvMoE, the public code's objective

def small_moe_cnn(seed=0):
    from moe_cnn import build_moe_cnn
    torch.manual_seed(seed)
    return build_moe_cnn("moe_cnn", 3, 0.5, 10, (1, 8, 8)).eval()


def test_advmoe_joint_attack_is_trades_attack_when_the_router_ignores_its_input():
    """The router's KL adds nothing to the attack's gradient when its scores do not depend on x: the same steps as
    TRADES' attack from the same start. With a live router it stays in the ball and raises the summed KLs."""
    model, x = small_moe_cnn(), torch.rand(16, 1, 8, 8)
    model.router.net[-1].weight.data.zero_()
    torch.manual_seed(3)
    joint = losses.advmoe_perturb(model, x, EPS, STEP, STEPS)
    torch.manual_seed(3)
    assert torch.equal(joint, attacks.trades_perturb(model, x, EPS, STEP, STEPS))

    model = small_moe_cnn(1)
    x_adv = losses.advmoe_perturb(model, x, EPS, STEP, STEPS)
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1

    def kls(z):
        with torch.no_grad():
            return sum(hand_kl(f(x), f(z)) for f in (model, model.router_logits))
    assert kls(x_adv) > kls(x + 0.001 * torch.randn_like(x)).clamp(min=0)


def test_advmoe_router_loss_is_ce_to_label_mod_e_plus_router_kl_and_trains_the_router_alone():
    model, (x, y) = small_moe_cnn().train(), (torch.rand(12, 1, 8, 8), torch.arange(12) % 10)
    with torch.no_grad():  # no attack: x' = x, the KL is 0
        loss = losses.advmoe_router_loss(model, x, y, EPS, STEP, 0, alpha=6.0, balance=0.0)
        torch.testing.assert_close(loss, hand_ce(model.router_logits(x), y % 3))
    ref = copy.deepcopy(model)  # the loss's train-mode passes move BatchNorm's running statistics
    torch.manual_seed(0)
    loss = losses.advmoe_router_loss(model, x, y, EPS, STEP, STEPS, alpha=6.0, balance=BALANCE)
    torch.manual_seed(0)
    x_adv = losses.advmoe_perturb(ref, x, EPS, STEP, STEPS)
    with torch.no_grad():
        z, z_adv = ref.router_logits(x), ref.router_logits(x_adv)
        gates = torch.softmax(z, 1)
        hand = hand_ce(z, y % 3) + 6.0 * hand_kl(z, z_adv) / 12 + BALANCE * moe.balance_loss(gates, z.argmax(1, True))
    torch.testing.assert_close(loss.detach(), hand, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(q.grad is not None for q in model.router.parameters())
    assert all(q.grad is None for n, q in model.named_parameters() if not n.startswith("router."))


def test_advmoe_backbone_loss_is_trades_at_the_joint_attacks_point():
    model, (x, y) = small_moe_cnn().train(), (torch.rand(12, 1, 8, 8), torch.arange(12) % 10)
    ref = copy.deepcopy(model)
    torch.manual_seed(0)
    loss = losses.advmoe_backbone_loss(model, x, y, EPS, STEP, STEPS, beta=BETA, balance=BALANCE)
    torch.manual_seed(0)
    x_adv = losses.advmoe_perturb(ref, x, EPS, STEP, STEPS)
    with torch.no_grad():
        logits, gates, idx = ref.forward_with_routing(x)
        hand = hand_ce(logits, y) + BETA * hand_kl(logits, ref(x_adv)) / 12 + BALANCE * moe.balance_loss(gates, idx)
    torch.testing.assert_close(loss.detach(), hand, rtol=1e-5, atol=1e-6)
