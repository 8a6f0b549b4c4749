"""The ``resnext_c4`` backbone: ResNeXt C4 body (stem + layer1-3) and the res5 head (layer4), with frozen BN (eps 0)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..config import BackboneConfig


def frozen_bn(channels: int) -> FrozenBatchNorm2d:
    """maskrcnn-benchmark's FrozenBatchNorm2d has no epsilon: ``x * w / sqrt(var) + (b - mean * w / sqrt(var))``."""
    return FrozenBatchNorm2d(channels, eps=0.0)


class Bottleneck(nn.Module):
    """ResNeXt bottleneck: 1x1 -> grouped 3x3 -> 1x1, each followed by frozen BN; bias-free convs."""

    def __init__(
        self, in_channels: int, inner: int, out_channels: int, groups: int, stride: int, stride_in_1x1: bool
    ) -> None:
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), frozen_bn(out_channels)
            )
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, stride=s1, bias=False)
        self.bn1 = frozen_bn(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=s3, padding=1, groups=groups, bias=False)
        self.bn2 = frozen_bn(inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn3 = frozen_bn(out_channels)
        self.folded: _FoldedBN | None = None

    def conv_bn_pairs(self) -> list[tuple[nn.Conv2d, FrozenBatchNorm2d]]:
        """(conv, bn) of conv1-3 and of the downsample branch if any, in that order."""
        pairs = [(self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)]
        return pairs + ([(self.downsample[0], self.downsample[1])] if self.downsample is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.folded
        if f is not None:
            out = F.relu_(f.conv(0, self.conv1, x))
            out = F.relu_(f.conv(1, self.conv2, out))
            out = f.conv(2, self.conv3, out)
            out += f.conv(3, self.downsample[0], x) if self.downsample is not None else x
            return F.relu_(out)
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = self.downsample(x) if self.downsample is not None else x
        out += identity
        return F.relu_(out)


def _folded(conv: nn.Conv2d, bn: FrozenBatchNorm2d, dtype: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of ``conv`` with ``bn`` folded in: ``w * scale``, ``b - mean * scale``, ``scale = w_bn / sqrt(var + eps)``;
    in ``dtype`` (default: the conv's)."""
    dtype = dtype or conv.weight.dtype
    scale = bn.weight.double() * (bn.running_var.double() + bn.eps).rsqrt()
    shift = bn.bias.double() - bn.running_mean.double() * scale
    w = (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype)
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        w = w.contiguous(memory_format=torch.channels_last)  # keep the layout the model was put in
    return w.detach(), shift.to(dtype).detach()


class _FoldedBN:
    """Inference-time copies of a block's convs with their frozen BNs folded in (one pass over the
    activations fewer per conv). Plain attributes, not parameters: the module's own weights and
    state dict stay in the checkpoint layout; loading new weights drops the copies."""

    def __init__(self, pairs: list[tuple[nn.Conv2d, FrozenBatchNorm2d]], dtype: Optional[torch.dtype] = None) -> None:
        self.params = [_folded(c, b, dtype) for c, b in pairs]

    def conv(self, i: int, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        w, b = self.params[i]
        if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 \
                and x.is_contiguous(memory_format=torch.channels_last):
            # An unstrided 1x1 conv on NHWC is one GEMM over the pixels; the plain GEMM kernel beats
            # oneDNN's conv on CPU (about 1.35x in bf16, 1.07x in fp32 at res5's shapes).
            n, c, h, wd = x.shape
            y = torch.addmm(b, x.permute(0, 2, 3, 1).reshape(-1, c), w.view(w.shape[0], c).t())
            return y.view(n, h, wd, -1).permute(0, 3, 1, 2)
        return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


def _drop_folded(module: nn.Module, incompatible_keys) -> None:
    module.folded = None


def unfold_frozen_bn(model: nn.Module) -> None:
    """Drop every folded copy: blocks run their convs and BNs as separate ops again."""
    for m in model.modules():
        if isinstance(m, (Bottleneck, Stem)):
            m.folded = None


def fold_frozen_bn(model: nn.Module, dtype: Optional[torch.dtype] = None) -> int:
    """Run every bottleneck and the stem with their frozen BNs folded into the convs (the same function
    up to float32 rounding, faster), the folded weights in ``dtype`` (default: the model's; bf16 for the
    bf16 mode, so activations stay bf16 end to end); returns the number of blocks changed. Call after
    moving the model."""
    n = 0
    for m in model.modules():
        if isinstance(m, (Bottleneck, Stem)):
            if getattr(m, "folded", None) is None:
                m.register_load_state_dict_post_hook(_drop_folded)
            m.folded = _FoldedBN(m.conv_bn_pairs(), dtype)
            n += 1
    return n


def make_stage(cfg: BackboneConfig, stage: int, in_channels: int, first_stride: int) -> nn.Sequential:
    """Layer ``stage`` (1..4) of the network: ``blocks[stage-1]`` bottlenecks, the first one strided."""
    inner, out = cfg.stage_channels(stage)
    blocks = []
    for i in range(cfg.blocks[stage - 1]):
        blocks.append(
            Bottleneck(in_channels, inner, out, cfg.num_groups, first_stride if i == 0 else 1, cfg.stride_in_1x1)
        )
        in_channels = out
    return nn.Sequential(*blocks)


class Stem(nn.Module):
    """7x7/2 conv + frozen BN + ReLU + 3x3/2 max-pool (floor mode)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = frozen_bn(out_channels)
        self.folded: _FoldedBN | None = None

    def conv_bn_pairs(self) -> list[tuple[nn.Conv2d, FrozenBatchNorm2d]]:
        """The stem's one (conv, bn)."""
        return [(self.conv1, self.bn1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.folded is not None:
            x = F.relu_(self.folded.conv(0, self.conv1, x))
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = F.relu_(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNetC4Body(nn.Module):
    """Stem + layer1 (stride 4) + layer2 (8) + layer3 (16): the C4 feature map."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.stem = Stem(cfg.stem_out_channels)
        self.layer1 = make_stage(cfg, 1, cfg.stem_out_channels, 1)
        self.layer2 = make_stage(cfg, 2, cfg.stage_channels(1)[1], 2)
        self.layer3 = make_stage(cfg, 3, cfg.stage_channels(2)[1], 2)
        self.out_channels = cfg.stage_channels(3)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


class Res5Head(nn.Module):
    """layer4 (stride 2) applied to pooled ROIs: ``[R, 1024, 14, 14] -> [R, 2048, 7, 7]``."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.layer4 = make_stage(cfg, 4, cfg.stage_channels(3)[1], 2)
        self.out_channels = cfg.stage_channels(4)[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(x)
