"""The budget search: from "1 point, 0.1 ms on this CPU" to per-layer pruning policies.

A user states a budget (params `search`: the accuracy they can lose, the latency and the shipped
size they can afford, and an objective among what fits). The search turns it into recipes for
squeeze's own structured pruning, in the field's practice for small machines:

1. **Sensitivity pass** (Li et al. 2017, "Pruning Filters for Efficient ConvNets"; Distiller's
   sensitivity analysis): every channel group is pruned alone at each share of the grid, its
   BatchNorm statistics re-estimated (EagleEye's adaptive BN, Li et al. 2020), and scored on the
   search split without fine-tuning. A group's range ends below the first share that costs more
   than search.sensitivity_limit: the sampler never spends a trial on a share that alone breaks
   the network.
2. **Constrained multi-objective sampling** with Optuna's TPE (Watanabe 2023; constraints as in
   Optuna's `constraints_func`). A trial (a Choice) picks each group's share within its range
   (a per-layer policy, as AMC and NetAdapt choose it), then the share of the remaining weights
   to zero (global L1 magnitude, as Deep Compression prunes), the weight type of the shipped
   file (fp32, or int8 / int4 by onnxruntime's static quantization), whether the last fine-tune
   is quantization-aware, whether the first layer stays fp32, and the distillation weight,
   temperature and learning rate; where search.students offers widths below 1, it first picks
   whether it compresses the teacher or a student of its network at that width, distilled from
   it once before the trials (squeeze.methods.students). A one-shot probe of that choice
   (BatchNorm re-estimated, EagleEye's adaptive BN, Li et al. 2020) is exported as it would
   ship; its latency and size are the trial's own, so a probe that breaks the latency or size
   limit ends the trial there, without a fine-tune (early stopping). Otherwise the choice is
   built as a finalist is (compress, shipped_form), in one step with a short fine-tune on a
   subset of train. Its figures are measured, never estimated: accuracy on the search split,
   batch-1 p50 latency of the shipped ONNX file in onnxruntime, and that file's shipped (xz)
   size. The sampler maximises the accuracy and minimises the size, or the latency when the
   objective is `fastest` (cost_metric), under the budget's limits as Optuna constraints.
   Where only latency counts (objective fastest or most_accurate, no max_shipped_bytes), a lever
   that does not make the teacher's export faster (int4 weights without int4 kernels, zeroed
   weights in dense kernels) is timed once and left out of the space (speed_levers).
3. **A uniform baseline** searched the same way over one share for every group, so that the
   per-layer policy is compared with uniform width at the same budget.

The finalists are the best trials within the budget under search.objective
(squeeze.decide.choose), built in full by stages/finalist.py as ordinary candidates; evaluate,
the gate (on validation) and promote then decide as for any other. Trials read only train (the
fine-tune) and the search split (the scores): never validation, never test.

The studies live in Optuna's RDB storage (search.storage; SQLite in the workspace by default),
named by what determines their trials (data, teacher, space, budget), so a killed search
resumes: finished trials are kept, the one under way when it died is marked failed and run
again. Every trial's sampler is seeded by (search.seed, its number), so a resumed search asks
what an uninterrupted one would have asked. A search that latency does not steer (objective
smallest or most_accurate, no max_latency_ms) is deterministic: the same data, teacher and
params give the same trials and finalists in every run. One that it steers is not, since two
timings of one export differ; its finalists are still rebuilt byte for byte from
search/finalists.json.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
import torch
from pydantic import BaseModel

from squeeze.config.sections import EvaluateParams, PruneParams, QuantizeParams, SearchParams
from squeeze.data.spec import Split
from squeeze.data.splits import stratified_indices, subset
from squeeze.decide.choose import ACCURACY, LATENCY, POLICIES, SEARCH_ACCURACY, SIZE, ranked
from squeeze.errors import StageRefused
from squeeze.measure.export import export_onnx
from squeeze.measure.runtime import accuracy_of, latencies
from squeeze.methods import MethodData
from squeeze.methods.merge import reestimate_bn
from squeeze.methods.prune import (
    MIN_CHANNELS,
    ChannelGroup,
    PruningError,
    check_widths,
    magnitude_prune,
    out_channels,
    prune,
    structured_pruner,
    width_plan,
)
from squeeze.methods.quantize import FP32_SOURCE, quantizable_layers, quantize
from squeeze.methods.students import distilled_student
from squeeze.methods.train import predict
from squeeze.nets.models import (
    Classifier,
    count_params,
    example_input,
    output_layers,
    weight_layers,
)
from squeeze.registry.package import pack

BN_IMAGES = 1024  # training images BatchNorm is re-estimated on after a trial's pruning
# Each finalist past the first costs at most this share of the one before it: front neighbours
# a few percent apart in cost are near-duplicates to the gate, so a full build (the dear part of
# the search) tests each further step of compression instead.
SPACING = 2 / 3
# the teacher put through a trial's own fine-tune, uncompressed: what a trial's drop is measured
# from (search_reference)
REFERENCE = "trial_reference_accuracy"
RESCORED = "rescored_accuracy"  # a trial's accuracy on the search split at the second rung
WEIGHT_SENSITIVITY = "weight_sensitivity"  # the study's record of weight_sensitivity's drops
SPEED_LEVERS = "speed_levers"  # the study's record of speed_levers' timings and what it kept
# Where only latency counts, a lever is searched only if it makes the teacher's export at least
# this much faster (p50 ratio): a smaller gain is within what two timings of one file differ by
MIN_SPEEDUP = 1.05
PRECISION = ("fp32", "int8", "int4")  # the weight types, the most precise first
PER_LAYER, UNIFORM = "per_layer", "uniform"  # the two studies
TEACHER_ONNX = "teacher.onnx"  # in the search's scratch folder, timed beside every trial
TEACHER_MS = "teacher_latency_ms_p50"
KIND = "kind"  # a pooled trial's study (PER_LAYER or UNIFORM): see pooled


class SearchError(StageRefused):
    """The search cannot run on this network, or no trial met the budget."""


@dataclass(frozen=True, eq=False)
class SearchData:
    """What the search reads: train (fine-tunes, BatchNorm statistics) and the search split
    (every score), both (N, H, W, C) uint8 images with (N,) int64 labels. Never val or test."""

    train: Split
    search: Split


def grid_to(top: float, step: float) -> list[float]:
    """0, step, 2·step, ... up to top (rounded to 6 places)."""
    return [round(k * step, 6) for k in range(int(round(top / step, 9)) + 1)]


def shares(cfg: SearchParams) -> list[float]:
    """The grid of channel shares: 0, step, 2·step, ... up to max_sparsity."""
    return grid_to(cfg.max_sparsity, cfg.sparsity_step)


@dataclass(frozen=True)
class Choice:
    """What a trial asks for and a finalist is built from (its recipe): the teacher's channel
    groups each pruned by its share (policy: {group's first layer: share}, a group not named
    keeping all), then `sparsity` of the remaining weights zeroed (global L1; 0: none), then the
    export quantized to `weights` (fp32: not), the last fine-tune quantization-aware when `qat`,
    the first weight layers kept fp32 when `fp32_first_layer`, and so are the weight layers
    named in fp32_layers (ONNX node names, squeeze.methods.quantize.quantizable_layers); every
    fine-tune distils from the teacher with weight distill_alpha at `temperature`; a trial's
    fine-tunes at peak learning rate lr (a finalist's at search.fit.lr: an lr tuned over a
    short horizon comes out too small for a long one, Wu et al. 2018, Understanding
    Short-Horizon Bias in Stochastic Meta-Optimization). With width < 1 all of it applies to
    the distilled student of that width (squeeze.methods.students) instead of the teacher, its
    channels all kept (policy empty: the width is its structured choice)."""

    policy: dict[str, float]
    distill_alpha: float
    temperature: float
    lr: float
    sparsity: float
    weights: str
    qat: bool
    fp32_first_layer: bool
    fp32_layers: list[str]
    width: float

    @classmethod
    def of(cls, recipe: dict[str, Any]) -> Choice:
        """The choice a recipe (search/recipes/NAME.json) records."""
        return cls(**{key: recipe[key] for key in cls.__dataclass_fields__})

    def grid(self) -> str | None:
        """The weights the last fine-tune trains on the grid of (prune.*.qat), or None."""
        return self.weights if self.qat and self.weights != "fp32" else None


def prune_cfg(
    cfg: SearchParams, choice: Choice, steps: int, fit_cfg: Any, kind: str = "structured"
) -> PruneParams:  # fmt: skip
    """The PruneParams of one of a choice's two pruning passes, for a trial (steps 1,
    cfg.trial_fit) or a finalist (cfg.steps, cfg.fit): structured (every group's share from the
    policy; sparsity is only the pruner's default) or unstructured (choice.sparsity). The last
    pass fine-tunes on choice.grid(). (What a finalist reads of cfg here is
    squeeze.config.params.FINALIST_KEYS, its stage's params.)"""
    last = kind == "unstructured" or not choice.sparsity
    return PruneParams(
        upstream="teacher", kind=kind,
        sparsity=choice.sparsity if kind == "unstructured" else cfg.max_sparsity, steps=steps,
        importance=cfg.importance, round_to=cfg.round_to, distill_alpha=choice.distill_alpha,
        temperature=choice.temperature, qat=choice.grid() if last else None,
        fit=fit_cfg,
    )  # fmt: skip


class Passes(BaseModel):
    """The pruning passes compress ran, in order: a finalist card's `params` (its lineage)."""

    passes: list[PruneParams]


def compress(
    model: Classifier, choice: Choice, cfg: SearchParams, steps: int, fit_cfg: Any,
    data: MethodData, zeroing_epochs: int | None = None,
) -> tuple[Classifier, list[dict[str, Any]], dict[str, Any], Passes]:  # fmt: skip
    """A copy of `model` (the teacher, or the choice's student: Inputs.start) with the choice's
    channels removed, then its weights zeroed, each over `steps` steps with fit_cfg's fine-tune
    distilled from data.teacher (squeeze.methods.prune), the zeroing pass for `zeroing_epochs`
    when given (a finalist's: cfg.zeroing_epochs) instead of fit_cfg.epochs: (the model in eval
    mode, one curve row per step, prune's record of the channels with the final sparsity, the
    PruneParams of each pass that ran). A choice that removes no channel but zeroes weights has
    the zeroing pass only: a channel pass would be a fine-tune of the start alone, and the
    zeroing pass fine-tunes anyway (a finalist's build would take twice as long for it). `model`
    is left unchanged.

    Raises:
        PruningError: the sparsity empties a layer (prune_unstructured).
    """
    zeroing_fit = fit_cfg.model_copy(update={"epochs": zeroing_epochs or fit_cfg.epochs})
    zeroing = (prune_cfg(cfg, choice, steps, zeroing_fit, "unstructured") if choice.sparsity
               else None)  # fmt: skip
    if zeroing is not None and not choice.policy:
        weights = prune(copy.deepcopy(model), zeroing, data)
        return weights.model, weights.history, weights.record, Passes(passes=[zeroing])
    structured = prune_cfg(cfg, choice, steps, fit_cfg)
    channels = prune(copy.deepcopy(model), structured, data, policy=choice.policy)
    if zeroing is None:
        return channels.model, channels.history, channels.record, Passes(passes=[structured])
    weights = prune(channels.model, zeroing, data)
    record = channels.record | {k: weights.record[k] for k in ("sparsity", "sparsity_over")}
    passes = Passes(passes=[structured, zeroing])
    return weights.model, channels.history + weights.history, record, passes


def quantize_cfg(cfg: SearchParams, choice: Choice) -> QuantizeParams:
    """How a quantized choice's export is quantized: static, per-channel, choice.weights."""
    return QuantizeParams(
        upstream="teacher", mode="static", weights=choice.weights, per_channel=True,
        calibration_samples=cfg.calibration_samples, fp32_first_layer=choice.fp32_first_layer,
    )  # fmt: skip


def shipped_form(
    model: Classifier, choice: Choice, cfg: SearchParams, data: MethodData, folder: Path
) -> tuple[Path, dict[str, Any]]:
    """The model's ONNX export as the choice ships it, in `folder` (the fp32 export is always
    folder/FP32_SOURCE): fp32, or quantized
    (squeeze.methods.quantize: calibrated on data.train, an int4 scheme chosen on data.val),
    with quantize's record ({} for fp32)."""
    path = folder / FP32_SOURCE
    export_onnx(model, path)
    if choice.weights == "fp32":
        return path, {}
    result = quantize(
        path, quantize_cfg(cfg, choice), data, qat=choice.grid(), keep_fp32=choice.fp32_layers
    )
    out = folder / "model.onnx"
    out.write_bytes(result.model)
    return out, result.record


def feasible_shares(group: ChannelGroup, grid: list[float], cfg: SearchParams) -> list[float]:
    """The shares of the grid that leave the group MIN_CHANNELS or more, with a trial's one step
    and with a finalist's cfg.steps (round_to applied at every step)."""
    return [
        share for share in grid
        if all(width_plan([group], [share], steps, cfg.round_to)[-1][group.layers[0]]
               >= MIN_CHANNELS for steps in (1, cfg.steps))
    ]  # fmt: skip


def channel_groups_of(teacher: Classifier, cfg: SearchParams) -> list[ChannelGroup]:
    """The teacher's prunable channel groups; SearchError naming the network's weight layers
    when Torch-Pruning finds none it can prune (nothing to search)."""
    try:
        _, groups, _ = structured_pruner(copy.deepcopy(teacher), probe_cfg(cfg), {})
    except PruningError as err:
        raise SearchError(f"params.yaml search: {err}") from err
    if not groups:
        outputs = set(output_layers(teacher, example_input(teacher.spec)))
        layers = ", ".join(f"{name} ({'output layer' if name in outputs else 'not prunable'})"
                           for name in weight_layers(teacher)) or "none"  # fmt: skip
        raise SearchError(
            f"params.yaml search: the network has no channel group Torch-Pruning can prune, so "
            f"the search has nothing to choose; its weight layers: {layers}. Output layers keep "
            "their K classes; search a network with hidden Conv2d or Linear layers, or set "
            "search.finalists: 0"
        )
    return groups


def plain(cfg: SearchParams) -> Choice:
    """The choice that compresses nothing: fp32, no distillation, trial_fit's own lr."""
    return Choice({}, 0.0, cfg.temperature[0], cfg.trial_fit.lr, 0.0, "fp32", False, False, [],
                  1.0)  # fmt: skip


def probe_cfg(cfg: SearchParams) -> PruneParams:
    """The structured PruneParams of a one-step probe: no fine-tune reads its fit."""
    return prune_cfg(cfg, plain(cfg), 1, cfg.trial_fit)


def prune_once(start: Classifier, policy: dict[str, float], cfg: PruneParams) -> Classifier:
    """A copy of `start` with each group pruned to its share in one step (no fine-tune)."""
    model = copy.deepcopy(start)
    pruner, groups, ratios = structured_pruner(model, cfg, policy)
    pruner.step()
    check_widths(out_channels(model), width_plan(groups, ratios, 1, cfg.round_to)[0], 1, 1)
    model.zero_grad(set_to_none=True)
    return model.eval()


def bn_images(train: Split, seed: int) -> np.ndarray:
    """BN_IMAGES training images (seeded) that BatchNorm is re-estimated on."""
    rng = np.random.default_rng(seed)
    return train.images[np.sort(rng.choice(len(train), min(BN_IMAGES, len(train)), replace=False))]


def torch_accuracy(model: torch.nn.Module, split: Split) -> float:
    """Accuracy of a torch model on a split (the sensitivity pass: quick, no export)."""
    logits = predict(model, torch.from_numpy(split.images))
    return float((logits.argmax(1).numpy() == split.labels).mean())


def distinct_widths(group: ChannelGroup, grid: list[float], cfg: SearchParams) -> list[float]:
    """The shares of grid, the first of each width a trial's one step leaves the group: with
    cfg.round_to several shares keep the same channels (10% to 50% of 16 all keep 8 with
    round_to 8), and a per-layer choice among them would be one choice asked as several (TPE
    would weigh it several times, the sensitivity pass time it several times)."""
    seen, out = set(), []
    for share in grid:
        width = width_plan([group], [share], 1, cfg.round_to)[0][group.layers[0]]
        if width not in seen:
            seen.add(width)
            out.append(share)
    return out


def sensitivity(
    teacher: Classifier, groups: list[ChannelGroup], data: SearchData, cfg: SearchParams,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Accuracy drop on the search split of every group pruned alone at each share of the grid
    that leaves it a width of its own (distinct_widths; {group's first layer: {share: drop}}),
    BatchNorm re-estimated, no fine-tune. A group's shares stop at the first whose drop exceeds
    cfg.sensitivity_limit (that one recorded). The drop is against the teacher with its
    BatchNorm re-estimated on the same images, so that it is the share's own: against the
    teacher as trained, every share of every group would carry what re-estimation alone moves
    (on a small or unusual dataset, points)."""
    images = bn_images(data.train, cfg.seed)
    one_step = probe_cfg(cfg)
    unpruned = copy.deepcopy(teacher)
    reestimate_bn(unpruned, images)
    reference = torch_accuracy(unpruned, data.search)
    drops: dict[str, dict[str, float]] = {}
    for group in groups:
        root, drops[group.layers[0]] = group.layers[0], {}
        for share in distinct_widths(group, feasible_shares(group, shares(cfg), cfg)[1:], cfg):
            model = prune_once(teacher, {root: share}, one_step)
            reestimate_bn(model, images)
            drop = round(reference - torch_accuracy(model, data.search), 6)
            drops[root][str(share)] = drop
            if drop > cfg.sensitivity_limit:
                break
        log(f"sensitivity {root} ({group.width} channels): " + ", ".join(
            f"{float(s):.0%} → {d:+.1%}" for s, d in drops[root].items()))  # fmt: skip
    return drops


def weight_sensitivity(
    source: Path, data: MethodData, cfg: SearchParams, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Accuracy drop on the search split (data.val) of the fp32 export `source` with one weight
    layer quantized alone, the others fp32 ({layer: drop} in graph order, the layers named as
    in squeeze.methods.quantize.quantizable_layers), to the lowest precision in cfg.weights
    (int4, else int8), calibrated on data.train. {} when no trial quantizes or keeps a layer
    fp32 (cfg.weights fp32 only, or cfg.fp32_layers [0, 0]). The per-layer sensitivity
    analysis of Wu et al. 2020 (Integer Quantization for Deep Learning Inference, sec. 6):
    the layers that lose most stay fp32 (Context.fp32_order)."""
    lowest = next((w for w in ("int4", "int8") if w in cfg.weights), None)
    if lowest is None or not cfg.fp32_layers[1]:
        return {}
    quant = quantize_cfg(cfg, replace(plain(cfg), weights=lowest))
    reference = accuracy_of(source, data.val)
    layers = quantizable_layers(source)
    drops = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one_layer.onnx"
        for layer in layers:
            others = [name for name in layers if name != layer]
            out.write_bytes(quantize(source, quant, data, keep_fp32=others).model)
            drops[layer] = round(reference - accuracy_of(out, data.val), 6)
    log(f"weight sensitivity ({lowest}, one layer at a time): " + ", ".join(
        f"{layer} {drop:+.1%}" for layer, drop in drops.items()))  # fmt: skip
    return drops


def size_counts(cfg: SearchParams) -> bool:
    """Whether the budget rewards a smaller file: objective smallest, or a max_shipped_bytes."""
    return cfg.objective == "smallest" or cfg.max_shipped_bytes is not None


def speed_space(cfg: SearchParams, p50: dict[str, float]) -> dict[str, Any]:
    """The part of the space worth searching where only latency counts (not size_counts), from
    the batch-1 p50 (ms) of the teacher's export as each lever leaves it: `fp32`, each weight
    type of cfg.weights, and `zeroed` (cfg.max_unstructured of its weights zeroed, fp32).

    A weight type stays only if it is at least MIN_SPEEDUP faster than every more precise type
    the space allows: otherwise the more precise type gives the same choice as fast and more
    accurate (on CPUs without int4 kernels onnxruntime's int4 weights run slower than fp32).
    Unstructured sparsity stays only if the zeroed export is MIN_SPEEDUP faster than the dense
    one (onnxruntime's dense kernels skip no zeros, so it usually is not). With no quantized type
    left, qat, fp32_first_layer and fp32_layers have nothing to act on and are fixed off.
    Returns the SearchParams updates: {weights, max_unstructured, qat, fp32_first_layer,
    fp32_layers}, the values of cfg where a lever stays."""
    weights = [
        w for w in cfg.weights
        if all(p50[w] * MIN_SPEEDUP <= p50[v]
               for v in PRECISION[: PRECISION.index(w)] if v in cfg.weights)
    ]  # fmt: skip
    quantized = any(w != "fp32" for w in weights)
    sparse = p50["zeroed"] * MIN_SPEEDUP <= p50["fp32"]
    return {
        "weights": weights,
        "max_unstructured": cfg.max_unstructured if sparse else 0.0,
        "qat": list(cfg.qat) if quantized else [False],
        "fp32_first_layer": list(cfg.fp32_first_layer) if quantized else [False],
        "fp32_layers": list(cfg.fp32_layers) if quantized else [0, 0],
    }


def speed_levers(
    teacher: Classifier, source: Path, data: MethodData, cfg: SearchParams,
    timing: EvaluateParams, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Time what each lever does to the teacher's export `source` and narrow the space to the
    levers that make it faster (speed_space), where only latency counts; {} where size counts
    (every lever makes the file smaller). The exports (fp32, each quantized type of cfg.weights
    calibrated on data.train, and cfg.max_unstructured of the weights zeroed by global L1) are
    timed together in interleaved rounds (squeeze.measure.runtime.latencies).

    Returns:
        {"latency_ms_p50": {lever: ms}, "space": speed_space's updates}, or {}.
    """
    if size_counts(cfg):
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32": source, "zeroed": Path(tmp) / "zeroed.onnx"}
        export_onnx(magnitude_prune(copy.deepcopy(teacher), cfg.max_unstructured), paths["zeroed"])
        for weights in (w for w in cfg.weights if w != "fp32"):
            paths[weights] = Path(tmp) / f"{weights}.onnx"
            quant = quantize_cfg(cfg, replace(plain(cfg), weights=weights))
            paths[weights].write_bytes(quantize(source, quant, data).model)
        timed = latencies(paths, data.val.images[0], timing)
    p50 = {lever: timed[lever][LATENCY] for lever in paths}
    space = speed_space(cfg, p50)
    dropped = [w for w in cfg.weights if w not in space["weights"]]
    if not space["max_unstructured"] and cfg.max_unstructured:
        dropped.append(f"{cfg.max_unstructured:.0%} of weights zeroed")
    log("speed levers (teacher's export, p50): " + ", ".join(
        f"{lever} {ms:.3f} ms" for lever, ms in p50.items()) + "; not searched, as no faster: "
        + (", ".join(dropped) or "none"))  # fmt: skip
    return {LATENCY: p50, "space": space}


def fp32_order(drops: dict[str, float]) -> list[str]:
    """The layers of weight_sensitivity's drops, the most sensitive first (ties: graph order)."""
    return sorted(drops, key=lambda layer: -drops[layer])


def ranges(
    groups: list[ChannelGroup], drops: dict[str, dict[str, float]], cfg: SearchParams
) -> dict[str, list[float]]:
    """Each group's searchable shares: 0, then the grid's shares in order while their solo drop
    stays within cfg.sensitivity_limit."""
    out = {}
    for group in groups:
        kept = [0.0]
        for share, drop in drops[group.layers[0]].items():
            if drop > cfg.sensitivity_limit:
                break
            kept.append(float(share))
        out[group.layers[0]] = kept
    return out


@dataclass(frozen=True, eq=False)
class Inputs:
    """What a trial's fine-tune reads, all in memory, so that it runs where no file of the
    workspace is (a Dask worker): the teacher, the trial's training subset, the search split
    (its score, and the int4 scheme's choice), the search params and the distilled students
    by width (search.students.widths below 1)."""

    teacher: Classifier
    fine_tune: Split
    search: Split
    cfg: SearchParams
    students: dict[float, Classifier]

    def start(self, choice: Choice) -> Classifier:
        """What the choice compresses: the teacher, or its student of choice.width."""
        return self.students[choice.width] if choice.width < 1 else self.teacher


def fine_tuned(choice: Choice, inputs: Inputs) -> tuple[bytes, float]:
    """The choice built as its finalist is (compress), in one step with cfg.trial_fit on the
    trial's training subset, exported as it ships (shipped_form): (that ONNX file's bytes, its
    accuracy on the search split). Reads and leaves no file: it runs alike in the search's
    process and on a Dask worker (squeeze.methods.workers).

    Raises:
        PruningError: the choice's sparsity empties a layer.
    """
    cfg = inputs.cfg
    torch.set_num_threads(cfg.trial_fit.threads)
    # what draws from torch's global generator (dropout) starts alike in every build, so a
    # choice scores the same whatever trials ran before it in this process (a resumed search)
    torch.manual_seed(cfg.trial_fit.seed)
    data = MethodData(inputs.fine_tune, inputs.search, inputs.teacher)
    # the trial's own lr: searched for this short fine-tune only (a finalist's is cfg.fit.lr)
    fit = cfg.trial_fit.model_copy(update={"lr": choice.lr})
    model, _, _, _ = compress(inputs.start(choice), choice, cfg, 1, fit, data)
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = shipped_form(model, choice, cfg, data, Path(tmp))
        return path.read_bytes(), accuracy_of(path, inputs.search)


def attempt(choice: Choice, inputs: Inputs) -> tuple[bytes, float] | PruningError:
    """fine_tuned's result, or the PruningError it raised (a sparsity that empties a layer: the
    trial stops early), returned rather than raised so that one choice cannot end a batch."""
    try:
        return fine_tuned(choice, inputs)
    except PruningError as err:
        return err


# a batch's attempts, in order, each with where it ran ("" for this process)
TrialFit = tuple[tuple[bytes, float] | PruningError, str]
Pool = Callable[[list[Choice], Inputs], list[TrialFit]]


def one_by_one(choices: list[Choice], inputs: Inputs) -> list[TrialFit]:
    """attempt of each choice in turn, in this process (the Pool of `dvc repro`)."""
    return [(attempt(choice, inputs), "") for choice in choices]


@dataclass(frozen=True, eq=False)
class Context:
    """Everything a trial reads: the teacher, the data, the groups' ranges and the settings, and
    the pool its fine-tune runs on."""

    teacher: Classifier
    data: SearchData
    cfg: SearchParams
    timing: EvaluateParams
    ranges: dict[str, list[float]]
    uniform: list[float]  # the shares every group can take at once
    fp32_order: list[str]  # weight layers, the most sensitive to quantization first
    fine_tune: Split  # the trial's training subset
    bn_images: np.ndarray
    scratch: Path
    pool: Pool
    teacher_ms: float  # the teacher export's p50, kept in the study: what cost scales by
    students: dict[float, Classifier]  # by width (distilled_students)

    def inputs(self) -> Inputs:
        return Inputs(self.teacher, self.fine_tune, self.data.search, self.cfg, self.students)


def suggest(trial: optuna.Trial, ctx: Context, study: str) -> Choice:
    """The Choice the trial's sampler asks for: the width (the teacher, or a distilled student),
    then for the teacher each group's share in its range (per_layer) or one share for all
    (uniform), and the rest of the space alike in both studies. A range of one value is not
    asked (Optuna would record a constant)."""
    cfg = ctx.cfg

    def pick(name: str, choices: list[Any]) -> Any:
        return trial.suggest_categorical(name, choices) if len(choices) > 1 else choices[0]

    width = pick("width", sorted(cfg.students.widths))
    if width < 1:  # a student keeps its channels (Choice): no share is asked
        policy = {}
    elif study == UNIFORM:
        share = trial.suggest_categorical("share", ctx.uniform)
        policy = dict.fromkeys(ctx.ranges, share)
    else:
        policy = {root: trial.suggest_categorical(root, choices)
                  for root, choices in ctx.ranges.items() if len(choices) > 1}  # fmt: skip

    def between(name: str, bounds: list[float], log: bool) -> float:
        low, high = bounds
        return trial.suggest_float(name, low, high, log=log) if high > low else low

    weights = pick("weights", list(cfg.weights))
    low, high = (min(n, len(ctx.fp32_order)) for n in cfg.fp32_layers)
    kept = trial.suggest_int("fp32_layers", low, high) if high > low else low
    return Choice(
        policy={root: share for root, share in policy.items() if share},
        distill_alpha=between("distill_alpha", cfg.distill_alpha, False),
        temperature=between("temperature", cfg.temperature, True),
        lr=between("lr", cfg.lr, True),
        sparsity=pick("sparsity", grid_to(cfg.max_unstructured, cfg.sparsity_step)),
        weights=weights,
        qat=pick("qat", list(cfg.qat)),
        fp32_first_layer=pick("fp32_first_layer", list(cfg.fp32_first_layer)),
        fp32_layers=ctx.fp32_order[:kept] if weights != "fp32" else [],
        width=width,
    )


def distilled_students(
    teacher: Classifier, cfg: SearchParams, data: SearchData, log: Callable[[str], None]
) -> dict[float, Classifier]:
    """The student of every width of search.students.widths below 1, trained on data.train
    (squeeze.methods.students.distilled_student), by width; one log line each. They are trained
    again when a search resumes: the same params and data give the same weights."""
    students = {}
    for width in sorted(w for w in cfg.students.widths if w < 1):
        started = time.monotonic()
        with contextlib.redirect_stdout(io.StringIO()):  # fit's per-epoch lines: one per student
            students[width] = distilled_student(teacher, width, cfg, data.train, data.search)
        log(f"search student at width {width:g}: {count_params(students[width]):,} parameters, "
            f"{torch_accuracy(students[width], data.search):.2%} on the search split, trained "
            f"in {time.monotonic() - started:.0f} s")  # fmt: skip
    return students


def cost(path: Path, ctx: Context) -> dict[str, float]:
    """An export's p50 latency (ms) and shipped (xz) bytes, timed in this process. The export
    is timed in the same interleaved rounds as the teacher's (ctx.scratch/TEACHER_ONNX), and
    its latency is that ratio times ctx.teacher_ms: a slow spell of the machine then falls on
    both alike, so trials timed minutes apart are costed alike (one timing alone put the same
    export at 0.072 ms in one `fastest` run and 0.125 ms in the next)."""
    paths = {"trial": path, "teacher": ctx.scratch / TEACHER_ONNX}
    timed = latencies(paths, ctx.data.search.images[0], ctx.timing)
    ratio = timed["trial"][LATENCY] / timed["teacher"][LATENCY]
    return {LATENCY: round(ratio * ctx.teacher_ms, 4), SIZE: len(pack(path.read_bytes()))}


def teacher_latency(
    study: optuna.Study, exported: Path, sample: np.ndarray, timing: EvaluateParams
) -> float:
    """The teacher export's p50 in ms, timed once and kept in the study (TEACHER_MS), so that a
    resumed search costs its trials on the scale it started on."""
    return kept(
        study,
        TEACHER_MS,
        lambda: latencies({"teacher": exported}, sample, timing)["teacher"][LATENCY],
    )


def kept(study: optuna.Study, key: str, make: Callable[[], Any]) -> Any:
    """The study's user attr `key` (JSON-serialisable), computed by make() and stored on first
    use: what a search measured once is read back, never re-measured, when it resumes."""
    stored = study.user_attrs.get(key)
    if stored is None:
        stored = make()
        study.set_user_attr(key, stored)
    return stored


def measure(path: Path, ctx: Context) -> dict[str, float]:
    """An export's p50 latency, shipped bytes and accuracy on the search split."""
    return cost(path, ctx) | {SEARCH_ACCURACY: accuracy_of(path, ctx.data.search)}


def accuracy_floor(cfg: SearchParams, teacher: float) -> float:
    """The lowest search accuracy within the budget: `teacher` (a trial's reference,
    search_reference) less max_accuracy_drop (absolute points, or that share of it when cfg.drop
    is relative)."""
    return teacher - cfg.max_accuracy_drop * (teacher if cfg.drop == "relative" else 1.0)


def coarse_split_warning(cfg: SearchParams, teacher: float, images: int) -> str | None:
    """A warning when the accuracy budget (teacher less accuracy_floor, teacher: accuracy in
    [0, 1]) is narrower than the binomial standard error sqrt(p(1 - p) / n) of an accuracy
    measured on the `images` of the search split: which trials meet it then turns on a few
    images' noise. None when the split resolves it."""
    budget = teacher - accuracy_floor(cfg, teacher)
    error = math.sqrt(teacher * (1 - teacher) / images)
    if budget >= error:
        return None
    return (f"warning: the accuracy budget ({budget:.2%}, about {budget * images:.1f} of the "
            f"search split's {images} images) is narrower than the standard error of an accuracy "
            f"measured on it ({error:.2%}): which trials meet it is decided by noise; raise "
            "ingest.search_fraction or search.max_accuracy_drop")  # fmt: skip


def violations(metrics: dict[str, float], cfg: SearchParams, teacher: float) -> dict[str, float]:
    """How far a trial's metrics are past each limit of the budget, as a share of the limit
    (> 0: broken; <= 0: met), by key of params search."""
    floor = accuracy_floor(cfg, teacher)
    allowed = max(teacher - floor, 1e-9)
    out = {"max_accuracy_drop": (floor - metrics[SEARCH_ACCURACY]) / allowed}
    if cfg.max_latency_ms is not None:
        out["max_latency_ms"] = metrics[LATENCY] / cfg.max_latency_ms - 1
    if cfg.max_shipped_bytes is not None:
        out["max_shipped_bytes"] = metrics[SIZE] / cfg.max_shipped_bytes - 1
    return out


def search_reference(study: optuna.Study, ctx: Context) -> float:
    """The accuracy on the search split of the teacher put through a trial's own build with
    nothing compressed (plain: the same one-step fine-tune on the same subset, fp32), kept in
    the study. A trial's accuracy drop is measured from it, not from the teacher: a short
    fine-tune on a subset moves an uncompressed network too, a cost the finalists' full
    fine-tune does not pay, so against the teacher a budget of 1 point could refuse every trial
    for the proxy's fault, not the compression's. The gate then holds each finalist to the
    budget on validation (gate.max_accuracy_drop)."""

    def make() -> float:
        with contextlib.redirect_stdout(io.StringIO()):
            return fine_tuned(plain(ctx.cfg), ctx.inputs())[1]

    return kept(study, REFERENCE, make)


def probe(choice: Choice, ctx: Context, reference: float) -> tuple[dict[str, float], bool]:
    """The choice in one shot: the channels removed and the weights zeroed, BatchNorm
    re-estimated, the export as shipped measured; (its metrics, whether they break the budget's
    latency or size limit). Its latency and size are (nearly) the trial's own, so a probe that
    breaks a limit ends the trial before any fine-tune."""
    torch.manual_seed(ctx.cfg.trial_fit.seed)  # as fine_tuned's: the probe's BN pass runs dropout
    data = MethodData(ctx.fine_tune, ctx.data.search, ctx.teacher)
    model = prune_once(ctx.inputs().start(choice), choice.policy, probe_cfg(ctx.cfg))
    if choice.sparsity:
        magnitude_prune(model, choice.sparsity)
    reestimate_bn(model, ctx.bn_images)
    with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
        metrics = measure(shipped_form(model, choice, ctx.cfg, data, Path(tmp))[0], ctx)
    limits = violations(metrics, ctx.cfg, reference)
    return metrics, any(v > 0 for k, v in limits.items() if k != "max_accuracy_drop")


def run_trials(choices: list[Choice], ctx: Context, reference: float) -> list[tuple[dict, str]]:
    """Each choice's trial: a probe first (probe, in this process); a probe that breaks a limit,
    or a sparsity that empties a layer, ends it (stopped_early, scored by the probe). The others
    are fine-tuned together on ctx.pool (fine_tuned: in turn here, or side by side on Dask
    workers), then timed here one at a time, after all of them finished, so that no fine-tune
    runs beside a timing. Returns (metrics, where its fine-tune ran) per choice, in order."""
    probes = [probe(choice, ctx, reference) for choice in choices]
    todo = [choice for choice, (_, broken) in zip(choices, probes, strict=True) if not broken]
    results = iter(ctx.pool(todo, ctx.inputs()))
    out = []
    for metrics, broken in probes:
        if broken:
            out.append(({**metrics, "stopped_early": True}, ""))
            continue
        result, where = next(results)
        if isinstance(result, PruningError):
            out.append(({**metrics, "stopped_early": True}, where))
            continue
        blob, accuracy = result
        with tempfile.TemporaryDirectory(dir=ctx.scratch) as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(blob)
            timed = cost(path, ctx)
        out.append(({**timed, SEARCH_ACCURACY: accuracy, "stopped_early": False}, where))
    return out


def study_key(ctx_parts: dict[str, Any]) -> str:
    """The name of the studies: a hash of what determines their trials."""
    blob = json.dumps(ctx_parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    """The budget's violations the trial recorded (Trial.set_constraint, what Optuna's samplers
    read as constraints; <= 0: met)."""
    return list(trial.constraints.values()) or [0.0]


def cost_metric(cfg: SearchParams) -> str:
    """The sampler's second objective beside search accuracy: latency for `fastest`, else the
    shipped size. Latency steers the sampler only where the user asks for speed: measured, it
    differs a little from run to run, and a sampler that reads it asks different questions in
    two runs; bytes and accuracy are the same in every run, so is a search guided by them."""
    return LATENCY if cfg.objective == "fastest" else SIZE


def shown_storage(storage: str) -> str:
    """The storage URL as it may be printed or recorded: its password hidden."""
    return sqlalchemy.engine.make_url(storage).render_as_string(hide_password=True)


def open_study(storage: str, name: str, cfg: SearchParams) -> optuna.Study:
    """The study `name` in storage, created if new (search accuracy maximised, cost_metric
    minimised, so named for optuna-dashboard's axes); trials a killed search left RUNNING are
    marked FAIL, so that they run again.

    Raises:
        SearchError: the storage cannot be opened (naming search.storage, password hidden).
    """
    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                    directions=["maximize", "minimize"])  # fmt: skip
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise SearchError(
            f"params.yaml search.storage: Optuna's storage {shown_storage(storage)} cannot be "
            f"opened ({reason}): "
            "start that database or correct the URL, or set search.storage: null for the SQLite "
            "file in the workspace. No recipe was changed."
        ) from err
    with warnings.catch_warnings():  # optuna marks set_metric_names experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([SEARCH_ACCURACY, cost_metric(cfg)])
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return study


def quantize_only(cfg: SearchParams) -> list[dict[str, Any]]:
    """The uniform search's first trials: post-training quantization alone, one trial per
    quantized weight type of the space (no channel removed: share 0; the rest sampled), the
    most compressed type first and at most half of cfg.uniform_trials, as NNCF's accuracy
    control and Intel Neural Compressor's tuning start from the model quantized whole. Where a
    budget is tight, quantization alone is often the cheapest choice within it, and a search's
    first trials, sampled at random, may never ask for it (a `fastest` run of the resnet profile:
    none of its 30 trials kept every channel with int8 weights, 1.9× faster than fp32 there).
    cfg is the space as searched (after speed_space)."""
    quantized = [w for w in reversed(PRECISION[1:]) if w in cfg.weights][: cfg.uniform_trials // 2]
    # a space of one weight type (or width) does not ask for it (suggest); the widest network
    widths = cfg.students.widths
    fixed = {"share": 0.0} | ({"width": max(widths)} if len(widths) > 1 else {})
    return [fixed | ({"weights": w} if len(cfg.weights) > 1 else {}) for w in quantized]


def warm_start(uniform: optuna.Study, ctx: Context) -> list[dict[str, Any]]:
    """The per-layer search's first trial, started where the uniform one is best, as NetAdapt
    (Yang et al. 2018) starts from a uniformly shrunk network: the best uniform trial's choice
    (best_trials: within the budget, else the closest), each group's share clipped to the
    group's own range; none without a completed uniform trial."""
    if not done(uniform):
        return []
    start = dict(best_trials(done(uniform), ctx.cfg)[0].params)
    share = start.pop("share", 0.0)  # a student's trial asks none
    for root, choices in ctx.ranges.items():
        if len(choices) > 1:  # a range of one share is not asked (suggest)
            start[root] = max(c for c in choices if c <= share)  # every range starts at 0
    return [start]


def ask(study: optuna.Study, starts: list[dict[str, Any]], number: int) -> optuna.Trial:
    """The study's next trial, the one with ordinal number + 1: starts[number]'s parameters
    where given (Optuna's `Study.enqueue_trial`; the others sampled), else the sampler's. It is
    enqueued as it is asked, so a search killed during that trial asks for it again and a
    resumed search asks what an unbroken one asked (a trial left waiting by a kill between the
    two is that same one)."""
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if number < len(starts) and not waiting:
        study.enqueue_trial(starts[number])
    return study.ask()


def done(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's completed trials, in order."""
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def ordinal(trial: optuna.trial.FrozenTrial) -> int:
    """Which completed trial of its study it is, from 1: what the search's outputs call it.
    (Optuna's own number also counts the trials a kill failed, so a resumed search's numbers
    differ from an unbroken one's; the ordinal does not.)"""
    return trial.user_attrs["ordinal"]


def run_study(
    study: optuna.Study, kind: str, total: int, ctx: Context, reference: float,
    deadline: float, log: Callable[[str], None], starts: list[dict[str, Any]],
) -> None:  # fmt: skip
    """Run the study's trials up to `total` completed ones or the deadline (time.monotonic()),
    cfg.parallel at a time (run_trials), the first ones with the parameters of `starts` (ask),
    each asked of a TPE sampler seeded by (cfg.seed, its ordinal); within a batch, Optuna's
    constant liar keeps the asks apart (Optuna's batch optimization). A batch is told in order
    once all of it ran, so its trials are the same whether its fine-tunes ran in turn or side by
    side; one log line per trial."""
    started = time.monotonic()
    while len(done(study)) < total and time.monotonic() < deadline:
        number = len(done(study))
        asked = []
        for k in range(min(ctx.cfg.parallel, total - number)):
            study.sampler = optuna.samplers.TPESampler(
                seed=ctx.cfg.seed * 100003 + number + k, multivariate=True,
                constant_liar=ctx.cfg.parallel > 1,
            )  # fmt: skip
            trial = ask(study, starts, number + k)
            asked.append((trial, suggest(trial, ctx, kind)))
        with contextlib.redirect_stdout(io.StringIO()):  # fit's per-epoch lines: one per trial
            results = run_trials([choice for _, choice in asked], ctx, reference)
        for k, ((trial, choice), (metrics, where)) in enumerate(zip(asked, results, strict=True)):
            broken = violations(metrics, ctx.cfg, reference)
            attrs = {**metrics, "choice": asdict(choice), "ordinal": number + k + 1}
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            for key, value in broken.items():
                trial.set_constraint(key, value)
            study.tell(trial, [metrics[SEARCH_ACCURACY], metrics[cost_metric(ctx.cfg)]])
            line = progress(kind, number + k + 1, total, metrics, broken, study, ctx.cfg, started,
                            deadline)  # fmt: skip
            log(line + (f"; fine-tuned on dask worker {where}" if where else ""))


def progress(
    kind: str, number: int, total: int, metrics: dict[str, Any], broken: dict[str, float],
    study: optuna.Study, cfg: SearchParams, started: float, deadline: float,
) -> str:  # fmt: skip
    """One line per trial: its figures, whether it met the budget, the best so far, time left."""
    status = "within budget" if max(broken.values()) <= 0 else "over " + ", ".join(
        k for k, v in broken.items() if v > 0)  # fmt: skip
    # a trial stops early for one of two reasons (run_trials): its probe broke a latency or size
    # limit, or (none broken) its sparsity empties a layer
    over = [k for k, v in broken.items() if v > 0 and k != "max_accuracy_drop"]
    early = ("" if not metrics["stopped_early"]
             else f"; stopped before fine-tuning: its probe is over {', '.join(over)}" if over
             else "; stopped before fine-tuning: its sparsity empties a layer")  # fmt: skip
    best = best_trials(done(study), cfg)
    best_text = (f"trial {ordinal(best[0])}" if feasible(best[0])
                 else f"none within budget yet, closest trial {ordinal(best[0])}")  # fmt: skip
    elapsed = time.monotonic() - started
    left = min(elapsed / max(1, number) * (total - number), max(0.0, deadline - time.monotonic()))
    return (f"search {kind} trial {number}/{total}: {metrics[SEARCH_ACCURACY]:.2%} on search, "
            f"{metrics[LATENCY]:.3f} ms p50, {metrics[SIZE]:,} bytes shipped, {status}{early}; "
            f"best so far: {best_text}; about {left / 60:.0f} min left")  # fmt: skip


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return max(constraints(trial)) <= 0


def ran_before(trial: optuna.trial.FrozenTrial) -> tuple[bool, int]:
    """A trial's place in the order the search ran it, whether pooled (both studies: the uniform
    one runs first) or of one study: the tie-break of equal figures, the earlier first. So a
    per-layer trial that repeats a uniform one (search.warm_start) comes after it."""
    return trial.user_attrs.get(KIND) != UNIFORM, trial.number


def best_trials(
    trials: list[optuna.trial.FrozenTrial], cfg: SearchParams
) -> list[optuna.trial.FrozenTrial]:
    """Completed trials, best first: those within the budget ranked by cfg.objective
    (squeeze.decide.choose's order, on the search split), then the others by their largest
    violation (closest first)."""
    order = tuple(SEARCH_ACCURACY if m == ACCURACY else m for m in POLICIES[cfg.objective])
    # ranked's tie-break name: the order they ran in
    keyed = {"{:d}{:06d}".format(*ran_before(t)): t for t in trials}
    within = ranked([{**t.user_attrs, "name": k} for k, t in keyed.items() if feasible(t)], order)
    rest = sorted(
        (t for t in trials if not feasible(t)), key=lambda t: (max(constraints(t)), ran_before(t))
    )
    return [keyed[r["name"]] for r in within] + rest


def affordable(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial can be a finalist: it was built in full (not stopped early: a probe
    over the latency or size limit, or a sparsity that empties a layer, which no finalist could
    build) and meets the budget's latency and size limits, which, measured on its shipped file,
    hold for its finalist too (accuracy does not: see finalist_trials)."""
    return not trial.user_attrs["stopped_early"] and all(
        v <= 0 for k, v in trial.constraints.items() if k != "max_accuracy_drop"
    )


def front(trials: list[optuna.trial.FrozenTrial], cost: str) -> list[optuna.trial.FrozenTrial]:
    """The trials no other beats on both search accuracy and `cost` (the Pareto front), most
    accurate first (so the cost falls along it); of equal figures, the earliest (ran_before:
    the uniform trial a per-layer warm start repeats, not the repeat)."""

    def key(t: optuna.trial.FrozenTrial) -> tuple[float, float, tuple[bool, int]]:
        return -t.user_attrs[SEARCH_ACCURACY], t.user_attrs[cost], ran_before(t)

    def beats(q: optuna.trial.FrozenTrial, t: optuna.trial.FrozenTrial) -> bool:
        (qa, qc, qn), (ta, tc, tn) = key(q), key(t)
        return qa <= ta and qc <= tc and (qa, qc, qn) < (ta, tc, tn)

    return sorted((t for t in trials if not any(beats(q, t) for q in trials)), key=key)


def finalist_trials(
    trials: list[optuna.trial.FrozenTrial], cfg: SearchParams, count: int
) -> list[optuna.trial.FrozenTrial]:
    """The finalists: `count` of the completed `trials` (pooled: both studies') on the front of
    the affordable ones (search accuracy against cfg's cost), straddling the accuracy floor:
    first the cheapest trial within it (or, if none is, the most accurate), then cheaper ones
    past it, each at most SPACING of the last one's cost; then, with too few such, the front's
    trials that spacing skipped past the first, then the next dearer ones before it. For
    most_accurate, the front's most accurate. A trial whose choice one run before it made is
    left out (originals): the per-layer warm start's repeat of a uniform trial stays that
    uniform trial. The order does not depend on `count`, so fewer finalists rebuild none that
    stays.

    A trial's accuracy is that of a one-step build with a short fine-tune on a subset, which
    understates what a finalist's full fine-tune recovers, and by more the more it compresses;
    so the finalists reach past the floor, and the gate (validation) decides which holds the
    budget; the second rung (rescore) tells apart the ones past it that recover. Too few
    affordable trials on the front: the rest are filled from best_trials."""
    cost = cost_metric(cfg)
    unique = originals(trials)
    line = front([t for t in unique if affordable(t)], cost)
    within = [i for i, t in enumerate(line) if feasible(t)]
    first = within[-1] if within and cfg.objective != "most_accurate" else 0
    spaced = [line[first]] if line else []
    for t in line[first + 1 :]:
        if t.user_attrs[cost] <= SPACING * spaced[-1].user_attrs[cost]:
            spaced.append(t)
    skipped = [t for t in line[first:] if t not in spaced]
    order = spaced + skipped + line[:first][::-1]
    rest = [t for t in best_trials(unique, cfg) if affordable(t) and t not in order]
    return (order + rest)[:count]


def originals(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The trials whose choice no trial run before them made (ran_before), in that order. The
    per-layer study's warm start repeats the best uniform trial, and a sampler may repeat a
    choice: the same model, with the same accuracy and size, and a latency that differs only by
    timing noise; keeping the luckier timing would choose on noise, and build a model twice."""
    seen: set[str] = set()
    out = []
    for t in sorted(trials, key=ran_before):
        if made(t) not in seen:
            seen.add(made(t))
            out.append(t)
    return out


def made(trial: optuna.trial.FrozenTrial) -> str:
    """The choice the trial made, as a string equal for equal choices."""
    return json.dumps(trial.user_attrs["choice"], sort_keys=True)


def copied(
    trial: optuna.trial.FrozenTrial, attrs: dict[str, Any],
    constraints: dict[str, float] | None = None,
) -> optuna.trial.FrozenTrial:  # fmt: skip
    """A completed copy of the trial, its number kept, with these user attrs (and constraints)
    set over its own."""
    out = optuna.trial.create_trial(
        values=trial.values, params=trial.params, distributions=trial.distributions,
        user_attrs={**trial.user_attrs, **attrs},
        constraints={**trial.constraints, **(constraints or {})},
    )  # fmt: skip
    out.number = trial.number
    return out


def pooled(per_layer: optuna.Study, uniform: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Both studies' completed trials (per-layer first), as copies that say which study each
    came from (user attr KIND). The finalists are chosen among all of them: a uniform policy is
    one point of the per-layer space, and a short fine-tune may understate one that recovers in
    full better than any per-layer trial near its cost (the `fastest` study on the default
    data: its 50%-of-every-group int8 trial scored 7 points under the search's floor, and its
    finalist build 0.2 point under the teacher on validation)."""
    return [
        copied(t, {KIND: kind})
        for study, kind in ((per_layer, PER_LAYER), (uniform, UNIFORM))
        for t in done(study)
    ]


def label(trial: optuna.trial.FrozenTrial) -> str:
    """A pooled trial's name across both studies, e.g. "uniform 4"."""
    return labelled(trial.user_attrs[KIND], ordinal(trial))


def labelled(kind: str, number: int) -> str:
    """The name of trial `number` of study `kind` across both studies (label; recipes)."""
    return f"{kind} {number}"


def rescored_cfg(cfg: SearchParams) -> SearchParams:
    """The search params of the second rung: a trial's fine-tune for cfg.rescore_epochs."""
    return cfg.model_copy(update={"trial_fit": cfg.trial_fit.model_copy(
        update={"epochs": cfg.rescore_epochs})})  # fmt: skip


def rescore(
    study: optuna.Study, trials: list[optuna.trial.FrozenTrial], ctx: Context,
    log: Callable[[str], None],
) -> dict[str, float]:  # fmt: skip
    """The second rung of successive halving (Jamieson & Talwalkar 2016; Li et al. 2018,
    Hyperband), on the trials it matters for: the first cfg.rescore of those finalist_trials
    would choose that miss the accuracy floor, each fine-tuned again as its trial was but for
    cfg.rescore_epochs (rescored_cfg; on ctx.pool, as trials are), and so the uncompressed
    reference (search_reference), since the floor at that fidelity lies elsewhere. One short
    fine-tune understates a compressed network's accuracy, and the more so the more it
    compresses; a longer one tells apart the choices past the floor that recover from those
    that do not. `trials` are pooled ones (both studies'); the scores are kept in `study` (the
    per-layer one) by rescore_epochs, so a resumed search re-runs none.

    Returns:
        {label: accuracy on the search split} of each rescored trial, and REFERENCE: the
        reference's; {} when cfg.rescore is 0 or every trial met the floor.
    """
    cfg = ctx.cfg
    chosen = [t for t in finalist_trials(trials, cfg, len(trials)) if not feasible(t)]
    if not (cfg.rescore and chosen):
        return {}
    attr = f"rescored_{cfg.rescore_epochs}_epochs"
    scores = dict(study.user_attrs.get(attr, {}))
    inputs = replace(ctx.inputs(), cfg=rescored_cfg(cfg))
    if REFERENCE not in scores:
        with contextlib.redirect_stdout(io.StringIO()):
            scores[REFERENCE] = fine_tuned(plain(cfg), inputs)[1]
        study.set_user_attr(attr, scores)
    floor = accuracy_floor(cfg, scores[REFERENCE])
    todo = [t for t in chosen[: cfg.rescore] if label(t) not in scores]
    for start in range(0, len(todo), cfg.parallel):
        batch = todo[start : start + cfg.parallel]
        with contextlib.redirect_stdout(io.StringIO()):
            fits = ctx.pool([Choice(**t.user_attrs["choice"]) for t in batch], inputs)
        for trial, (result, where) in zip(batch, fits, strict=True):
            if isinstance(result, PruningError):  # its trial built it in full: a bug if so
                raise result
            scores[label(trial)] = result[1]
            study.set_user_attr(attr, scores)
            log(f"search rescored {trial.user_attrs[KIND]} trial {ordinal(trial)} "
                f"({len(scores) - 1}/{cfg.rescore}): "
                f"{trial.user_attrs[SEARCH_ACCURACY]:.2%} after {cfg.trial_fit.epochs} epoch(s), "
                f"{result[1]:.2%} after {cfg.rescore_epochs} on search; floor at this fidelity "
                f"{floor:.2%} (reference {scores[REFERENCE]:.2%}): "
                + ("within budget" if result[1] >= floor else "over max_accuracy_drop")
                + (f"; fine-tuned on dask worker {where}" if where else ""))  # fmt: skip
    return scores


def at_best_fidelity(
    trials: list[optuna.trial.FrozenTrial], scores: dict[str, float], reference: float,
    cfg: SearchParams,
) -> list[optuna.trial.FrozenTrial]:  # fmt: skip
    """The (pooled) trials as the finalists are chosen from them: a rescored one (scores, by
    label; rescore) is judged by its second-rung accuracy against that rung's floor, and ranked
    on the front by it less the rise of the reference between the rungs (its drop at the second
    rung, on the first rung's scale: `reference`); RESCORED holds its second-rung accuracy.
    Copies; the others as they are."""
    out = []
    for trial in trials:
        score = scores.get(label(trial))
        if score is None:
            out.append(trial)
            continue
        metrics = {**trial.user_attrs, SEARCH_ACCURACY: score}
        drop = violations(metrics, cfg, scores[REFERENCE])["max_accuracy_drop"]
        shifted = score - (scores[REFERENCE] - reference)
        out.append(copied(trial, {SEARCH_ACCURACY: shifted, RESCORED: score},
                          {"max_accuracy_drop": drop}))  # fmt: skip
    return out


def nearest(
    trials: list[optuna.trial.FrozenTrial], cfg: SearchParams, to: optuna.trial.FrozenTrial
) -> optuna.trial.FrozenTrial:
    """The affordable one of `trials` whose cost (cost_metric) is nearest to that of `to` (by
    ratio; ties: the more accurate): the uniform baseline at the per-layer finalist's cost, as
    AMC and NetAdapt compare policies at equal latency or size.

    Raises:
        SearchError: none of `trials` is affordable.
    """
    cost = cost_metric(cfg)
    pool = [t for t in trials if affordable(t)]
    if not pool:
        raise SearchError("no uniform trial of the budget search was built in full within its "
                          "latency and size limits: raise search.uniform_trials, or loosen "
                          "those limits")  # fmt: skip
    target = to.user_attrs[cost]
    return min(pool, key=lambda t: (abs(math.log(t.user_attrs[cost] / target)),
                                    -t.user_attrs[SEARCH_ACCURACY], t.number))  # fmt: skip


def chosen(
    judged: list[optuna.trial.FrozenTrial], cfg: SearchParams
) -> tuple[list[optuna.trial.FrozenTrial], optuna.trial.FrozenTrial | None]:
    """(the finalists, the uniform baseline) among the pooled trials as at_best_fidelity judged
    them. The baseline (search_uniform) is the uniform trial nearest in cost to the first
    per-layer trial of the finalists' whole order (finalist_trials over every trial), None
    without a uniform trial; the finalists lead that order without it (with it only when the
    order is too short for both). Neither depends on cfg.finalists, so fewer finalists rebuild
    nothing, and no recipe is built twice."""
    order = finalist_trials(judged, cfg, len(judged))
    uniform = [t for t in judged if t.user_attrs[KIND] == UNIFORM]
    if not uniform:
        return order[: cfg.finalists], None
    compared = next((t for t in order if t.user_attrs[KIND] == PER_LAYER), order[0])
    matched = nearest(uniform, cfg, compared)
    # by choice, as finalist_trials dedups: the per-layer study's warm start repeats uniform trials
    without = [t for t in order if made(t) != made(matched)]
    # a front too short for both: the baseline's trial is also a finalist (built twice) rather
    # than a search refused for want of trials it has
    return (without if len(without) >= cfg.finalists else order)[: cfg.finalists], matched


def tightest(trials: list[optuna.trial.FrozenTrial]) -> str:
    """The limit the fewest trials met (ties: the one missed by most), with that count."""
    limits = trials[0].constraints
    met = {k: sum(t.constraints[k] <= 0 for t in trials) for k in limits}
    worst = {k: min(t.constraints[k] for t in trials) for k in limits}
    key = min(limits, key=lambda k: (met[k], -worst[k]))
    return f"{key}, met by {met[key]} of {len(trials)} trials"


def no_fit(study: optuna.Study, cfg: SearchParams, teacher: dict[str, float]) -> SearchError:
    """The error of a budget no trial met: the tightest limit and the closest trial."""
    trials = done(study)
    if not trials:
        return SearchError(
            "the budget search completed no trial within search.hours; raise search.hours"
        )
    closest = best_trials(trials, cfg)[0].user_attrs
    limits = {
        "max_accuracy_drop": f"{cfg.max_accuracy_drop:g} ({cfg.drop})",
        "max_latency_ms": cfg.max_latency_ms,
        "max_shipped_bytes": cfg.max_shipped_bytes,
    }
    budget = ", ".join(f"{k}: {v}" for k, v in limits.items() if v is not None)
    return SearchError(
        f"no trial of the budget search met params.yaml search ({budget}): the tightest limit "
        f"is {tightest(trials)}. The closest trial scored {closest[SEARCH_ACCURACY]:.2%} on the "
        f"search split (teacher {teacher[SEARCH_ACCURACY]:.2%}; {teacher[REFERENCE]:.2%} after "
        f"a trial's fine-tune, uncompressed), {closest[LATENCY]:.3f} ms p50 "
        f"(teacher {teacher[LATENCY]:.3f}), {closest[SIZE]:,} bytes shipped (teacher "
        f"{teacher[SIZE]:,}). Nothing was built or promoted: loosen that limit, or raise "
        "search.trials"
    )  # fmt: skip


def recipe(
    trial: optuna.trial.FrozenTrial, judged: optuna.trial.FrozenTrial, study: optuna.Study
) -> dict[str, Any]:
    """What a finalist is built from (stages/finalist.py) and where it came from: its (pooled)
    trial's figures (the first rung's search accuracy; RESCORED, the second's or None) and
    whether it met the budget at the last rung it was scored at (judged: the trial as
    at_best_fidelity gives it); `study` is the one it came from."""
    attrs = trial.user_attrs
    return {
        "study": study.study_name, "kind": attrs[KIND], "trial": ordinal(trial),
        **attrs["choice"],
        **{k: attrs[k] for k in (SEARCH_ACCURACY, LATENCY, SIZE)},
        RESCORED: judged.user_attrs.get(RESCORED), "within_budget": feasible(judged),
    }  # fmt: skip


def rows(
    first: list[optuna.trial.FrozenTrial], judged: list[optuna.trial.FrozenTrial],
    finalists: dict[str, dict], cfg: SearchParams,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per completed trial of both studies (`first`: pooled, the uniform ones first in
    the rows), for search/trials.csv: its figures (RESCORED: the second rung's accuracy, "" if
    not rescored), whether it met the budget and whether it is on the front of all trials
    (search accuracy against cfg's cost: the finalists' front), both as `judged` (first as
    at_best_fidelity gives it), which finalist it became, its choice."""
    chosen = {labelled(r["kind"], r["trial"]): name for name, r in finalists.items()}
    on_front = set(map(label, front(originals(judged), cost_metric(cfg))))
    verdict = {label(t): t for t in judged}
    return [
        {"study": t.user_attrs[KIND], "trial": ordinal(t), **{k: t.user_attrs[k] for k in (
            SEARCH_ACCURACY, LATENCY, SIZE, "stopped_early")},
         RESCORED: verdict[label(t)].user_attrs.get(RESCORED, ""),
         "within_budget": feasible(verdict[label(t)]), "front": label(t) in on_front,
         "finalist": chosen.get(label(t), ""),
         **{k: t.user_attrs["choice"][k] for k in ("width", "sparsity", "weights", "qat")},
         "policy": json.dumps(t.user_attrs["choice"]["policy"], sort_keys=True)}
        for t in sorted(first, key=lambda t: t.user_attrs[KIND] != UNIFORM)
    ]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What a search found: the finalists' recipes by candidate name, one row per trial, the
    teacher's own figures measured beside them and the two sensitivity passes."""

    finalists: dict[str, dict[str, Any]]
    trials: list[dict[str, Any]]
    teacher: dict[str, float]
    sensitivity: dict[str, dict[str, float]]
    weight_sensitivity: dict[str, float]
    speed_levers: dict[str, Any]


def search(
    teacher: Classifier, cfg: SearchParams, data: SearchData, timing: EvaluateParams,
    storage: str, key: str, names: list[str], log: Callable[[str], None] = print,
    pool: Pool = one_by_one,
) -> Outcome:  # fmt: skip
    """Run (or resume) the budget search and choose its finalists.

    Args:
        teacher: the model searched from ((B, H, W, C) uint8 -> (B, K)); left unchanged.
        cfg: params `search` (budget, objective, space, trials, seed).
        data: train and the search split (SearchData); val and test are never read.
        timing: how a trial's latency is measured (EvaluateParams: threads, warmup, runs,
            rounds; stages/search.py: evaluate.threads with fewer runs than evaluate's).
        storage: an SQLAlchemy URL of Optuna's RDB storage (sqlite:///..., postgresql://...).
        key: names the studies (squeeze-KEY, squeeze-KEY-uniform): a hash of everything that
            determines their trials, so that a search of other data or space starts afresh.
        names: the finalists' candidate names (search_1..N), then the uniform baseline's.
        log: where the per-trial progress lines go.
        pool: where the trials' fine-tunes run (Pool): one_by_one in this process, or on a
            Dask cluster (squeeze.methods.workers.dask_pool); the trials are the same.
    Returns:
        Outcome: the finalists' recipes {name: {policy, distill_alpha, lr, study, trial, search
        figures, within_budget}}, every trial's row, the teacher's figures, the sensitivity
        of each channel group (sensitivity) and of each weight layer (weight_sensitivity), and
        the timings that narrowed the space where only latency counts (speed_levers).
    Raises:
        StudentError: search.students cannot scale the teacher's network (students.student_arch).
        SearchError: no channel group to prune, fewer completed trials than finalists, no
            per-layer trial built within the latency and size limits (naming the tightest limit
            and the closest trial), or no such uniform trial.
    """
    groups = channel_groups_of(teacher, cfg)
    # before any training: a storage that cannot be opened fails in seconds, not after students
    per_layer = open_study(storage, f"squeeze-{key}", cfg)
    uniform = open_study(storage, f"squeeze-{key}-uniform", cfg)
    students = distilled_students(teacher, cfg, data, log)  # a bad width_arg fails before trials
    drops = kept(per_layer, "sensitivity", lambda: sensitivity(teacher, groups, data, cfg, log))
    per_class = max(1, cfg.trial_images // len(np.unique(data.train.labels)))
    picks = stratified_indices(data.train.labels, per_class, np.random.default_rng(cfg.seed))
    grid = [
        s for s in shares(cfg) if all(s in feasible_shares(g, shares(cfg), cfg) for g in groups)
    ]
    deadline = time.monotonic() + (cfg.hours * 3600 if cfg.hours else float("inf"))
    fine_tune = subset(data.train, picks)
    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / TEACHER_ONNX
        export_onnx(teacher, exported)
        calibration = MethodData(fine_tune, data.search, teacher)
        # timed once and kept in the study: a resumed search searches the space it started on
        levers = kept(
            per_layer,
            SPEED_LEVERS,
            lambda: speed_levers(teacher, exported, calibration, cfg, timing, log),
        )
        cfg = cfg.model_copy(update=levers.get("space", {}))
        quantized = kept(
            per_layer,
            WEIGHT_SENSITIVITY,
            lambda: weight_sensitivity(exported, calibration, cfg, log),
        )
        ctx = Context(
            teacher, data, cfg, timing, ranges(groups, drops, cfg), grid, fp32_order(quantized),
            fine_tune, bn_images(data.train, cfg.seed), Path(scratch), pool,
            teacher_latency(per_layer, exported, data.search.images[0], timing), students,
        )  # fmt: skip
        reference = measure(exported, ctx)
        reference[REFERENCE] = search_reference(per_layer, ctx)
        log(f"accuracy floor: {accuracy_floor(cfg, reference[REFERENCE]):.2%} on the search split "
            f"(teacher {reference[SEARCH_ACCURACY]:.2%}; {reference[REFERENCE]:.2%} after a "
            f"trial's fine-tune, uncompressed, less max_accuracy_drop {cfg.max_accuracy_drop:g}, "
            f"{cfg.drop})")  # fmt: skip
        warning = coarse_split_warning(cfg, reference[REFERENCE], len(data.search.labels))
        if warning:
            log(warning)
        run_study(uniform, UNIFORM, cfg.uniform_trials, ctx, reference[REFERENCE], deadline, log,
                  quantize_only(cfg))  # fmt: skip
        run_study(per_layer, PER_LAYER, cfg.trials, ctx, reference[REFERENCE], deadline, log,
                  warm_start(uniform, ctx))  # fmt: skip
        if not any(affordable(t) for t in done(per_layer)):
            raise no_fit(per_layer, cfg, reference)
        first = pooled(per_layer, uniform)
        scores = rescore(per_layer, first, ctx, log)
    reference[RESCORED] = scores.get(REFERENCE)  # the uncompressed reference's, second rung
    judged = at_best_fidelity(first, scores, reference[REFERENCE], cfg)
    best, matched = chosen(judged, cfg)
    if len(best) < cfg.finalists or matched is None:
        raise SearchError(
            f"the budget search completed {len(done(per_layer))} per-layer and "
            f"{len(done(uniform))} uniform trials within search.hours ({cfg.hours}), fewer than "
            f"search.finalists ({cfg.finalists}) and one: raise search.hours; the trials so far "
            "are kept and the next run resumes them"
        )
    studies = {PER_LAYER: per_layer, UNIFORM: uniform}
    original = {label(t): t for t in first}
    finalists = {name: recipe(original[label(t)], t, studies[t.user_attrs[KIND]])
                 for name, t in zip(names[:-1], best, strict=True)}  # fmt: skip
    finalists[names[-1]] = recipe(original[label(matched)], matched, uniform)
    trials = rows(first, judged, finalists, cfg)
    return Outcome(finalists, trials, reference, drops, quantized, levers)
