"""Stage `evaluate`: export every model to ONNX and measure the exports side by side.

Reads params `evaluate.*`, data/splits/{val,test} and models/*; writes exports/<name>.onnx,
metrics/candidates.json (one record per model, the teacher included) and plots/pareto.csv (the
columns dvc.yaml's Pareto plots read: validation accuracy, what decides, with test beside it).
The gate stage draws plots/pareto.png, since it knows the limits and the verdicts.

Every model is scored on both splits: validation for the decisions downstream (gate, promote),
test for the report. Each record also holds `val_vs_teacher`, the paired 2×2 table of its and
the teacher's per-image correctness on validation (squeeze.measure.stats), from which the gate
decides non-inferiority to the teacher without the predictions themselves. In a flow run, the
candidates table becomes an artifact of the run (flows.artifacts, from these files).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.spec import Split, read_spec
from squeeze.data.splits import load_split
from squeeze.decide.gate import TEACHER
from squeeze.measure.export import export_onnx
from squeeze.measure.runtime import latencies, measure_logits, predicted_classes
from squeeze.measure.stats import paired_table
from squeeze.methods.quantize import FP32_SOURCE
from squeeze.methods.train import predict
from squeeze.nets.models import load_checkpoint
from stages.candidate import stage_main

# plots/pareto.csv; dvc.yaml's top-level `plots:` reads these names (tests/unit/test_dvc_plots.py)
PARETO_COLUMNS = (
    "name",
    "method",
    "val_accuracy",
    "test_accuracy",
    "size_bytes",
    "shipped_bytes",
    "latency_ms_p50",
)


def export(ws: Workspace, name: str, val: Split, val_logits: dict[str, np.ndarray]) -> np.ndarray:
    """Write exports/<name>.onnx; return the predictions (N,) on val of what it was made from.

    A checkpoint's source is its torch model. A model that exists only as ONNX (int8/int4
    quantization, a logit ensemble) has as source its upstreams' exports: the upstream's own
    predictions for a quantized model, the members' averaged logits for an ensemble, read from
    val_logits (upstreams are evaluated first). A quantized search finalist's source is the
    fp32 export it was quantized from, kept beside it (FP32_SOURCE): its upstream is the teacher,
    from which it differs by more than quantization. So every export has an agreement figure.
    """
    folder = ws.model(name)
    record = read_json(folder / "model.json")
    if record.get("format") == "onnx":
        shutil.copyfile(folder / "model.onnx", ws.export(name))
        if (folder / FP32_SOURCE).exists():
            return predicted_classes(folder / FP32_SOURCE, val.images)
        # n × (N, K) -> (N, K): f(x) = 1/n Σ fᵢ(x), which for one upstream is its own logits
        return np.mean([val_logits[up] for up in record["upstream"]], axis=0).argmax(1)
    model, _ = load_checkpoint(folder)
    export_onnx(model, ws.export(name))
    return predict(model, torch.from_numpy(val.images)).argmax(1).numpy()


def write_pareto(ws: Workspace, records: dict[str, dict[str, Any]]) -> None:
    """Write plots/pareto.csv, one row per model, for `dvc plots show`."""
    path = ws.plot("pareto.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PARETO_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records.values())


def run(root: Path, params: Params) -> None:
    ws, cfg = Workspace(root), params.evaluate
    torch.set_num_threads(cfg.threads)
    splits = {split: load_split(ws.split(split)) for split in ("val", "test")}
    shutil.rmtree(root / "exports", ignore_errors=True)
    (root / "exports").mkdir()
    records: dict[str, dict[str, Any]] = {}
    val_logits: dict[str, np.ndarray] = {}
    classes = list(read_spec(ws.profile).classes)
    # one process: every model is measured under the same conditions, timed interleaved
    for name in params.model_names():  # topological: upstreams before what is made from them
        record = read_json(ws.model(name) / "model.json")
        reference = export(ws, name, splits["val"], val_logits)
        measured, logits = measure_logits(ws.export(name), splits, classes, cfg, reference)
        val_logits[name] = logits["val"]
        records[name] = {
            "name": name,
            "method": record["method"],
            "upstream": record["upstream"],
            **measured,
        }
    timed = latencies({name: ws.export(name) for name in records}, splits["val"].images[0], cfg)
    for name, record in records.items():
        record |= timed[name]
    labels = splits["val"].labels
    teacher_correct = val_logits[TEACHER].argmax(1) == labels
    for name, record in records.items():
        record["val_vs_teacher"] = paired_table(
            val_logits[name].argmax(1) == labels, teacher_correct
        )
    write_json(ws.metrics("candidates"), records)
    write_pareto(ws, records)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
