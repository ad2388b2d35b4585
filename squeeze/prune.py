"""Pruning: unstructured global magnitude pruning (AGP schedule) and structured channel pruning.

Unstructured pruning zeroes individual weights; the network keeps its shape, so the gain shows
in the compressed (gzip) size of the export, not in its latency. Structured pruning removes
whole channels with Torch-Pruning, which follows the dependencies between layers (a conv's
output channels, the BatchNorm after it and the next conv's inputs go together), so the network
really gets smaller and faster. Both prune gradually, fine-tuning between steps, because a
network recovers from many small cuts far better than from one big one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from squeeze.data import Split, subset
from squeeze.distill import distillation_loss
from squeeze.models import weight_layers
from squeeze.params import PruneParams
from squeeze.qat import quantization_aware, snap
from squeeze.train import fit

IMPORTANCE: dict[str, Callable[[], Any]] = {
    "l1": lambda: tp.importance.MagnitudeImportance(p=1),
    "l2": lambda: tp.importance.MagnitudeImportance(p=2),
    "taylor": lambda: tp.importance.TaylorImportance(),
}


def agp_sparsity(final: float, step: int, steps: int) -> float:
    """Sparsity after `step` of `steps` in the cubic AGP schedule (Zhu & Gupta 2017).

    s_t = s_f · (1 − (1 − t/n)³), starting from a dense network: prunes fast while there are
    many redundant weights and slowly near the target, where every weight matters.
    """
    return final * (1 - (1 - step / steps) ** 3)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The tensors unstructured pruning ranks and zeroes: every Conv2d and Linear weight.

    Biases and BatchNorm parameters stay dense: they are a tiny share of the parameters and
    zeroing them saves nothing while shifting every activation.
    """
    return [(m, "weight") for m in weight_layers(model).values()]


def prunable_names(model: nn.Module) -> list[str]:
    """The state-dict names of the prunable() tensors, for the record (what sparsity covers)."""
    return [f"{n}.weight" for n in weight_layers(model)]


def conv_channels(model: nn.Module) -> int:
    """Output channels of all convs together (what structured pruning removes a share of)."""
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def masked_weight(module: nn.Module, name: str) -> torch.Tensor:
    """The weight as the next forward will use it: weight_orig · mask once pruning started.

    (`module.weight` is only refreshed by a forward pass, so after an optimizer step it is stale.)
    """
    if hasattr(module, f"{name}_orig"):
        return (getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")).detach()
    return getattr(module, name).detach()


def weight_sparsity(model: nn.Module) -> float:
    """Share of exactly-zero entries over the prunable() tensors."""
    weights = [getattr(m, name).detach() for m, name in prunable(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / sum(w.numel() for w in weights)


def step_splits(train: Split, epochs: int, steps: int, seed: int) -> list[Split]:
    """The fine-tuning budget of `epochs` passes over train, cut into `steps` equal parts.

    Concatenated seeded permutations, so every step sees as many images as the others, also
    when epochs is not a multiple of steps (2 epochs over 4 steps: half an epoch each).
    """
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(train)) for _ in range(epochs)])
    return [subset(train, part) for part in np.array_split(order, steps)]


def fine_tune(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: PruneParams,
    step: int,
    teacher: nn.Module | None,
) -> dict[str, Any]:
    """One pass over this step's images (cfg.fit, a seed per step); KD when distill_alpha > 0,
    quantization-aware when cfg.qat."""
    fit_cfg = cfg.fit.model_copy(update={"epochs": 1, "seed": cfg.fit.seed + step})
    loss = None
    if cfg.distill_alpha > 0:
        if teacher is None:
            raise ValueError("prune.distill_alpha > 0 needs the teacher to distill from")
        loss = distillation_loss(
            teacher, cfg.temperature, cfg.distill_alpha, cfg.fit.label_smoothing
        )
    with quantization_aware(model, cfg.qat):
        (row,) = fit(model, train, val, fit_cfg, loss_fn=loss)
    return {**row, "epoch": step}


def prune_unstructured(
    model: nn.Module, cfg: PruneParams, train: Split, val: Split, teacher: nn.Module | None = None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Global L1 magnitude pruning of all prunable() tensors to exactly cfg.sparsity.

    Each of cfg.steps steps raises the sparsity along the AGP schedule, ranking the surviving
    weights of all layers together, then fine-tunes. torch.nn.utils.prune keeps the masks applied
    in every forward pass (weight = weight_orig · mask), so pruned weights get no gradient and
    stay zero; at the end the masks are made permanent. The count pruned is round(s · N) of the
    N prunable weights, so the sparsity is exact up to that rounding.
    """
    tensors = prunable(model)
    total = sum(getattr(m, name).numel() for m, name in tensors)
    parts = step_splits(train, cfg.fit.epochs, cfg.steps, cfg.fit.seed)
    history, pruned = [], 0
    for step in range(1, cfg.steps + 1):
        target = round(agp_sparsity(cfg.sparsity, step, cfg.steps) * total)
        # int amount: that many more weights, counted among those still unpruned
        torch_prune.global_unstructured(
            tensors, pruning_method=torch_prune.L1Unstructured, amount=target - pruned,
            importance_scores={(m, n): masked_weight(m, n) for m, n in tensors},
        )  # fmt: skip
        pruned = target
        history.append({**fine_tune(model, parts[step - 1], val, cfg, step, teacher),
                        "sparsity": round(target / total, 6)})  # fmt: skip
    for module, name in tensors:
        torch_prune.remove(module, name)
    return model.eval(), history


def taylor_gradients(model: nn.Module, batch: Split) -> None:
    """Fill .grad with the cross-entropy gradient of one batch, which TaylorImportance reads.

    Eval mode: the batch only probes the network, it must not move BatchNorm's statistics.
    """
    model.eval().zero_grad()
    logits = model(torch.from_numpy(batch.images))
    F.cross_entropy(logits, torch.from_numpy(batch.labels)).backward()


def example_input(train: Split) -> torch.Tensor:
    """One raw image, (1, 28, 28) uint8: exactly what the model (and its export) is fed."""
    example = torch.from_numpy(train.images[:1])
    if example.dtype != torch.uint8 or tuple(example.shape) != (1, 28, 28):
        raise ValueError(f"expected (1, 28, 28) uint8 pixels, got {example.dtype} {example.shape}")
    return example


def prune_structured(
    model: nn.Module, cfg: PruneParams, train: Split, val: Split, teacher: nn.Module | None = None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Remove cfg.sparsity of every conv's output channels with Torch-Pruning's MetaPruner.

    The pruner traces the model on a raw uint8 example (its input contract), ranks channel
    groups by cfg.importance (L1/L2 weight magnitude, or first-order Taylor |w · ∂L/∂w| from
    one calibration batch) and removes them in cfg.steps equal steps, fine-tuning after each.
    The classifier's outputs (the 10 classes) are never pruned. The model is changed in place;
    save it with arch=arch_of(model) so it reloads without the pruner.
    """
    pruner = tp.pruner.MetaPruner(
        model, example_input(train), importance=IMPORTANCE[cfg.importance](),
        pruning_ratio=cfg.sparsity, iterative_steps=cfg.steps, ignored_layers=[model.classifier],
    )  # fmt: skip
    rng = np.random.default_rng(cfg.fit.seed)
    calibration = subset(train, rng.choice(len(train), cfg.fit.batch_size, replace=False))
    parts = step_splits(train, cfg.fit.epochs, cfg.steps, cfg.fit.seed)
    history = []
    for step in range(1, cfg.steps + 1):
        if cfg.importance == "taylor":
            taylor_gradients(model, calibration)
        pruner.step()
        model.zero_grad(set_to_none=True)
        history.append(fine_tune(model, parts[step - 1], val, cfg, step, teacher))
    return model.eval(), history


def prune_model(
    model: nn.Module, cfg: PruneParams, train: Split, val: Split, teacher: nn.Module | None = None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Prune as cfg.kind says; returns (pruned model in eval mode, one curve row per step).

    With cfg.qat the fine-tuning is quantization-aware and the weights end on the grid."""
    method = prune_structured if cfg.kind == "structured" else prune_unstructured
    pruned, history = method(model, cfg, train, val, teacher)
    return snap(pruned, cfg.qat), history
