"""Export models to ONNX, and count what an export holds: parameters, non-zero parameters and
MACs from its graph (the weights as onnxruntime sees them, quantized ones included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from squeeze.nets.models import example_input

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
