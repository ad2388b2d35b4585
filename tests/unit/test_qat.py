"""Quantization-aware fine-tuning: squeeze's weight grid is onnxruntime's, the forward pass and the
gradients go through it (straight-through), and a model fine-tuned on it quantizes to int4 with
(almost) nothing lost."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnxruntime.quantization.quant_utils import quantize_data
from torch import nn
from torch.nn.utils import prune as torch_prune

from squeeze.config.sections import PruneParams, QuantizeParams
from squeeze.data.spec import Split
from squeeze.measure.export import INPUT, export_onnx
from squeeze.measure.runtime import session
from squeeze.methods import MethodData
from squeeze.methods.prune import prune
from squeeze.methods.qat import on_grid, quantization_aware, snap
from squeeze.methods.quantize import quantize_onnx
from squeeze.nets.models import weight_layers

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


def partly_pruned(model: nn.Module) -> nn.Module:
    """A copy with net.features.4 pruned by a mask (half its weights): the hook must see both a
    layer torch.nn.utils.prune recomputes and layers it does not."""
    model = copy.deepcopy(model)
    torch_prune.l1_unstructured(model.net.features[4], "weight", amount=0.5)
    return model


def snapped(model: nn.Module, weights: str) -> nn.Module:
    """partly_pruned(model) with its mask made permanent and every weight put on the grid."""
    reference = partly_pruned(model)
    torch_prune.remove(reference.net.features[4], "weight")
    return snap(reference, weights)


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_the_forward_pass_runs_on_the_grid(
    tiny_trained: nn.Module, small_fmnist: Data, weights: str
) -> None:
    """Inside the block the model computes what its snapped copy computes, not its float self."""
    model = partly_pruned(tiny_trained).eval()
    reference = snapped(tiny_trained, weights).eval()
    x = torch.from_numpy(small_fmnist["val"].images[:256])
    with torch.no_grad():
        before = model(x)
        with quantization_aware(model, weights):
            inside = model(x)
        after = model(x)
        expected = reference(x)
    torch.testing.assert_close(inside, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, expected, rtol=1e-3, atol=1e-3)  # the grid does change it
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # and leaving the block undoes it


def float_weight_grad(layer: nn.Module) -> torch.Tensor:
    """The gradient of the trained parameter: weight_orig under a mask, else weight."""
    return (layer.weight_orig if torch_prune.is_pruned(layer) else layer.weight).grad


def test_gradients_pass_straight_through_the_rounding(
    tiny_trained: nn.Module, small_fmnist: Data
) -> None:
    """The float weight gets the gradient taken at its on-grid value (rounding counted as the
    identity), times its pruning mask: not zero (round's own derivative) and not the gradient at
    the float weight (no fake quantization)."""
    val = small_fmnist["val"]
    x, y = torch.from_numpy(val.images[:256]), torch.from_numpy(val.labels[:256])
    model, plain = partly_pruned(tiny_trained).eval(), partly_pruned(tiny_trained).eval()
    reference = snapped(tiny_trained, "int4").eval()
    for m in (plain, reference):
        F.cross_entropy(m(x), y).backward()
    with quantization_aware(model, "int4"):
        F.cross_entropy(model(x), y).backward()
        for name, layer in weight_layers(model).items():
            grad = float_weight_grad(layer)
            expected = weight_layers(reference)[name].weight.grad * layer.weight_mask
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7, msg=name)
            assert grad.abs().sum() > 0, name
            at_float = float_weight_grad(weight_layers(plain)[name])
            assert not torch.allclose(grad, at_float, rtol=1e-2, atol=1e-6), name


def classes(path: Path, images: np.ndarray) -> np.ndarray:
    return session(path, 1).run(None, {INPUT: images})[0].argmax(1)


@pytest.mark.parametrize("kind", ["unstructured", "structured"])
def test_int4_quantization_of_a_qat_model_agrees_with_it(
    small_fmnist: Data, tiny_trained: nn.Module, tiny_fit: Callable, tmp_path: Path, kind: str
) -> None:
    train, val, test = small_fmnist["train"], small_fmnist["val"], small_fmnist["test"]
    cfg = PruneParams(upstream="tiny", kind=kind, sparsity=0.5, steps=1, importance="l1",
                      round_to=None, distill_alpha=0.0, temperature=4.0, qat="int4",
                      fit=tiny_fit(epochs=1, lr=0.02))  # fmt: skip
    torch.manual_seed(0)
    result = prune(copy.deepcopy(tiny_trained), cfg, MethodData(train, val))
    model, history = result.model, result.history
    # fit validated the on-grid forward pass: the model it returns is the one it measured
    with torch.no_grad():
        val_loss = F.cross_entropy(
            model(torch.from_numpy(val.images)), torch.from_numpy(val.labels)
        )
    assert history[-1]["val_loss"] == pytest.approx(val_loss.item(), abs=2e-5)
    for layer in weight_layers(model).values():  # snapped: on the grid, nothing left to round
        assert torch.equal(on_grid(layer.weight, "int4"), layer.weight)
    export_onnx(model, tmp_path / "fp32.onnx")
    q = QuantizeParams(upstream="tiny", mode="static", weights="int4", per_channel=True,
                       calibration_samples=256, fp32_first_layer=False)  # fmt: skip
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int4.onnx", q, train.images[:256], "grid")
    fp32, int4 = (
        classes(tmp_path / "fp32.onnx", test.images),
        classes(tmp_path / "int4.onnx", test.images),
    )
    # only the int8 activations differ: the int4 weights are the model's own
    assert (fp32 == int4).mean() >= 0.98
