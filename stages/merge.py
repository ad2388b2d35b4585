"""Stage `merge`: build candidate NAME by merging models (params `merge.NAME.kind`).

- ensemble: the members' averaged logits as one ONNX graph -> models/NAME/model.onnx +
  model.json ("format": "onnx"; an ensemble is not one ConvNet).
- soup_uniform / soup_greedy: one fine-tuned copy of the one upstream per `ingredients` entry,
  weights averaged (all, or greedily on val), BatchNorm re-estimated -> models/NAME/ checkpoint,
  and beside it, in models/NAME/variants/, what the soup is compared with: the best ingredient on
  val and the other soup (squeeze.config.workspace.Workspace.variant).
- distill_ensemble: a student distilled from the members' ensemble -> models/NAME/ checkpoint.

Reads models/<upstreams>/ and data/splits/{train,val}.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from squeeze.config.params import Params
from squeeze.config.sections import MergeParams
from squeeze.config.workspace import Workspace, write_json
from squeeze.data.spec import Split
from squeeze.data.splits import load_split
from squeeze.measure.export import export_onnx
from squeeze.methods.merge import (
    Ensemble,
    distill_ensemble,
    fine_tune_ingredients,
    greedy_soup,
    uniform_soup,
    val_accuracy,
)
from squeeze.nets.models import count_params, load_checkpoint, save_checkpoint
from stages.candidate import base_record, candidate, fresh_folder, main_for

STAGE = "merge"
BEST_INGREDIENT = "best_ingredient"


def members(ws: Workspace, names: list[str]) -> list[nn.Module]:
    """The upstream checkpoints (params refuse an ONNX-only upstream at load time)."""
    return [load_checkpoint(ws.model(name))[0] for name in names]


def soup(
    cfg: MergeParams, base: nn.Module, train: Split, val: Split
) -> tuple[nn.Module, dict, dict[str, nn.Module]]:
    """Fine-tune the ingredients from base, then average them all (uniform soup) and greedily
    on val (greedy soup). Returns (the soup cfg.kind names, record fields, the variants it is
    compared with: the best ingredient on val and the other soup)."""
    ingredients, _ = fine_tune_ingredients(base, cfg.fit, cfg.ingredients, train, val)
    scores = [round(val_accuracy(m, val), 5) for m in ingredients]
    best = scores.index(max(scores))
    uniform = uniform_soup(ingredients, train.images)
    # each: (model, the ingredients it averages, its val accuracy)
    soups = {
        "uniform_soup": (uniform, list(range(len(ingredients))), val_accuracy(uniform, val)),
        "greedy_soup": greedy_soup(ingredients, val, train.images, scores),
        BEST_INGREDIENT: (ingredients[best], [best], scores[best]),
    }
    model, kept, _ = soups.pop("uniform_soup" if cfg.kind == "soup_uniform" else "greedy_soup")
    record = {
        "ingredients": [i.model_dump() | {"val_accuracy": s}
                        for i, s in zip(cfg.ingredients, scores, strict=True)],
        "ingredients_kept": kept,
        "variants": {k: round(score, 5) for k, (_, _, score) in soups.items()},
    }  # fmt: skip
    return model, record, {k: other for k, (other, _, _) in soups.items()}


def build(
    cfg: MergeParams, ups: list[nn.Module], train: Split, val: Split
) -> tuple[Any, dict, dict[str, nn.Module]]:
    """The merged model (an Ensemble, or one Classifier), kind-specific record fields, and the
    variants saved beside it (a soup's; none for the other kinds)."""
    if cfg.kind == "ensemble":
        return Ensemble(ups).eval(), {"members": cfg.upstreams}, {}
    if cfg.kind == "distill_ensemble":
        torch.manual_seed(cfg.fit.seed)
        student, history = distill_ensemble(
            ups, cfg.student, cfg.fit, cfg.temperature, cfg.alpha, train, val
        )
        return student, {"history": history}, {}
    return soup(cfg, ups[0], train, val)


def run(root: Path, params: Params, name: str) -> None:
    ws, cfg = Workspace(root), candidate(params, STAGE, name)
    torch.set_num_threads(cfg.fit.threads)  # deliberate: the default may oversubscribe shared CPUs
    train, val = load_split(ws.split("train")), load_split(ws.split("val"))
    start = time.perf_counter()
    model, extra, variants = build(cfg, members(ws, cfg.upstreams), train, val)
    record = base_record(ws, name, cfg.kind, list(cfg.upstreams), cfg) | extra | {
        "parameters": count_params(model),
        "val_accuracy": round(val_accuracy(model, val), 5),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    folder = fresh_folder(ws.model(name))
    if isinstance(model, Ensemble):
        export_onnx(model, folder / "model.onnx")
        arch = {"name": "ensemble", "members": [m.arch for m in model.members]}
        identity = {"arch": arch, "data": model.spec.to_json(), "format": "onnx"}
        write_json(folder / "model.json", record | identity)
    else:
        save_checkpoint(model, folder, record | {"format": "safetensors"})
    for variant, other in variants.items():
        save_checkpoint(
            other, ws.variant(name, variant), {"variant_of": name, "format": "safetensors"}
        )


def main() -> None:
    main_for(run, STAGE)


if __name__ == "__main__":
    main()
