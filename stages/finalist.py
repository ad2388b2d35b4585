"""Stage `finalist`: build search finalist NAME (search_1..N, search_uniform) in full from its
recipe search/recipes/NAME.json (squeeze.methods.search.Choice): the teacher's channel groups
pruned by the recipe's per-layer policy (or, for a recipe's width below 1, the student of that
width distilled from the teacher as the search trained it, squeeze.methods.students), then its
unstructured sparsity, each over search.steps steps with search.fit's fine-tune (the zeroing pass
for search.zeroing_epochs; distillation weight, temperature, lr and quantization-aware grid the
recipe's), by the same prune method as
any `prune` candidate; then, for int8/int4 weights, its export quantized as a `quantize`
candidate's is (squeeze.methods.quantize).

Reads params `search`, search/recipes/NAME.json, models/teacher/ and data/splits/{train,val};
writes models/NAME/ as stages/prune does (fp32) or as stages/quantize does (model.onnx, "format":
"onnx"). Its model.json's `params` are the passes that ran (squeeze.methods.search.Passes: the
channel pass, the zeroing pass or both, each a prune candidate's PruneParams); its `search` is
the recipe: the study, the trial, the seed and the trial's own figures (the card's lineage; the
study's whole trial list is search/trials.csv, its sha256 in search/finalists.json).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from squeeze.config.params import FINALIST, Params
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.splits import load_split
from squeeze.errors import StageRefused
from squeeze.methods import MethodData
from squeeze.methods.quantize import FP32_SOURCE
from squeeze.methods.search import Choice, compress, shipped_form
from squeeze.methods.students import distilled_student
from squeeze.nets.models import count_params, load_checkpoint
from stages.candidate import base_record, fresh_folder, main_for
from stages.prune import TEACHER
from stages.quantize import onnx_record
from stages.search import RECIPES
from stages.trained import save_trained


def run(root: Path, params: Params, name: str) -> None:
    ws, cfg = Workspace(root), params.search
    path = ws.search(f"{RECIPES}/{name}.json")
    if not path.exists():
        raise StageRefused(f"{path}: no recipe for {name}: run the search stage first (dvc "
                           "repro search)")  # fmt: skip
    recipe = read_json(path)
    choice = Choice.of(recipe)
    torch.set_num_threads(cfg.fit.threads)
    torch.manual_seed(cfg.fit.seed)
    teacher, _ = load_checkpoint(ws.model(TEACHER))
    start = time.perf_counter()
    data = MethodData(load_split(ws.split("train")), load_split(ws.split("val")), teacher)
    origin = teacher
    if choice.width < 1:  # its student, as the search trained it (same params, data, threads)
        origin = distilled_student(teacher, choice.width, cfg, data.train, data.val)
        torch.set_num_threads(cfg.fit.threads)
        torch.manual_seed(cfg.fit.seed)
    model, history, record, passes = compress(origin, choice, cfg, cfg.steps, cfg.fit, data,
                                              cfg.zeroing_epochs)  # fmt: skip
    method = base_record(ws, name, "search_finalist", [TEACHER], passes)
    method |= record | {"search": recipe}
    if choice.weights == "fp32":
        save_trained(ws, name, model, method, history, start)
        return
    with fresh_folder(ws.model(name)) as folder:
        # model.onnx, and beside it FP32_SOURCE, what evaluate measures its agreement against
        shipped, quantized = shipped_form(model, choice, cfg, data, folder)
        record = method | quantized | {"arch": model.arch, "parameters": count_params(model),
                                       "history": history}  # fmt: skip
        write_json(folder / "model.json", record | onnx_record(
            folder / FP32_SOURCE, shipped, data.val, start))  # fmt: skip


def main() -> None:
    main_for(run, FINALIST)


if __name__ == "__main__":
    main()
