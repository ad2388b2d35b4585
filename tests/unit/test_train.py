"""Training: a small CNN learns real Fashion-MNIST, resuming reproduces an uninterrupted run, and
a run that diverges or ends at chance stops with an error instead of yielding a model. And the
shape every method's entry shares (squeeze.methods), train's being the first."""

from __future__ import annotations

import importlib
import inspect
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from squeeze.config import sections
from squeeze.config.params import Params
from squeeze.config.sections import (
    ConvNetArch,
    FitParams,
    PromoteParams,
    TeacherFitParams,
    TrainTeacherParams,
)
from squeeze.config.workspace import Workspace, write_json
from squeeze.data.spec import DataSpec
from squeeze.data.splits import save_split
from squeeze.methods import MethodData, Result
from squeeze.methods import qat as qat_module
from squeeze.methods.train import (
    TrainingError,
    accuracy,
    augment,
    duration,
    fit,
    predict,
    progress_line,
    train,
)
from squeeze.nets.models import build_model, load_checkpoint, save_checkpoint
from stages import candidate, train_teacher
from stages.train_teacher import CHANCE_FACTOR, chance_accuracy, check_learned, run

ARCH = {"name": "convnet", "channels": [16, 32], "convs_per_stage": 1, "dropout": 0.0,
        "batchnorm": True}  # fmt: skip
FIT = FitParams(epochs=3, batch_size=32, lr=0.1, momentum=0.9, weight_decay=5e-4,
                label_smoothing=0.0, augment=False, seed=0, threads=2, device="cpu")  # fmt: skip


def tiny_model(spec: DataSpec) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ARCH, spec)


def test_small_cnn_beats_chance_clearly(fmnist: dict, fmnist_profile: DataSpec) -> None:
    model = tiny_model(fmnist_profile)
    history = fit(model, fmnist["train"], fmnist["val"], FIT)
    test = fmnist["test"]
    acc = accuracy(predict(model, torch.from_numpy(test.images)), torch.from_numpy(test.labels))
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert acc > 0.5, acc  # 5× chance after three epochs on 2,500 images


def test_resume_ends_with_the_same_weights(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path
) -> None:
    straight = tiny_model(fmnist_profile)
    train(straight, FIT, MethodData(fmnist["train"], fmnist["val"]))  # the entry: fit, plain loss
    state = tmp_path / "state.pt"
    interrupted = tiny_model(fmnist_profile)
    first = fit(interrupted, fmnist["train"], fmnist["val"], FIT, state, stop_after=1)
    assert len(first) == 1 and state.exists()
    resumed = tiny_model(fmnist_profile)  # a fresh process would rebuild the model from scratch
    history = fit(resumed, fmnist["train"], fmnist["val"], FIT, state)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, msg=key)


# every method module's entry, named like it, and the params section it is configured by
ENTRIES = {"train": "FitParams", "distill": "DistillParams", "prune": "PruneParams",
           "quantize": "QuantizeParams", "merge": "MergeParams"}  # fmt: skip


@pytest.mark.parametrize(("method", "section"), ENTRIES.items())
def test_every_method_is_one_call_of_the_same_shape(method: str, section: str) -> None:
    """<method>(upstream, cfg: <Section>Params, data: MethodData, *, keywords) -> Result."""
    entry = getattr(importlib.import_module(f"squeeze.methods.{method}"), method)
    parameters = list(inspect.signature(entry).parameters.values())
    assert [p.name for p in parameters[1:3]] == ["cfg", "data"]
    assert all(p.kind is p.KEYWORD_ONLY and p.default is None for p in parameters[3:])
    hints = typing.get_type_hints(entry)
    assert hints["cfg"] is getattr(sections, section) and hints["data"] is MethodData
    assert typing.get_origin(hints["return"]) is Result
    assert "Raises:" in (entry.__doc__ or "")  # what goes wrong, said where it is called


def test_qat_is_a_setting_of_prune_not_a_method() -> None:
    """qat has no section and no entry of its own: prune.*.qat names the grid."""
    assert not hasattr(qat_module, "qat") and "qat" in sections.PruneParams.model_fields


def test_checkpoint_round_trip(tmp_path: Path, fmnist_profile: DataSpec) -> None:
    model = tiny_model(fmnist_profile).eval()
    save_checkpoint(model, tmp_path / "m", {"name": "m"})
    loaded, record = load_checkpoint(tmp_path / "m")
    spec = fmnist_profile
    x = torch.randint(0, 256, (4, spec.height, spec.width, spec.channels), dtype=torch.uint8)
    torch.testing.assert_close(loaded(x), model(x))
    # the record describes the model by itself: what built it and the data it expects
    assert record["name"] == "m" and record["arch"] == ARCH
    assert DataSpec.from_json(record["data"]) == spec and loaded.spec == spec


def test_augment_shifts_and_flips_but_keeps_pixels(fmnist: dict) -> None:
    batch = torch.from_numpy(fmnist["train"].images[:64])
    out = augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert not torch.equal(out, batch)
    # a shift moves at most 2 border rows/cols out: most of the ink survives
    assert out.float().sum() > 0.8 * batch.float().sum()


def test_augment_moves_whole_pixels_of_every_channel() -> None:
    """Shifts and flips act on H and W only: an RGB pixel moves with all its channels (the
    zero fill is a black pixel), never mixed with its neighbours' or padded along C."""
    gen = torch.Generator().manual_seed(0)
    red = torch.randint(1, 256, (16, 12, 10), generator=gen, dtype=torch.uint8)
    batch = torch.stack([red, red // 2, red // 3], dim=-1)  # (B, H, W, 3)
    out = augment(batch, torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and not torch.equal(out, batch)
    assert torch.equal(out[..., 1], out[..., 0] // 2) and torch.equal(out[..., 2], out[..., 0] // 3)
    assert (out[..., 0] == 0).any()  # some zero fill: the shifts really ran


# Learning rates that wreck training on this data, found by measurement: lr 10 with weight decay
# 0.5 multiplies the weights by 1 − lr·wd = −4 each step once the one-cycle schedule nears its
# peak, so they overflow to inf within the first epoch (a NaN loss); lr 10 alone keeps the loss
# finite but collapses the BatchNorm net to one class (exactly chance, 10%) on every seed tried.
# Chaotic, so measured with the profile ingest would write for this data (fmnist_profile): inputs
# standardised with another subset's statistics may escape the collapse.
DIVERGES = {"lr": 10.0, "weight_decay": 0.5}
COLLAPSES = {"lr": 10.0}


def teacher_params(init: str | None = None, **fit_changes: object) -> Params:
    """Params with just a train_teacher section: ARCH trained one thread, 2 epochs (from the
    weights file init, if given)."""
    fit_cfg = TeacherFitParams(**{**FIT.model_dump(), "epochs": 2, "threads": 1, **fit_changes})
    section = TrainTeacherParams(arch=ConvNetArch(**ARCH), fit=fit_cfg, init=init,
                                 endpoint_url=None)  # fmt: skip
    # an empty registry in the workspace: the contract guard finds nothing in production
    promote = PromoteParams(registry="registry", endpoint_url=None, family="test")
    return Params.model_construct(train_teacher=section, promote=promote)


def teacher_workspace(root: Path, data: dict, spec: DataSpec) -> Workspace:
    """What train_teacher reads: the train and val splits, the data fingerprint and the data
    profile (spec)."""
    ws = Workspace(root)
    for name in ("train", "val"):
        save_split(data[name], ws.split(name))
    write_json(ws.fingerprint, {"sha256": "0" * 64, "files": {}})
    write_json(ws.profile, spec.to_json())
    return ws


def test_fit_stops_at_the_first_non_finite_loss(fmnist: dict, fmnist_profile: DataSpec) -> None:
    cfg = FIT.model_copy(update={"epochs": 1, "threads": 1, **DIVERGES})
    steps = -(-len(fmnist["train"]) // cfg.batch_size)
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch 1/1, step \d+/") as err:
        fit(tiny_model(fmnist_profile), fmnist["train"], fmnist["val"], cfg)
    assert "fit.lr = 10.0" in str(err.value) and "lower fit.lr" in str(err.value)
    step = int(str(err.value).split("step ")[1].split("/")[0])
    assert step < steps  # stopped where it happened, not at the end of the epoch


@pytest.mark.parametrize(
    ("fit_changes", "cause"),
    [(DIVERGES, r"training diverged: the training loss is (nan|inf)"),
     (COLLAPSES, r"the teacher ends at 10\.0% validation accuracy, not clearly above chance")],
    ids=["diverges", "collapses"],
)  # fmt: skip
def test_a_teacher_that_fails_stops_the_stage_and_writes_nothing(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path, fit_changes: dict, cause: str
) -> None:
    ws = teacher_workspace(tmp_path, fmnist, fmnist_profile)
    with pytest.raises(TrainingError, match=f"^train_teacher: {cause}") as err:
        run(ws.root, teacher_params(**fit_changes))
    assert "lr = 10.0" in str(err.value) or "lr (now 10.0)" in str(err.value)
    assert not ws.model("teacher").exists() and not ws.plot("train_teacher.csv").exists()
    assert not list(ws.state("").glob("*"))  # no resume state left to continue a refused run


def test_the_stage_command_exits_with_one_line(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher_workspace(tmp_path, fmnist, fmnist_profile)
    monkeypatch.chdir(tmp_path)
    # the stage entry (stages.candidate.stage_main) reads params.yaml through stage_params
    monkeypatch.setattr(candidate, "stage_params", lambda: teacher_params(**COLLAPSES))
    with pytest.raises(SystemExit) as exit_:
        train_teacher.main()
    message = exit_.value.code
    assert isinstance(message, str) and "\n" not in message  # sys.exit(str): status 1, no traceback
    assert message.startswith("train_teacher: the teacher ends at 10.0%")
    assert "train_teacher.fit.lr (now 10.0)" in message and "epochs (now 2)" in message


def test_a_normal_teacher_passes_the_check(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path
) -> None:
    ws = teacher_workspace(tmp_path, fmnist, fmnist_profile)
    run(ws.root, teacher_params())
    _, record = load_checkpoint(ws.model("teacher"))
    assert record["val_accuracy"] > CHANCE_FACTOR * 0.1 + 0.3  # far above the floor
    assert ws.plot("train_teacher.csv").exists() and not list(ws.state("").glob("*"))


def test_chance_is_the_majority_share_and_the_floor_is_exclusive() -> None:
    balanced, skewed = (
        np.repeat(np.arange(10), 10),
        np.array([0] * 40 + list(range(1, 10)) * 6 + [1] * 6),
    )
    assert chance_accuracy(balanced) == 0.1 and chance_accuracy(skewed) == 0.4
    with pytest.raises(TrainingError, match=r"must beat 1\.5× chance = 15\.0%"):
        check_learned(0.15, balanced, FIT)
    check_learned(0.151, balanced, FIT)


def test_progress_line_gives_elapsed_and_remaining_time_for_a_plain_log() -> None:
    row = {"epoch": 3, "train_loss": 0.5, "val_accuracy": 0.9, "seconds": 40.04}
    line = progress_line(row, epochs=12, elapsed_s=120.0, done_here=3)
    assert line == ("epoch 3/12: train_loss=0.5, val_accuracy=0.9; 40.0 s, elapsed 2m00s, "
                    "about 6m00s left")  # fmt: skip
    # a resumed run estimates from its own epochs: 2 done here in 50 s, 10 to go -> 250 s
    assert progress_line({**row, "epoch": 2}, 12, 50.0, 2).endswith("about 4m10s left")
    assert [duration(s) for s in (0.4, 59.6, 61, 3599, 3600, 7322)] == [
        "0s", "1m00s", "1m01s", "59m59s", "1h00m", "2h02m"]  # fmt: skip
