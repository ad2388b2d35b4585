"""A dataset of another shape than production's is refused before any training, naming
promote.family and what differs (train_teacher), and again before anything is measured or
published (promote), instead of onnxruntime's INVALID_ARGUMENT after every candidate was built.

Real parts: a local-folder registry holding a promoted version whose card has a 32×32×3 contract
(published and promoted through the Registry API), and a workspace of real Fashion-MNIST
(28×28×1) images.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from squeeze.config.params import Params
from squeeze.config.sections import PromoteParams
from squeeze.config.workspace import Workspace, write_json
from squeeze.data.spec import DataSpec
from squeeze.registry.card import ContractChanged, check_production_fits, contract
from squeeze.registry.registry import Registry, open_registry
from squeeze.registry.store import Unavailable
from stages import promote, train_teacher
from stages.candidate import refusals_in_one_line
from tests.unit.test_train import teacher_params, teacher_workspace

FAMILY = "fashion-mnist"
SHAPE_LINE = "input shape ['N', 32, 32, 3], the data's ['N', 28, 28, 1]"


def rgb_spec(classes: tuple[str, ...]) -> DataSpec:
    """A 32×32 RGB dataset with the given class names (the data production was trained on)."""
    return DataSpec(classes, 32, 32, 3, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def promote_card(registry: Registry, spec: DataSpec) -> int:
    """Publish a version whose card has the contract of ``spec`` and promote it."""
    card = {"model": {"name": "teacher_int8"}, **contract(spec), "classes": list(spec.classes)}
    version = registry.publish({"model.onnx": b"an onnx graph"}, card, {"val_accuracy": 0.9})
    registry.promote(version)
    return version


def with_promote(registry: str, endpoint_url: str | None = None, **fit: object) -> Params:
    """test_train's teacher params (ARCH, 2 epochs) plus a promote section."""
    section = PromoteParams(registry=registry, endpoint_url=endpoint_url, family=FAMILY)
    return Params.model_construct(train_teacher=teacher_params(**fit).train_teacher,
                                  promote=section)  # fmt: skip


@pytest.fixture
def workspace(tmp_path: Path, fmnist: dict, fmnist_profile: DataSpec) -> Workspace:
    """A Fashion-MNIST workspace (28×28×1) as ingest leaves it (its registry: ./registry)."""
    return teacher_workspace(tmp_path / "ws", fmnist, fmnist_profile)


def test_train_teacher_refuses_before_training_naming_the_family_and_the_shape(
    workspace: Workspace, fmnist_profile: DataSpec
) -> None:
    registry = open_registry("registry", FAMILY, base=workspace.root)
    version = promote_card(registry, rgb_spec(fmnist_profile.classes))
    with pytest.raises(SystemExit) as exit_info, refusals_in_one_line():  # as `python -m` exits
        train_teacher.run(workspace.root, with_promote("registry"))
    message = str(exit_info.value.code)
    where = f"promote.family {FAMILY!r} at {registry.store.url}"
    assert message.startswith(f"{where}: production version {version} (teacher_int8) does not fit")
    assert SHAPE_LINE in message and "output shape" not in message  # same classes: shape only
    assert "set promote.family in params.yaml to a new family for this data" in message
    # refused before any training: no teacher, no curves, no resume state
    assert (
        not workspace.model("teacher").exists() and not workspace.plot("train_teacher.csv").exists()
    )
    assert not list(workspace.root.glob(".squeeze/train_teacher-*"))


def test_other_classes_are_named_too(workspace: Workspace, fmnist_profile: DataSpec) -> None:
    registry = open_registry("registry", FAMILY, base=workspace.root)
    promote_card(registry, rgb_spec(("cat", "dog")))
    with pytest.raises(ContractChanged) as err:
        train_teacher.run(workspace.root, with_promote("registry"))
    assert SHAPE_LINE in str(err.value)
    assert "output shape ['N', 2], the data's ['N', 10]" in str(err.value)
    assert f"classes ['cat', 'dog'], the data's {list(fmnist_profile.classes)}" in str(err.value)


def test_promote_refuses_likewise_and_publishes_nothing(
    workspace: Workspace, fmnist_profile: DataSpec
) -> None:
    registry = open_registry("registry", FAMILY, base=workspace.root)
    version = promote_card(registry, rgb_spec(fmnist_profile.classes))
    # a gated challenger waits to be promoted (its export is never reached)
    write_json(workspace.metrics("gate"), {"challenger": "kd_int8", "teacher": "teacher",
                                           "reasons": [], "candidates": {}})  # fmt: skip
    with pytest.raises(ContractChanged, match=r"^promote\.family 'fashion-mnist' at ") as err:
        promote.run(workspace.root, with_promote("registry"))
    assert SHAPE_LINE in str(err.value) and f"production version {version} " in str(err.value)
    assert registry.versions() == [version] and registry.production()["version"] == version
    assert not workspace.metrics("promote").exists()


def test_no_production_a_fitting_one_or_a_damaged_one_is_no_refusal(
    workspace: Workspace, fmnist_profile: DataSpec
) -> None:
    registry = open_registry("registry", FAMILY, base=workspace.root)
    check_production_fits(registry, fmnist_profile)  # nothing promoted yet
    promote_card(registry, fmnist_profile)
    check_production_fits(registry, fmnist_profile)  # the same contract
    # other pixel statistics are inside the graph: not part of the contract
    check_production_fits(registry, DataSpec(fmnist_profile.classes, 28, 28, 1, (0.1,), (0.2,)))
    version = promote_card(registry, rgb_spec(fmnist_profile.classes))
    card = registry.store.root / FAMILY / "versions" / str(version) / "card.json"
    card.write_text(card.read_text().replace("32", "33"))  # fails its checksum: damaged
    check_production_fits(registry, fmnist_profile)  # promote replaces a damaged production


def closed_port() -> int:
    """A local port that nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_guard_never_changes_the_teacher_and_an_unreachable_registry_does_not_block(
    workspace: Workspace,
    fmnist_profile: DataSpec,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Trained next to a fitting production, and with a registry that cannot be reached (a
    warning, training goes on), the teacher's bytes are the same."""
    promote_card(open_registry("registry", FAMILY, base=workspace.root), fmnist_profile)
    train_teacher.run(workspace.root, with_promote("registry"))
    fitting = (workspace.model("teacher") / "model.safetensors").read_bytes()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(Unavailable):  # what the guard meets
        open_registry("s3://bucket/registry", FAMILY, endpoint).production()
    capsys.readouterr()
    train_teacher.run(workspace.root, with_promote("s3://bucket/registry", endpoint))
    out = capsys.readouterr().out
    assert f"warning: production of promote.family {FAMILY!r} could not be checked" in out
    assert "training goes on and promote checks it again" in out
    assert (workspace.model("teacher") / "model.safetensors").read_bytes() == fitting
