"""Pruning: unstructured global magnitude pruning (AGP schedule) and structured channel pruning.

Unstructured pruning zeroes individual weights; the network keeps its shape, so the gain shows
in the compressed (gzip) size of the export, not in its latency. Structured pruning removes
whole channels with Torch-Pruning, which follows the dependencies between layers (a conv's
output channels, the BatchNorm after it and the next conv's inputs go together), so the network
really gets smaller and faster. Both prune gradually, fine-tuning between steps, because a
network recovers from many small cuts far better than from one big one.

Both are checked, not trusted. Torch-Pruning silently leaves a layer unpruned when the ratio
would empty it (at 0.97 a [16, 32, 64] net came out [16, 32, 1]), so the widths it will aim at
are planned first, and a plan or a result off the requested ratio is a PruningError naming the
layers; global magnitude ranking may zero a whole layer, which is one too.
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
from squeeze.errors import StageRefused
from squeeze.models import weight_layers
from squeeze.params import PruneParams
from squeeze.qat import quantization_aware, snap
from squeeze.train import fit

# Every pruned layer keeps at least this many output channels. Torch-Pruning never empties a
# layer: a step that would prune all of a layer's channels is skipped for that layer, silently,
# and a layer down to one channel is never pruned again; so a plan of zero channels comes out
# unpruned. And one channel is a bottleneck: every later layer sees the image through a single
# feature map. Two is the least that is still a layer rather than a wire.
MIN_CHANNELS = 2


class PruningError(StageRefused):
    """Pruning cannot give, or did not give, what the sparsity asks of every layer."""


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


def out_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every weight layer by name (a Conv2d's filters, a Linear's outputs)."""
    return {name: m.weight.shape[0] for name, m in weight_layers(model).items()}


def layer_report(before: dict[str, int], model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per weight layer, for the record: output channels before (out_channels of the upstream)
    and after, the share of channels removed, and the share of weights that are exactly zero
    (what unstructured pruning's global ranking left in that layer)."""
    report = {}
    for name, module in weight_layers(model).items():
        weight, width = module.weight.detach(), module.weight.shape[0]
        report[name] = {
            "channels_before": before[name],
            "channels": width,
            "channels_removed": round(1 - width / before[name], 6),
            "sparsity": round(int((weight == 0).sum()) / weight.numel(), 6),
        }
    return report


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


def check_no_layer_emptied(model: nn.Module, sparsity: float, step: int, steps: int) -> None:
    """Raise PruningError naming every prunable tensor whose mask is all zeros: the global ranking
    took the whole layer, so the network's output no longer depends on its input (a [8, 16] net
    at 0.97 lost its second conv and scored exactly chance), and fine-tuning cannot bring it back
    since masked weights get no gradient."""
    empty = [f"{n}.weight ({m.weight_mask.numel()} weights)"
             for n, m in weight_layers(model).items() if not m.weight_mask.any()]  # fmt: skip
    if empty:
        raise PruningError(
            f"unstructured sparsity {sparsity:g} zeroes every weight of {', '.join(empty)} at "
            f"step {step} of {steps} (global magnitude ranking took the whole layer, which cuts "
            f"the network); lower the sparsity"
        )


def prune_unstructured(
    model: nn.Module, cfg: PruneParams, train: Split, val: Split, teacher: nn.Module | None = None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Global L1 magnitude pruning of all prunable() tensors to exactly cfg.sparsity.

    Each of cfg.steps steps raises the sparsity along the AGP schedule, ranking the surviving
    weights of all layers together, then fine-tunes. torch.nn.utils.prune keeps the masks applied
    in every forward pass (weight = weight_orig · mask), so pruned weights get no gradient and
    stay zero; at the end the masks are made permanent. The count pruned is round(s · N) of the
    N prunable weights, so the sparsity is exact up to that rounding.

    The global ranking spreads the sparsity unevenly over the layers (layer_report records it),
    but a step that zeroes every weight of a layer is a PruningError (check_no_layer_emptied).
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
        check_no_layer_emptied(model, cfg.sparsity, step, cfg.steps)
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


def pruned_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of the layers structured pruning shrinks: all but the classifier."""
    return {n: w for n, w in out_channels(model).items() if n != "classifier"}


def planned_widths(widths: dict[str, int], ratio: float) -> dict[str, int]:
    """The widths Torch-Pruning's local pruning aims at, in its own arithmetic: int(C · (1 − r))
    of each layer's original C (floor, so each layer keeps within one channel of C · (1 − r))."""
    return {name: int(width * (1 - ratio)) for name, width in widths.items()}


def check_plan(widths: dict[str, int], sparsity: float) -> None:
    """Raise PruningError, before any work, when the sparsity leaves a layer under MIN_CHANNELS;
    the message names those layers and the highest sparsity (in hundredths) that fits them all."""
    plan = planned_widths(widths, sparsity)
    short = [f"{n} ({widths[n]} → {plan[n]})" for n in widths if plan[n] < MIN_CHANNELS]
    if not short:
        return
    highest = int(100 * sparsity)
    while highest > 0 and min(planned_widths(widths, highest / 100).values()) < MIN_CHANNELS:
        highest -= 1
    fix = f"lower the sparsity to at most {highest / 100:g}" if highest else "prune a wider model"
    raise PruningError(
        f"structured sparsity {sparsity:g} leaves too few output channels in {', '.join(short)}: "
        f"every pruned layer keeps at least {MIN_CHANNELS} (Torch-Pruning would leave a layer "
        f"it cannot empty unpruned, and one channel is a bottleneck); {fix}"
    )


def check_widths(achieved: dict[str, int], planned: dict[str, int], step: int, steps: int) -> None:
    """Raise PruningError naming every layer whose width after a pruner step is not the planned
    one (any other width is more than the one channel of rounding off the requested ratio)."""
    off = [f"{n} has {achieved[n]} channels, planned {planned[n]}"
           for n in planned if achieved[n] != planned[n]]  # fmt: skip
    if off:
        raise PruningError(
            f"Torch-Pruning's step {step} of {steps} did not prune as planned: {'; '.join(off)} "
            f"(a layer it refused or coupled to another); lower the sparsity"
        )


def prune_structured(
    model: nn.Module, cfg: PruneParams, train: Split, val: Split, teacher: nn.Module | None = None
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Remove cfg.sparsity of every conv's output channels with Torch-Pruning's MetaPruner.

    The pruner traces the model on a raw uint8 example (its input contract), ranks channel
    groups by cfg.importance (L1/L2 weight magnitude, or first-order Taylor |w · ∂L/∂w| from
    one calibration batch) and removes them in cfg.steps equal steps, fine-tuning after each.
    The classifier's outputs (the 10 classes) are never pruned. The model is changed in place;
    save it with arch=arch_of(model) so it reloads without the pruner.

    Every layer loses the same share (Torch-Pruning's local pruning). check_plan refuses a
    sparsity that would leave a layer under MIN_CHANNELS, and each step's widths are checked
    against the plan. Torch-Pruning's own knobs do not fix a ratio too high for the narrow
    layers: on [16, 32, 64] at 0.97, global_pruning gave [1, 32, 2] and max_pruning_ratio (a cap
    on layers already pruned, not on one step) changed nothing (measured).
    """
    widths = pruned_widths(model)
    check_plan(widths, cfg.sparsity)
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
        # Torch-Pruning's linear schedule: the ratio after step t is t/steps of the final one
        planned = planned_widths(widths, step / float(cfg.steps) * cfg.sparsity)
        check_widths(pruned_widths(model), planned, step, cfg.steps)
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
