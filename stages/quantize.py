"""Stage `quantize`: build candidate NAME, the int8 or int4 ONNX version of its upstream.

Reads params `quantize.NAME`, models/<upstream>/ (a checkpoint, exported here to a temporary
fp32 ONNX file with squeeze.measure.export.export_onnx, or an ONNX-format model used as it is) and
data/splits/{train,val}; writes models/NAME/model.onnx and model.json ("format": "onnx").

int4 weights: an upstream fine-tuned on squeeze.methods.qat's int4 grid keeps exactly that grid (a
property of the model, not a choice). Any other is quantized with both INT4_SCHEMES and keeps
the one with the higher validation accuracy (ties: onnxruntime's own); model.json records the
scheme and both accuracies.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.spec import Split
from squeeze.data.splits import load_split
from squeeze.measure.export import export_onnx
from squeeze.measure.runtime import predicted_classes
from squeeze.methods import MethodData
from squeeze.methods.quantize import quantize
from squeeze.nets.models import load_checkpoint
from stages.candidate import base_record, candidate, fresh_folder, main_for

STAGE = "quantize"


def fp32_source(ws: Workspace, upstream: str, tmp: Path) -> Path:
    """The upstream as an fp32 ONNX file: its own model.onnx, or an export of its checkpoint."""
    folder = ws.model(upstream)
    if read_json(folder / "model.json").get("format") == "onnx":
        return folder / "model.onnx"
    model, _ = load_checkpoint(folder)
    export_onnx(model, tmp / "fp32.onnx")
    return tmp / "fp32.onnx"


def run(root: Path, params: Params, name: str) -> None:
    ws, cfg = Workspace(root), candidate(params, STAGE, name)
    train, val = load_split(ws.split("train")), load_split(ws.split("val"))
    upstream = read_json(ws.model(cfg.upstream) / "model.json")
    start = time.perf_counter()
    with fresh_folder(ws.model(name)) as folder, tempfile.TemporaryDirectory() as tmp:
        out = folder / "model.onnx"
        source = fp32_source(ws, cfg.upstream, Path(tmp))
        # qat: the grid the upstream was fine-tuned on (prune.*.qat), which quantize keeps
        qat = upstream.get("params", {}).get("qat")
        result = quantize(source, cfg, MethodData(train, val), qat=qat)
        out.write_bytes(result.model)
        record = base_record(ws, name, f"quantize_{cfg.mode}", [cfg.upstream], cfg) | {
            "arch": upstream.get("arch"),
            **result.record,  # on_trained_grid, int4_scheme, int4_scheme_val_accuracy
        }
        write_json(folder / "model.json", record | onnx_record(source, out, val, start))


def onnx_record(source: Path, out: Path, val: Split, start: float) -> dict[str, Any]:
    """What an ONNX-format candidate's model.json adds (`out`, quantized from the fp32 export
    `source`): its format, validation accuracy, agreement with the source on val, file size and
    the wall seconds since `start` (a time.perf_counter() value)."""
    fp32_pred, pred = predicted_classes(source, val.images), predicted_classes(out, val.images)
    return {
        "format": "onnx",
        "val_accuracy": round(float((pred == val.labels).mean()), 5),
        "val_agreement_fp32": round(float((pred == fp32_pred).mean()), 5),
        "size_bytes": out.stat().st_size,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    main_for(run, STAGE)


if __name__ == "__main__":
    main()
