"""Stage `quantize`: build candidate NAME, the int8 or int4 ONNX version of its upstream.

Reads params `quantize.NAME`, models/<upstream>/ (a checkpoint, exported here to a temporary
fp32 ONNX file with squeeze.evaluate.export_onnx, or an ONNX-format model used as it is) and
data/splits/{train,val}; writes models/NAME/model.onnx and model.json ("format": "onnx").
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from prefect import task

from squeeze.data import Split, load_split
from squeeze.evaluate import INPUT, export_onnx, session
from squeeze.models import load_checkpoint
from squeeze.params import Params
from squeeze.quantize import quantize_onnx
from squeeze.workspace import Workspace, read_json, write_json
from tasks.candidate import base_record, candidate, fresh_folder, main_for

STAGE = "quantize"


def calibration_images(train: Split, n: int) -> np.ndarray:
    """n training images evenly spread over the split: deterministic without a seed, and every
    class is represented because the split is not sorted by class."""
    idx = np.linspace(0, len(train) - 1, min(n, len(train))).round().astype(int)
    return train.images[idx]


def predictions(path: Path, images: np.ndarray) -> np.ndarray:
    """Predicted classes of an ONNX model (onnxruntime, one thread)."""
    sess = session(path, 1)
    return np.concatenate(
        [
            sess.run(None, {INPUT: images[i : i + 512]})[0].argmax(1)
            for i in range(0, len(images), 512)
        ]
    )


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
    out = fresh_folder(ws.model(name)) / "model.onnx"
    upstream = read_json(ws.model(cfg.upstream) / "model.json")
    # fine-tuned quantization-aware for these weights (prune.*.qat): keep exactly that grid
    on_grid = upstream.get("params", {}).get("qat") == cfg.weights
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source = fp32_source(ws, cfg.upstream, Path(tmp))
        images = calibration_images(train, cfg.calibration_samples)
        quantize_onnx(source, out, cfg, images, on_trained_grid=on_grid)
        fp32_pred = predictions(source, val.images)
    pred = predictions(out, val.images)
    record = base_record(ws, name, f"quantize_{cfg.mode}", [cfg.upstream], cfg) | {
        "arch": upstream.get("arch"),
        "format": "onnx",
        "val_accuracy": round(float((pred == val.labels).mean()), 5),
        "val_agreement_fp32": round(float((pred == fp32_pred).mean()), 5),
        "on_trained_grid": on_grid,
        "size_bytes": out.stat().st_size,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    write_json(out.parent / "model.json", record)


quantize = task(run, name=STAGE, task_run_name="quantize-{name}", timeout_seconds=3600)


def main() -> None:
    main_for(run, STAGE)


if __name__ == "__main__":
    main()
