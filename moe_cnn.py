"""MoE-CNN (AdvMoE, ICCV 2023): convolutions whose output channels form E experts, one pathway per input.

A routed convolution holds E groups of w = round(r * C) output channels (C: the dense layer's width, r: the model
scale) over the previous layer's w selected channels. One router picks one expert per input for every layer, so an
input runs a dense network of width r:
    h_l = W_l[e(x)] * h_(l-1),   e(x) = argmax_i z_i(x),   z = R(x),  p = softmax(z),  R a small CNN.
R is the AdvMoE code's router, a ResNet-20 (router="published"), or that of the runs before it, two convolutions
(router="ours"). Where the router learns from the task loss (AT (MoE)), it does so through the straight-through factor
s = 1 + p_e - stopgrad(p_e) on each selected group, 1 in the forward pass (ste="gate"); ste="logit" puts the one-hot's
gradient on the raw score, s = 1 + z_e - stopgrad(z_e), as the code's GetMask, whose gradient its released AdvMoE loop
never applies (that one trains the router on its own loss).
The stem convolution and the shortcuts are dense (shared by the experts), as in the AdvMoE code.
E = 1 is the dense network of width r: AT (Dense) at r = 1, AT (S-Dense) at r < 1 (stem="scaled": its stem round(r C)
wide too, as the public code's dense networks). AT (Sparse) is the full-width network with HYDRA-style structured
masks keeping round(r * C) channels of every layer (`prune=r`).
Copy it with moe.py (its Normalize layer) into another project: torch only at import.
"""
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from moe import Normalize

# name: (stem width, dense widths of the stages, blocks per stage, pre-activation blocks, pooled size before the head)
ARCH_CFGS = {
    "moe_cnn": dict(stem=16, widths=(32, 64), blocks=(1, 1), preact=False, pool=2),  # digits-sized
    "moe_resnet18": dict(stem=64, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), preact=False, pool=1),
    "moe_wrn28_10": dict(stem=16, widths=(160, 320, 640), blocks=(4, 4, 4), preact=True, pool=1),
}
ARCHS = tuple(ARCH_CFGS)
ROUTERS = ("published", "ours")  # the AdvMoE code's router and straight-through form; those of the runs before it
STES = ("logit", "gate")  # where the straight-through gradient goes: the raw score (published) or the gate (ours)
STEMS = ("full", "scaled")  # a dense network's stem: the arch's width, or round(r * C) as the public dense networks


def width(channels: int, scale: float) -> int:
    """Channels of one expert (or kept by a sparse mask) at model scale r: round(r * C), at least 1."""
    return max(1, int(round(channels * scale)))


class Route(NamedTuple):
    """Where each row of a batch goes. counts: rows per expert of a batch sorted by expert (None: masked reference,
    rows in their own order); idx: expert of each row; ste: (B, 1, 1, 1) straight-through factor."""
    counts: Optional[list]
    idx: torch.Tensor
    ste: torch.Tensor


class RoutedConv(nn.Module):
    """E experts of w output channels each (weight rows e*w .. (e+1)*w - 1) on a compact input of c_in channels:
    row b computes W[e_b] * x_b only."""

    def __init__(self, c_in: int, w: int, experts: int, kernel: int = 3, stride: int = 1):
        super().__init__()
        self.experts, self.w, self.stride, self.padding = experts, w, stride, kernel // 2
        self.weight = nn.Parameter(torch.empty(experts * w, c_in, kernel, kernel))
        for expert in self.weight.data.split(w):
            nn.init.kaiming_normal_(expert, mode="fan_out", nonlinearity="relu")

    def conv(self, x, weight):
        return F.conv2d(x, weight, None, self.stride, self.padding)

    def forward(self, x, route: Optional[Route]):
        if route is None:  # one expert: a plain convolution
            return self.conv(x, self.weight)
        if route.counts is None:  # masked reference: every expert on every row, then each row's group
            out = self.conv(x, self.weight).unflatten(1, (self.experts, self.w))
            out = out[torch.arange(len(x), device=x.device), route.idx]
        else:
            weights = self.weight.split(self.w)
            out = torch.cat([self.conv(rows, weights[e]) for e, rows in enumerate(x.split(route.counts)) if len(rows)])
        return out * route.ste.to(out.dtype)


class ChannelMask(nn.Module):
    """HYDRA-style structured mask: keeps the round(keep * C) channels of largest |score|; the gradient of the 0/1
    mask goes straight through to the scores (mask learning). Fine-tuning freezes the scores, and with them the mask."""

    def __init__(self, channels: int, keep: float):
        super().__init__()
        self.scores = nn.Parameter(1 + 0.01 * torch.randn(channels))
        self.kept = width(channels, keep)

    def kept_index(self) -> torch.Tensor:
        return self.scores.detach().abs().topk(self.kept).indices.sort().values

    def forward(self, x):
        magnitude = self.scores.abs()
        hard = torch.zeros_like(magnitude).index_fill(0, self.kept_index(), 1.0)
        return x * (hard + magnitude - magnitude.detach()).view(1, -1, 1, 1).to(x.dtype)


def keep_all(x):
    return x


class Block(nn.Module):
    """A ResNet basic block (post-activation) or a WRN block (pre-activation) of routed convolutions and a dense
    shortcut. Sparse masks: `inner` on the block's middle channels, `stream` (shared by a stage) on what it adds."""

    def __init__(self, c_in: int, w: int, stride: int, experts: int, preact: bool, shortcut: bool):
        super().__init__()
        self.preact = preact
        self.conv1 = RoutedConv(c_in, w, experts, 3, stride)
        self.bn1 = nn.BatchNorm2d(c_in if preact else w)
        self.conv2 = RoutedConv(w, w, experts, 3, 1)
        self.bn2 = nn.BatchNorm2d(w)
        self.shortcut, self.stride = None, stride
        if shortcut:  # its stride is taken by subsampling: a strided 1x1 convolution in channels_last with odd
            # channel counts corrupts the heap in torch 2.14's CPU backward (seen at 6 -> 13 channels)
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, w, 1, bias=False), *([] if preact else [nn.BatchNorm2d(w)]))
        self.inner = None  # set by MoECNN when pruned

    def forward(self, x, route, stream=keep_all, stream_in=keep_all):
        inner = self.inner or keep_all
        if self.preact:  # WRN: BN-ReLU before each convolution, the shortcut on the activated input
            a = stream_in(F.relu(self.bn1(x)))
            out = inner(F.relu(self.bn2(self.conv1(a, route))))
            out = stream(self.conv2(out, route))
            return out + (stream(self.shortcut(a[:, :, ::self.stride, ::self.stride])) if self.shortcut is not None
                          else self.identity(x, stream, stream_in))
        out = F.relu(inner(self.bn1(self.conv1(x, route))))
        out = stream(self.bn2(self.conv2(out, route)))
        return F.relu(out + (stream(self.shortcut(x[:, :, ::self.stride, ::self.stride])) if self.shortcut is not None
                             else self.identity(x, stream, stream_in)))

    @staticmethod
    def identity(x, stream, stream_in):
        """The identity shortcut; entering a pruned stage (a new mask, same channels) it keeps the stage's channels."""
        return x if stream is stream_in else stream(x)


class Router(nn.Module):
    """Ours (the runs before the published router): R(x) from two small convolutions, global pooling, a linear layer."""

    def __init__(self, in_chans: int, experts: int, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, 2 * hidden, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * hidden), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * hidden, experts))
        nn.init.zeros_(self.net[-1].bias)  # a random bias outweighs the input at first and routes every input alike

    def forward(self, x):
        return self.net(x)


class RouterBlock(nn.Module):
    """relu(BN(conv(relu(BN(conv(x))))) + shortcut(x)), 3x3 convolutions; where the shape changes the shortcut
    subsamples x and pads the new channels with zeros (ResNet's option A: no parameters)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.stride != 1 or self.pad:
            x = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + x)


class PublishedRouter(nn.Module):
    """The AdvMoE code's router (models/layers/router.py), a ResNet-20: a 3x3 stem of 16 channels, three stages of three
    RouterBlocks of 16, 32 and 64 channels (the last two stride 2), global pooling, a linear layer to the E scores."""

    def __init__(self, in_chans: int, experts: int, blocks: int = 3):
        super().__init__()
        layers, c_in = [nn.Conv2d(in_chans, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
        for i, c_out in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(RouterBlock(c_in, c_out, 2 if i and b == 0 else 1))
                c_in = c_out
        # PyTorch's default initialisation, as there: the code initialises the network before it attaches the router
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, experts))

    def forward(self, x):
        return self.net(x)


class MoECNN(nn.Module):
    """F(x) = the pathway of expert e(x) through every routed layer (see the module docstring)."""

    def __init__(self, arch: str, experts: int, scale: float, num_classes: int, in_shape, mean=None, std=None,
                 prune: Optional[float] = None, router: str = "published", stem: str = "full",
                 ste: Optional[str] = None):
        super().__init__()
        if arch not in ARCH_CFGS:
            raise ValueError(f"unknown MoE-CNN arch {arch!r}; choose one of {', '.join(ARCHS)}")
        ste = ste or "gate"
        if router not in ROUTERS or stem not in STEMS or ste not in STES:
            raise ValueError(f"router must be one of {', '.join(ROUTERS)}, stem one of {', '.join(STEMS)}, ste one of "
                             f"{', '.join(STES)}; got {router!r}, {stem!r}, {ste!r}")
        if experts < 1:
            raise ValueError(f"an MoE-CNN needs at least 1 expert, got {experts}")
        if not 0 < scale <= 1:
            raise ValueError(f"the model scale r must be in (0, 1], got {scale}")
        if prune is not None and (experts != 1 or scale != 1 or not 0 < prune <= 1):
            raise ValueError("a sparse (pruned) network is the dense full-width one: experts 1, scale 1, "
                             f"keep in (0, 1]; got experts {experts}, scale {scale}, keep {prune}")
        cfg, (channels, size, _) = ARCH_CFGS[arch], in_shape
        self.arch, self.num_experts, self.scale, self.prune, self.topk = arch, experts, scale, prune, 1
        self.num_classes, self.in_shape, self.ste = num_classes, tuple(in_shape), ste
        self.normalize = Normalize(mean or [0.0] * channels, std or [1.0] * channels)
        self.router = (PublishedRouter if router == "published" else Router)(channels, experts) if experts > 1 else None
        big = size >= 128  # ImageNet-sized inputs: the 7x7 stride-2 stem and max-pool
        # the public code's dense networks scale the stem with the rest; its ResNet MoE keeps it full (64)
        stem_w = width(cfg["stem"], scale) if stem == "scaled" and experts == 1 and prune is None else cfg["stem"]
        self.stem = nn.Sequential(nn.Conv2d(channels, stem_w, 7 if big else 3, 2 if big else 1, 3 if big else 1,
                                            bias=False),
                                  *([] if cfg["preact"] else [nn.BatchNorm2d(stem_w), nn.ReLU()]),
                                  *([nn.MaxPool2d(3, 2, 1)] if big else []))
        # a shortcut convolution where the full-width or the scaled shapes change. A pruned network has exactly the
        # full-width network's layers, so AT (Dense) loads into it whole; where only its kept channels change (ResNet's
        # stage 0: stem 64 -> 32 kept) its identity is masked, and compact() writes that selection as a 1x1 conv
        stages, c_in, dense_in = [], stem_w, cfg["stem"]
        for i, (dense, blocks) in enumerate(zip(cfg["widths"], cfg["blocks"])):
            w = width(dense, scale)
            stages.append(nn.ModuleList(
                Block(c_in if b == 0 else w, w, 2 if i and b == 0 else 1, experts, cfg["preact"],
                      b == 0 and (i > 0 or dense_in != dense or c_in != w)) for b in range(blocks)))
            c_in, dense_in = w, dense
        self.stages = nn.ModuleList(stages)
        self.final_bn = nn.BatchNorm2d(c_in) if cfg["preact"] else None
        self.pool = nn.AdaptiveAvgPool2d(cfg["pool"])
        self.head = nn.Linear(c_in * cfg["pool"] ** 2, num_classes)
        self.stream_masks = None
        if prune is not None:  # one mask per stage's residual stream, one per block's middle channels
            self.stream_masks = nn.ModuleList(ChannelMask(width(d, 1.0), prune) for d in cfg["widths"])
            for stage, dense in zip(self.stages, cfg["widths"]):
                for block in stage:
                    block.inner = ChannelMask(dense, prune)

    # -- routing

    def router_logits(self, x):
        """The router's raw scores z = R(x), (B, E), on the normalised input."""
        return self.router(self.normalize(x))

    def gates(self, x):
        """Router weights p(x) = softmax(z), (B, E); a single column of ones for a dense network."""
        if self.router is None:
            return x.new_ones(len(x), 1)
        return F.softmax(self.router_logits(x), dim=1)

    def forward_with_routing(self, x, masked: bool = False):
        """(logits, gates, top-1 index (B, 1)); masked=True runs every expert on every row and keeps each row's group
        (the AdvMoE code's form: same numbers and gradients, E times the convolution work)."""
        h = self.normalize(x)
        if self.router is None:
            return self.body(h, None), x.new_ones(len(x), 1), torch.zeros(len(x), 1, dtype=torch.long,
                                                                          device=x.device)
        logits = self.router(h)
        gates = F.softmax(logits, dim=1)
        # straight through on the raw score (logit: the AdvMoE code hands the one-hot's gradient to the logit) or on
        # the gate (the gradient passes through the softmax)
        score = logits if self.ste == "logit" else gates
        idx = score.argmax(1)
        ste = (1 + score - score.detach()).gather(1, idx[:, None]).view(-1, 1, 1, 1)
        if masked:
            return self.body(h, Route(None, idx, ste)), gates, idx[:, None]
        order = idx.argsort(stable=True)  # rows grouped by expert: each routed layer makes one call per expert
        counts = torch.bincount(idx, minlength=self.num_experts).tolist()
        out = self.body(h[order], Route(counts, idx[order], ste[order]))
        return out[order.argsort()], gates, idx[:, None]

    def forward(self, x):
        return self.forward_with_routing(x)[0]

    def body(self, h, route):
        h, stream_in = self.stem(h), keep_all
        for i, stage in enumerate(self.stages):
            stream = self.stream_masks[i] if self.stream_masks is not None else keep_all
            for block in stage:
                h = block(h, route, stream, stream_in)
                stream_in = stream
        if self.final_bn is not None:
            h = stream_in(F.relu(self.final_bn(h)))
        return self.head(self.pool(h).flatten(1))

    # -- sparse networks

    def masks(self) -> list:
        return [m for m in self.modules() if isinstance(m, ChannelMask)]

    def compact(self) -> "MoECNN":
        """The pruned network as what it computes: the dense network of width r holding the kept channels' weights."""
        if self.prune is None:
            raise ValueError("compact() is for sparse (pruned) networks")
        small = MoECNN(self.arch, 1, self.prune, self.num_classes, self.in_shape).to(self.head.weight.device)
        small.normalize.load_state_dict(self.normalize.state_dict())
        small.stem.load_state_dict(self.stem.state_dict())
        keep_in = torch.arange(self.stem[0].out_channels, device=self.head.weight.device)
        for mask, stage, small_stage in zip(self.stream_masks, self.stages, small.stages):
            keep = mask.kept_index()
            for block, small_block in zip(stage, small_stage):
                mid = block.inner.kept_index()
                small_block.conv1.weight.data = block.conv1.weight.data[mid][:, keep_in].clone()
                small_block.conv2.weight.data = block.conv2.weight.data[keep][:, mid].clone()
                slice_bn(small_block.bn1, block.bn1, keep_in if block.preact else mid)
                slice_bn(small_block.bn2, block.bn2, mid if block.preact else keep)
                if block.shortcut is not None:
                    small_block.shortcut[0].weight.data = block.shortcut[0].weight.data[keep][:, keep_in].clone()
                    if len(block.shortcut) > 1:
                        slice_bn(small_block.shortcut[1], block.shortcut[1], keep)
                elif small_block.shortcut is not None:  # the masked identity: pick the kept channels
                    select(small_block.shortcut, keep, len(keep_in))
                keep_in = keep
        if self.final_bn is not None:
            slice_bn(small.final_bn, self.final_bn, keep_in)
        rows = torch.arange(self.pool.output_size ** 2, device=keep_in.device)
        cols = (keep_in[:, None] * self.pool.output_size ** 2 + rows).flatten()  # flatten order: channel, then cell
        small.head.weight.data = self.head.weight.data[:, cols].clone()
        small.head.bias.data = self.head.bias.data.clone()
        return small


def slice_bn(small: nn.BatchNorm2d, full: nn.BatchNorm2d, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(small, name).data = getattr(full, name).data[keep].clone()
    small.num_batches_tracked.copy_(full.num_batches_tracked)


def select(shortcut: nn.Sequential, keep: torch.Tensor, c_in: int) -> None:
    """Make a 1x1 conv (+ BN) shortcut pick channels `keep` of its c_in inputs: exact in eval mode (BN scales by 1).
    Post-activation blocks only: no pre-activation arch has a stage as wide as its stem."""
    weight = torch.zeros(len(keep), c_in, 1, 1, device=shortcut[0].weight.device)
    weight[torch.arange(len(keep)), keep.to(weight.device)] = 1.0
    shortcut[0].weight.data = weight
    bn = shortcut[1]
    bn.running_mean.zero_(), bn.bias.data.zero_(), bn.running_var.fill_(1.0)
    bn.weight.data.fill_((1.0 + bn.eps) ** 0.5)


def build_moe_cnn(arch: str, experts: int, scale: float, num_classes: int, in_shape, mean=None, std=None,
                  prune: Optional[float] = None, router: str = "published", stem: str = "full",
                  ste: Optional[str] = None) -> MoECNN:
    """An MoE-CNN (experts >= 2), a dense network of width `scale` (experts 1) or a sparse one (prune = keep)."""
    return MoECNN(arch, experts, scale, num_classes, in_shape, mean, std, prune, router, stem, ste)


# ----------------------------------------------------------------------------- cost

def gflops(model: nn.Module, x: torch.Tensor) -> dict:
    """Giga multiply-adds per image (torch.utils.flop_counter's FLOPs / 2, the convention of the AdvMoE tables):
    `pathway`, the work the selected pathway needs, and `masked`, the full-width masked form of the same function."""
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn(x)
        return counter.get_total_flops() / 2 / len(x) / 1e9

    was_training = model.training
    model.eval()
    try:
        if isinstance(model, MoECNN) and model.prune is not None:  # the masked network is what trains and runs
            return {"pathway": count(model.compact().eval()), "masked": count(model)}
        if isinstance(model, MoECNN) and model.router is not None:
            return {"pathway": count(model), "masked": count(lambda z: model.forward_with_routing(z, masked=True))}
        pathway = count(model)  # a dense network: nothing is masked
        return {"pathway": pathway, "masked": pathway}
    finally:
        model.train(was_training)

