"""Stage `evaluate`: export every model to ONNX and measure the exports side by side.

Reads params `evaluate.*`, data/splits/test and models/*; writes exports/<name>.onnx and
metrics/candidates.json (one record per model, the teacher included).
"""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from squeeze.data import load_split
from squeeze.evaluate import export_onnx, measure
from squeeze.models import load_checkpoint
from squeeze.params import Params, load_params
from squeeze.train import predict
from squeeze.workspace import Workspace, write_json


def model_names(params: Params) -> list[str]:
    """The models evaluate measures, in report order."""
    return ["teacher"]


def run(root: Path, params: Params) -> None:
    ws, cfg = Workspace(root), params.evaluate
    torch.set_num_threads(cfg.threads)
    test = load_split(ws.split("test"))
    records = {}
    # one process, one loop: every model is measured under the same conditions
    for name in model_names(params):
        model, record = load_checkpoint(ws.model(name))
        export_onnx(model, ws.export(name))
        reference = predict(model, torch.from_numpy(test.images)).argmax(1).numpy()
        records[name] = {
            "name": name,
            "method": record["method"],
            "upstream": record["upstream"],
            **measure(ws.export(name), test, cfg, reference),
        }
    write_json(ws.metrics("candidates"), records)


evaluate = task(run, name="evaluate", timeout_seconds=3600)


def main() -> None:
    run(Path("."), load_params())


if __name__ == "__main__":
    main()
