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

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from squeeze.config.params import Params
from squeeze.config.sections import QuantizeParams
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.spec import Split
from squeeze.data.splits import load_split
from squeeze.measure.export import export_onnx
from squeeze.measure.runtime import predicted_classes
from squeeze.methods.quantize import INT4_SCHEMES, choose_int4_scheme, quantize_onnx
from squeeze.nets.models import load_checkpoint
from stages.candidate import base_record, candidate, fresh_folder, main_for

STAGE = "quantize"


def calibration_images(train: Split, n: int) -> np.ndarray:
    """n training images evenly spread over the split: deterministic without a seed, and every
    class is represented because the split is not sorted by class."""
    idx = np.linspace(0, len(train) - 1, min(n, len(train))).round().astype(int)
    return train.images[idx]


def fp32_source(ws: Workspace, upstream: str, tmp: Path) -> Path:
    """The upstream as an fp32 ONNX file: its own model.onnx, or an export of its checkpoint."""
    folder = ws.model(upstream)
    if read_json(folder / "model.json").get("format") == "onnx":
        return folder / "model.onnx"
    model, _ = load_checkpoint(folder)
    export_onnx(model, tmp / "fp32.onnx")
    return tmp / "fp32.onnx"


def quantize_by_val(
    source: Path, out: Path, cfg: QuantizeParams, images: np.ndarray, val: Split, tmp: Path
) -> tuple[str, dict[str, float]]:
    """Quantize `source` with each of INT4_SCHEMES and keep, at `out`, the one with the higher
    validation accuracy (choose_int4_scheme). Returns (that scheme, each scheme's val accuracy)."""
    scores = {}
    for scheme in INT4_SCHEMES:
        path = tmp / f"int4_{scheme}.onnx"
        quantize_onnx(source, path, cfg, images, scheme)
        scores[scheme] = round(float((predicted_classes(path, val.images) == val.labels).mean()), 5)
    chosen = choose_int4_scheme(scores)
    shutil.move(tmp / f"int4_{chosen}.onnx", out)
    return chosen, scores


def run(root: Path, params: Params, name: str) -> None:
    ws, cfg = Workspace(root), candidate(params, STAGE, name)
    train, val = load_split(ws.split("train")), load_split(ws.split("val"))
    out = fresh_folder(ws.model(name)) / "model.onnx"
    upstream = read_json(ws.model(cfg.upstream) / "model.json")
    # fine-tuned quantization-aware for these weights (prune.*.qat): keep exactly that grid
    on_grid = upstream.get("params", {}).get("qat") == cfg.weights
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source = fp32_source(ws, cfg.upstream, Path(tmp))
        images = calibration_images(train, cfg.calibration_samples)
        if cfg.weights == "int8":  # one symmetric range, [-127, 127]: it is the int8 grid
            scheme, scheme_val = None, {}
            quantize_onnx(source, out, cfg, images)
        elif on_grid:
            scheme, scheme_val = "grid", {}
            quantize_onnx(source, out, cfg, images, "grid")
        else:
            scheme, scheme_val = quantize_by_val(source, out, cfg, images, val, Path(tmp))
        fp32_pred = predicted_classes(source, val.images)
    pred = predicted_classes(out, val.images)
    record = base_record(ws, name, f"quantize_{cfg.mode}", [cfg.upstream], cfg) | {
        "arch": upstream.get("arch"),
        "format": "onnx",
        "val_accuracy": round(float((pred == val.labels).mean()), 5),
        "val_agreement_fp32": round(float((pred == fp32_pred).mean()), 5),
        "on_trained_grid": on_grid,
        "int4_scheme": scheme,
        "int4_scheme_val_accuracy": scheme_val,  # the schemes compared; {} when none was chosen
        "size_bytes": out.stat().st_size,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out.parent / "model.json", record)


def main() -> None:
    main_for(run, STAGE)


if __name__ == "__main__":
    main()
