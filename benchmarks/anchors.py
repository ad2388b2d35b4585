"""The sketch's two literal anchors, built from the teacher: what naive compression gives.

Taken literally from the sketch this project started from: a random 50% weight mask, and
min-max scaling of every weight tensor rounded to integers with no zero-point. Neither is
fine-tuned; they bound from below what a method has to beat.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from squeeze.nets.models import weight_layers


def random_mask(model: nn.Module, share: float, seed: int) -> nn.Module:
    """Anchor 1: zero a random `share` of every conv/linear weight, no fine-tuning."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in weight_layers(out).values():
            m.weight.mul_((torch.rand(m.weight.shape, generator=gen) >= share).float())
    return out


def minmax_integers(model: nn.Module, levels: int = 255) -> nn.Module:
    """Anchor 2: w -> round(w / s) · s with s = (max - min) / levels, per tensor, no zero-point
    (the sketch's scheme); the integers are stored back as floats to measure the accuracy."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for m in weight_layers(out).values():
            w = m.weight
            scale = (w.max() - w.min()) / levels
            w.copy_(torch.round(w / scale) * scale)
    return out


def anchors(teacher: nn.Module) -> dict[str, nn.Module]:
    """The anchors by row name."""
    return {
        "anchor_random_mask50": random_mask(teacher, 0.5, seed=0),
        "anchor_minmax_int_no_zero_point": minmax_integers(teacher),
    }
