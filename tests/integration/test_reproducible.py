"""Reproducible builds: a model does not depend on the entry point nor on which other candidates
are built at the same time. On the smoke profile (one candidate per method), the Prefect flow
with two threaded workers in one clone and `dvc repro` in another write byte-identical data and
models, and the flow leaves DVC nothing to do."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.compress import retrain_and_compress
from squeeze.config.dvcyaml import stages_ran
from squeeze.config.files import load_params, merge
from squeeze.config.params import validate
from squeeze.config.workspace import Workspace, read_json
from tests.conftest import dvc_up_to_date, one_per_method, run

pytestmark = pytest.mark.slow

BUILT = ("data/splits/*.safetensors", "data/fingerprint.json", "models/*/model.safetensors",
         "models/*/model.onnx")  # fmt: skip


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file of BUILT, keyed by its path in the workspace."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for pattern in BUILT
        for path in sorted(root.glob(pattern))
    }


def accuracies(record: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every key ending in "accuracy", at any depth of a JSON record."""
    if isinstance(record, dict):
        for key, value in record.items():
            where = f"{path}.{key}" if path else key
            if key.endswith("accuracy"):
                yield where, value
            else:
                yield from accuracies(value, where)
    elif isinstance(record, list):
        for i, value in enumerate(record):
            yield from accuracies(value, f"{path}[{i}]")


def test_threaded_flow_and_dvc_repro_build_identical_models(
    workspace: Path, tmp_path: Path, prefect_api
) -> None:
    one_per_method(workspace)
    twin = tmp_path / "twin"
    shutil.copytree(workspace, twin)
    smoke = load_params(workspace).model_dump(mode="json")
    params = validate(merge(smoke, {"flow": {"task_runner": "threads", "workers": 2}}), "test")

    # `dvc repro` in the twin runs meanwhile: the CPU is shared, and the results must not care
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    repro = subprocess.Popen(
        ["dvc", "repro"], cwd=twin, env={**os.environ, "PATH": path},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        result = retrain_and_compress(params=params, workspace=str(workspace))
    finally:
        out, _ = repro.communicate()
    assert repro.returncode == 0, out
    assert result["skipped"] == [] and "evaluate" in result["ran"]
    # the flow leaves DVC nothing to do
    assert dvc_up_to_date(workspace)
    assert stages_ran(run(["dvc", "repro"], workspace).stdout) == []

    flow_built, dvc_built = digests(workspace), digests(twin)
    models = {key.split("/")[1] for key in flow_built if key.startswith("models/")}
    assert models == set(params.model_names())
    differ = sorted(k for k in flow_built.keys() | dvc_built.keys()
                    if flow_built.get(k) != dvc_built.get(k))  # fmt: skip
    assert differ == [], f"the flow and dvc repro wrote different files: {differ}"

    flow_acc = dict(accuracies(read_json(Workspace(workspace).metrics("candidates"))))
    dvc_acc = dict(accuracies(read_json(Workspace(twin).metrics("candidates"))))
    assert flow_acc and flow_acc == dvc_acc
