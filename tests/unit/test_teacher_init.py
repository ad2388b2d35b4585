"""A teacher you already have (train_teacher.init): compressed as is with fit.epochs 0, fine-tuned
otherwise; weights are read with safetensors only, and a file that does not fit the architecture
is refused listing every bad key."""

from __future__ import annotations

import csv
import hashlib
import pickle
from pathlib import Path

import boto3
import pytest
import torch
from moto import mock_aws
from safetensors.torch import load_file, save_file

from squeeze.config.workspace import read_json
from squeeze.data.spec import DataSpec
from squeeze.methods.train import TrainingError, accuracy, fit, predict
from squeeze.nets.models import InitError, build_model, read_init
from stages import candidate, train_teacher
from stages.train_teacher import run
from tests.unit.test_train import ARCH, FIT, teacher_params, teacher_workspace


@pytest.fixture(scope="module")
def trained_state(fmnist: dict, fmnist_profile: DataSpec) -> dict[str, torch.Tensor]:
    """The state_dict of ARCH's network trained 2 epochs on the fmnist subset (far above chance):
    what a user saves of the network they trained, keys without squeeze's `net.` prefix."""
    torch.manual_seed(1)
    model = build_model(ARCH, fmnist_profile)
    fit(model, fmnist["train"], fmnist["val"], FIT.model_copy(update={"epochs": 2, "threads": 1}))
    return {k: v.detach().clone().contiguous() for k, v in model.net.state_dict().items()}


@pytest.fixture
def init_file(tmp_path: Path, trained_state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "weights" / "teacher.safetensors"
    path.parent.mkdir()
    save_file(trained_state, path)
    return path


def curve_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_epochs_0_saves_the_init_weights_as_they_are(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path, init_file: Path
) -> None:
    ws = teacher_workspace(tmp_path / "ws", fmnist, fmnist_profile)
    run(ws.root, teacher_params(init=str(init_file), epochs=0))
    saved, given = load_file(ws.model("teacher") / "model.safetensors"), load_file(init_file)
    assert saved.keys() == {f"net.{k}" for k in given}  # the network's weights, in the Classifier
    assert all(torch.equal(saved[f"net.{k}"], given[k]) for k in given)  # bit for bit, untrained
    model = build_model(ARCH, fmnist_profile)
    model.net.load_state_dict(given)
    logits = predict(model, torch.from_numpy(fmnist["val"].images))
    record = read_json(ws.model("teacher") / "model.json")
    expected = round(accuracy(logits, torch.from_numpy(fmnist["val"].labels)), 5)
    assert record["val_accuracy"] == expected > 0.5
    assert record["method"] == "init" and record["train_seconds"] == 0
    sha = hashlib.sha256(init_file.read_bytes()).hexdigest()
    assert record["init"] == {"source": str(init_file), "sha256": sha}
    assert curve_rows(ws.plot("train_teacher.csv")) == []  # the DVC output exists, with no rows


def test_a_relative_init_is_read_from_the_workspace(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path, init_file: Path
) -> None:
    ws = teacher_workspace(tmp_path / "ws", fmnist, fmnist_profile)
    (ws.root / "teacher.safetensors").write_bytes(init_file.read_bytes())
    run(ws.root, teacher_params(init="teacher.safetensors", epochs=0))
    saved = load_file(ws.model("teacher") / "model.safetensors")
    assert all(torch.equal(saved[f"net.{k}"], v) for k, v in load_file(init_file).items())


def test_epochs_1_fine_tunes_from_the_init_weights(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path, init_file: Path
) -> None:
    ws = teacher_workspace(tmp_path / "ws", fmnist, fmnist_profile)
    # a small lr moves the weights by at most ~0.01 in an epoch, where a random start differs
    # from the trained file by 0.3 to 1 in every layer: ending near the file means starting there
    run(ws.root, teacher_params(init=str(init_file), epochs=1, lr=0.001))
    saved, given = load_file(ws.model("teacher") / "model.safetensors"), load_file(init_file)
    weights = [name for name, _ in build_model(ARCH, fmnist_profile).net.named_parameters()]
    assert all((saved[f"net.{k}"] - given[k]).abs().max() < 0.05 for k in weights)
    assert not all(torch.equal(saved[f"net.{k}"], given[k]) for k in weights)  # and it did train
    record = read_json(ws.model("teacher") / "model.json")
    assert record["method"] == "finetune" and record["init"]["source"] == str(init_file)
    assert len(curve_rows(ws.plot("train_teacher.csv"))) == 1


def test_mismatched_keys_are_all_listed_in_one_line(
    fmnist: dict,
    fmnist_profile: DataSpec,
    tmp_path: Path,
    trained_state: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = dict(trained_state)
    del state["classifier.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["features.0.weight"] = torch.zeros(8, 1, 3, 3)
    path = tmp_path / "other.safetensors"
    save_file(state, path)
    ws = teacher_workspace(tmp_path / "ws", fmnist, fmnist_profile)
    monkeypatch.chdir(ws.root)
    monkeypatch.setattr(candidate, "stage_params", lambda: teacher_params(str(path), epochs=0))
    with pytest.raises(SystemExit) as exit_:
        train_teacher.main()
    message = exit_.value.code
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith(f"train_teacher.init: {path} does not fit train_teacher.arch")
    assert "missing keys: classifier.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "mis-shaped keys: features.0.weight (file [8, 1, 3, 3], model [16, 1, 3, 3])" in message
    assert not ws.model("teacher").exists()


class Payload:
    """A pickle that creates marker when unpickled (what a malicious .pt file could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_a_pickled_file_is_refused_and_never_unpickled(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path, kind: str
) -> None:
    marker, path = tmp_path / "unpickled", tmp_path / "teacher.pt"
    if kind == "pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:
        torch.save({"payload": Payload(marker)}, path)
    ws = teacher_workspace(tmp_path / "ws", fmnist, fmnist_profile)
    with pytest.raises(InitError, match=f"^train_teacher.init: {path} is not a safetensors file"):
        run(ws.root, teacher_params(init=str(path), epochs=0))
    assert not marker.exists() and not ws.model("teacher").exists()


def test_a_missing_file_is_named(fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path) -> None:
    ws = teacher_workspace(tmp_path / "ws", fmnist, fmnist_profile)
    with pytest.raises(
        InitError, match="train_teacher.init: cannot read .*/ws/nowhere.safetensors"
    ):
        run(ws.root, teacher_params(init="nowhere.safetensors", epochs=0))
    assert not ws.model("teacher").exists()


def test_an_s3_init_is_read_through_the_store(
    tmp_path: Path, init_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="fmnist/teacher.safetensors",
                      Body=init_file.read_bytes())  # fmt: skip
        data = read_init("s3://models/fmnist/teacher.safetensors", tmp_path)
        assert data == init_file.read_bytes()
        with pytest.raises(InitError, match="cannot read s3://models/fmnist/gone.safetensors"):
            read_init("s3://models/fmnist/gone.safetensors", tmp_path)


def test_init_weights_no_better_than_chance_are_refused(
    fmnist: dict, fmnist_profile: DataSpec, tmp_path: Path, trained_state: dict
) -> None:
    # a zero classifier gives every class the same logit: argmax is class 0, exactly chance
    state = {**trained_state, "classifier.weight": trained_state["classifier.weight"] * 0,
             "classifier.bias": trained_state["classifier.bias"] * 0}  # fmt: skip
    path = tmp_path / "blank.safetensors"
    save_file(state, path)
    ws = teacher_workspace(tmp_path / "ws", fmnist, fmnist_profile)
    with pytest.raises(TrainingError, match=r"^train_teacher: the teacher ends at 10\.0%") as e:
        run(ws.root, teacher_params(init=str(path), epochs=0))
    assert "check that train_teacher.init holds trained weights" in str(e.value)
    assert not ws.model("teacher").exists()
