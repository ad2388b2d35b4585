"""int8 quantization with onnxruntime: the int8 model predicts like the fp32 export, its pixel
preprocessing stays fp32 and its weights really are int8; int4's scheme is chosen on validation."""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from squeeze.config.sections import QuantizeParams
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.spec import DataSpec, Split
from squeeze.measure.export import INPUT, export_onnx, graph_stats
from squeeze.measure.runtime import session
from squeeze.methods import MethodData
from squeeze.methods.qat import snap
from squeeze.methods.quantize import (
    INT4_SCHEMES,
    OPSET_NOTICE,
    calibration_images,
    choose_int4_scheme,
    input_side,
    quantize,
    quantize_onnx,
)
from squeeze.methods.train import fit
from squeeze.nets.models import build_model, save_checkpoint, weight_layers
from stages.quantize import run

Data = dict[str, Split]
# share of test images on which int8 and fp32 predict the same class: a 75% model, whose
# margins are thin; onnxruntime's int8 kernels differ by CPU (0.978 on an AVX-512 VNNI
# Xeon, at least 0.98 on AVX2 EPYCs)
MIN_AGREEMENT = 0.97
STATIC_INT8 = QuantizeParams(upstream="m", mode="static", weights="int8", per_channel=True,
                             calibration_samples=64, fp32_first_layer=False)  # fmt: skip


@pytest.fixture(scope="module")
def fp32_export(
    small_fmnist: Data,
    fmnist_spec: DataSpec,
    tiny_arch: dict,
    tiny_fit: Callable,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    """A [16, 32] ConvNet (≈ 75% on the test subset) exported to fp32 ONNX."""
    torch.manual_seed(0)
    model: nn.Module = build_model({**tiny_arch, "channels": [16, 32]}, fmnist_spec)
    fit(model, small_fmnist["train"], small_fmnist["val"], tiny_fit())
    path = tmp_path_factory.mktemp("quantize") / "fp32.onnx"
    export_onnx(model, path)
    return path


def classes(path: Path, images: np.ndarray) -> np.ndarray:
    return session(path, 1).run(None, {INPUT: images})[0].argmax(1)


@pytest.mark.parametrize(
    ("mode", "fp32_first_layer"), [("static", False), ("dynamic", False), ("static", True)]
)
def test_int8_agrees_with_fp32(
    small_fmnist: Data, fp32_export: Path, tmp_path: Path, mode: str, fp32_first_layer: bool
) -> None:
    cfg = QuantizeParams(upstream="m", mode=mode, weights="int8", per_channel=True,
                         calibration_samples=256, fp32_first_layer=fp32_first_layer)  # fmt: skip
    out = tmp_path / "int8.onnx"
    quantize_onnx(fp32_export, out, cfg, small_fmnist["train"].images[:256])
    test = small_fmnist["test"]
    int8, fp32 = classes(out, test.images), classes(fp32_export, test.images)
    assert (int8 == fp32).mean() >= MIN_AGREEMENT
    assert (int8 == test.labels).mean() >= (fp32 == test.labels).mean() - 0.01
    # the same layers, with int8 weights but for the first conv's when it stays fp32
    assert graph_stats(out)["macs"] == graph_stats(fp32_export)["macs"]
    graph = onnx.load(str(out)).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer if t.dims]
    assert sum(w.size for w in weights if w.dtype == np.int8) > 0.9 * graph_stats(out)["params"]
    if mode == "static":  # (dynamic mode writes ConvInteger nodes, no weight DequantizeLinear)
        (first,) = input_side(onnx.load(str(fp32_export)))[1]
        fed_by = {o: n.op_type for n in graph.node for o in n.output}
        convs = {n.name: fed_by.get(n.input[1], "initializer")
                 for n in graph.node if n.op_type == "Conv"}  # fmt: skip
        assert convs.pop(first) == ("initializer" if fp32_first_layer else "DequantizeLinear")
        assert set(convs.values()) == {"DequantizeLinear"}  # every other conv: int8 weights


def test_int4_weights_make_a_smaller_file_that_still_predicts(
    small_fmnist: Data, fp32_export: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images, test = small_fmnist["train"].images[:256], small_fmnist["test"]
    files = {}
    for weights in ("int8", "int4"):
        cfg = QuantizeParams(upstream="m", mode="static", weights=weights, per_channel=True,
                             calibration_samples=256, fp32_first_layer=False)  # fmt: skip
        files[weights] = tmp_path / f"{weights}.onnx"
        with caplog.at_level(logging.WARNING):
            quantize_onnx(fp32_export, files[weights], cfg, images)
    # onnxruntime's opset notice for int4 says nothing a user can act on: not in the log
    assert not [r for r in caplog.records if OPSET_NOTICE in r.getMessage()]
    logging.warning("%s int4 (a notice from elsewhere)", OPSET_NOTICE)
    assert caplog.records, "the filter is gone once quantize_onnx returns"

    def weight_bytes(path: Path, dtype: int) -> tuple[int, int]:
        found = [t for t in onnx.load(str(path)).graph.initializer
                 if t.data_type == dtype and len(t.dims) >= 2]  # fmt: skip
        return len(found), sum(len(t.raw_data) for t in found)

    n4, int4_bytes = weight_bytes(files["int4"], onnx.TensorProto.INT4)
    n8, int8_bytes = weight_bytes(files["int8"], onnx.TensorProto.INT8)
    assert n4 == n8 >= 3  # every conv and the classifier, two weights to a byte
    assert int4_bytes <= 0.55 * int8_bytes
    assert files["int4"].stat().st_size < files["int8"].stat().st_size
    stats = graph_stats(files["int4"])
    assert stats["macs"] == graph_stats(fp32_export)["macs"] and stats["nonzero_params"] > 0
    # 15 levels per channel cost some accuracy; the gate, not this test, judges how much
    fp32 = (classes(fp32_export, test.images) == test.labels).mean()
    assert (classes(files["int4"], test.images) == test.labels).mean() >= fp32 - 0.05


def test_pixel_preprocessing_stays_fp32(
    small_fmnist: Data, fp32_export: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int8.onnx"
    quantize_onnx(fp32_export, out, STATIC_INT8, small_fmnist["train"].images[:64])
    graph = onnx.load(str(out)).graph
    assert graph.input[0].name == INPUT
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    pre = set(input_side(onnx.load(str(fp32_export)))[0])
    assert {n.op_type for n in graph.node if n.name in pre} >= {"Cast", "Div", "Sub"}
    producers = {o: n.op_type for n in graph.node for o in n.output}
    for node in graph.node:
        if node.name in pre:  # fed by the input or by other fp32 preprocessing, never by int8
            assert all(producers.get(i) not in ("DequantizeLinear",) for i in node.input)
            assert node.op_type not in ("QuantizeLinear", "DequantizeLinear")


def test_a_residual_network_runs_every_conv_and_add_in_int8(
    small_fmnist: Data, fmnist_spec: DataSpec, tmp_path: Path
) -> None:
    """onnxruntime fuses DequantizeLinear -> Conv/Add -> QuantizeLinear into QLinearConv and
    QLinearAdd; a residual block's input feeds two consumers, where int8 activations left the
    convs and adds fp32 between Q/DQ pairs (slower than the fp32 model). The graph onnxruntime
    runs (its optimised model) must hold no float Conv or Add."""
    torch.manual_seed(0)
    init_args = {"in_channels": 1, "num_classes": 10, "widths": [8, 16], "blocks": [1, 1]}
    arch = {"class_path": "examples.user_models.ResNet", "init_args": init_args}
    model = build_model(arch, fmnist_spec).eval()
    fp32, int8, optimised = (tmp_path / name for name in ("fp32.onnx", "int8.onnx", "run.onnx"))
    export_onnx(model, fp32)
    quantize_onnx(fp32, int8, STATIC_INT8, small_fmnist["train"].images[:64])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimised)
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    ops = Counter(node.op_type for node in onnx.load(str(optimised)).graph.node)
    # the stem, two convs in each of the two blocks, the second block's shortcut; two adds
    assert (ops["QLinearConv"], ops["QLinearAdd"]) == (6, 2), ops
    assert ops["Conv"] == ops["Add"] == 0, ops


@pytest.mark.parametrize(("weights", "qat"), [("int8", None), ("int4", "int4")])
def test_the_entry_is_quantize_onnx_on_evenly_spread_training_images(
    small_fmnist: Data, fp32_export: Path, tmp_path: Path, weights: str, qat: str | None
) -> None:
    """quantize(source, cfg, data) returns the bytes quantize_onnx writes for the same file,
    calibrated on calibration_images of data.train; an upstream fine-tuned on the int4 grid
    keeps that grid, and nothing is compared on val."""
    cfg = STATIC_INT8.model_copy(update={"weights": weights})
    train = small_fmnist["train"]
    result = quantize(fp32_export, cfg, MethodData(train, small_fmnist["val"]), qat=qat)
    images = calibration_images(train, cfg.calibration_samples)
    assert len(images) == cfg.calibration_samples < len(train)
    quantize_onnx(fp32_export, tmp_path / "q.onnx", cfg, images, "grid" if qat else "onnxruntime")
    assert result.model == (tmp_path / "q.onnx").read_bytes() and result.history == []
    assert result.record == {"on_trained_grid": qat is not None,
                             "int4_scheme": "grid" if qat else None,
                             "int4_scheme_val_accuracy": {}}  # fmt: skip


def test_static_needs_calibration_images(fp32_export: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(fp32_export, tmp_path / "int8.onnx", STATIC_INT8, None)


def test_stage_writes_an_onnx_model_and_record(
    workspace: Workspace, stage_params: Callable
) -> None:
    cfg = QuantizeParams(upstream="teacher", mode="static", weights="int8", per_channel=True,
                         calibration_samples=128, fp32_first_layer=False)  # fmt: skip
    run(workspace.root, stage_params(quantize={"int8": cfg}), "int8")
    folder = workspace.model("int8")
    record = read_json(folder / "model.json")
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx"]
    assert record["format"] == "onnx" and record["method"] == "quantize_static"
    assert record["upstream"] == ["teacher"] and record["arch"]["channels"] == [8, 16]
    assert record["val_agreement_fp32"] >= MIN_AGREEMENT
    assert record["int4_scheme"] is None and record["int4_scheme_val_accuracy"] == {}


def test_the_int4_scheme_with_the_higher_val_accuracy_is_chosen() -> None:
    assert choose_int4_scheme({"onnxruntime": 0.80, "grid": 0.81}) == "grid"
    assert choose_int4_scheme({"onnxruntime": 0.81, "grid": 0.80}) == "onnxruntime"
    assert choose_int4_scheme({"onnxruntime": 0.8, "grid": 0.8}) == "onnxruntime"  # a tie
    with pytest.raises(ValueError, match="grid"):
        choose_int4_scheme({"onnxruntime": 0.8})


def test_unknown_int4_scheme_is_refused(fp32_export: Path, tmp_path: Path) -> None:
    cfg = QuantizeParams(upstream="m", mode="static", weights="int4", per_channel=True,
                         calibration_samples=64, fp32_first_layer=False)  # fmt: skip
    with pytest.raises(ValueError, match="int4_scheme"):
        quantize_onnx(fp32_export, tmp_path / "int4.onnx", cfg, None, "symmetric")


def int4_record(workspace: Workspace, stage_params: Callable, name: str, upstream: str) -> dict:
    cfg = QuantizeParams(upstream=upstream, mode="static", weights="int4", per_channel=True,
                         calibration_samples=128, fp32_first_layer=False)  # fmt: skip
    run(workspace.root, stage_params(quantize={name: cfg}), name)
    record = read_json(workspace.model(name) / "model.json")
    assert record["format"] == "onnx" and record["params"]["weights"] == "int4"
    return record


def on_onnxruntime_lattice(model: nn.Module) -> nn.Module:
    """model with every weight on onnxruntime's own int4 levels for its output channel: multiples
    q · s, q in [-7, 7], s = 2·max|w| / 15 (its symmetric MinMax scale), the channel's largest
    weight left at ±7.5 · s so that max|w|, and with it s, stays the same. Quantizing it again
    with onnxruntime's scheme moves that one weight per channel and no other, where the
    [-7, 7] grid (step max|w| / 7) re-rounds nearly every weight. A BatchNorm the export folds
    in scales a channel as a whole, lattice and largest weight alike."""
    with torch.no_grad():
        for layer in weight_layers(model).values():
            w = layer.weight
            absmax = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)
            step = torch.where(absmax > 0, 2 * absmax / 15, torch.ones_like(absmax))
            on_lattice = torch.clamp(torch.round(w / step), -7, 7) * step
            w.copy_(torch.where(w.abs() == absmax, w, on_lattice))
    return model


def test_stage_picks_the_int4_scheme_on_validation(
    workspace: Workspace, stage_params: Callable, tiny_trained: nn.Module
) -> None:
    """Neither scheme wins by rule: on weights already on one scheme's levels (not recorded as
    trained there) that scheme keeps them where the other re-rounds every one, and validation
    picks it; on the float teacher validation picks whichever does better. Each time the record
    holds the choice, both accuracies and the chosen file's own."""
    for name, prepared in (
        ("teacher_on_grid", snap(copy.deepcopy(tiny_trained), "int4")),
        ("teacher_on_onnxruntime", on_onnxruntime_lattice(copy.deepcopy(tiny_trained))),
    ):
        save_checkpoint(prepared, workspace.model(name), {"name": name})
    chosen = {}
    for upstream in ("teacher", "teacher_on_grid", "teacher_on_onnxruntime"):
        record = int4_record(workspace, stage_params, f"{upstream}_int4", upstream)
        scores = record["int4_scheme_val_accuracy"]
        assert set(scores) == set(INT4_SCHEMES) and not record["on_trained_grid"]
        scheme = chosen[upstream] = record["int4_scheme"]
        other = next(s for s in INT4_SCHEMES if s != scheme)
        assert scores[scheme] > scores[other] or (
            scores[scheme] == scores[other] and scheme == "onnxruntime"
        )
        assert record["val_accuracy"] == scores[scheme]  # the file kept is the one chosen
    assert chosen["teacher_on_grid"] == "grid"
    assert chosen["teacher_on_onnxruntime"] == "onnxruntime"


def test_stage_keeps_the_grid_an_upstream_was_trained_on(
    workspace: Workspace, stage_params: Callable, tiny_trained: nn.Module
) -> None:
    snapped = snap(copy.deepcopy(tiny_trained), "int4")
    record = {"name": "teacher_qat", "params": {"qat": "int4"}}
    save_checkpoint(snapped, workspace.model("teacher_qat"), record)
    record = int4_record(workspace, stage_params, "teacher_qat_int4", "teacher_qat")
    assert record["on_trained_grid"] and record["int4_scheme"] == "grid"
    assert record["int4_scheme_val_accuracy"] == {}  # a property of the model: nothing compared
    # the int4 weights are the model's own, so all it loses is the int8 activations' rounding,
    # which int8 weights pay as well (onnxruntime's int4 scheme agrees on ~0.78 of these images)
    int8 = QuantizeParams(upstream="teacher_qat", mode="static", weights="int8", per_channel=True,
                          calibration_samples=128, fp32_first_layer=False)  # fmt: skip
    run(workspace.root, stage_params(quantize={"teacher_qat_int8": int8}), "teacher_qat_int8")
    int8_record = read_json(workspace.model("teacher_qat_int8") / "model.json")
    assert record["val_agreement_fp32"] >= int8_record["val_agreement_fp32"] >= 0.95
