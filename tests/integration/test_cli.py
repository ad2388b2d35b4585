"""`squeeze run` refusals: one clear line on stderr and a distinct exit status for each kind
(invalid params 2, busy workspace 3, data refused 4; a gate refusal, 5, is checked
at the end of the pipeline test, where the pipeline has already run)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import yaml

from squeeze import cli


def set_param(root: Path, section: str, key: str, value: object) -> None:
    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_invalid_params_exit_2_naming_the_key(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    set_param(workspace, "ingest", "val_fraction", 0.9)
    assert cli.main(["-w", str(workspace), "run"]) == cli.INVALID_PARAMS
    err = capsys.readouterr().err
    assert err.startswith("squeeze: invalid parameters\n") and "ingest.val_fraction" in err
    assert "Traceback" not in err


def test_busy_workspace_exits_3_in_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.compress import workspace_lock

    with workspace_lock(workspace.resolve()):
        assert cli.main(["-w", str(workspace), "run"]) == cli.WORKSPACE_BUSY
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another squeeze run" in err


def test_data_refused_at_ingest_exits_4_naming_the_file(
    workspace: Path, fmnist_dir: Path, prefect_api: None, capsys: pytest.CaptureFixture[str]
) -> None:
    source = workspace.parent / "source"
    shutil.copytree(fmnist_dir, source)
    labels = source / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:1000]))  # truncated
    set_param(workspace, "ingest", "source", str(source))
    assert cli.main(["-w", str(workspace), "run"]) == cli.DATA_REFUSED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("squeeze: data refused: ") and labels.name in last
    assert not (workspace / "models").exists()  # stopped before any training
