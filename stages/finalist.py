"""Stage `finalist`: build search finalist NAME (search_1..N, search_uniform) in full from its
recipe in search/finalists.json: the teacher pruned by the recipe's per-layer policy over
search.steps steps and fine-tuned for search.fit (its distillation weight and lr the recipe's),
by the same prune method as any `prune` candidate (squeeze.methods.prune).

Reads params `search`, search/recipes/NAME.json, models/teacher/ and data/splits/{train,val};
writes models/NAME/ as stages/prune does, its model.json's `search` the recipe: the study, the
trial, the seed and the trial's own figures (the card's lineage; the study's whole trial list is
search/trials.csv, its sha256 in search/finalists.json).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from squeeze.config.params import FINALIST, Params
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.splits import load_split
from squeeze.errors import StageRefused
from squeeze.methods import MethodData
from squeeze.methods.prune import prune
from squeeze.methods.search import base_cfg
from squeeze.nets.models import load_checkpoint
from stages.candidate import base_record, main_for
from stages.prune import TEACHER
from stages.search import RECIPES
from stages.trained import save_trained


def run(root: Path, params: Params, name: str) -> None:
    ws, cfg = Workspace(root), params.search
    path = ws.search(f"{RECIPES}/{name}.json")
    if not path.exists():
        raise StageRefused(f"{path}: no recipe for {name}: run the search stage first (dvc "
                           "repro search)")  # fmt: skip
    recipe = read_json(path)
    prune_cfg = base_cfg(cfg, cfg.steps, cfg.fit, recipe["distill_alpha"], recipe["lr"])
    torch.set_num_threads(cfg.fit.threads)
    torch.manual_seed(cfg.fit.seed)
    model, _ = load_checkpoint(ws.model(TEACHER))
    teacher = load_checkpoint(ws.model(TEACHER))[0] if prune_cfg.distill_alpha > 0 else None
    start = time.perf_counter()
    data = MethodData(load_split(ws.split("train")), load_split(ws.split("val")), teacher)
    result = prune(model, prune_cfg, data, policy=recipe["policy"])
    method = base_record(ws, name, "search_finalist", [TEACHER], prune_cfg) | result.record
    save_trained(ws, name, result.model, method | {"search": recipe}, result.history, start)


def main() -> None:
    main_for(run, FINALIST)


if __name__ == "__main__":
    main()
