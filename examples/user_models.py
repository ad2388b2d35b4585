"""Networks as a user would write them: a small ResNet and a MobileNet-style
network, plain PyTorch modules that know nothing of squeeze.

Each is a class named by `class_path` (examples.user_models.ResNet, examples.user_models.MobileNet)
and built from keyword `init_args`: `in_channels` and `num_classes` (what the data says) and its
widths. Each maps normalised float (B, in_channels, H, W) to (B, num_classes) logits for any
image size (global average pooling). Between them they hold what structured pruning must treat
dependency-aware: residual additions and 1×1 projection shortcuts (ResNet), depthwise
convolutions (groups = channels) and a channel concatenation (MobileNet).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(
    in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> list[nn.Module]:
    """A bias-free conv (padding keeps the size at stride 1) and its BatchNorm."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_ch)]


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 conv-BN, the input added back, ReLU. Where the block
    changes the width or the resolution the shortcut is a 1×1 conv-BN projection."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(in_ch, out_ch, 3, stride), nn.ReLU(inplace=True), *conv_bn(out_ch, out_ch)
        )
        changes = stride != 1 or in_ch != out_ch
        self.shortcut = nn.Sequential(*conv_bn(in_ch, out_ch, 1, stride)) if changes else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + skip)


class ResNet(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016): a 3×3 stem, then one stage per entry of `widths`
    holding `blocks[i]` basic blocks (each stage after the first halves the resolution), global
    average pooling and a linear classifier. widths [16, 32, 64] with blocks [3, 3, 3] is
    ResNet-20; the defaults, [16, 32, 64] × [2, 2, 2], are ResNet-14."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: list[int] | None = None,
        blocks: list[int] | None = None,
    ) -> None:
        super().__init__()
        widths = widths or [16, 32, 64]
        blocks = blocks or [2] * len(widths)
        if len(blocks) != len(widths) or min(blocks) < 1 or min(widths) < 1:
            raise ValueError(f"ResNet: widths {widths} and blocks {blocks} must pair up, >= 1")
        self.stem = nn.Sequential(*conv_bn(in_channels, widths[0]), nn.ReLU(inplace=True))
        stages, in_ch = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(count):
                stages.append(BasicBlock(in_ch, width, 2 if i > 0 and j == 0 else 1))
                in_ch = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x))).flatten(1)  # (B, C, h, w) -> (B, C)
        return self.fc(x)


class Separable(nn.Module):
    """MobileNet's depthwise-separable conv: a 3×3 depthwise conv (one filter per channel,
    groups = channels) and a 1×1 pointwise conv that mixes the channels, each with BN and ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *conv_bn(in_ch, in_ch, 3, stride, groups=in_ch), nn.ReLU(inplace=True),
            *conv_bn(in_ch, out_ch, 1), nn.ReLU(inplace=True),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TwoBranch(nn.Module):
    """Two branches of half the width each, concatenated along the channels: a 1×1 conv and a
    depthwise-separable conv (an Inception/Fire-style block)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        if out_ch % 2:
            raise ValueError(f"TwoBranch: out channels {out_ch} must be even (two halves)")
        self.point = nn.Sequential(*conv_bn(in_ch, out_ch // 2, 1), nn.ReLU(inplace=True))
        self.separable = Separable(in_ch, out_ch // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.point(x), self.separable(x)], dim=1)  # (B, out_ch, H, W)


class MobileNet(nn.Module):
    """A small MobileNet-style network (Howard et al. 2017): a 3×3 stem conv, one
    depthwise-separable conv per entry of `widths` (each after the first halves the
    resolution), a two-branch concatenation block at the last width, a 1×1 conv to `head`
    channels, global average pooling and a linear classifier."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: list[int] | None = None,
        head: int = 128,
    ) -> None:
        super().__init__()
        widths = widths or [16, 32, 64]
        self.stem = nn.Sequential(*conv_bn(in_channels, widths[0]), nn.ReLU(inplace=True))
        blocks, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            blocks.append(Separable(in_ch, width, 2 if i > 0 else 1))
            in_ch = width
        blocks.append(TwoBranch(in_ch, in_ch))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*conv_bn(in_ch, head, 1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)  # (B, head)
        return self.classifier(x)
