"""Stage `train_teacher`: train the teacher CNN on the train split.

Reads params `train_teacher.*` and data/splits/{train,val}; writes models/teacher/
(safetensors + JSON record) and plots/train_teacher.csv. An interrupted run resumes from
.squeeze/train_teacher-<key>.pt, whose key covers the params and the data.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch

from squeeze.data import load_split
from squeeze.models import build_model, count_params, save_checkpoint
from squeeze.params import Params, load_params
from squeeze.train import fit
from squeeze.workspace import Workspace, read_json
from tasks.candidate import resume_key

NAME = "teacher"


def write_curves(path: Path, history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def run(root: Path, params: Params, stop_after: int | None = None) -> None:
    ws, arch_cfg, cfg = Workspace(root), params.train_teacher.arch, params.train_teacher.fit
    torch.set_num_threads(cfg.threads)  # deliberate: the default may oversubscribe shared CPUs
    torch.manual_seed(cfg.seed)
    data_sha = read_json(ws.fingerprint)["sha256"]
    arch = arch_cfg.model_dump(mode="json")
    model = build_model(arch)
    state = ws.state(f"train_teacher-{resume_key(params.train_teacher, data_sha, [])}.pt")
    start = time.perf_counter()
    history = fit(model, load_split(ws.split("train")), load_split(ws.split("val")), cfg,
                  state_path=state, stop_after=stop_after)  # fmt: skip
    if len(history) < cfg.epochs:
        return  # stopped early on request: the resume state holds the progress
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
    run(Path("."), load_params())


if __name__ == "__main__":
    main()
