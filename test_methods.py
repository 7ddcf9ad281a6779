"""Tests of the training methods (SPEC sections 5-6) and their command lines.

TRADES and RT-ER losses against hand computations, RT-ER with beta = 0 against AT, which parameters the
AdvMoE and JTDMoE steps may touch, AutoAttack against PGD, the divergence guard, and the train_at /
train_rter / train_jtdmoe / eval CLIs. CPU only, tiny models, the bundled digits data.
    python -m pytest -q test_methods.py
"""
import csv
import json
import math
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import attacks
import data
import moe
import train_at
import train_common as tc
import train_jtdmoe
import train_rter
import train_st
from conftest import Launched

REPO = Path(__file__).resolve().parent
# every tiny training run: one epoch, a 2-step training attack and a short per-epoch evaluation
TINY = ["--dataset", "digits", "--device", "cpu", "--epochs", "1", "--eval-n", "40", "--eval-steps", "2",
        "--steps", "2"]
torch.set_num_threads(1)  # tiny models: one thread is as fast, and far faster when the 2 cores are shared


# ============================================================================ helpers

def tiny_moe(experts=3, topk=1, seed=0):
    """An untrained cnn MoE on 1x8x8 inputs with a sharp router (rows rank the experts differently) and
    sharp expert heads (outputs that move under attack, so KL terms are far above rounding)."""
    torch.manual_seed(seed)
    model = moe.build_moe("cnn", experts, topk, 10, (1, 8, 8), (0.3,), (0.4,))
    with torch.no_grad():
        model.router.weight.mul_(10.0)
        for expert in model.experts:
            expert.head.weight.mul_(10.0)
    return model


def batch(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def hand_gates(model, x):
    """a(x) = softmax(W (x - mean) / std + b), written out."""
    xn = (x - model.normalize.mean) / model.normalize.std
    return torch.softmax(xn.flatten(1) @ model.router.weight.T + model.router.bias, dim=1)


def hand_expert(model, i, x):
    return model.experts[i]((x - model.normalize.mean) / model.normalize.std)


def hand_moe(model, x):
    """(F(x), gates, top-k indices) with F(x) = sum over the k largest gates of a_i(x) f_i(x), written out."""
    gates = hand_gates(model, x)
    idx = gates.argsort(1, descending=True)[:, :model.topk]
    logits = torch.stack([hand_expert(model, i, x) for i in range(model.num_experts)], 1)  # (B, E, C)
    chosen = logits.gather(1, idx[:, :, None].expand(-1, -1, logits.shape[2]))
    return (gates.gather(1, idx)[:, :, None] * chosen).sum(1), gates, idx


def hand_ce(logits, y):
    return -torch.log(torch.softmax(logits, 1)).gather(1, y[:, None]).mean()


def hand_kl(clean_logits, adv_logits):
    """sum over rows and classes of p_clean * (log p_clean - log p_adv)."""
    p, q = torch.softmax(clean_logits, 1), torch.softmax(adv_logits, 1)
    return (p * (torch.log(p) - torch.log(q))).sum()


def hand_pgd(objective, x, y, eps, step, steps):
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


def loss_args(**kw):
    base = dict(eps=0.3, step_size=0.1, steps=3, balance=0.5, beta=6.0, trades_beta=6.0, kl_experts="second",
                kl_attack="separate", second_on="clean")
    base.update(kw)
    return types.SimpleNamespace(**base)


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(b, p.detach()) for b, p in zip(before, module.parameters())]


def read_log(out):
    with open(Path(out) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ============================================================================ 1. TRADES

@pytest.mark.parametrize("topk,experts", [(1, 3), (2, 4)])
def test_trades_loss_matches_hand_computation(topk, experts):
    model = tiny_moe(experts, topk)
    x, y = batch()
    args = loss_args()
    torch.manual_seed(5)
    got = train_at.trades_loss(model, x, y, args)
    torch.manual_seed(5)
    x_adv = attacks.trades_perturb(model, x, args.eps, args.step_size, args.steps)
    with torch.no_grad():
        logits, gates, idx = hand_moe(model, x)
        adv_logits, _, _ = hand_moe(model, x_adv)
        kl = hand_kl(logits, adv_logits) / len(x)
        expected = hand_ce(logits, y) + args.trades_beta * kl + args.balance * moe.balance_loss(gates, idx)
    assert kl > 1e-4, "the TRADES perturbation did not move the output: the test would not see the KL term"
    torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-5)
    # the perturbation maximises the KL: it beats its own starting point (x + 0.001 N(0, 1))
    torch.manual_seed(5)
    x_start = attacks.project(x + 0.001 * torch.randn_like(x), x, args.eps)
    with torch.no_grad():
        assert hand_kl(logits, hand_moe(model, x_start)[0]) < 0.5 * hand_kl(logits, adv_logits)
    assert (x_adv - x).abs().max() <= args.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


# ============================================================================ 2. RT-ER

RTER_CASES = [  # (experts, topk, kl_attack, kl_experts, second_on)
    (3, 1, "shared", "second", "clean"),
    (3, 1, "separate", "second", "clean"),
    (3, 1, "shared", "all", "clean"),
    (3, 1, "separate", "all", "clean"),
    (3, 1, "separate", "second", "adv"),
    (4, 2, "separate", "second", "clean"),
    (4, 2, "shared", "second", "clean"),
]


def rter_by_hand(model, x, y, args, seed, rank=None):
    """The RT-ER loss from its definition; rank: which gate rank is f_2 (default topk, the best unselected)."""
    rank = model.topk if rank is None else rank
    E = model.num_experts
    torch.manual_seed(seed)
    x_adv = hand_pgd(model, x, y, args.eps, args.step_size, args.steps)  # PGD on the whole MoE
    with torch.no_grad():
        route = x if args.second_on == "clean" else x_adv
        second = hand_gates(model, route).argsort(1, descending=True)[:, rank]
    if args.kl_experts == "second":
        def out(z):
            return rows_by_expert(model, z, second)
        labels = y
    else:
        def out(z):
            return torch.stack([hand_expert(model, i, z) for i in range(E)], 1).flatten(0, 1)
        labels = y.repeat_interleave(E)
    x_kl = x_adv if args.kl_attack == "shared" else hand_pgd(out, x, labels, args.eps, args.step_size, args.steps)
    with torch.no_grad():
        logits, gates, idx = hand_moe(model, x_adv)
        base = hand_ce(logits, y) + args.balance * moe.balance_loss(gates, idx)
        if args.kl_experts == "second":
            kl = hand_kl(out(x), out(x_kl)) / len(x)
        else:
            kl = sum(hand_kl(hand_expert(model, i, x), hand_expert(model, i, x_kl)) for i in range(E)) / len(x)
    return base + args.beta * kl, base, kl, second, x_kl


@pytest.mark.parametrize("experts,topk,kl_attack,kl_experts,second_on", RTER_CASES)
def test_rter_loss_matches_hand_computation(experts, topk, kl_attack, kl_experts, second_on):
    model = tiny_moe(experts, topk)
    x, y = batch()
    args = loss_args(kl_attack=kl_attack, kl_experts=kl_experts, second_on=second_on)
    torch.manual_seed(7)
    got = train_rter.rter_loss(model, x, y, args)
    expected, base, kl, second, x_kl = rter_by_hand(model, x, y, args, seed=7)
    torch.testing.assert_close(got.detach(), expected, rtol=0, atol=1e-5)
    assert args.beta * kl > 1e-3, "the KL term is negligible: the test would not see it"
    assert (x_kl - x).abs().max() <= args.eps + 1e-6 and x_kl.min() >= 0 and x_kl.max() <= 1
    if kl_experts == "second":
        assert len(second.unique()) > 1, "every row has the same f_2: the per-row choice would go untested"
        # the choice of f_2 matters: the expert ranked just above or below it gives another loss
        for rank in (topk - 1, topk + 1):
            if rank < experts:
                other = rter_by_hand(model, x, y, args, seed=7, rank=rank)[0]
                assert (other - expected).abs() > 1e-4


def test_rter_flags_change_the_loss():
    """shared vs separate, second vs all: each flag gives a different loss on the same batch and seed."""
    model = tiny_moe(3, 1)
    x, y = batch()
    values = {}
    for kl_attack in ("shared", "separate"):
        for kl_experts in ("second", "all"):
            torch.manual_seed(3)
            values[kl_attack, kl_experts] = train_rter.rter_loss(
                model, x, y, loss_args(kl_attack=kl_attack, kl_experts=kl_experts)).item()
    assert len({round(v, 5) for v in values.values()}) == 4, values


# ============================================================================ 3. RT-ER with beta = 0 is AT

@pytest.mark.parametrize("kl_attack,kl_experts", [("separate", "second"), ("shared", "all")])
@pytest.mark.parametrize("topk,experts", [(1, 3), (2, 4)])
def test_rter_with_beta_zero_is_at(kl_attack, kl_experts, topk, experts):
    model = tiny_moe(experts, topk)
    x, y = batch()
    args = loss_args(beta=0.0, kl_attack=kl_attack, kl_experts=kl_experts)
    torch.manual_seed(11)
    rter = train_rter.rter_loss(model, x, y, args)
    torch.manual_seed(11)
    at = train_at.at_loss(model, x, y, args)
    assert torch.equal(rter, at)
    # and the AT loss is CE(F(x + d)) + balance at x + d, d from PGD on the whole MoE
    torch.manual_seed(11)
    x_adv = hand_pgd(model, x, y, args.eps, args.step_size, args.steps)
    with torch.no_grad():
        logits, gates, idx = hand_moe(model, x_adv)
        torch.testing.assert_close(at.detach(), hand_ce(logits, y) + args.balance * moe.balance_loss(gates, idx),
                                   rtol=0, atol=1e-5)


# ============================================================================ 4. AdvMoE

def test_advmoe_steps_touch_only_their_own_parameters():
    model = tiny_moe(3, 1)
    x, y = batch(16)
    args = types.SimpleNamespace(**vars(loss_args()), opt="adam", lr=1e-2, wd=0.0)
    run_like = types.SimpleNamespace(model=model, world=1, args=args)
    # the two optimisers exactly as train_at.main builds them
    opt_router = tc.Run.optimizer(run_like, model.router.parameters())
    opt_experts = tc.Run.optimizer(run_like, model.experts.parameters())

    router0, experts0 = snapshot(model.router), snapshot(model.experts)
    torch.manual_seed(0)
    tc.Run.step(run_like, train_at.at_loss(model, x, y, args), opt_router)
    assert all(changed(router0, model.router)), "the router step did not update the router"
    assert not any(changed(experts0, model.experts)), "the router step changed expert parameters"

    router1, experts1 = snapshot(model.router), [snapshot(e) for e in model.experts]
    torch.manual_seed(1)
    with torch.no_grad():  # the experts the AT loss routes to: top-1 at x_adv
        routed = set(model.gates(attacks.attack(model, x, y, "whole", args.eps, args.step_size, args.steps))
                     .argmax(1).tolist())
    torch.manual_seed(1)
    tc.Run.step(run_like, train_at.at_loss(model, x, y, args), opt_experts)
    assert not any(changed(router1, model.router)), "the expert step changed the router"
    moved = {i for i, (s, e) in enumerate(zip(experts1, model.experts)) if any(changed(s, e))}
    assert moved == routed, (moved, routed)  # every expert given rows is updated, the others are not
    assert moved


def test_advmoe_main_alternates_router_and_experts_by_global_step(tmp_path, monkeypatch):
    """Router on even global steps, experts on odd ones, continuing across epochs (3 batches per epoch)."""
    record = []
    original = tc.Run.step

    def spy(self, loss, *optimizers):
        router, experts = snapshot(self.model.router), snapshot(self.model.experts)
        value = original(self, loss, *optimizers)
        record.append((self.global_step, any(changed(router, self.model.router)),
                       any(changed(experts, self.model.experts))))
        return value

    monkeypatch.setattr(tc.Run, "step", spy)
    argv = [*TINY, "--method", "advmoe", "--epochs", "2", "--bs", "400", "--experts", "3", "--eval-every", "2",
            "--out", str(tmp_path)]
    model = train_at.main(argv)
    steps = 2 * (len(data.load_digits_split()[0]) // 400)
    assert [r[0] for r in record] == list(range(steps)), record
    assert steps % 2 == 0 and steps // 2 % 2 == 1, "an odd number of batches per epoch tells step parity apart"
    for step, router_moved, experts_moved in record:
        if step % 2 == 0:
            assert router_moved and not experts_moved, record
        else:
            assert experts_moved and not router_moved, record
    ckpt = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    assert set(ckpt["optimizer"]) == {"router", "experts"}
    assert isinstance(model, moe.MoE)


# ============================================================================ shared checkpoints

@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    """An ST MoE (3 experts, 4 epochs, also the AutoAttack model), an RT-ER MoE and a JTDMoE on digits."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {k: root / k for k in ("st", "rter", "jtd")}
    train_st.main(["--dataset", "digits", "--device", "cpu", "--epochs", "4", "--bs", "64", "--experts", "3",
                   "--eval-n", "40", "--eval-steps", "2", "--eval-every", "4", "--out", str(out["st"])])
    train_rter.main([*TINY, "--bs", "512", "--out", str(out["rter"])])
    train_jtdmoe.main(["--std", str(out["st"] / "ckpt.pt"), "--rob", str(out["rter"] / "ckpt.pt"), *TINY,
                       "--bs", "512", "--alpha", "0.7", "--out", str(out["jtd"])])
    return {k: v / "ckpt.pt" for k, v in out.items()}


# ============================================================================ 5. JTDMoE

@pytest.mark.parametrize("upper", ["std", "both"])
def test_jtdmoe_lower_and_upper_steps_touch_the_right_moe(upper, ckpts, tmp_path, monkeypatch):
    """Lower: RT-ER on F_R, only F_R moves. Upper: CE(F_D(x), y) on the clean batch; --upper std moves only
    F_S, --upper both moves both."""
    calls, rter_models, batches = [], [], []
    original_step, original_rter, original_iter = tc.Run.step, train_jtdmoe.rter_loss, data.TensorLoader.__iter__

    def spy_iter(self):
        for x, y in original_iter(self):
            batches.append((x, y))
            yield x, y

    def spy_step(self, loss, *optimizers):
        dual = self.model
        upper_call = len(calls) % 2 == 1
        if upper_call:  # the upper loss is the clean CE of the dual model as it is after the lower step
            x, y = batches[-1]
            with torch.no_grad():
                clean_ce = F.cross_entropy((1 - dual.alpha) * dual.std(x) + dual.alpha * dual.rob(x), y)
            assert math.isclose(loss.item(), clean_ce.item(), rel_tol=1e-5, abs_tol=1e-6)
        before = {k: snapshot(getattr(dual, k)) for k in ("std", "rob")}
        value = original_step(self, loss, *optimizers)
        calls.append({k: any(changed(before[k], getattr(dual, k))) for k in ("std", "rob")})
        return value

    def spy_rter(model, x, y, args):
        rter_models.append(model)
        assert x is batches[-1][0] and y is batches[-1][1]
        return original_rter(model, x, y, args)

    monkeypatch.setattr(data.TensorLoader, "__iter__", spy_iter)
    monkeypatch.setattr(tc.Run, "step", spy_step)
    monkeypatch.setattr(train_jtdmoe, "rter_loss", spy_rter)
    dual = train_jtdmoe.main(["--std", str(ckpts["st"]), "--rob", str(ckpts["rter"]), *TINY, "--bs", "512",
                              "--alpha", "0.7", "--upper", upper, "--out", str(tmp_path)])
    n = len(data.load_digits_split()[0]) // 512
    assert len(batches) == n >= 2 and len(calls) == 2 * n
    assert len(rter_models) == n and all(m is dual.rob for m in rter_models), "the lower step is RT-ER on F_R"
    lower, upper_calls = calls[0::2], calls[1::2]
    assert all(c == {"std": False, "rob": True} for c in lower), calls
    expect = {"std": True, "rob": upper == "both"}
    assert all(c == expect for c in upper_calls), calls
    # after the run both MoEs differ from where they started (with --upper std, F_R through the lower step)
    for key, part in (("st", dual.std), ("rter", dual.rob)):
        start = torch.load(ckpts[key], map_location="cpu", weights_only=True)["model"]
        assert any(not torch.equal(start[k], v) for k, v in part.state_dict().items()), key
    saved = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    assert saved["args"]["upper"] == upper and set(saved["optimizer"]) == {"lower", "upper"}


# ============================================================================ 6. AutoAttack

AA_N, AA_EPS = 40, 0.17  # with this eps the reference suite breaks every point in APGD-CE: a few seconds


def digits_test(n):
    _, test = data.load_dataset("digits")
    return data.test_subset(test, n)


def test_autoattack_is_not_weaker_than_pgd(ckpts):
    model, _ = tc.model_from_checkpoint(str(ckpts["st"]))
    model.eval()
    x, y = digits_test(AA_N)
    clean = attacks.clean_correct(model, x, y)
    assert clean.float().mean() > 0.5, "the briefly trained MoE should be far above chance"
    torch.manual_seed(0)
    pgd_correct, _ = attacks.evaluate_attack(model, x, y, "whole", "pgd", AA_EPS, AA_EPS / 4, 20)
    aa_correct, aa_same = attacks.evaluate_attack(model, x, y, "whole", "aa", AA_EPS)
    assert aa_correct.shape == pgd_correct.shape == (AA_N,) and aa_same.shape == (AA_N,)
    assert aa_correct.sum() <= pgd_correct.sum() + 2, (aa_correct.sum(), pgd_correct.sum())
    assert not (aa_correct & ~clean).any(), "AutoAttack cannot make a wrong point right"
    assert aa_correct.sum() < clean.sum(), "AutoAttack broke no point"
    x_adv = attacks.autoattack(model, x, y, "whole", AA_EPS)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= AA_EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1) == y, aa_correct)


class ShortStandardAutoAttack:
    """The reference standard suite (APGD-CE, APGD-T, FAB-T, Square, all four kept) with short budgets:
    the full budgets take minutes on CPU whenever a point survives APGD, and what is tested here is that
    every attack of the suite can query the experts / router objectives and that x_adv stays in the ball."""

    @staticmethod
    def make():
        import pyautoattack

        class Short(pyautoattack.AutoAttack):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                assert self.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
                self.apgd.n_iter = self.apgd_targeted.n_iter = self.fab.n_iter = 10
                self.apgd_targeted.n_target_classes = self.fab.n_target_classes = 2
                self.square.n_queries = 50

        return Short


@pytest.mark.parametrize("target", ["experts", "router"])
def test_autoattack_on_component_targets_stays_in_the_ball(target, ckpts, monkeypatch):
    import pyautoattack
    monkeypatch.setattr(pyautoattack, "AutoAttack", ShortStandardAutoAttack.make())
    model, _ = tc.model_from_checkpoint(str(ckpts["st"]))
    model.eval()
    x, y = digits_test(8)
    eps = 0.03  # small: most points survive APGD, so FAB-T and Square run on them too
    x_adv = attacks.autoattack(model, x, y, target, eps)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    correct, same = attacks.evaluate_attack(model, x, y, target, "aa", eps)
    assert correct.shape == same.shape == (8,)
    assert not (correct & ~attacks.clean_correct(model, x, y)).any()


# ============================================================================ 7-8. command lines

def cli_env(tmp):
    env = {k: v for k, v in os.environ.items() if k != "MOE_DEBUG"}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(Path(tmp) / "hf"))
    return env


QUICK = [*TINY, "--bs", "512"]


def cli_plan(tmp, ck):
    """name -> argv (script first). Train runs write into tmp/<name>."""
    st, rter, jtd = str(ck["st"]), str(ck["rter"]), str(ck["jtd"])
    plan = {
        "at": ["train_at.py", "--method", "at", *QUICK],
        "trades": ["train_at.py", "--method", "trades", *QUICK],
        "advmoe": ["train_at.py", "--method", "advmoe", *QUICK],
        "rter": ["train_rter.py", *QUICK],
        "jtdmoe": ["train_jtdmoe.py", "--std", st, "--rob", rter, "--alpha", "0.7", *QUICK],
        "eval_jtd": ["eval.py", "--ckpt", jtd, "--n", "40", "--steps", "2", "--out", str(tmp / "eval_jtd")],
        "eval_pair": ["eval.py", "--std", st, "--rob", rter, "--alphas", "0.5,1.0", "--n", "40", "--steps", "2",
                      "--out", str(tmp / "eval_pair")],
        "eval_rob": ["eval.py", "--ckpt", rter, "--n", "40", "--steps", "2", "--out", str(tmp / "eval_rob")],
        # bad input
        "bad_alpha_low": ["train_jtdmoe.py", "--std", st, "--rob", rter, "--alpha", "0.3", *QUICK],
        "bad_alpha_high": ["train_jtdmoe.py", "--std", st, "--rob", rter, "--alpha", "1.2", *QUICK],
        "bad_eval_alpha": ["eval.py", "--std", st, "--rob", rter, "--alphas", "0.4", "--n", "10", "--steps", "1",
                           "--out", str(tmp / "bad_eval_alpha")],
        "bad_beta": ["train_rter.py", "--beta", "-1", *QUICK],
        "bad_kl_attack": ["train_rter.py", "--kl-attack", "bogus", *QUICK],
        "bad_balance": ["train_at.py", "--balance", "-0.1", *QUICK],
        # divergence: beta 1e39 overflows float32, so the loss is inf (or nan) at the first batch
        "diverge_fresh": ["train_rter.py", "--beta", "1e39", *QUICK],
        "diverge_resume": ["train_rter.py", "--beta", "1e39", "--resume", *QUICK, "--epochs", "2"],
    }
    for name, argv in plan.items():
        argv[0] = str(REPO / argv[0])
        if "train_" in argv[0]:
            argv += ["--out", str(tmp / name)]
    return plan


BAD_WORDS = {"bad_alpha_low": ["alpha", "0.3"], "bad_alpha_high": ["alpha", "1.2"], "bad_eval_alpha": ["alpha", "0.4"],
             "bad_beta": ["beta", "-1"], "bad_kl_attack": ["--kl-attack", "bogus"],
             "bad_balance": ["--balance", "-0.1"]}


@pytest.fixture(scope="session")
def cli(ckpts, tmp_path_factory):
    """Start every CLI subprocess at once (they mostly wait on imports); tests collect their results."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "diverge_resume").mkdir()
    good = ckpts["rter"].read_bytes()
    (tmp / "diverge_resume" / "ckpt.pt").write_bytes(good)  # a finished 1-epoch RT-ER run to go on from
    runs = types.SimpleNamespace(tmp=tmp, procs={}, good_ckpt=good)
    env = cli_env(tmp)
    for name, argv in cli_plan(tmp, ckpts).items():
        runs.procs[name] = Launched([sys.executable, *argv], tmp, env, timeout=400)
    yield runs
    for r in runs.procs.values():
        r.stop()


@pytest.fixture(scope="session", autouse=True)
def _start_cli_early(request):
    """When CLI tests are selected, launch their subprocesses first so they run beside the in-process tests."""
    if any("cli" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("cli")


def ok(cli, name):
    proc = cli.procs[name].result()
    assert proc.returncode == 0, (name, proc.stderr[-3000:])
    return proc


@pytest.mark.parametrize("name,method", [("at", "at"), ("trades", "trades"), ("advmoe", "advmoe"),
                                         ("rter", "rter"), ("jtdmoe", "jtdmoe")])
def test_train_cli_writes_checkpoint_and_log(cli, name, method):
    ok(cli, name)
    out = cli.tmp / name
    rows = read_log(out)
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert math.isfinite(float(rows[0]["loss"])) and 0 <= float(rows[0]["sa"]) <= 100
    ckpt = tc.load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["args"]["method"] == method and ckpt["epoch"] == 0
    model, _ = tc.model_from_checkpoint(str(out / "ckpt.pt"))
    if name == "jtdmoe":
        assert isinstance(model, moe.DualMoE) and model.alpha == 0.7 and ckpt["args"]["kind"] == "dual"
        assert set(ckpt["optimizer"]) == {"lower", "upper"} and "lower_loss" in rows[0]
    else:
        assert isinstance(model, moe.MoE)
    if name == "advmoe":
        assert set(ckpt["optimizer"]) == {"router", "experts"}
    if name == "rter":
        a = ckpt["args"]
        assert (a["beta"], a["kl_experts"], a["kl_attack"], a["second_on"]) == (6.0, "second", "separate", "clean")


def test_eval_cli_on_jtdmoe_checkpoint_gives_a_dual_row(cli):
    ok(cli, "eval_jtd")
    result = json.loads((cli.tmp / "eval_jtd" / "dual_pgd.json").read_text())
    assert result["kind"] == "jtdmoe" and result["n"] == 40
    (row,) = result["rows"]
    assert row["alpha"] == 0.7
    for key in ("sa", "ra", "ra_rmoe", "ra_smoe"):
        assert 0 <= row[key] <= 100 and (row[key] * 40 / 100) == pytest.approx(round(row[key] * 40 / 100))
    assert (cli.tmp / "eval_jtd" / "dual_pgd.md").exists()


def test_eval_cli_pretrained_pair_at_alpha_one_is_the_robust_moe(cli):
    ok(cli, "eval_pair")
    ok(cli, "eval_rob")
    pair = json.loads((cli.tmp / "eval_pair" / "dual_pgd.json").read_text())
    rob = json.loads((cli.tmp / "eval_rob" / "eval_pgd.json").read_text())
    assert pair["kind"] == "pretrained" and [r["alpha"] for r in pair["rows"]] == [0.5, 1.0]
    assert pair["n"] == rob["n"] == 40
    at_one = pair["rows"][1]
    assert at_one["sa"] == rob["sa"], (at_one["sa"], rob["sa"])


def the_error_line(proc) -> str:
    """The one 'error:' line a failing CLI must print on stderr, and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("name", list(BAD_WORDS))
def test_bad_input_gives_one_line_error(cli, name):
    proc = cli.procs[name].result()
    assert proc.returncode not in (0, None) and proc.returncode > 0, (proc.returncode, proc.stderr[-2000:])
    line = the_error_line(proc)
    for w in BAD_WORDS[name]:
        assert w in line, (w, line)
    assert not (cli.tmp / name / "ckpt.pt").exists()


def test_divergence_before_any_checkpoint(cli):
    proc = cli.procs["diverge_fresh"].result()
    out = cli.tmp / "diverge_fresh"
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    line = the_error_line(proc)
    assert "epoch 1, step 1" in line and "no checkpoint" in line, line
    info = json.loads((out / "diverged.json").read_text())
    assert info["epoch"] == 1 and "step 1" in info["message"]
    assert not (out / "ckpt.pt").exists()


def test_divergence_names_the_last_good_checkpoint_and_keeps_it(cli):
    proc = cli.procs["diverge_resume"].result()
    out = cli.tmp / "diverge_resume"
    assert proc.returncode == 3, (proc.returncode, proc.stderr[-2000:])
    line = the_error_line(proc)
    assert "epoch 2, step 1" in line and str(out / "ckpt.pt") in line, line
    info = json.loads((out / "diverged.json").read_text())
    assert info["epoch"] == 2 and "step 1" in info["message"]
    assert (out / "ckpt.pt").read_bytes() == cli.good_ckpt, "the last good checkpoint must stay as it was"
