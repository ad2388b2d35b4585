"""Stage `distill`: train candidate NAME, a student, on its upstream's soft targets.

Reads params `distill.NAME`, models/<upstream>/ and data/splits/{train,val}; writes
models/NAME/ (safetensors + JSON record). An interrupted run resumes from
.squeeze/distill-NAME-<key>.pt, whose key covers the params, the data and the upstream weights.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace
from squeeze.data.splits import load_split
from squeeze.methods import MethodData
from squeeze.methods.distill import distill
from squeeze.nets.models import load_checkpoint
from stages.candidate import base_record, candidate, main_for, resume_key
from stages.trained import save_trained

STAGE = "distill"


def run(root: Path, params: Params, name: str) -> None:
    ws, cfg = Workspace(root), candidate(params, STAGE, name)
    torch.set_num_threads(cfg.fit.threads)  # deliberate: the default may oversubscribe shared CPUs
    teacher, _ = load_checkpoint(ws.model(cfg.upstream))
    record = base_record(ws, name, STAGE, [cfg.upstream], cfg)
    key = resume_key(cfg, record["data_sha256"], [ws.model(cfg.upstream)])
    state = ws.state(f"{STAGE}-{name}-{key}.pt")
    start = time.perf_counter()
    data = MethodData(load_split(ws.split("train")), load_split(ws.split("val")))
    result = distill(teacher, cfg, data, state_path=state)
    save_trained(ws, name, result.model, record, result.history, start)
    state.unlink(missing_ok=True)


def main() -> None:
    main_for(run, STAGE)


if __name__ == "__main__":
    main()
