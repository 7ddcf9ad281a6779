"""Mixture-of-Experts image classifiers: linear router, top-k experts, component views, dual model.

Stands alone (imports torch only at module level; torchvision / timm are imported inside the expert
builders that need them), so it can be copied into another project.

Inputs are pixels in [0, 1]; the dataset normalisation is the first layer of every model, so attack
budgets are in pixel units.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = ("cnn", "resnet18", "vit_small")


class Normalize(nn.Module):
    """(x - mean) / std per channel, kept as buffers so checkpoints carry them."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


# ----------------------------------------------------------------------------- expert builders

class SmallCNN(nn.Module):
    """A small conv net for the CPU presets (8x8 digits and up): about 0.45 M multiply-adds on 8x8."""

    def __init__(self, num_classes: int, in_chans: int = 1, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # keep a 4x4 layout: where a stroke is matters for digits
        )
        self.head = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def resnet18_cifar(num_classes: int, in_chans: int = 3) -> nn.Module:
    """torchvision ResNet18 with the CIFAR stem: 3x3 stride-1 first conv and no max-pool."""
    from torchvision.models import resnet18
    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


VIT_SIZE = 224  # the resolution ViT-S/16's ImageNet weights were trained at: 14 x 14 patches


class ViTExpert(nn.Module):
    """timm ViT-S/16 at 224 x 224, the 196 tokens its weights were trained on. TinyImageNet arrives resized to 224
    (data.py), as in the public code; another size (a 64 x 64 run from before that) is resized here (bilinear)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        if x.shape[-2:] != (VIT_SIZE, VIT_SIZE):  # such a run's router and eps-ball stay at its own size
            x = F.interpolate(x, size=(VIT_SIZE, VIT_SIZE), mode="bilinear", align_corners=False)
        return self.vit(x)


HUB_OFFLINE = None  # hub_offline()'s answer


def hub_offline() -> bool:
    """Whether the Hugging Face hub is unreachable (checked once a process): then only the local cache is read."""
    global HUB_OFFLINE
    if HUB_OFFLINE is None:
        import socket
        from urllib.parse import urlparse
        import huggingface_hub.constants as hf
        url = urlparse(hf.ENDPOINT)
        try:
            socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
            HUB_OFFLINE = bool(hf.HF_HUB_OFFLINE)
        except OSError:
            HUB_OFFLINE = True
    return HUB_OFFLINE


def vit_small(num_classes: int, in_chans: int = 3, pretrained: bool = False) -> nn.Module:
    """A ViTExpert; pretrained=True loads ImageNet weights from the hub (its cache when the hub is unreachable)."""
    import timm
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, img_size=VIT_SIZE)
    if not pretrained:
        return ViTExpert(timm.create_model("vit_small_patch16_224", pretrained=False, **kwargs))
    import huggingface_hub.constants as hf
    offline, hf.HF_HUB_OFFLINE = hf.HF_HUB_OFFLINE, hub_offline()  # offline: no minute of download retries
    try:
        return ViTExpert(timm.create_model("vit_small_patch16_224", pretrained=True, **kwargs))
    except Exception as exc:  # hub unreachable, cache empty, ...: timm raises many kinds
        why = ("the Hugging Face hub is unreachable and its cache lacks them" if hf.HF_HUB_OFFLINE else
               f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
        raise ValueError(
            f"pretrained vit_small weights are unavailable ({why}); connect to the hub once to fill its cache "
            f"({hf.HF_HUB_CACHE}), or run without --pretrained"
        ) from None
    finally:
        hf.HF_HUB_OFFLINE = offline


def build_expert(arch: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False) -> nn.Module:
    """One expert network mapping normalised images to logits."""
    if arch == "cnn":
        return SmallCNN(num_classes, in_chans)
    if arch == "resnet18":
        return resnet18_cifar(num_classes, in_chans)
    if arch == "vit_small":
        return vit_small(num_classes, in_chans, pretrained)
    raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


# ----------------------------------------------------------------------------- the MoE

def topk_indices(gates: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, k) of the k largest gates per row."""
    return gates.topk(k, dim=1).indices


def next_best_expert(gates: torch.Tensor, k: int) -> torch.Tensor:
    """Per row, the expert with the (k+1)-th largest gate: the best one not selected (f_2 for top-1)."""
    return gates.topk(k + 1, dim=1).indices[:, k]


def check_routing(num_experts: int, topk: int) -> None:
    if num_experts < 2:
        raise ValueError(f"an MoE needs at least 2 experts, got {num_experts}")
    if not 1 <= topk <= num_experts:
        raise ValueError(f"topk must be in [1, experts={num_experts}], got {topk}")


def balance_loss(gates: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer load-balancing loss E * sum_i (share routed to i) * (mean gate of i)."""
    num_experts = gates.shape[1]
    routed = F.one_hot(idx, num_experts).sum(1).float().mean(0) / idx.shape[1]
    return num_experts * (routed * gates.mean(0)).sum()


def st_loss(model, x, y, balance: float):
    """The MoE's standard loss CE(F(x), y) + balance * Switch load-balancing loss (ST; AT takes it at x + d)."""
    logits, gates, idx = model.forward_with_routing(x)
    return F.cross_entropy(logits, y) + balance * balance_loss(gates, idx)


class MoE(nn.Module):
    """F(x) = sum_{i in TopK(x)} a_i(x) f_i(x), a = softmax(linear router on the flattened normalised x).

    Gates are not renormalised over the top-k (Switch style), so the router gets gradient even for k = 1.
    """

    def __init__(self, experts, in_shape, num_classes: int, topk: int = 1, mean=None, std=None):
        super().__init__()
        check_routing(len(experts), topk)
        channels = in_shape[0]
        self.normalize = Normalize(mean or [0.0] * channels, std or [1.0] * channels)
        self.router = nn.Linear(math.prod(in_shape), len(experts))
        self.experts = nn.ModuleList(experts)
        self.topk = topk
        self.num_classes = num_classes

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    # -- building blocks

    def gates(self, x):
        """Router weights a(x), (B, E), summing to one."""
        return F.softmax(self.router(self.normalize(x).flatten(1)), dim=1)

    def expert_logits(self, x, i: int):
        """Logits of expert i alone on x."""
        return self.experts[i](self.normalize(x))

    def all_expert_logits(self, x):
        """Every expert on every row, (B, E, C)."""
        xn = self.normalize(x)
        return torch.stack([expert(xn) for expert in self.experts], dim=1)

    def dispatch(self, x, idx, weights):
        """sum_j weights[:, j] * f_{idx[:, j]}(x), each expert run once on the rows routed to it."""
        xn = self.normalize(x)
        out = None
        # one stable sort groups the (row, slot) pairs by expert in row order, and one count read (the forward's only
        # host sync; CUDA's bincount would read twice more for its bounds) splits them: each expert sees the rows,
        # and out sums them, in the order of a per-expert scan
        experts, order = torch.sort(idx.flatten(), stable=True)
        edges = torch.arange(self.num_experts + 1, device=idx.device)
        counts = torch.searchsorted(experts, edges).diff().tolist()
        for expert, count, flat in zip(self.experts, counts, order.split(counts)):
            if not count:
                continue
            rows, slots = flat // idx.shape[1], flat % idx.shape[1]
            y = expert(xn[rows]) * weights[rows, slots].unsqueeze(1).to(xn.dtype)
            if out is None:
                out = y.new_zeros(x.shape[0], y.shape[1])
            out = out.index_add(0, rows, y.to(out.dtype))
        return out if out is not None else x.new_zeros(x.shape[0], self.num_classes)

    # -- the model and its component views (SPEC section 4)

    def forward_with_routing(self, x):
        """(logits, gates, top-k indices) for x."""
        gates = self.gates(x)
        idx = topk_indices(gates, self.topk)
        return self.dispatch(x, idx, gates.gather(1, idx)), gates, idx

    def forward(self, x):
        return self.forward_with_routing(x)[0]

    def experts_view(self, x_route, x_in):
        """sum_{i in TopK(x_route)} a_i(x_route) f_i(x_in): routing frozen at x_route."""
        gates = self.gates(x_route)
        idx = topk_indices(gates, self.topk)
        return self.dispatch(x_in, idx, gates.gather(1, idx))

    @staticmethod
    def mix(gates, expert_out):
        """sum_i gates[:, i] * expert_out[:, i] over all experts (soft)."""
        return (gates.unsqueeze(-1) * expert_out).sum(1)

    def router_view(self, x_route, x_in):
        """sum_i a_i(x_route) f_i(x_in), all experts, soft: experts frozen at x_in."""
        return self.mix(self.gates(x_route), self.all_expert_logits(x_in))

    def smooth(self, x):
        """Dense smooth approximation sum_i a_i(x) f_i(x) over all experts (Table 6)."""
        return self.mix(self.gates(x), self.all_expert_logits(x))

    def chosen_expert_logits(self, x, idx):
        """Per row, the logits of expert idx[b] on x[b] (idx of shape (B,)), batched by expert."""
        return self.dispatch(x, idx.unsqueeze(1), torch.ones_like(idx, dtype=x.dtype).unsqueeze(1))


def build_moe(arch: str, num_experts: int, topk: int, num_classes: int, in_shape, mean=None, std=None,
              pretrained: bool = False) -> MoE:
    """An MoE of num_experts experts of one architecture, for inputs of shape in_shape = (C, H, W)."""
    check_routing(num_experts, topk)
    channels, height, _ = in_shape
    experts = [build_expert(arch, num_classes, channels, height, pretrained) for _ in range(num_experts)]
    return MoE(experts, in_shape, num_classes, topk, mean, std)


# ----------------------------------------------------------------------------- the dual model

def check_alpha(alpha: float) -> float:
    if not 0.5 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0.5, 1] (the dual model's certified bound needs it), got {alpha}")
    return float(alpha)


class DualMoE(nn.Module):
    """F_D = (1 - alpha) F_S + alpha F_R, a standard and a robust MoE.

    combine='logits' mixes logits; combine='probs' mixes softmax outputs (the form of Theorem 5.5) and
    returns the log of the mixture, so argmax and cross-entropy work on it unchanged.
    """

    def __init__(self, std_moe: MoE, rob_moe: MoE, alpha: float = 0.7, combine: str = "logits"):
        super().__init__()
        if combine not in ("logits", "probs"):
            raise ValueError(f"combine must be 'logits' or 'probs', got {combine!r}")
        self.std = std_moe
        self.rob = rob_moe
        self.alpha = check_alpha(alpha)
        self.combine = combine

    def mix(self, std_out, rob_out):
        a = self.alpha
        if self.combine == "logits":
            return (1 - a) * std_out + a * rob_out
        parts = [F.log_softmax(std_out, 1) + math.log(max(1 - a, 1e-30)), F.log_softmax(rob_out, 1) + math.log(a)]
        return torch.logsumexp(torch.stack(parts), dim=0)

    def forward(self, x):
        return self.mix(self.std(x), self.rob(x))
