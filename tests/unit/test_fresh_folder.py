"""A candidate is built in a temporary sibling of models/NAME/ and swapped in only when complete
(stages.candidate.fresh_folder): a build that fails midway leaves the previous model's bytes and
no temporary folder; a complete one leaves no file of the previous build."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from squeeze.config.sections import QuantizeParams
from squeeze.config.workspace import Workspace
from stages import quantize
from stages.candidate import fresh_folder

INT8 = QuantizeParams(upstream="teacher", mode="static", weights="int8", per_channel=True,
                      calibration_samples=64, fp32_first_layer=False)  # fmt: skip


def contents(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_a_quantize_build_that_fails_midway_keeps_the_previous_model(
    workspace: Workspace, stage_params: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, params = "int8_swapped", stage_params(quantize={"int8_swapped": INT8})
    quantize.run(workspace.root, params, name)
    before = contents(workspace.model(name))
    assert set(before) == {"model.onnx", "model.json"}

    def fail(*args: object) -> None:  # after model.onnx is written, before model.json
        raise RuntimeError("killed midway")

    with monkeypatch.context() as patch:
        patch.setattr(quantize, "predicted_classes", fail)
        with pytest.raises(RuntimeError, match="killed midway"):
            quantize.run(workspace.root, params, name)
    assert contents(workspace.model(name)) == before
    assert list(workspace.root.joinpath("models").glob(f".{name}.*")) == []

    quantize.run(workspace.root, params, name)  # a complete rebuild: the same model bytes
    assert contents(workspace.model(name))["model.onnx"] == before["model.onnx"]
    assert list(workspace.root.joinpath("models").glob(f".{name}.*")) == []


def test_a_complete_build_replaces_every_file_and_clears_a_killed_builds_leftovers(
    tmp_path: Path,
) -> None:
    model = tmp_path / "models" / "m"
    model.mkdir(parents=True)
    (model / "stale.bin").write_bytes(b"an earlier, different build")
    killed = tmp_path / "models" / ".m.tmp-0badc0de"
    killed.mkdir()
    (killed / "model.onnx").write_bytes(b"half")
    with fresh_folder(model) as folder:
        assert folder.parent == model.parent and folder.name.startswith(".m.tmp-")
        assert not killed.exists()
        (folder / "model.onnx").write_bytes(b"new")
    assert contents(model) == {"model.onnx": b"new"}
    assert sorted(p.name for p in model.parent.iterdir()) == ["m"]
