"""Quantization-aware fine-tuning: weights train through the grid a later `quantize` puts them on.

squeeze.methods.quantize (onnxruntime, per-channel symmetric) maps each output channel of a weight
onto
q · s with s = max|w| / L and q in [-L, L] (L = 127 for int8; 7 for int4, its "grid" scheme, which
the quantize stage always uses for a model fine-tuned here). Fine-tuning with the forward pass
on exactly that grid (a straight-through gradient to the float weights) lets the network adapt
to it; `snap` then puts the weights on the grid for good. Quantizing the result
re-derives the same grid, so it costs almost nothing beyond the int8 activations. A BatchNorm
that the export folds into the conv scales a channel as a whole, which scales its grid with it:
the folded weights are still exactly on theirs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from squeeze.nets.models import weight_layers

# the symmetric weight ranges [-L, L] squeeze.methods.quantize gets from onnxruntime: its own for
# int8
# (quant_utils.ONNX_INT_TYPE_SYMMETRIC_RANGE), squeeze's per-channel scales for int4 (the "grid"
# scheme, squeeze.methods.quantize.int4_overrides)
LEVELS = {"int8": 127, "int4": 7}


def on_grid(weight: torch.Tensor, weights: str) -> torch.Tensor:
    """The weight as squeeze.methods.quantize will quantize and dequantize it: per output channel,
    scale max|w| / L, so the largest weight is a grid point and the grid is a fixed point."""
    levels = LEVELS[weights]
    absmax = weight.detach().abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True)
    scale = torch.where(absmax > 0, absmax / levels, torch.ones_like(absmax))
    return torch.clamp(torch.round(weight / scale), -levels, levels) * scale


@contextmanager
def quantization_aware(model: nn.Module, weights: str | None) -> Iterator[None]:
    """Within the block, every forward pass uses on-grid weights (straight-through gradients).

    The weight is recomputed before each forward by a hook, the way torch.nn.utils.prune
    recomputes weight_orig · mask; a layer not pruned gets an all-ones mask for the duration, so
    that it has the same recomputed `weight`. The hook is registered after any pruning hook, so
    it sees the masked weight, and a pruned (zero) weight stays exactly zero on the grid.
    """
    if weights is None:
        yield
        return

    def fake_quant(module: nn.Module, _inputs: object) -> None:
        w = module.weight
        module.weight = w + (on_grid(w, weights) - w).detach()

    hooks, unmasked = [], []
    for layer in weight_layers(model).values():
        if not torch_prune.is_pruned(layer):
            torch_prune.identity(layer, "weight")
            unmasked.append(layer)
        hooks.append(layer.register_forward_pre_hook(fake_quant))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for layer in unmasked:
            torch_prune.remove(layer, "weight")


@torch.no_grad()
def snap(model: nn.Module, weights: str | None) -> nn.Module:
    """Put every layer's weight on its grid for good (after the last quantization-aware step)."""
    if weights is not None:
        for layer in weight_layers(model).values():
            layer.weight.copy_(on_grid(layer.weight, weights))
    return model
