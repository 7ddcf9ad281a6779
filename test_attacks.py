"""attacks.py: l_inf PGD, the component targets, the AutoAttack wrapper and accuracy under attack."""
import pytest
import torch
import torch.nn.functional as F

import attacks
import data
import moe
import train_common as tc
from conftest import all_training, batch, by_hand, tiny_moe, topk_reference


# ----------------------------------------------------------------------------- PGD

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
        assert torch.equal(correct, (model(x_adv).argmax(1) == y) & (model(x).argmax(1) == y))
        assert torch.equal(same, model.gates(x_adv).argmax(1) == model.gates(x).argmax(1))


# ----------------------------------------------------------------------------- component targets

class OffGridIsRight(torch.nn.Module):
    """Says class 1 exactly when some pixel lies off the 1/4 grid: wrong on grid-valued clean images (y = 1), right
    after almost any random start, and its ascent direction barely moves a step of 1e-6."""

    def forward(self, x):
        off_grid = (x * 4 - (x * 4).round()).abs().flatten(1).sum(1)
        return torch.stack([torch.zeros_like(off_grid), off_grid - 1e-9], dim=1)


def test_a_clean_wrong_point_is_never_robust_even_where_the_attack_lands_it_right():
    model = OffGridIsRight()
    x = torch.randint(0, 5, (16, 1, 4, 4)).float() / 4
    y = torch.ones(16, dtype=torch.long)
    clean = attacks.clean_correct(model, x, y)
    torch.manual_seed(0)
    x_adv = attacks.attack(model, x, y, "whole", eps=0.1, step=1e-6, steps=1)
    assert not clean.any() and (model(x_adv).argmax(1) == y).all(), "the setting must land wrong points right"
    torch.manual_seed(0)
    robust, _ = attacks.evaluate_attack(model, x, y, "whole", "pgd", eps=0.1, step=1e-6, steps=1)
    assert not robust.any(), "RA counted clean-wrong points as robust"
    assert (robust <= clean).all()


def grads(output, params):
    return list(torch.autograd.grad(output.sum(), list(params), allow_unused=True, retain_graph=True))


def is_zero(gs):
    return all(g is None or g.abs().sum() == 0 for g in gs)


def target_at_nearby_point(topk, target):
    """A tiny MoE, a clean batch x, a point z near x (with gradient), and the target's objective built at x
    with its output at z."""
    model = tiny_moe(topk).eval()
    x, _ = batch()
    z = (x + 0.3 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
    objective = attacks.target_objective(model, target, x)
    return model, x, z, objective, objective(z)


def assert_frozen(objective, z, params):
    """The objective's output at z does not move when params change: it froze what they gave at build time."""
    before = objective(z).detach()
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(objective(z).detach(), before)


def test_experts_target_freezes_routing_at_clean_x():
    model, x, z, objective, out = target_at_nearby_point(2, "experts")
    torch.testing.assert_close(out, model.experts_view(x, z), rtol=1e-5, atol=1e-6)
    gx, _ = by_hand(model, x)
    _, fz = by_hand(model, z.detach())
    torch.testing.assert_close(out, topk_reference(gx, fz, 2), rtol=1e-4, atol=1e-5)
    assert is_zero(grads(out, model.router.parameters())), "experts attack must not go through the router"
    assert not is_zero(grads(out, [z])) and not is_zero(grads(out, model.experts.parameters()))
    assert_frozen(objective, z, [model.router.weight])  # the gates


def test_router_target_freezes_experts_at_clean_x():
    model, x, z, objective, out = target_at_nearby_point(1, "router")
    gz, _ = by_hand(model, z.detach())
    _, fx = by_hand(model, x)
    torch.testing.assert_close(out, (gz.unsqueeze(-1) * fx).sum(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, model.router_view(z, x), rtol=1e-5, atol=1e-6)
    assert is_zero(grads(out, model.experts.parameters())), "router attack must not go through the experts"
    assert not is_zero(grads(out, model.router.parameters())) and not is_zero(grads(out, [z]))
    assert_frozen(objective, z, model.experts.parameters())  # the expert outputs


def test_smooth_and_whole_targets():
    model = tiny_moe(1).eval()
    x, _ = batch(8)
    with torch.no_grad():
        torch.testing.assert_close(attacks.target_objective(model, "smooth", x)(x), model.smooth(x))
    assert attacks.target_objective(model, "whole", x) is model


def test_dual_targets_attack_the_right_model():
    d = moe.DualMoE(tiny_moe(1, seed=0), tiny_moe(1, seed=1), 0.7)
    x, y = batch(8)
    assert attacks.target_objective(d, "dual", x) is d
    assert attacks.target_objective(d, "rmoe", x) is d.rob
    assert attacks.target_objective(d, "smoe", x) is d.std
    d.train()
    x_adv = attacks.attack(d, x, y, "rmoe", eps=0.1, step=0.05, steps=2)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and all_training(d)


# ----------------------------------------------------------------------------- AutoAttack

def assert_in_ball_and_box(x_adv, x, eps):
    assert isinstance(x_adv, torch.Tensor) and x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1


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
    assert_in_ball_and_box(x_adv, x, 0.2)
    with torch.no_grad():
        assert (model.eval()(x_adv).argmax(1) != y).any(), "AutoAttack broke no point of an untrained model"
    assert torch.equal(attacks.autoattack(model, x, y, target, eps=0.0), x)


AA_N, AA_EPS = 40, 0.17  # with this eps the reference suite breaks every point in APGD-CE: a few seconds


def trained_st(st_ckpt):
    model, _ = tc.model_from_checkpoint(str(st_ckpt))
    return model.eval()


def digits_test(n):
    _, test = data.load_dataset("digits")
    return data.test_subset(test, n)


def test_autoattack_is_not_weaker_than_pgd(st_ckpt):
    model = trained_st(st_ckpt)
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
    assert_in_ball_and_box(x_adv, x, AA_EPS)
    with torch.no_grad():
        assert torch.equal((model(x_adv).argmax(1) == y) & clean, aa_correct)


def short_standard_autoattack():
    """The reference standard suite (APGD-CE, APGD-T, FAB-T, Square, all four kept) with short budgets:
    the full budgets take minutes on CPU whenever a point survives APGD, and what is tested here is that
    every attack of the suite can query the experts / router objectives and that x_adv stays in the ball."""
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
def test_autoattack_on_component_targets_stays_in_the_ball(target, st_ckpt, monkeypatch):
    import pyautoattack
    monkeypatch.setattr(pyautoattack, "AutoAttack", short_standard_autoattack())
    model = trained_st(st_ckpt)
    x, y = digits_test(8)
    eps = 0.03  # small: most points survive APGD, so FAB-T and Square run on them too
    x_adv = attacks.autoattack(model, x, y, target, eps)
    assert_in_ball_and_box(x_adv, x, eps)
    correct, same = attacks.evaluate_attack(model, x, y, target, "aa", eps)
    assert correct.shape == same.shape == (8,)
    assert not (correct & ~attacks.clean_correct(model, x, y)).any()


# ----------------------------------------------------------------------------- the adaptive attack on hard routing

@pytest.mark.parametrize("topk", [1, 2])
def test_adaptive_attack_stays_in_ball_and_box_and_restores_mode(topk):
    model = tiny_moe(topk).train()
    x, y = batch(24)
    x_adv = attacks.adaptive_attack(model, x, y, 0.1, 0.025, 5)
    assert_in_ball_and_box(x_adv, x, 0.1)
    assert all_training(model)


def test_adaptive_attack_keeps_every_break_of_its_margin_pgd_and_only_reports_real_breaks():
    model = tiny_moe(1).eval()
    x, y = batch(48)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point starts correct, so every break is the attack's
    torch.manual_seed(0)
    margin_pgd = attacks.pgd(model, x, y, 0.05, 0.0125, 5,
                             loss_fn=lambda logits, t: attacks.margin(logits, t).sum(), model=model)
    torch.manual_seed(0)
    x_adv = attacks.adaptive_attack(model, x, y, 0.05, 0.0125, 5)
    with torch.no_grad():
        after_pgd, after_adaptive = model(margin_pgd).argmax(1) == y, model(x_adv).argmax(1) == y
    assert not (after_adaptive & ~after_pgd).any()  # a point the margin PGD broke stays broken
    assert after_adaptive.sum() < after_pgd.sum()  # and the routed expert attacks break more


def test_margin_is_positive_exactly_where_the_row_is_wrong():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.5, 2.0, 1.0], [1.0, 1.0, 0.0]])
    y = torch.tensor([0, 0, 1])
    assert attacks.margin(logits, y).tolist() == [-2.0, 1.5, 0.0]


def test_adaptive_attack_is_not_weaker_than_pgd_on_a_trained_moe(st_ckpt):
    model = trained_st(st_ckpt)
    x, y = digits_test(AA_N)
    torch.manual_seed(0)
    pgd_correct, _ = attacks.evaluate_attack(model, x, y, "whole", "pgd", 0.15, 0.0375, 20)
    adaptive_correct, _ = attacks.evaluate_attack(model, x, y, "whole", "adaptive", 0.15, 0.0375, 20)
    assert adaptive_correct.sum() <= pgd_correct.sum()
    with pytest.raises(ValueError, match="adaptive or pgd10-advmoe on whole"):
        attacks.evaluate_attack(model, x, y, "experts", "adaptive", 0.15, 0.0375, 2)


# ----------------------------------------------------------------------------- the papers' own attacks

@pytest.mark.parametrize("target", ["whole", "experts", "router"])
def test_apgd_ce50_is_apgd_ce_alone_for_50_iterations_inside_the_ball(target, monkeypatch):
    import pyautoattack
    made = []

    class Recorded(pyautoattack.AutoAttack):
        def run_standard_evaluation(self, *a, **k):
            made.append((self.version, list(self.attacks_to_run), self.apgd.n_iter, self.apgd.n_restarts))
            return super().run_standard_evaluation(*a, **k)

    monkeypatch.setattr(pyautoattack, "AutoAttack", Recorded)
    model = tiny_moe(1).train()
    x, _ = batch(8)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)  # all points correct, so APGD-CE attacks every one
    model.train()
    x_adv = attacks.apgd_ce(model, x, y, target, eps=0.2, iters=attacks.PAPER_STEPS["apgd-ce50"])
    assert made == [("custom", ["apgd-ce"], 50, 1)]
    assert_in_ball_and_box(x_adv, x, 0.2)
    assert all_training(model)
    with torch.no_grad():
        assert (model.eval()(x_adv).argmax(1) != y).any(), "APGD-CE broke no point of an untrained model"
    assert torch.equal(attacks.apgd_ce(model, x, y, target, eps=0.0), x)


def test_advmoe_loss_is_ce_of_the_model_plus_beta_ce_of_the_router_on_y_mod_e():
    model = tiny_moe(1).eval()  # 3 experts: y mod 3
    x, y = batch(16)
    with torch.no_grad():
        router_logits = model.router(model.normalize(x).flatten(1))
        want = F.cross_entropy(model(x), y, reduction="sum") + 6 * F.cross_entropy(router_logits, y % 3,
                                                                                   reduction="sum")
        torch.testing.assert_close(attacks.advmoe_loss(model)(x, y), want)
        torch.testing.assert_close(attacks.advmoe_loss(model, beta=0.0)(x, y),
                                   F.cross_entropy(model(x), y, reduction="sum"))


@pytest.mark.parametrize("experts", [1, 4])
def test_pgd10_advmoe_stays_in_ball_and_box_raises_its_loss_and_on_a_dense_network_is_ce_pgd(experts):
    from moe_cnn import build_moe_cnn
    torch.manual_seed(0)
    model = build_moe_cnn("moe_cnn", experts, 0.5, 10, (1, 8, 8)).train()
    x, y = batch(16)
    torch.manual_seed(3)
    x_adv = attacks.advmoe_pgd(model, x, y, eps=0.1, step=0.025, steps=attacks.PAPER_STEPS["pgd10-advmoe"])
    assert_in_ball_and_box(x_adv, x, 0.1)
    assert all_training(model)
    with attacks.eval_mode(model), torch.no_grad():
        loss = attacks.advmoe_loss(model)
        assert loss(x_adv, y) > loss(x, y)
    if experts == 1:  # no router: the term is -log 1 = 0, the attack is PGD-10 on CE from a uniform start
        torch.manual_seed(3)
        torch.testing.assert_close(x_adv, attacks.pgd(model, x, y, 0.1, 0.025, 10, init="uniform"))


@pytest.mark.parametrize("name", ["apgd-ce50", "pgd10-advmoe"])
def test_a_paper_attack_scores_points_the_full_model_gets_right_at_x_and_x_adv(name):
    model = tiny_moe(1).eval()
    x, y = batch(24)
    with torch.no_grad():
        y[:12] = model(x[:12]).argmax(1)  # half the points correct, so the attack has something to break
    correct, same = attacks.evaluate_attack(model, x, y, "whole", name, eps=0.1, step=0.025)
    clean = attacks.clean_correct(model, x, y)
    assert correct.shape == same.shape == (24,) and not (correct & ~clean).any()
    assert correct.sum() < clean.sum(), f"{name} broke no point"
    if name == "pgd10-advmoe":
        with pytest.raises(ValueError, match="pgd10-advmoe on whole"):
            attacks.evaluate_attack(model, x, y, "experts", name, eps=0.1)
