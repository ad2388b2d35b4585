"""Pruning: unstructured global magnitude pruning (AGP schedule) and structured channel pruning.

Unstructured pruning zeroes individual weights of every Conv and Linear; the network keeps its
shape, so the gain shows in the compressed (shipped, xz) size of the export, not in its latency.
Structured pruning removes whole channels with Torch-Pruning, of any network: its dependency
graph, traced through the model, couples the layers whose channels must go together (a conv's
output channels, the BatchNorm after it and the next layer's inputs; the convs and shortcuts
that a residual sum adds up; a depthwise conv and the conv feeding it; the slices of a
concatenation), so the network really gets smaller and faster. Both prune gradually,
fine-tuning between steps, because a network recovers from many small cuts far better than from
one big one.

Both are checked, not trusted. Torch-Pruning silently leaves a layer unpruned when the ratio
would empty it (at 0.97 a [16, 32, 64] net came out [16, 32, 1]), so the widths it will aim at
are planned first, per channel group, and a plan or a result off the requested ratio is a
PruningError naming the layers; global magnitude ranking may zero a whole layer, which is one
too.

`prune` is the method's entry (squeeze.methods); prune_unstructured and prune_structured are its
two kinds, and the rest the arithmetic and checks they share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch_pruning.pruner.algorithms.scheduler import linear_scheduler

from squeeze.config.sections import PruneParams
from squeeze.data.spec import Split
from squeeze.data.splits import subset
from squeeze.errors import StageRefused
from squeeze.methods import MethodData, Result
from squeeze.methods.distill import distillation_loss
from squeeze.methods.qat import quantization_aware, snap
from squeeze.methods.train import fit
from squeeze.nets.models import (
    Classifier,
    count_params,
    example_input,
    output_layers,
    weight_layers,
)

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
        (row,) = fit(model, train, val, fit_cfg, loss_fn=loss, part=f"step {step}/{cfg.steps}: ")
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


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the round(sparsity · N) smallest-magnitude of the N prunable() weights, ranked over
    all layers together, in one shot and without fine-tuning (global L1, torch.nn.utils.prune):
    a quick look at what prune_unstructured ends with (squeeze.methods.search's probes)."""
    tensors = prunable(model)
    torch_prune.global_unstructured(
        tensors, pruning_method=torch_prune.L1Unstructured, amount=sparsity
    )
    for module, name in tensors:
        torch_prune.remove(module, name)
    return model


def taylor_gradients(model: nn.Module, batch: Split) -> None:
    """Fill .grad with the cross-entropy gradient of one batch, which TaylorImportance reads.

    Eval mode: the batch only probes the network, it must not move BatchNorm's statistics.
    """
    model.eval().zero_grad()
    logits = model(torch.from_numpy(batch.images))
    F.cross_entropy(logits, torch.from_numpy(batch.labels)).backward()


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels Torch-Pruning removes together, `width` of them: `layers` are the weight
    layers whose output channels are exactly these (the convs a residual sum adds, a depthwise
    conv and the conv feeding it), which all keep the same number; `parts` > 1 for grouped
    channels (a grouped conv, GroupNorm), pruned alike in each of the parts."""

    layers: tuple[str, ...]
    width: int
    parts: int = 1


def channel_groups(pruner: tp.pruner.MetaPruner) -> list[ChannelGroup]:
    """The pruner's channel groups read from its dependency graph, in network order.

    A layer coupled to a group's channels other than one to one (one branch of a
    concatenation that a residual sum adds up, a torch.split) is left out of `layers`: how
    many channels it loses depends on the ranking, so its group is checked by its root."""
    graph = pruner.DG
    order = {name: i for i, (name, _) in enumerate(graph.model.named_modules())}
    weights = set(weight_layers(graph.model).values())
    groups = []
    for group in graph.get_all_groups(pruner.ignored_layers, pruner.root_module_types):
        width = graph.get_out_channels(group[0].dep.target.module)
        layers = {graph._module2name[dep.target.module] for dep, idxs in group
                  if dep.target.module in weights and graph.is_out_channel_pruning_fn(dep.handler)
                  and len(idxs) == graph.get_out_channels(dep.target.module) == width}  # fmt: skip
        if layers:  # (else rooted in a layer that is no Conv2d or Linear, e.g. an LSTM)
            # the pruner's own reading of grouped channels (torch_pruning 1.6.1, BasePruner)
            parts = pruner._get_channel_groups(group)
            groups.append(ChannelGroup(tuple(sorted(layers, key=order.get)), width, parts))
    return sorted(groups, key=lambda g: order[g.layers[0]])


def next_width(group: ChannelGroup, current: int, ratio: float, round_to: int | None) -> int:
    """A group's width after a pruner step at cumulative `ratio`, in Torch-Pruning's own local
    arithmetic (BasePruner._prune): keep int(C₀ · (1 − ratio)) of the original C₀ per part,
    nothing when that is not fewer than now, and with round_to the kept count rounded down to
    a multiple of it (so zero when it is under round_to)."""
    per_part, now = group.width // group.parts, current // group.parts
    removed = now - int(per_part * (1 - ratio))
    if removed <= 0:
        return current
    if round_to:
        kept = current - removed
        removed = min(current - (kept - kept % round_to), now)
    return current - removed * group.parts


def width_plan(
    groups: list[ChannelGroup], ratios: list[float], steps: int, round_to: int | None
) -> list[dict[str, int]]:
    """Every grouped layer's planned output channels after each of the steps: group i pruned to
    ratios[i] of its channels on the linear schedule (step t prunes to t/steps of it), as the
    pruner is configured."""
    widths = [group.width for group in groups]
    schedules = [linear_scheduler(ratio, steps)[1:] for ratio in ratios]
    plan = []
    for step in range(steps):
        widths = [next_width(g, w, schedule[step], round_to)
                  for g, w, schedule in zip(groups, widths, schedules, strict=True)]  # fmt: skip
        plan.append({layer: w for g, w in zip(groups, widths, strict=True) for layer in g.layers})
    return plan


def check_plan(
    groups: list[ChannelGroup], sparsity: float, steps: int, round_to: int | None
) -> None:
    """Raise PruningError, before any work, when the sparsity leaves a channel group under
    MIN_CHANNELS; the message names the group's layers and the highest sparsity (in hundredths)
    that fits them all."""

    def short(ratio: float) -> list[str]:
        final = width_plan(groups, [ratio] * len(groups), steps, round_to)[-1]
        return [f"{' + '.join(g.layers)} ({g.width} → {final[g.layers[0]]})"
                for g in groups if final[g.layers[0]] < MIN_CHANNELS]  # fmt: skip

    problems = short(sparsity)
    if not problems:
        return
    highest = int(100 * sparsity)
    while highest > 0 and short(highest / 100):
        highest -= 1
    fix = f"lower the sparsity to at most {highest / 100:g}" if highest else "prune a wider model"
    rounding = f" (widths rounded down to a multiple of round_to {round_to})" if round_to else ""
    raise PruningError(
        f"structured sparsity {sparsity:g} leaves too few output channels in "
        f"{', '.join(problems)}{rounding}: every pruned layer keeps at least {MIN_CHANNELS} "
        f"(Torch-Pruning would leave a layer it cannot empty unpruned, and one channel is a "
        f"bottleneck); {fix}"
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


def group_ratios(groups: list[ChannelGroup], policy: dict[str, float]) -> list[float]:
    """Each group's share of channels to remove under a per-layer policy ({group's first layer:
    share}; a group it does not name keeps all its channels). PruningError naming the keys that
    are no group's first layer, and the groups there are."""
    known = {g.layers[0] for g in groups}
    unknown = sorted(set(policy) - known)
    if unknown:
        raise PruningError(
            f"the per-layer policy names {', '.join(unknown)}, which roots no channel group of "
            f"this network; its groups are named by their first layer: {', '.join(sorted(known))}"
        )
    return [policy.get(g.layers[0], 0.0) for g in groups]


def structured_pruner(
    model: Classifier, cfg: PruneParams, policy: dict[str, float] | None = None
) -> tuple[tp.pruner.MetaPruner, list[ChannelGroup], list[float]]:
    """Torch-Pruning's MetaPruner for cfg (cfg.steps linear steps), its channel groups and each
    group's target share: cfg.sparsity for all, or group_ratios(policy) (Torch-Pruning's
    pruning_ratio_dict, every layer of a group at its group's share). check_plan and
    group_ratios refuse, before any work, a plan some group cannot take."""
    example = example_input(model.spec)
    ignored = list(output_layers(model, example).values())

    def pruner(ratio_dict: dict[nn.Module, float] | None) -> tp.pruner.MetaPruner:
        return tp.pruner.MetaPruner(
            model, example, importance=IMPORTANCE[cfg.importance](), pruning_ratio=cfg.sparsity,
            iterative_steps=cfg.steps, iterative_pruning_ratio_scheduler=linear_scheduler,
            ignored_layers=ignored, round_to=cfg.round_to, pruning_ratio_dict=ratio_dict,
        )  # fmt: skip

    found = pruner(None)
    groups = channel_groups(found)
    if policy is None:
        check_plan(groups, cfg.sparsity, cfg.steps, cfg.round_to)
        return found, groups, [cfg.sparsity] * len(groups)
    ratios = group_ratios(groups, policy)
    final = width_plan(groups, ratios, cfg.steps, cfg.round_to)[-1]
    short = [f"{g.layers[0]} ({g.width} → {final[g.layers[0]]})"
             for g in groups if final[g.layers[0]] < MIN_CHANNELS]  # fmt: skip
    if short:
        raise PruningError(
            f"the per-layer policy leaves too few output channels in {', '.join(short)}: every "
            f"pruned layer keeps at least {MIN_CHANNELS}; lower those layers' shares"
        )
    modules = dict(model.named_modules())
    ratio_dict = {modules[layer]: ratio for g, ratio in zip(groups, ratios, strict=True)
                  for layer in g.layers}  # fmt: skip
    return pruner(ratio_dict), groups, ratios


def prune_structured(
    model: Classifier,
    cfg: PruneParams,
    train: Split,
    val: Split,
    teacher: nn.Module | None = None,
    policy: dict[str, float] | None = None,
) -> tuple[Classifier, list[dict[str, Any]]]:
    """Remove output channels of every channel group with Torch-Pruning: cfg.sparsity of each,
    or each group's share under a per-layer policy.

    The pruner traces the model on a raw (1, H, W, C) uint8 example (its input contract) into a
    dependency graph, so layers whose channels must go together are pruned together: a
    residual sum's convs and shortcuts, a depthwise conv and the conv feeding it, the slices of
    a concatenation. It ranks channels by cfg.importance (L1/L2 weight magnitude, or first-order
    Taylor |w · ∂L/∂w| from one calibration batch) and removes them in cfg.steps equal steps,
    fine-tuning after each; with cfg.round_to every kept width is a multiple of it. The output
    layers (output_layers: the K classes) are never pruned. The model is changed in place;
    save_checkpoint records its structure, so it reloads without the pruner.

    Without a policy every group loses the same share (Torch-Pruning's local pruning); with one
    (the budget search's, squeeze.methods.search: {group's first layer: share}) each group loses
    its own (as AMC and NetAdapt choose per layer). check_plan refuses a sparsity that would
    leave a group under MIN_CHANNELS, and each step's widths are checked against the plan.
    Torch-Pruning's own knobs do not fix a ratio too high for the narrow layers: on [16, 32, 64]
    at 0.97, global_pruning gave [1, 32, 2] and max_pruning_ratio (a cap on layers already
    pruned, not on one step) changed nothing (measured).
    """
    pruner, groups, ratios = structured_pruner(model, cfg, policy)
    plan = width_plan(groups, ratios, cfg.steps, cfg.round_to)
    rng = np.random.default_rng(cfg.fit.seed)
    calibration = subset(train, rng.choice(len(train), cfg.fit.batch_size, replace=False))
    parts = step_splits(train, cfg.fit.epochs, cfg.steps, cfg.fit.seed)
    history = []
    for step in range(1, cfg.steps + 1):
        if cfg.importance == "taylor":
            taylor_gradients(model, calibration)
        pruner.step()
        check_widths(out_channels(model), plan[step - 1], step, cfg.steps)
        model.zero_grad(set_to_none=True)
        history.append(fine_tune(model, parts[step - 1], val, cfg, step, teacher))
    return model.eval(), history


def prune(
    model: nn.Module, cfg: PruneParams, data: MethodData, *, policy: dict[str, float] | None = None
) -> Result[nn.Module]:
    """Prune model as cfg.kind says, fine-tuning after each of cfg.steps steps.

    unstructured: global L1 magnitude pruning of every Conv2d and Linear weight to exactly
    cfg.sparsity, on the cubic AGP schedule (Zhu & Gupta 2017; torch.nn.utils.prune).
    structured: cfg.sparsity of the output channels of every channel group removed (or each
    group's own share under `policy`), ranked by cfg.importance (Torch-Pruning's MetaPruner,
    Fang et al. 2023). With cfg.qat the fine-tuning
    is quantization-aware and the weights end on that grid (squeeze.methods.qat).

    Args:
        model: a Classifier ((B, H, W, C) uint8 -> (B, K)); changed in place, so pass a copy to
            keep the original.
        cfg: kind, sparsity (a share of weights or of channels, in (0, 1)), steps, importance,
            round_to, distillation (distill_alpha, temperature), qat, and the fine-tuning fit
            (fit.epochs passes over data.train in all, shared out over the steps).
        data: train, val, and the teacher fine-tuning distils from when cfg.distill_alpha > 0.
        policy: structured only: {first layer of a channel group: share of its channels removed,
            in [0, 1)}, a group not named keeping all (squeeze.methods.search writes these);
            None: cfg.sparsity for every group.

    Returns:
        Result(the pruned model in eval mode on the CPU, one curve row per step, record): record
        holds parameters_before, sparsity (share of exact zeros over sparsity_over, the
        prunable weights), channels_removed (share of all conv output channels) and layers
        (layer_report: every weight layer's widths before and after, and its sparsity).

    Raises:
        PruningError: a sparsity some layer cannot take (before any work for structured).
        ValueError: cfg.distill_alpha > 0 and data.teacher is None.
        TrainingError: fine-tuning diverged (train.fit).
    """
    before, channels, widths = count_params(model), conv_channels(model), out_channels(model)
    if cfg.kind == "structured":
        pruned, history = prune_structured(model, cfg, data.train, data.val, data.teacher, policy)
    elif policy is not None:
        raise ValueError("a per-layer policy is structured pruning's; prune.kind is unstructured")
    else:
        pruned, history = prune_unstructured(model, cfg, data.train, data.val, data.teacher)
    snap(pruned, cfg.qat)
    record = {
        "parameters_before": before,
        "sparsity": round(weight_sparsity(pruned), 6),  # share of zeros in these tensors:
        "sparsity_over": prunable_names(pruned),
        "channels_removed": round(1 - conv_channels(pruned) / channels, 6),
        "layers": layer_report(widths, pruned),
    }
    return Result(pruned, history, record)
