"""Stage `evaluate`: export every model to ONNX and measure the exports side by side.

Reads params `evaluate.*`, data/splits/test and models/*; writes exports/<name>.onnx,
metrics/candidates.json (one record per model, the teacher included) and the Pareto plots
(plots/pareto.csv for `dvc plots`, plots/pareto.png).
"""

from __future__ import annotations

import base64
import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task

from squeeze.data import Split, load_split
from squeeze.evaluate import export_onnx, measure
from squeeze.models import load_checkpoint
from squeeze.params import Params
from squeeze.plots import pareto_png
from squeeze.train import predict
from squeeze.workspace import Workspace, read_json, write_json
from tasks.artifacts import publish
from tasks.candidate import stage_params

PARETO_COLUMNS = ("name", "method", "accuracy", "size_bytes", "gzip_bytes", "latency_ms_p50")
ARTIFACT_COLUMNS = (*PARETO_COLUMNS, "nonzero_params", "macs", "latency_ms_p95", "agreement")


def export(ws: Workspace, name: str, test: Split) -> np.ndarray | None:
    """Write exports/<name>.onnx; return the source model's test predictions (None when the
    model only exists as ONNX, e.g. after int8 quantization)."""
    folder = ws.model(name)
    if read_json(folder / "model.json").get("format") == "onnx":
        shutil.copyfile(folder / "model.onnx", ws.export(name))
        return None
    model, _ = load_checkpoint(folder)
    export_onnx(model, ws.export(name))
    return predict(model, torch.from_numpy(test.images)).argmax(1).numpy()


def write_pareto(ws: Workspace, records: dict[str, dict[str, Any]]) -> None:
    path = ws.plot("pareto.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PARETO_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records.values())
    pareto_png(list(records.values()), ws.plot("pareto.png"))


def publish_report(ws: Workspace, records: dict[str, dict[str, Any]]) -> None:
    """The candidates table and the Pareto plot as Prefect artifacts (inside a run only)."""
    rows = [{k: rec[k] for k in ARTIFACT_COLUMNS} for rec in records.values()]
    publish("table", key="candidates", table=rows, description="evaluate: every model measured")
    # the UI cannot load a file on the worker's disk, so the PNG travels inside the markdown
    png = base64.b64encode(ws.plot("pareto.png").read_bytes()).decode()
    publish("markdown", key="pareto", description="accuracy vs size and latency",
            markdown=f"![Pareto plot](data:image/png;base64,{png})")  # fmt: skip


def run(root: Path, params: Params) -> None:
    ws, cfg = Workspace(root), params.evaluate
    torch.set_num_threads(cfg.threads)
    test = load_split(ws.split("test"))
    shutil.rmtree(root / "exports", ignore_errors=True)
    (root / "exports").mkdir()
    records: dict[str, dict[str, Any]] = {}
    # one process, one loop: every model is measured under the same conditions
    for name in params.model_names():
        record = read_json(ws.model(name) / "model.json")
        reference = export(ws, name, test)
        records[name] = {
            "name": name,
            "method": record["method"],
            "upstream": record["upstream"],
            **measure(ws.export(name), test, cfg, reference),
        }
    write_json(ws.metrics("candidates"), records)
    write_pareto(ws, records)
    publish_report(ws, records)


evaluate = task(run, name="evaluate", timeout_seconds=3600)


def main() -> None:
    run(Path("."), stage_params())


if __name__ == "__main__":
    main()
