"""Stage `train_teacher`: train the teacher CNN on the train split.

Reads params `train_teacher.*` and data/splits/{train,val}; writes models/teacher/
(safetensors + JSON record) and plots/train_teacher.csv. An interrupted run resumes from
.squeeze/train_teacher-<key>.pt, whose key covers the params and the data. A teacher that
diverged or ends near chance on validation stops the run here, before any candidate is built
from it, and nothing is written to models/teacher.

With `train_teacher.init` the teacher starts from a safetensors file you already have: it is
fine-tuned from it, or with `fit.epochs: 0` only checked on validation and saved as is (no
curves), so the pipeline compresses it unchanged. The file's sha256 goes into the record.

Before any training, data that the production model of promote.family does not fit (another
input shape, dtype, layout or classes: squeeze.registry.card.check_production_fits) is refused,
naming promote.family and what differs: a dataset of another shape needs its own family. This
only reads the registry; it never changes what is trained, so promote.* is no param of this
stage. A registry that cannot be reached now does not hold training up: promote checks again.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import torch

from squeeze.config.params import Params
from squeeze.config.sections import FitParams
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.spec import Split, read_spec
from squeeze.data.splits import load_split
from squeeze.methods import MethodData
from squeeze.methods.train import TrainingError, accuracy, predict, train
from squeeze.nets.models import build_model, count_params, load_init, save_checkpoint
from squeeze.registry.card import check_production_fits
from squeeze.registry.registry import registry_of
from squeeze.registry.store import Unavailable
from stages.candidate import fresh_folder, resume_key, stage_main

NAME = "teacher"
# A teacher must end clearly above chance on validation: at most CHANCE_FACTOR × chance it has
# learned next to nothing (a collapsed run predicts one class: exactly chance), and a model that
# knows nothing cannot teach; every candidate distilled, pruned or quantized from it would
# inherit that. 1.5× chance (15% on the ten balanced classes) is far outside the sampling noise
# of a chance-level model (5 standard errors on 1,000 validation images, 19 on 6,000) yet far
# below any teacher worth keeping (the tiny test model reaches 75%, the real teacher 93%): it is
# a floor for "learned nothing", not a quality bar; the gate judges quality.
CHANCE_FACTOR = 1.5
# The columns of fit's curve rows: a teacher taken as is (fit.epochs 0) has none, and its
# plots/train_teacher.csv (a DVC output, so it must exist) is this header alone.
CURVE_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"]


def write_curves(path: Path, history: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]) if history else CURVE_COLUMNS)
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
        todo = (
            f"lower train_teacher.fit.lr (now {cfg.lr}) or raise train_teacher.fit.epochs "
            f"(now {cfg.epochs}) in params.yaml"
            if cfg.epochs
            else "check that train_teacher.init holds trained weights for this data, or "
            "fine-tune them (train_teacher.fit.epochs >= 1)"
        )
        raise TrainingError(
            f"the teacher ends at {val_accuracy:.1%} validation accuracy, not "
            f"clearly above chance ({chance:.1%}; it must beat {CHANCE_FACTOR:g}× chance = "
            f"{CHANCE_FACTOR * chance:.1%}), so it cannot teach and no candidate is built from "
            f"it; {todo}"
        )


def val_accuracy_as_is(model: torch.nn.Module, val: Split) -> float:
    """The validation accuracy of a teacher taken as is (fit.epochs 0), rounded as fit's
    curve rows are."""
    logits = predict(model, torch.from_numpy(val.images))
    return round(accuracy(logits, torch.from_numpy(val.labels)), 5)


def check_family(root: Path, params: Params) -> None:
    """Refuse (ContractChanged) data that production of promote.family does not fit; a registry
    that cannot be reached now is a warning, not a refusal: promote checks again."""
    try:
        check_production_fits(registry_of(root, params), read_spec(Workspace(root).profile))
    except Unavailable as err:
        print(f"warning: production of promote.family {params.promote.family!r} could not be "
              f"checked against the data ({err}); training goes on and promote checks it "
              "again", flush=True)  # fmt: skip


def run(root: Path, params: Params, stop_after: int | None = None) -> None:
    """Train (or take from train_teacher.init), check and save the teacher; raises
    ContractChanged (nothing trained) on data that production of promote.family does not fit,
    TrainingError (nothing saved) on a teacher that diverged or learned nothing, InitError on
    unusable init weights."""
    check_family(root, params)
    section = params.train_teacher
    ws, arch_cfg, cfg = Workspace(root), section.arch, section.fit
    torch.set_num_threads(cfg.threads)  # deliberate: the default may oversubscribe shared CPUs
    torch.manual_seed(cfg.seed)
    data_sha = read_json(ws.fingerprint)["sha256"]
    arch = arch_cfg.model_dump(mode="json")
    model = build_model(arch, read_spec(ws.profile))
    init_sha = None if section.init is None else load_init(model.net, section.init, root,
                                                            section.endpoint_url)  # fmt: skip
    # a changed init file under the same name must not resume a run started from the old one
    key = resume_key(section, data_sha, []) + ("" if init_sha is None else f"-{init_sha[:12]}")
    state = ws.state(f"train_teacher-{key}.pt")
    val = load_split(ws.split("val"))
    start = time.perf_counter()
    try:
        if cfg.epochs == 0:  # compress-only: the init weights, checked but not trained
            history, val_accuracy = [], val_accuracy_as_is(model, val)
        else:
            data = MethodData(load_split(ws.split("train")), val)
            history = train(model, cfg, data, state_path=state, stop_after=stop_after).history
            if len(history) < cfg.epochs:
                return  # stopped early on request: the resume state holds the progress
            val_accuracy = history[-1]["val_accuracy"]
        check_learned(val_accuracy, val.labels, cfg)
    except TrainingError as err:
        state.unlink(missing_ok=True)  # refused params must change, so this state is never resumed
        raise TrainingError(f"train_teacher: {err}") from err
    record = {
        "name": NAME,
        "arch": arch,
        "params": params.train_teacher.model_dump(mode="json"),
        "data_sha256": data_sha,
        "parameters": count_params(model),
        "val_accuracy": val_accuracy,
        "train_seconds": round(sum(row["seconds"] for row in history), 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "upstream": [],
        "method": "train",
    }
    if init_sha is not None:
        record |= {"method": "init" if cfg.epochs == 0 else "finetune",
                   "init": {"source": section.init, "sha256": init_sha}}  # fmt: skip
    with fresh_folder(ws.model(NAME)) as folder:
        save_checkpoint(model, folder, record)
    write_curves(ws.plot("train_teacher.csv"), history)
    state.unlink(missing_ok=True)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
