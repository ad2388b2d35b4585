"""Quantization-aware fine-tuning: squeeze's weight grid is onnxruntime's, and a model fine-tuned
on it quantizes to int4 with (almost) nothing lost."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization.quant_utils import quantize_data
from torch import nn

from squeeze.data import Split
from squeeze.evaluate import INPUT, export_onnx, session
from squeeze.models import weight_layers
from squeeze.params import PruneParams, QuantizeParams
from squeeze.prune import prune_model
from squeeze.qat import on_grid, quantization_aware
from squeeze.quantize import quantize_onnx

Data = dict[str, Split]


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_the_grid_is_a_fixed_point_with_exact_extremes(weights: str) -> None:
    w = torch.randn(6, 3, 3, 3) * torch.tensor([0.01, 0.1, 1.0, 3.0, 0.5, 2.0]).view(-1, 1, 1, 1)
    w[1, 0, 0, 0] = 0.0
    snapped = on_grid(w, weights)
    assert torch.equal(on_grid(snapped, weights), snapped)
    absmax = w.abs().amax(dim=(1, 2, 3))
    assert torch.allclose(snapped.abs().amax(dim=(1, 2, 3)), absmax)  # nothing clipped
    assert snapped[1, 0, 0, 0] == 0.0  # a pruned weight stays exactly zero


def test_int8_grid_is_the_one_onnxruntime_quantizes_to() -> None:
    w = torch.randn(4, 8) * 0.3
    ours = on_grid(w, "int8").numpy()
    for channel in range(len(w)):  # onnxruntime's per-channel symmetric MinMax
        _, scale, q = quantize_data(w[channel].numpy(), onnx.TensorProto.INT8, symmetric=True)
        np.testing.assert_allclose(ours[channel], q.astype(np.float32) * scale, rtol=1e-6)


def test_the_context_leaves_no_masks_or_hooks(tiny_trained: nn.Module) -> None:
    model = copy.deepcopy(tiny_trained)
    with quantization_aware(model, "int4"):
        assert all(layer._forward_pre_hooks for layer in weight_layers(model).values())
    assert set(model.state_dict()) == set(tiny_trained.state_dict())
    assert not any(layer._forward_pre_hooks for layer in weight_layers(model).values())


def classes(path: Path, images: np.ndarray) -> np.ndarray:
    return session(path, 1).run(None, {INPUT: images})[0].argmax(1)


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_int4_quantization_of_a_qat_model_agrees_with_it(
    small_fmnist: Data, tiny_trained: nn.Module, tiny_fit: Callable, tmp_path: Path, kind: str
) -> None:
    train, val, test = small_fmnist["train"], small_fmnist["val"], small_fmnist["test"]
    cfg = PruneParams(upstream="tiny", kind=kind, sparsity=0.5, steps=1, importance="l1",
                      distill_alpha=0.0, temperature=4.0, qat="int4",
                      fit=tiny_fit(epochs=1, lr=0.02))  # fmt: skip
    torch.manual_seed(0)
    model, _ = prune_model(copy.deepcopy(tiny_trained), cfg, train, val)
    for layer in weight_layers(model).values():  # snapped: on the grid, nothing left to round
        assert torch.equal(on_grid(layer.weight, "int4"), layer.weight)
    export_onnx(model, tmp_path / "fp32.onnx")
    q = QuantizeParams(upstream="tiny", mode="static", weights="int4", per_channel=True,
                       calibration_samples=256)  # fmt: skip
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int4.onnx", q, train.images[:256], True)
    fp32, int4 = (
        classes(tmp_path / "fp32.onnx", test.images),
        classes(tmp_path / "int4.onnx", test.images),
    )
    # only the int8 activations differ: the int4 weights are the model's own
    assert (fp32 == int4).mean() >= 0.98
