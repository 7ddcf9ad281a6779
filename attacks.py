"""l_inf attacks on MoE models and their components: PGD, TRADES inner max, AutoAttack, the papers' own
evaluations (APGD-CE-50, the AdvMoE code's PGD-10), robust accuracy.

Attacks are plain functions over an objective callable x -> logits (AutoAttack reference style).
A *target* names what the attacker differentiates through (SPEC section 5); whatever the target,
accuracy is always measured on the full model at the perturbed input.
Stands alone: torch at import time, the AutoAttack package only inside `reference_attack`.
"""
import contextlib
import logging

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = ("whole", "experts", "router", "smooth", "dual", "rmoe", "smoe")


@contextlib.contextmanager
def eval_mode(*modules):
    """Put modules in eval mode for the block, then restore each one's own mode."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def check_budget(eps: float, step: float = 0.0, steps: int = 0) -> None:
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if step < 0 or steps < 0:
        raise ValueError(f"step size and step count must be >= 0, got {step} and {steps}")


def project(x_adv, x, eps):
    """Projection onto the l_inf eps-ball around x intersected with the [0, 1] box."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def pgd(objective, x, y, eps: float, step: float, steps: int, loss_fn=None, init: str = "uniform", model=None):
    """l_inf PGD: maximise loss_fn(objective(x + d), y) by signed-gradient steps; returns detached x + d.

    loss_fn defaults to cross-entropy; init is 'uniform' (in the eps-ball), 'normal' (0.001 * N(0, 1),
    the TRADES start) or 'none'. The model (objective itself when it is a module) is in eval mode
    during the attack and gets its own mode back after.
    """
    check_budget(eps, step, steps)
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits, target, reduction="sum"))
    modules = [m for m in (model, objective) if isinstance(m, nn.Module)]
    if init == "uniform":
        x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    elif init == "normal":
        x_adv = x + 0.001 * torch.randn_like(x)
    elif init == "none":
        x_adv = x.clone()
    else:
        raise ValueError(f"init must be uniform, normal or none, got {init!r}")
    x_adv = project(x_adv, x, eps)
    with eval_mode(*modules), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(objective(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = project(x_adv.detach() + step * grad.sign(), x, eps)
    return x_adv.detach()


def kl_to_clean(logits_adv, probs_clean):
    """KL(clean || adv) summed over classes and batch (TRADES' criterion, as in its reference code)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), probs_clean, reduction="sum")


def trades_perturb(model, x, eps: float, step: float, steps: int):
    """TRADES inner maximisation: the x' in the eps-ball maximising KL(F(x) || F(x'))."""
    with eval_mode(model), torch.no_grad():
        probs_clean = F.softmax(model(x), dim=1)
    return pgd(model, x, probs_clean, eps, step, steps, loss_fn=kl_to_clean, init="normal")


# ----------------------------------------------------------------------------- component targets

def frozen_parts(model, target: str, x):
    """What an experts / router attack holds fixed at clean x: (top-k indices, their gates) / all expert logits."""
    with torch.no_grad():
        if target == "experts":
            gates = model.gates(x)
            idx = gates.topk(model.topk, dim=1).indices
            return idx, gates.gather(1, idx)
        return (model.all_expert_logits(x),)


def frozen_objective(model, target: str, parts):
    if target == "experts":
        return lambda z: model.dispatch(z, *parts)
    return lambda z: model.mix(model.gates(z), parts[0])


def target_objective(model, target: str, x):
    """The function z -> logits that an attack on `target` differentiates through, frozen parts taken at x.

    experts: sum_{TopK(x)} a_i(x) f_i(z); router: sum_i a_i(z) f_i(x); smooth: sum_i a_i(z) f_i(z);
    whole / dual: the model; rmoe / smoe: the robust / standard MoE of a dual model.
    """
    if target in ("whole", "dual"):
        return model
    if target == "rmoe":
        return model.rob
    if target == "smoe":
        return model.std
    if target == "smooth":
        return model.smooth
    if target in ("experts", "router"):
        return frozen_objective(model, target, frozen_parts(model, target, x))
    raise ValueError(f"unknown attack target {target!r}; choose one of {', '.join(TARGETS)}")


def attack(model, x, y, target: str = "whole", eps: float = 8 / 255, step: float = 2 / 255, steps: int = 50):
    """PGD on one target of model at (x, y); returns x_adv."""
    with eval_mode(model):
        objective = target_objective(model, target, x)
        return pgd(objective, x, y, eps, step, steps, model=model)


# ----------------------------------------------------------------------------- an adaptive attack on hard routing

def margin(logits, y):
    """max_{c != y} logits_c - logits_y per row: positive exactly where the row is misclassified."""
    return logits.scatter(1, y[:, None], float("-inf")).amax(1) - logits.gather(1, y[:, None]).squeeze(1)


def routed_expert_objective(model, expert: int, kappa: float = 1.0):
    """z -> per-row score min-ish of (router margin towards `expert`, misclassification margin of that expert).

    Both terms are capped at kappa, so once the router picks the expert the ascent works on fooling it, and the
    other way round; a row is broken by this expert when both margins are positive.
    """
    def score(z):
        zn = model.normalize(z)
        route = model.router(zn.flatten(1))
        others = torch.cat([route[:, :expert], route[:, expert + 1:]], 1).amax(1)
        return (route[:, expert] - others).clamp(max=kappa), zn

    def objective(z, y):
        route_margin, zn = score(z)
        return (route_margin + margin(model.experts[expert](zn), y).clamp(max=kappa)).sum()
    return objective


def adaptive_attack(model, x, y, eps: float, step: float, steps: int):
    """Per row, the first success of: PGD on the margin of F, then for each expert j a PGD that routes x + d to j
    while fooling f_j (hard top-k routing hides the other experts from the gradient of F). Returns x_adv."""
    with eval_mode(model), torch.no_grad():
        x_adv = pgd(model, x, y, eps, step, steps, loss_fn=lambda logits, t: margin(logits, t).sum(), model=model)
        fooled = model(x_adv).argmax(1) != y
        for expert in range(model.num_experts):
            rows = (~fooled).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            candidate = pgd(lambda z: z, x[rows], y[rows], eps, step, steps,
                            loss_fn=routed_expert_objective(model, expert), model=model)
            hit = model(candidate).argmax(1) != y[rows]
            x_adv[rows[hit]] = candidate[hit]
            fooled[rows[hit]] = True
    return x_adv


# ----------------------------------------------------------------------------- AutoAttack

def tag_rows(x):
    """x with one extra channel holding each row's index in binary, one 0/1 pixel per bit."""
    n, _, h, w = x.shape
    if n > 2 ** (h * w):
        raise ValueError(f"cannot tag {n} rows in a {h}x{w} plane")
    bits = (torch.arange(n, device=x.device)[:, None] >> torch.arange(h * w, device=x.device)) & 1
    return torch.cat([x, bits.to(x.dtype).view(n, 1, h, w)], dim=1)


class TaggedObjective:
    """A frozen-part objective for AutoAttack, which queries subsets of rows without saying which.

    Inputs carry a tag channel (tag_rows); every AutoAttack iterate stays within eps < 0.5 of it in
    l_inf and gets no gradient through it, so rounding recovers each row's index and its frozen parts.
    """

    def __init__(self, model, target: str, x):
        self.model, self.target = model, target
        self.parts = frozen_parts(model, target, x)
        self.weights = 2 ** torch.arange(x.shape[2] * x.shape[3], device=x.device)

    def __call__(self, z):
        rows = (z[:, -1].detach().flatten(1).round().long() * self.weights).sum(1)
        return frozen_objective(self.model, self.target, [p[rows] for p in self.parts])(z[:, :-1])


AA_VERSIONS = ("standard", "quick")  # quick: APGD-CE alone, 10 iterations (smoke runs)


def reference_attack(model, x, y, target: str, eps: float, bs: int, seed: int, apgd_iters=None):
    """x_adv = x + d, ||d||_inf <= eps, in [0, 1], from the reference AutoAttack on one target: its standard suite, or
    (apgd_iters) APGD-CE alone, max_d CE(target(x + d), y), one restart of that many iterations."""
    from pyautoattack import AutoAttack

    check_budget(eps)
    if eps == 0 or apgd_iters == 0:
        return x.detach().clone()
    if eps >= 0.5 and target in ("experts", "router"):
        raise ValueError("AutoAttack on frozen-routing targets needs eps < 0.5")
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    with eval_mode(model):
        if target in ("experts", "router"):
            objective, x_in = TaggedObjective(model, target, x), tag_rows(x.detach())
        else:
            objective, x_in = target_objective(model, target, x), x.detach()
        def logits(z):  # AutoAttack's own buffers are fp32, whatever autocast computes the model in
            return objective(z).float()
        if apgd_iters is None:
            adversary = AutoAttack(logits, norm="Linf", eps=eps, version="standard", seed=seed, device=x.device)
        else:
            adversary = AutoAttack(logits, norm="Linf", eps=eps, version="custom", attacks=["apgd-ce"],
                                   seed=seed, device=x.device)
            adversary.apgd.n_iter, adversary.apgd.n_restarts = apgd_iters, 1
        adversary.verbose = False
        x_adv = adversary.run_standard_evaluation(x_in, y, batch_size=bs)[0].detach()
    return project(x_adv[:, :x.shape[1]], x, eps)


def autoattack(model, x, y, target: str = "whole", eps: float = 8 / 255, bs: int = 250, seed: int = 0,
               version: str = "standard"):
    """AutoAttack (reference code) on one target; returns x_adv.

    standard: APGD-CE, APGD-T, FAB-T, Square; quick: APGD-CE with 10 iterations, for smoke runs only.
    """
    if version not in AA_VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; choose one of {', '.join(AA_VERSIONS)}")
    return reference_attack(model, x, y, target, eps, bs, seed, None if version == "standard" else 10)


def apgd_ce(model, x, y, target: str = "whole", eps: float = 8 / 255, iters: int = 50, bs: int = 250, seed: int = 0):
    """APGD-CE alone (reference code, one restart): max_{||d||_inf <= eps} CE(F(x + d), y) in `iters` steps of size
    2 eps, halved at APGD's checkpoints where the loss stalls, with momentum 0.75; returns x_adv. 50 iterations:
    the ICML paper's '50-step AutoAttack'."""
    check_budget(eps, steps=iters)
    return reference_attack(model, x, y, target, eps, bs, seed, iters)


# ----------------------------------------------------------------------------- the AdvMoE code's evaluation

ADVMOE_BETA = 6.0  # the AdvMoE code's --beta (its TRADES beta), which its PGD evaluation reuses as the router's weight


def advmoe_loss(model, beta: float = ADVMOE_BETA):
    """(z, y) -> sum_rows CE(F(z), y) + beta CE(R(z), y mod E), R the router's logits: the loss of the AdvMoE code's
    PGD evaluation (a dense network, E = 1: CE alone)."""
    def loss(z, y):
        logits, gates = model.forward_with_routing(z)[:2]
        # CE of the router's logits is -log of their softmax, the gates; the clamp only keeps log(0) finite
        route = F.nll_loss(gates.clamp_min(1e-30).log(), y % gates.shape[1], reduction="sum")
        return F.cross_entropy(logits, y, reduction="sum") + beta * route
    return loss


def advmoe_pgd(model, x, y, eps: float = 8 / 255, step: float = 2 / 255, steps: int = 10,
               beta: float = ADVMOE_BETA):
    """The AdvMoE code's PGD evaluation: x + d, d uniform in the eps-ball, then `steps` signed steps up advmoe_loss,
    each projected; returns x_adv. 10 steps of 2/255 at eps 8/255, beta 6: its PGD-10 (pgd10-advmoe)."""
    return pgd(lambda z: z, x, y, eps, step, steps, loss_fn=advmoe_loss(model, beta), model=model)


# ----------------------------------------------------------------------------- accuracy under attack

def top1_expert(model, x):
    """Index of the largest gate per row."""
    return model.gates(x).argmax(1)


# the papers' own attacks, named for what they are: their iterations, fixed by the name (eval.py --attack)
PAPER_STEPS = {"apgd-ce50": 50, "pgd10-advmoe": 10}


def adversarial_batches(model, x, y, target: str, attack_name: str = "pgd", eps: float = 8 / 255,
                        step: float = 2 / 255, steps: int = 50, bs: int = 256, aa_version: str = "standard"):
    """Yield (rows, x_adv) for consecutive batches of bs rows: the attack on one target of model."""
    for start in range(0, len(x), bs):
        rows = slice(start, start + bs)
        if attack_name == "pgd":
            x_adv = attack(model, x[rows], y[rows], target, eps, step, steps)
        elif attack_name == "aa":
            x_adv = autoattack(model, x[rows], y[rows], target, eps, bs, version=aa_version)
        elif attack_name == "apgd-ce50":
            x_adv = apgd_ce(model, x[rows], y[rows], target, eps, PAPER_STEPS[attack_name], bs)
        elif attack_name == "adaptive" and target == "whole":
            x_adv = adaptive_attack(model, x[rows], y[rows], eps, step, steps)
        elif attack_name == "pgd10-advmoe" and target == "whole":
            x_adv = advmoe_pgd(model, x[rows], y[rows], eps, step, PAPER_STEPS[attack_name])
        else:
            raise ValueError(f"unknown attack {attack_name!r} on {target!r}; choose pgd, aa or apgd-ce50, or adaptive "
                             "or pgd10-advmoe on whole")
        yield rows, x_adv


def evaluate_attack(model, x, y, target: str, attack_name: str = "pgd", eps: float = 8 / 255,
                    step: float = 2 / 255, steps: int = 50, bs: int = 256, progress=None, aa_version="standard"):
    """Per-row (robust: correct on the full model at x AND at x_adv, same top-1 expert as at x) for one attack.

    A clean-wrong row is never robust, even where a random start lands it on y (AutoAttack's convention).
    Routing consistency is None for models without gates (dual models) or with one expert (dense networks).
    """
    correct, same_route = [], []
    has_gates = hasattr(model, "gates") and model.num_experts > 1
    with eval_mode(model):
        for rows, x_adv in adversarial_batches(model, x, y, target, attack_name, eps, step, steps, bs, aa_version):
            with torch.no_grad():
                correct.append(robust_correct(model, x[rows], x_adv, y[rows]))
                if has_gates:
                    same_route.append(top1_expert(model, x_adv) == top1_expert(model, x[rows]))
            if progress is not None:
                progress.update(len(x_adv))
    return torch.cat(correct), (torch.cat(same_route) if has_gates else None)


@torch.no_grad()
def robust_correct(model, x, x_adv, y):
    """Per row: correct at the clean x and at x_adv, the only way a point counts as robust."""
    return (model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)


@torch.no_grad()
def clean_correct(model, x, y, bs: int = 512):
    """Per-row correctness of the model on clean inputs."""
    with eval_mode(model):
        return torch.cat([model(x[s:s + bs]).argmax(1) == y[s:s + bs] for s in range(0, len(x), bs)])
