"""The compression methods: one module each, every one a params section plus one entry call.

As torchao's `quantize_(model, Int8WeightOnlyConfig())`, every method is called one way:

    result = <method>(upstream, cfg, data, [keywords of that method only])

- upstream: what the method starts from, as the stage loaded it from models/<upstream>/;
- cfg: the method's section of params.yaml (squeeze.config.sections), validated;
- data: a MethodData, everything the method reads besides those two;
- result: a Result, the model built with its curves and the fields its model.json adds.

| module   | upstream                  | cfg            | data read                | model      |
|----------|---------------------------|----------------|--------------------------|------------|
| train    | a network, initialised    | FitParams      | train, val               | nn.Module  |
| distill  | the teacher               | DistillParams  | train, val               | nn.Module  |
| prune    | a model, changed in place | PruneParams    | train, val, teacher (KD) | nn.Module  |
| quantize | an fp32 ONNX file         | QuantizeParams | train (calibration), val | ONNX bytes |
| merge    | the models merged (list)  | MergeParams    | train, val               | nn.Module  |

The entry is named like its module (`from squeeze.methods.prune import prune`). Its keywords
are the few that are not params or data: where a training run keeps its resume state (train,
distill: state_path), and the grid the upstream was fine-tuned on, which quantize keeps (qat).

qat has no entry: it is no method of its own but a setting of prune (`prune.*.qat`, one grid
name, no params section, no stage), which changes how prune fine-tunes and where its weights end
(squeeze.methods.qat). The rest of each module (fit, quantize_onnx, greedy_soup, ...) are the
parts the entry is made of, public because tests and benchmarks use them one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import nn

from squeeze.data.spec import Split

M = TypeVar("M")  # what a method builds: an nn.Module, or quantize's serialized ONNX model


@dataclass(frozen=True, eq=False)
class MethodData:
    """What a method reads besides its upstream and its params: the splits and, where
    fine-tuning distils from a model other than the upstream, that teacher.

    Attributes:
        train: (N, H, W, C) uint8 images and (N,) int64 labels that fitting, quantize's
            calibration and a soup's BatchNorm re-estimation read.
        val: the validation split: each epoch's curve row, and the choices made on it (greedy
            soup, int4 scheme). The test split is never a method's to read.
        teacher: the model prune's fine-tuning distils from (prune.*.distill_alpha > 0); None
            for every other method (distill's teacher is its upstream).
    """

    train: Split
    val: Split
    teacher: nn.Module | None = None


@dataclass(frozen=True, eq=False)
class Result(Generic[M]):
    """What a method built.

    Attributes:
        model: the model in eval mode on the CPU (quantize: the ONNX file's bytes).
        history: one curve row per epoch (train, distill, distill_ensemble) or pruning step
            (prune), each with its val_accuracy; [] for a method that reports none.
        record: the method's own fields for the model's model.json (prune's per-layer widths,
            quantize's int4 scheme, a soup's ingredients); the stage adds the common ones.
        variants: models saved beside this one to be compared with it (a soup's best
            ingredient and the other soup), by name; {} for the other methods.
    """

    model: M
    history: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    variants: dict[str, M] = field(default_factory=dict)
