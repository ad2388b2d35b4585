"""What the stages that fine-tune a candidate (distill, prune) write when it is trained."""

from __future__ import annotations

import time
from typing import Any

from squeeze.config.workspace import Workspace
from squeeze.nets.models import Classifier, count_params, save_checkpoint
from stages.candidate import fresh_folder


def save_trained(
    ws: Workspace, name: str, model: Classifier, record: dict[str, Any],
    history: list[dict[str, Any]], start: float,
) -> None:  # fmt: skip
    """Save candidate `name` whole or not at all (fresh_folder): its weights and a model.json of
    `record` plus its parameter count, last validation accuracy, per-epoch history and the wall
    seconds since `start` (a time.perf_counter() value)."""
    record = record | {
        "format": "safetensors",
        "parameters": count_params(model),
        "val_accuracy": history[-1]["val_accuracy"],
        "history": history,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    with fresh_folder(ws.model(name)) as folder:
        save_checkpoint(model, folder, record)
