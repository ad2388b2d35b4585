"""Export models to ONNX and measure the exports in onnxruntime, the deployment runtime.

Every reported number comes from the exported file reloaded in onnxruntime: size from its bytes,
parameters and MACs from its graph, accuracy and latency from running it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from squeeze.data import Split
from squeeze.models import example_input
from squeeze.package import pack
from squeeze.params import EvaluateParams
from squeeze.stats import accuracy_ci

INPUT, OUTPUT = "pixels", "logits"
OPSET = 17
# op type -> input positions that hold weights or biases (directly, or through DequantizeLinear)
WEIGHT_INPUTS = {
    "Conv": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1), "ConvInteger": (1,),
    "MatMulInteger": (0, 1), "QLinearConv": (3, 8), "QLinearMatMul": (0, 3),
}  # fmt: skip
CONV_OPS = {"Conv", "ConvInteger", "QLinearConv"}
INT4_TYPES = (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export a model (a Classifier or Ensemble: its .spec gives H, W, C) taking (B, H, W, C)
    uint8 "pixels" to (B, K) float32 "logits", with a dynamic batch axis."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model.eval(),
        (example_input(model.spec),),
        str(tmp),
        input_names=[INPUT],
        output_names=[OUTPUT],
        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,  # the TorchScript exporter folds BatchNorm into Conv
    )
    onnx.checker.check_model(str(tmp))
    tmp.replace(path)


def session(path: Path, threads: int) -> ort.InferenceSession:
    """An onnxruntime CPU session with a fixed thread count, so latencies are comparable."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def weight_tensors(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The initializers that are weights or biases of a layer (quantized ones included)."""
    inits = {t.name: t for t in graph.initializer}
    dequant = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    found = {}
    for node in graph.node:
        for pos in WEIGHT_INPUTS.get(node.op_type, ()):
            if pos < len(node.input):
                name = dequant.get(node.input[pos], node.input[pos])
                if name in inits:
                    found[name] = numpy_helper.to_array(inits[name])
    return found


def standard_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with int4 Q/DQ moved to int8 in the standard domain, in place.

    Below opset 21 onnxruntime writes int4 Q/DQ in its com.microsoft domain, which onnx's shape
    inference does not know: every shape after them would be lost. Only shapes are read from
    the result, so widening the int4 weights to int8 changes nothing that is counted.
    """
    for node in model.graph.node:
        if node.domain == "com.microsoft" and node.op_type in QDQ_OPS:
            node.domain = ""
    for t in model.graph.initializer:
        if t.data_type in INT4_TYPES:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.int8), t.name))
    return model


def reduced_size(node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> int:
    """MACs per output element: the length of the dot product that computes it."""
    if node.op_type in CONV_OPS:  # weight (C_out, C_in/groups, kh, kw)
        return int(np.prod(weight_shape[1:]))
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    return weight_shape[1] if trans_b else weight_shape[0]  # Gemm/MatMul weight (K, N) or (N, K)


def graph_stats(path: Path) -> dict[str, int]:
    """Parameters, non-zero parameters and MACs per image, read from the ONNX graph."""
    model = onnx.load(str(path))
    weights = weight_tensors(model.graph)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1  # batch 1 so that shape inference gives concrete output sizes
    graph = onnx.shape_inference.infer_shapes(standard_qdq(model)).graph
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*graph.value_info, *graph.output)
    }
    dequant = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    macs = 0
    for node in graph.node:
        if node.op_type not in WEIGHT_INPUTS:
            continue
        # the first weight-bearing input that is a weight (MatMul's may be either operand)
        names = [dequant.get(node.input[p], node.input[p]) for p in WEIGHT_INPUTS[node.op_type]
                 if p < len(node.input)]  # fmt: skip
        weight = next((weights[n] for n in names if n in weights), None)
        out = shapes.get(node.output[0])
        if weight is None or not out:
            continue
        # conv: every output element needs C_in/groups · kh · kw MACs; matmul: K per output
        macs += int(np.prod(out)) * reduced_size(node, weight.shape)
    return {
        "params": int(sum(w.size for w in weights.values())),
        "nonzero_params": int(sum(np.count_nonzero(w) for w in weights.values())),
        "macs": macs,
    }


def latencies(paths: dict[str, Path], sample: np.ndarray, cfg: EvaluateParams) -> dict[str, dict]:
    """Median and p95 batch-1 latency in ms of every ONNX file, {name: {"latency_ms_p50",
    "latency_ms_p95"}}, timed in cfg.rounds interleaved rounds.

    Every session is opened and warmed up (cfg.warmup runs) first; then each round times every
    model in turn, cfg.runs in all per model, split evenly over the rounds, one untimed run
    after each switch (the caches held the previous model). A slow spell of the machine (another
    process, a frequency change) then falls on all models alike instead of on whichever was
    being timed: measured here, identical networks timed one after the other differed by 18%.

    Args:
        paths: {name: exported model}, all taking (B, H, W, C) uint8 `pixels`.
        sample: one image (H, W, C) uint8.
    """
    feed = {INPUT: sample[None]}
    sessions = {name: session(path, cfg.threads) for name, path in paths.items()}
    for sess in sessions.values():
        for _ in range(cfg.warmup):
            sess.run(None, feed)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for runs in np.array_split(np.arange(cfg.runs), cfg.rounds):
        for name, sess in sessions.items():
            sess.run(None, feed)
            for _ in runs:
                start = time.perf_counter_ns()
                sess.run(None, feed)
                times[name].append((time.perf_counter_ns() - start) / 1e6)
    return {
        name: {
            "latency_ms_p50": round(float(np.percentile(t, 50)), 4),
            "latency_ms_p95": round(float(np.percentile(t, 95)), 4),
        }
        for name, t in times.items()
    }


def predict_onnx(sess: ort.InferenceSession, images: np.ndarray, batch: int) -> tuple:
    """(logits (N, K) float32 for all images, images per second) over the array in batches."""
    start = time.perf_counter()
    logits = np.concatenate(
        [sess.run(None, {INPUT: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )
    return logits, len(images) / (time.perf_counter() - start)


def predicted_classes(path: Path, images: np.ndarray, threads: int = 1) -> np.ndarray:
    """Predicted class (N,) int64 of an ONNX model for (N, H, W, C) uint8 images."""
    return predict_onnx(session(path, threads), images, 512)[0].argmax(1)


def split_scores(
    split: str, pred: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """`<split>_accuracy` with its Wilson 95% interval and `<split>_per_class_accuracy` (by
    class name; label k is classes[k])."""
    correct = pred == labels
    per_class = {
        name: round(float(correct[labels == c].mean()), 5) for c, name in enumerate(classes)
    }
    return {
        f"{split}_accuracy": round(float(correct.mean()), 5),
        f"{split}_accuracy_ci": accuracy_ci(int(correct.sum()), len(correct)),
        f"{split}_per_class_accuracy": per_class,
    }


def measure_logits(
    path: Path,
    splits: dict[str, Split],
    classes: list[str],
    cfg: EvaluateParams,
    reference: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Everything evaluate reports about one ONNX file but its latency (latencies times all
    files together), and its logits per split.

    Args:
        path: the exported model.
        splits: {"val": ..., "test": ...}: every split is scored (`val_accuracy`, its CI and
            per-class accuracies; the same for test). Decisions read val; test is reported.
        classes: the class names, label k is classes[k] (DataSpec.classes).
        cfg: params.evaluate (threads, throughput batch).
        reference: the source model's predicted classes (N,) on the val split; the share the
            export agrees with is `agreement` (a broken export shows here even when accuracy
            looks plausible). None leaves agreement null.
    Returns:
        (the record, {split: logits (N, K) float32}).
    """
    blob = path.read_bytes()
    sess = session(path, cfg.threads)
    record: dict[str, Any] = {}
    logits: dict[str, np.ndarray] = {}
    throughput = 0.0
    for split, data in splits.items():
        logits[split], throughput = predict_onnx(sess, data.images, cfg.throughput_batch)
        record |= split_scores(split, logits[split].argmax(1), data.labels, classes)
    agreement = None
    if reference is not None:
        agreement = round(float((logits["val"].argmax(1) == reference).mean()), 5)
    record |= {
        "size_bytes": len(blob),
        "shipped_bytes": len(pack(blob)),  # what the registry stores
        **graph_stats(path),
        "throughput": round(throughput, 1),  # over the last split, in throughput_batch batches
        "agreement": agreement,
    }
    return record, logits
