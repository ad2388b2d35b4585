"""What a user would pick instead of squeeze, built on the same teacher and data.

Three peers, each the stock tool for the job with its default settings:

- `torch_pruned`: PyTorch's own `torch.nn.utils.prune.global_unstructured` (L1) over the same
  conv/linear weights, in one shot, at the sparsity squeeze's unstructured candidate reached,
  then fine-tuned with that candidate's own fit params and the plain loss of
  squeeze.methods.train.fit (no distillation, no gradual schedule, no quantization-aware grid).
- `ort_dynamic`: onnxruntime's `quantize_dynamic` with every argument at its default (int8
  weights per tensor, activations quantized at run time, no calibration, no pre-processing).
- `nncf_quantized`: OpenVINO NNCF's post-training quantization of the ONNX model
  (`nncf.quantize`, its default preset), calibrated on training images; the result is an
  ONNX QDQ model that onnxruntime runs.

Each returns what evaluate would measure: a torch model to export, or an ONNX file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import quantize_dynamic
from torch import nn
from torch.nn.utils import prune as torch_prune

from squeeze.config.sections import FitParams
from squeeze.data.spec import Split
from squeeze.measure.export import INPUT
from squeeze.methods.train import fit
from squeeze.nets.models import weight_layers


def torch_pruned(
    model: nn.Module, sparsity: float, cfg: FitParams, train: Split, val: Split
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Zero `sparsity` of all conv/linear weights by global L1 magnitude, fine-tune, make it
    permanent. The model is changed in place; returns (model in eval mode, fit's curve).

    The amount is the int round(sparsity · N) of the N weights, so the peer's sparsity matches
    the candidate's to the weight. The masks stay applied during fine-tuning (pruned weights get
    no gradient) and prune.remove bakes them in before export.
    """
    tensors = [(m, "weight") for m in weight_layers(model).values()]
    total = sum(m.weight.numel() for m, _ in tensors)
    torch_prune.global_unstructured(
        tensors, pruning_method=torch_prune.L1Unstructured, amount=round(sparsity * total)
    )
    torch.manual_seed(cfg.seed)  # dropout and anything else on the global RNG, as prune does
    history = fit(model, train, val, cfg)
    for module, name in tensors:
        torch_prune.remove(module, name)
    return model.eval(), history


def ort_dynamic(source: Path, dest: Path) -> None:
    """onnxruntime `quantize_dynamic(source, dest)`, nothing else set (its docs' first call)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(str(source), str(dest))
    onnx.checker.check_model(str(dest))


def nncf_quantized(source: Path, dest: Path, calibration: np.ndarray) -> None:
    """NNCF post-training quantization of the fp32 ONNX file `source`, default preset.

    The export's input is raw uint8 pixels named INPUT, so the calibration set yields
    {INPUT: (1, H, W, C) uint8} feeds: one image per item, so that subset_size counts images and
    all len(calibration) of them are used (NNCF's own default is 300).
    """
    import nncf  # an optional (dev) dependency, needed by this peer only

    images = [calibration[i : i + 1] for i in range(len(calibration))]
    dataset = nncf.Dataset(images, lambda batch: {INPUT: batch})
    quantized = nncf.quantize(onnx.load(str(source)), dataset, subset_size=len(images))
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(quantized, str(dest))
    onnx.checker.check_model(str(dest))
