"""Stage `train_teacher`: train the teacher CNN on the train split.

Reads params `train_teacher.*` and data/splits/{train,val}; writes models/teacher/
(safetensors + JSON record) and plots/train_teacher.csv. An interrupted run resumes from
.squeeze/train_teacher-<key>.pt, whose key covers the params and the data. A teacher that
diverged or ends near chance on validation stops the run here, before any candidate is built
from it, and nothing is written to models/teacher.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from squeeze.data import load_split
from squeeze.models import build_model, count_params, save_checkpoint
from squeeze.params import FitParams, Params
from squeeze.train import TrainingError, fit
from squeeze.workspace import Workspace, read_json
from tasks.candidate import resume_key, stage_main

NAME = "teacher"
# A teacher must end clearly above chance on validation: at most CHANCE_FACTOR × chance it has
# learned next to nothing (a collapsed run predicts one class: exactly chance), and a model that
# knows nothing cannot teach; every candidate distilled, pruned or quantized from it would
# inherit that. 1.5× chance (15% on the ten balanced classes) is far outside the sampling noise
# of a chance-level model (5 standard errors on 1,000 validation images, 19 on 6,000) yet far
# below any teacher worth keeping (the tiny test model reaches 75%, the real teacher 93%): it is
# a floor for "learned nothing", not a quality bar; the gate judges quality.
CHANCE_FACTOR = 1.5


def write_curves(path: Path, history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def chance_accuracy(labels: np.ndarray) -> float:
    """The accuracy of a constant prediction: the share of the most common class (1/K for K
    balanced classes)."""
    return float(np.bincount(labels).max() / len(labels))


def check_learned(val_accuracy: float, val_labels: np.ndarray, cfg: FitParams) -> None:
    """Raise TrainingError when the teacher's validation accuracy is not clearly above chance."""
    chance = chance_accuracy(val_labels)
    if val_accuracy <= CHANCE_FACTOR * chance:
        raise TrainingError(
            f"the teacher ends at {val_accuracy:.1%} validation accuracy, not "
            f"clearly above chance ({chance:.1%}; it must beat {CHANCE_FACTOR:g}× chance = "
            f"{CHANCE_FACTOR * chance:.1%}), so it cannot teach and no candidate is built from "
            f"it; lower train_teacher.fit.lr (now {cfg.lr}) or raise train_teacher.fit.epochs "
            f"(now {cfg.epochs}) in params.yaml"
        )


def run(root: Path, params: Params, stop_after: int | None = None) -> None:
    """Train, check and save the teacher; raises TrainingError (nothing saved) on a teacher that
    diverged or learned nothing."""
    ws, arch_cfg, cfg = Workspace(root), params.train_teacher.arch, params.train_teacher.fit
    torch.set_num_threads(cfg.threads)  # deliberate: the default may oversubscribe shared CPUs
    torch.manual_seed(cfg.seed)
    data_sha = read_json(ws.fingerprint)["sha256"]
    arch = arch_cfg.model_dump(mode="json")
    model = build_model(arch)
    state = ws.state(f"train_teacher-{resume_key(params.train_teacher, data_sha, [])}.pt")
    val = load_split(ws.split("val"))
    start = time.perf_counter()
    try:
        history = fit(model, load_split(ws.split("train")), val, cfg, state_path=state,
                      stop_after=stop_after)  # fmt: skip
        if len(history) < cfg.epochs:
            return  # stopped early on request: the resume state holds the progress
        check_learned(history[-1]["val_accuracy"], val.labels, cfg)
    except TrainingError as err:
        state.unlink(missing_ok=True)  # refused params must change, so this state is never resumed
        raise TrainingError(f"train_teacher: {err}") from err
    record = {
        "name": NAME,
        "arch": arch,
        "params": params.train_teacher.model_dump(mode="json"),
        "data_sha256": data_sha,
        "parameters": count_params(model),
        "val_accuracy": history[-1]["val_accuracy"],
        "train_seconds": round(sum(row["seconds"] for row in history), 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "upstream": [],
        "method": "train",
    }
    save_checkpoint(model, ws.model(NAME), record)
    write_curves(ws.plot("train_teacher.csv"), history)
    state.unlink(missing_ok=True)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
