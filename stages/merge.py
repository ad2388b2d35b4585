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

import torch
from torch import nn

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, write_json
from squeeze.data.splits import load_split
from squeeze.measure.export import export_onnx
from squeeze.methods import MethodData
from squeeze.methods.merge import Ensemble, merge, val_accuracy
from squeeze.nets.models import count_params, load_checkpoint, save_checkpoint
from stages.candidate import base_record, candidate, fresh_folder, main_for

STAGE = "merge"


def members(ws: Workspace, names: list[str]) -> list[nn.Module]:
    """The upstream checkpoints (params refuse an ONNX-only upstream at load time)."""
    return [load_checkpoint(ws.model(name))[0] for name in names]


def run(root: Path, params: Params, name: str) -> None:
    ws, cfg = Workspace(root), candidate(params, STAGE, name)
    torch.set_num_threads(cfg.fit.threads)  # deliberate: the default may oversubscribe shared CPUs
    train, val = load_split(ws.split("train")), load_split(ws.split("val"))
    start = time.perf_counter()
    result = merge(members(ws, cfg.upstreams), cfg, MethodData(train, val))
    model, variants = result.model, result.variants
    extra = result.record | ({"history": result.history} if result.history else {})
    record = base_record(ws, name, cfg.kind, list(cfg.upstreams), cfg) | extra | {
        "parameters": count_params(model),
        "val_accuracy": round(val_accuracy(model, val), 5),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }  # fmt: skip
    with fresh_folder(ws.model(name)) as folder:
        if isinstance(model, Ensemble):
            export_onnx(model, folder / "model.onnx")
            arch = {"name": "ensemble", "members": [m.arch for m in model.members]}
            identity = {"arch": arch, "data": model.spec.to_json(), "format": "onnx"}
            write_json(folder / "model.json", record | identity)
        else:
            save_checkpoint(model, folder, record | {"format": "safetensors"})
        for variant, other in variants.items():
            # ws.variant's place inside the candidate's folder, in the folder being built
            inside = ws.variant(name, variant).relative_to(ws.model(name))
            save_checkpoint(other, folder / inside, {"variant_of": name, "format": "safetensors"})


def main() -> None:
    main_for(run, STAGE)


if __name__ == "__main__":
    main()
