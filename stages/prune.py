"""Stage `prune`: build candidate NAME by pruning its upstream (unstructured or structured).

Reads params `prune.NAME`, models/<upstream>/, models/teacher/ (only when distill_alpha > 0:
fine-tuning then distils from the teacher) and data/splits/{train,val}; writes models/NAME/.
The network may be any architecture. A structurally pruned one keeps its upstream's `arch`;
save_checkpoint adds its structure (squeeze.nets.structure: every resized module's shapes), so it
reloads without the pruner. model.json's `layers` records every weight layer's output channels
before and after, the share removed and its weight sparsity. A structured sparsity that some
channel group cannot take (squeeze.methods.prune.check_plan) stops the stage with one line naming
the layers.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace
from squeeze.data.splits import load_split
from squeeze.methods import MethodData
from squeeze.methods.prune import PruningError, prune
from squeeze.nets.models import load_checkpoint
from stages.candidate import base_record, candidate, main_for
from stages.trained import save_trained

STAGE = "prune"
TEACHER = "teacher"  # what fine-tuning distils from, whatever the upstream


def run(root: Path, params: Params, name: str) -> None:
    ws, cfg = Workspace(root), candidate(params, STAGE, name)
    torch.set_num_threads(cfg.fit.threads)  # deliberate: the default may oversubscribe shared CPUs
    torch.manual_seed(cfg.fit.seed)
    model, _ = load_checkpoint(ws.model(cfg.upstream))
    # a separate copy even when the upstream is the teacher: pruning changes `model` in place
    teacher = load_checkpoint(ws.model(TEACHER))[0] if cfg.distill_alpha > 0 else None
    start = time.perf_counter()
    try:
        data = MethodData(load_split(ws.split("train")), load_split(ws.split("val")), teacher)
        result = prune(model, cfg, data)
    except PruningError as err:
        raise PruningError(f"params.yaml prune.{name}: {err}") from err
    # result.record: parameters_before, sparsity, sparsity_over, channels_removed, layers
    record = base_record(ws, name, f"prune_{cfg.kind}", [cfg.upstream], cfg) | result.record
    save_trained(ws, name, result.model, record, result.history, start)


def main() -> None:
    main_for(run, STAGE)


if __name__ == "__main__":
    main()
