"""int8 / int4 post-training quantization of an ONNX export with onnxruntime.quantization.

The input is the fp32 file squeeze.measure.export.export_onnx writes: uint8 "pixels" in, a
Cast/Div/Sub/Div standardisation, then the convs. That preprocessing stays fp32 (it is
excluded from quantization); the layers after it get int8 or int4 weights (per-channel
symmetric scales when asked: a BatchNorm folded into a conv gives its channels very different
ranges; symmetric, so a pruned weight stays exactly 0) and, in
static mode, uint8 activations whose ranges come from calibration on training images. Dynamic
mode quantizes weights only and computes activation scales at run time (no calibration).
The classifier's output (the logits) is not re-quantized: with 256 levels, near-ties between
classes flip; keeping it fp32 costs nothing in size.

int4 weights come in two schemes (INT4_SCHEMES): onnxruntime's own MinMax and squeeze.methods.qat's
symmetric grid. A model fine-tuned on the grid keeps it; any other gets the scheme with the higher
validation accuracy (choose_int4_scheme).

`quantize` is the method's entry (squeeze.methods); `quantize_onnx` quantizes one file with one
scheme.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from squeeze.config.sections import QuantizeParams
from squeeze.data.spec import Split
from squeeze.measure.export import INPUT, weight_tensors
from squeeze.measure.runtime import accuracy_of
from squeeze.methods import MethodData, Result
from squeeze.methods.qat import LEVELS

# the fp32 export a quantized search finalist was made from, kept beside its model.onnx: what
# evaluate measures its agreement against (a quantize candidate's is its upstream's own)
FP32_SOURCE = "fp32.onnx"
CALIBRATION_BATCH = 64  # images per calibration run; bounds memory, not the result
WEIGHT_OPS = {"Conv", "Gemm", "MatMul"}
# int4 needs QDQ operators of opset 21; below that (our exports) onnxruntime writes them in its
# com.microsoft domain, which stock onnxruntime runs
WEIGHT_TYPES = {"int8": QuantType.QInt8, "int4": QuantType.QInt4}
# per-channel int4 weight scales: onnxruntime's MinMax ([-8, 7], scale 2·max|w| / 15) or
# squeeze.methods.qat's grid ([-7, 7], scale max|w| / 7, int4_overrides); the first wins ties
INT4_SCHEMES = ("onnxruntime", "grid")


# onnxruntime announces on the root logger, at WARNING, every int4 model it writes below opset 21:
# nothing a user can act on (stock onnxruntime runs the com.microsoft Q/DQ, and evaluate counts
# through them), so that one notice is dropped while quantize_static runs; all others still show
OPSET_NOTICE = "ONNX QuantizeLinear and DequantizeLinear operators do not support"


@contextlib.contextmanager
def quiet_opset_notice() -> Iterator[None]:
    """Drop onnxruntime's int4 opset notice (OPSET_NOTICE) from the root logger meanwhile."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(OPSET_NOTICE)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


class PixelBatches(CalibrationDataReader):
    """Feeds calibration images to onnxruntime's calibrator in (B, H, W, C) uint8 batches."""

    def __init__(self, images: np.ndarray, batch: int = CALIBRATION_BATCH) -> None:
        self.batches = iter([images[i : i + batch] for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT: batch}


def input_side(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """(preprocessing nodes, first weight layers): the names of the nodes between the graph
    input and the first Conv/Gemm/MatMul (Cast, Div, ...), and of those weight layers.

    The preprocessing standardises raw pixels; quantizing it would only add error, so it stays
    fp32. Found by walking forward from the graph input and stopping at every weight layer met.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, None] = {}
    first: dict[str, None] = {}
    frontier = [i.name for i in model.graph.input]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            if node.op_type in WEIGHT_OPS:
                first[node.name] = None
            elif node.name not in found:
                found[node.name] = None
                frontier += list(node.output)
    return list(found), list(first)


def quantizable_layers(source: Path) -> list[str]:
    """The names of the weight layers (Conv, Gemm, MatMul) of the fp32 ONNX file `source` after
    onnxruntime's pre-processing, in graph order, less the preprocessing: what keep_fp32 names.
    The names come from the torch modules (e.g. /net/features/features.0/Conv), so a pruned copy
    of the same network has the same ones."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        model = onnx.load(str(prepared))
    skipped = set(input_side(model)[0])
    return [n.name for n in model.graph.node if n.op_type in WEIGHT_OPS and n.name not in skipped]


def int4_overrides(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """Per-channel int4 weight scales max|w| / 7: the symmetric [-7, 7] grid of squeeze.methods.qat.

    onnxruntime's own int4 MinMax spans [-8, 7] with scale 2·max|w| / 15: a finer step, but no
    fixed point (it slightly clips each channel's largest weight), so weights fine-tuned on the
    grid would be rounded again. These overrides quantize onto exactly that grid.
    """
    overrides = {}
    for name, w in weight_tensors(model.graph).items():
        if w.ndim < 2:  # biases: int32, derived from the weight and input scales
            continue
        absmax = np.abs(w).reshape(len(w), -1).max(axis=1)
        scales = np.where(absmax > 0, absmax / LEVELS["int4"], 1.0).astype(np.float32)
        overrides[name] = [
            {"axis": 0, "quant_type": QuantType.QInt4, "scale": scale, "zero_point": np.int8(0)}
            for scale in scales
        ]
    return overrides


def choose_int4_scheme(val_accuracy: dict[str, float]) -> str:
    """The int4 scheme with the higher validation accuracy; a tie keeps onnxruntime's own.

    Args:
        val_accuracy: each of INT4_SCHEMES -> the validation accuracy of the model quantized so.
    """
    missing = set(INT4_SCHEMES) - set(val_accuracy)
    if missing:
        raise ValueError(f"no validation accuracy for int4 scheme(s) {sorted(missing)}")
    return max(INT4_SCHEMES, key=lambda scheme: val_accuracy[scheme])  # first of equals


def quantize_onnx(
    source: Path,
    dest: Path,
    cfg: QuantizeParams,
    calibration: np.ndarray | None,
    int4_scheme: str = "onnxruntime",
    keep_fp32: Sequence[str] = (),
) -> None:
    """Write the quantized version of the fp32 ONNX file `source` to `dest`.

    Args:
        cfg: mode "static" (QDQ, activations calibrated with MinMax on `calibration`) or
            "dynamic"; weights int8 or int4 (static); per_channel weight scales;
            fp32_first_layer leaves the first weight layers (input_side) unquantized.
        calibration: (N, H, W, C) uint8 training images, N = cfg.calibration_samples; unused in
            dynamic mode.
        int4_scheme: one of INT4_SCHEMES, for int4 weights (int8's symmetric range [-127, 127]
            already is squeeze.methods.qat's int8 grid).
        keep_fp32: names of weight layers (quantizable_layers) left unquantized as well.
    """
    if int4_scheme not in INT4_SCHEMES:
        raise ValueError(f"int4_scheme {int4_scheme!r}: expected one of {INT4_SCHEMES}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # shape inference + graph optimisation first, as onnxruntime recommends for PTQ
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        prepared_model = onnx.load(str(prepared))
        preprocessing, first_layers = input_side(prepared_model)
        excluded = preprocessing + (first_layers if cfg.fp32_first_layer else []) + [*keep_fp32]
        out = Path(tmp) / "int8.onnx"
        if cfg.mode == "static":
            if calibration is None or len(calibration) == 0:
                raise ValueError("static quantization needs calibration images")
            # uint8 activations, int8 weights (U8S8): onnxruntime's x86 QDQ fusions turn a
            # Conv and its residual Add into QLinearConv/QLinearAdd only for uint8 activations
            # when a quantized tensor feeds two consumers (a residual block's input); with int8
            # activations those stay fp32 between DequantizeLinear and QuantizeLinear. Same grid
            # (asymmetric, 256 levels), so accuracy does not move.
            with quiet_opset_notice():
                quantize_static(
                    str(prepared), str(out), PixelBatches(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                    activation_type=QuantType.QUInt8, weight_type=WEIGHT_TYPES[cfg.weights],
                    nodes_to_exclude=excluded,
                    extra_options={
                        "ActivationSymmetric": False, "WeightSymmetric": True,
                        "TensorQuantOverrides": int4_overrides(prepared_model)
                        if cfg.weights == "int4" and int4_scheme == "grid" else {},
                        # the logits stay fp32: 256 levels would turn near-ties into wrong answers
                        "OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"],
                    },
                )  # fmt: skip
        else:
            # symmetric int8 weights: a pruned (zero) weight stays exactly 0, which the shipped
            # file's compressor sees
            quantize_dynamic(
                str(prepared), str(out), per_channel=cfg.per_channel,
                weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
            )  # fmt: skip
        onnx.checker.check_model(str(out))
        shutil.move(out, dest)  # the temporary folder may be on another file system


def calibration_images(train: Split, n: int) -> np.ndarray:
    """n training images evenly spread over the split: deterministic without a seed, and every
    class is represented because the split is not sorted by class."""
    idx = np.linspace(0, len(train) - 1, min(n, len(train))).round().astype(int)
    return train.images[idx]


def quantize_by_val(
    source: Path, out: Path, cfg: QuantizeParams, images: np.ndarray, val: Split, tmp: Path,
    keep_fp32: Sequence[str] = (),
) -> tuple[str, dict[str, float]]:  # fmt: skip
    """Quantize `source` with each of INT4_SCHEMES and keep, at `out`, the one with the higher
    validation accuracy (choose_int4_scheme). Returns (that scheme, each scheme's val accuracy)."""
    scores = {}
    for scheme in INT4_SCHEMES:
        path = tmp / f"int4_{scheme}.onnx"
        quantize_onnx(source, path, cfg, images, scheme, keep_fp32)
        scores[scheme] = round(accuracy_of(path, val), 5)
    chosen = choose_int4_scheme(scores)
    shutil.move(tmp / f"int4_{chosen}.onnx", out)
    return chosen, scores


def quantize(
    source: Path, cfg: QuantizeParams, data: MethodData, *, qat: str | None = None,
    keep_fp32: Sequence[str] | None = None,
) -> Result[bytes]:  # fmt: skip
    """The quantized version of the fp32 ONNX file `source` (onnxruntime.quantization).

    Args:
        source: an fp32 ONNX export (squeeze.measure.export.export_onnx: (B, H, W, C) uint8
            "pixels" in, (B, K) fp32 logits out).
        cfg: mode (static: QDQ with calibrated int8 activations; dynamic), weights (int8, or
            int4 with static), per_channel, calibration_samples, fp32_first_layer.
        data: train, of which cfg.calibration_samples images spread evenly over the split
            calibrate static mode (calibration_images); val, on which int4 weights get the
            better of INT4_SCHEMES (choose_int4_scheme).
        qat: the weights the upstream was fine-tuned quantization-aware for (its prune.*.qat),
            None if any other: int4 weights equal to it keep exactly that grid, compared with
            nothing.
        keep_fp32: names of weight layers (quantizable_layers) kept fp32 besides those cfg
            keeps: mixed precision, as the budget search chooses it (squeeze.methods.search);
            None: none.

    Returns:
        Result(the quantized ONNX model's bytes, record={"on_trained_grid", "int4_scheme" (None
        for int8, whose one symmetric range already is the grid), "int4_scheme_val_accuracy"
        (each scheme compared -> its val accuracy; {} when none was compared)}).

    Raises:
        ValueError: static mode without calibration images (an empty train split).
    """
    on_grid = qat == cfg.weights
    keep_fp32 = keep_fp32 or ()
    images = calibration_images(data.train, cfg.calibration_samples)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quantized.onnx"
        if cfg.weights == "int8":  # one symmetric range, [-127, 127]: it is the int8 grid
            scheme, scheme_val = None, {}
            quantize_onnx(source, out, cfg, images, keep_fp32=keep_fp32)
        elif on_grid:
            scheme, scheme_val = "grid", {}
            quantize_onnx(source, out, cfg, images, "grid", keep_fp32)
        else:
            scheme, scheme_val = quantize_by_val(
                source, out, cfg, images, data.val, Path(tmp), keep_fp32
            )
        onnx_bytes = out.read_bytes()
    record = {
        "on_trained_grid": on_grid,
        "int4_scheme": scheme,
        "int4_scheme_val_accuracy": scheme_val,  # the schemes compared; {} when none was chosen
    }
    return Result(onnx_bytes, record=record)
