"""l_inf attacks on MoE models and their components: PGD, TRADES inner max, AutoAttack, robust accuracy.

Attacks are plain functions over an objective callable x -> logits (AutoAttack reference style).
A *target* names what the attacker differentiates through (SPEC section 5); whatever the target,
accuracy is always measured on the full model at the perturbed input.
Stands alone: torch at import time, the AutoAttack package only inside `autoattack`.
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


# ----------------------------------------------------------------------------- AutoAttack

def separable_groups(x, radius: float):
    """Split row indices of x into groups whose members are more than `radius` apart in l_inf."""
    flat = x.flatten(1).float()
    groups, members = [], []
    for i in range(flat.shape[0]):
        for g, rows in enumerate(members):
            if torch.cdist(flat[i:i + 1], rows, p=float("inf")).min() > radius:
                groups[g].append(i)
                members[g] = torch.cat([rows, flat[i:i + 1]])
                break
        else:
            groups.append([i])
            members.append(flat[i:i + 1])
    return [torch.tensor(g, device=x.device) for g in groups]


class RowMatched:
    """A frozen-part objective for AutoAttack, which queries subsets of rows without saying which.

    Each query row lies within eps of exactly one clean row (the rows are grouped so), which gives the
    frozen routing or expert outputs to use for it.
    """

    def __init__(self, model, target: str, x, eps: float):
        self.model, self.target, self.x, self.eps = model, target, x, eps
        self.parts = frozen_parts(model, target, x)

    def __call__(self, z):
        dist = torch.cdist(z.detach().flatten(1).float(), self.x.flatten(1).float(), p=float("inf"))
        rows = dist.argmin(1)
        if (dist.gather(1, rows[:, None]) > self.eps + 1e-5).any():
            raise RuntimeError("AutoAttack queried a point outside every eps-ball")
        return frozen_objective(self.model, self.target, [p[rows] for p in self.parts])(z)


def autoattack(model, x, y, target: str = "whole", eps: float = 8 / 255, bs: int = 250, seed: int = 0):
    """Standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square; reference code) on one target; returns x_adv."""
    from pyautoattack import AutoAttack

    check_budget(eps)
    if eps == 0:
        return x.detach().clone()
    logging.getLogger("auto-attack").setLevel(logging.ERROR)
    x_adv = x.detach().clone()
    with eval_mode(model):
        if target in ("experts", "router"):
            parts = [(idx, RowMatched(model, target, x[idx], eps)) for idx in separable_groups(x, 2 * eps)]
        else:
            parts = [(torch.arange(len(x), device=x.device), target_objective(model, target, x))]
        for idx, objective in parts:
            adversary = AutoAttack(objective, norm="Linf", eps=eps, version="standard", seed=seed, device=x.device)
            adversary.verbose = False
            x_adv[idx] = adversary.run_standard_evaluation(x[idx], y[idx], batch_size=bs)[0].detach()
    return project(x_adv, x, eps)


# ----------------------------------------------------------------------------- accuracy under attack

def top1_expert(model, x):
    """Index of the largest gate per row."""
    return model.gates(x).argmax(1)


def evaluate_attack(model, x, y, target: str, attack_name: str = "pgd", eps: float = 8 / 255,
                    step: float = 2 / 255, steps: int = 50, bs: int = 256, progress=None):
    """Per-row (correct on the full model at x_adv, same top-1 expert as at x) for one attack and target.

    Routing consistency is None for models without gates (dual models).
    """
    correct, same_route = [], []
    has_gates = hasattr(model, "gates")
    with eval_mode(model):
        for start in range(0, len(x), bs):
            xb, yb = x[start:start + bs], y[start:start + bs]
            if attack_name == "pgd":
                x_adv = attack(model, xb, yb, target, eps, step, steps)
            elif attack_name == "aa":
                x_adv = autoattack(model, xb, yb, target, eps, bs)
            else:
                raise ValueError(f"unknown attack {attack_name!r}; choose pgd or aa")
            with torch.no_grad():
                correct.append(model(x_adv).argmax(1) == yb)
                if has_gates:
                    same_route.append(top1_expert(model, x_adv) == top1_expert(model, xb))
            if progress is not None:
                progress.update(len(xb))
    return torch.cat(correct), (torch.cat(same_route) if has_gates else None)


@torch.no_grad()
def clean_correct(model, x, y, bs: int = 512):
    """Per-row correctness of the model on clean inputs."""
    with eval_mode(model):
        return torch.cat([model(x[s:s + bs]).argmax(1) == y[s:s + bs] for s in range(0, len(x), bs)])
