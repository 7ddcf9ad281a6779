"""The training losses of every method, as functions of tensors, a model and numbers (copy with moe.py, attacks.py).

  ST      CE(F(x), y) + balance * L_bal                      moe.st_loss
  AT      the ST loss at x + d, d = PGD-K on F               at_loss
  TRADES  CE(F(x), y) + beta * KL(F(x) || F(x + d)) / B      trades_loss (d maximises the KL)
  AdvMoE  the TRADES (or AT) loss, one step w.r.t. the backbone and one w.r.t. the router per batch (train_advmoe.py);
          the public code's: advmoe_backbone_loss, then CE(R(x), y mod E) + alpha * KL(R(x) || R(x')) / B on the
          router's scores R (advmoe_router_loss), x' from PGD on both KLs (advmoe_perturb)
  RT-ER   AT + beta * KL(f_2(x) || f_2(x + d')) / B          rter_loss (f_2: best unselected expert)
  JTDMoE  lower: rter_loss on F_R; upper: CE(F_D(x), y)      rter_loss, dual_loss
KL(p || q) is F.kl_div(log q, p) summed over classes (the TRADES reference code); B the batch size.
"""
import torch
import torch.nn.functional as F

from attacks import attack, eval_mode, kl_to_clean, pgd, trades_perturb
from moe import balance_loss, next_best_expert, st_loss

KL_EXPERTS = ("second", "all")
KL_ATTACKS = ("separate", "shared")
SECOND_ON = ("clean", "adv")


def at_loss(model, x, y, eps: float, step_size: float, steps: int, balance: float):
    """Madry AT: CE(F(x + d), y) + balance * L_bal at x + d, d from PGD-`steps` on the whole MoE."""
    x_adv = attack(model, x, y, "whole", eps, step_size, steps)
    return st_loss(model, x_adv, y, balance)


def trades_loss(model, x, y, eps: float, step_size: float, steps: int, beta: float, balance: float):
    """TRADES: CE(F(x), y) + beta * KL(F(x) || F(x + d)) / B + balance * L_bal, d maximising the KL."""
    x_adv = trades_perturb(model, x, eps, step_size, steps)
    logits, gates, idx = model.forward_with_routing(x)
    robust = kl_to_clean(model(x_adv), F.softmax(logits, dim=1)) / len(x)
    return F.cross_entropy(logits, y) + beta * robust + balance * balance_loss(gates, idx)


def advmoe_perturb(model, x, eps: float, step_size: float, steps: int):
    """The AdvMoE code's inner maximisation: the x' in the eps-ball maximising KL(F(x) || F(x')) + KL(R(x) || R(x')),
    R(x) the router's scores (model.router_logits); TRADES start, clean targets in eval mode."""
    with eval_mode(model), torch.no_grad():
        clean = F.softmax(model(x), dim=1), F.softmax(model.router_logits(x), dim=1)

    def model_and_router(z):
        return model(z), model.router_logits(z)

    def both_kls(out, target):
        return kl_to_clean(out[0], target[0]) + kl_to_clean(out[1], target[1])
    return pgd(model_and_router, x, clean, eps, step_size, steps, loss_fn=both_kls, init="normal", model=model)


def advmoe_backbone_loss(model, x, y, eps: float, step_size: float, steps: int, beta: float, balance: float):
    """The AdvMoE code's backbone step: CE(F(x), y) + beta * KL(F(x) || F(x')) / B + balance * L_bal, x' from
    advmoe_perturb (trades_loss, its attack on the router's scores too)."""
    x_adv = advmoe_perturb(model, x, eps, step_size, steps)
    logits, gates, idx = model.forward_with_routing(x)
    robust = kl_to_clean(model(x_adv), F.softmax(logits, dim=1)) / len(x)
    return F.cross_entropy(logits, y) + beta * robust + balance * balance_loss(gates, idx)


def advmoe_router_loss(model, x, y, eps: float, step_size: float, steps: int, alpha: float, balance: float):
    """The AdvMoE code's router step: CE(R(x), y mod E) + alpha * KL(R(x) || R(x')) / B + balance * L_bal on the
    router's scores R alone, x' from a fresh advmoe_perturb (the backbone has just moved)."""
    x_adv = advmoe_perturb(model, x, eps, step_size, steps)
    logits = model.router_logits(x)
    gates = F.softmax(logits, dim=1)
    robust = kl_to_clean(model.router_logits(x_adv), gates) / len(x)
    routed = logits.argmax(1, keepdim=True)
    return F.cross_entropy(logits, y % model.num_experts) + alpha * robust + balance * balance_loss(gates, routed)


def rter_loss(model, x, y, eps: float, step_size: float, steps: int, beta: float, balance: float,
              kl_experts: str = "second", kl_attack: str = "separate", second_on: str = "clean"):
    """RT-ER (paper Eq. 2): CE(F(x + d), y) + beta * KL(f_2(x) || f_2(x + d')) / B + balance * L_bal.

    f_2: per row the best expert outside the top-k, picked at clean x (second_on='clean') or x + d; kl_experts='all'
    sums the KL over every expert, each on its own copy of the batch. d' = PGD on f_2 alone, or on each expert
    alone for 'all' (kl_attack='separate', the public code), or d (shared).
    """
    x_adv = attack(model, x, y, "whole", eps, step_size, steps)
    loss = st_loss(model, x_adv, y, balance)
    if beta == 0:
        return loss
    if kl_experts == "second":
        with torch.no_grad():
            chosen = next_best_expert(model.gates(x if second_on == "clean" else x_adv), model.topk)
        x_in, x_kl = x, x_adv
    else:  # row b * E + j is expert j on x_b: every expert gets a perturbation of its own
        copies = model.num_experts
        chosen = torch.arange(copies, device=x.device).repeat(len(x))
        x_in, x_kl = x.repeat_interleave(copies, 0), x_adv.repeat_interleave(copies, 0)

    def experts_out(z):
        return model.chosen_expert_logits(z, chosen)
    if kl_attack == "separate":
        x_kl = pgd(experts_out, x_in, y.repeat_interleave(len(x_in) // len(x)), eps, step_size, steps, model=model)
    kl = kl_to_clean(experts_out(x_kl), F.softmax(experts_out(x_in), dim=1)) / len(x)
    return loss + beta * kl


def dual_loss(dual, x, y):
    """JTDMoE's upper objective: CE(F_D(x), y) on clean x, F_D = (1 - alpha) F_S + alpha F_R."""
    return F.cross_entropy(dual(x), y)
