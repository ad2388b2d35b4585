"""`squeeze status` and `squeeze pull-production` on a local registry, through the CLI."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from squeeze.cli import main as cli
from squeeze.cli.ops import registry_for
from squeeze.config.files import read_yaml
from squeeze.registry.package import pack
from squeeze.registry.registry import Registry

PROJECT = Path(__file__).resolve().parents[2]
ONNX = b"not really onnx, but bytes that must arrive unchanged"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A workspace whose params.yaml names a local registry (inside it) with version 1 in
    production."""
    root = tmp_path / "ws"
    root.mkdir()
    params = read_yaml(PROJECT / "params.yaml")
    params["promote"] = {"registry": "registry", "endpoint_url": None, "family": "fmnist"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    registry = registry_for(root)
    card = {"model": {"name": "kd"}, "metrics": {"accuracy": 0.9}, "lineage": {}}
    registry.promote(registry.publish({"model.onnx.xz": pack(ONNX)}, card, {"accuracy": 0.9}))
    return root


def squeeze(workspace: Path, *argv: str) -> int:
    return cli.main(["-w", str(workspace), *argv])


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_pull_production_replaces_only_the_model_and_card(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "app"
    (dest / "keep").mkdir(parents=True)
    (dest / "notes.txt").write_text("mine")
    (dest / "keep" / "data.bin").write_bytes(b"\x00\x01")
    (dest / "model.onnx").write_bytes(b"an older model")
    assert squeeze(workspace, "pull-production", str(dest)) == 0
    assert "version 1 of 'fmnist'" in capsys.readouterr().out
    pulled = tree(dest)
    assert pulled.pop("notes.txt") == b"mine" and pulled.pop("keep/data.bin") == b"\x00\x01"
    assert pulled.pop("model.onnx") == ONNX
    assert json.loads(pulled.pop("card.json"))["registry"]["version"] == 1
    assert pulled == {}  # no temp files, no gz, nothing else

    # A damaged production writes nothing: the last good pull stays as it was.
    before = tree(dest)
    registry_for(workspace).store.put("fmnist/versions/1/model.onnx.xz", pack(b"tampered"))
    assert squeeze(workspace, "pull-production", str(dest)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checksum mismatch" in err and "versions/1/model.onnx.xz" in err
    assert tree(dest) == before


def test_pull_production_into_the_current_folder_and_a_new_one(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    assert squeeze(workspace, "pull-production", ".") == 0
    assert sorted(os.listdir(here)) == ["card.json", "model.onnx", "notes.txt"]
    assert (here / "model.onnx").read_bytes() == ONNX
    assert squeeze(workspace, "pull-production", "new/nested") == 0  # created
    assert (here / "new" / "nested" / "model.onnx").read_bytes() == ONNX
    for name in ("model.onnx", "card.json"):  # readable by a server running as another user
        assert (here / name).stat().st_mode & 0o777 == 0o644, name


def test_pull_production_into_a_file_fails_in_one_line(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    assert squeeze(workspace, "pull-production", str(tmp_path / "taken")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write 'model.onnx'" in err and "taken" in err
    assert (tmp_path / "taken").read_text() == "a file, not a folder"


def forge(registry: Registry) -> None:
    """Replace version 1's model and its checksum consistently, as a bad re-upload would."""
    key = "fmnist/versions/1/checksums.json"
    table = json.loads(registry.store.get(key))
    table["files"]["model.onnx.xz"]["sha256"] = hashlib.sha256(b"forged").hexdigest()
    registry.store.put("fmnist/versions/1/model.onnx.xz", b"forged")
    registry.store.put(key, json.dumps(table).encode())


@pytest.mark.parametrize(
    ("damage", "name", "problem"),
    [
        ("tamper", "model.onnx.xz", "checksum mismatch"),
        ("delete", "card.json", "is missing"),
        ("tamper", "checksums.json", "not valid JSON"),
        ("delete", "checksums.json", "incomplete"),
        ("forge", "model.onnx.xz", "changed after it was promoted"),
    ],
)
def test_status_reports_a_damaged_production_naming_the_key(
    workspace: Path, capsys: pytest.CaptureFixture[str], damage: str, name: str, problem: str
) -> None:
    registry = registry_for(workspace)
    assert squeeze(workspace, "status") == 0
    assert "checksums: verified" in capsys.readouterr().out
    key = f"fmnist/versions/1/{name}"
    if damage == "tamper":
        registry.store.put(key, b"{damaged")
    elif damage == "delete":
        (registry.store.root / key).unlink()  # type: ignore[attr-defined]
    else:
        forge(registry)
    where = registry.url(1, name)
    assert squeeze(workspace, "status") == 1
    out = capsys.readouterr().out
    assert "checksums: FAILED: " in out and problem in out
    # What is still readable is shown; a card that is not is said to be so.
    shown = "kd" if name == "model.onnx.xz" else "card unreadable"
    assert f"production: version 1 ({shown})" in out
    assert f"DAMAGED: {where}: promote treats version 1 as failing its gates" in out
    assert squeeze(workspace, "status", "--json") == 1
    info = json.loads(capsys.readouterr().out)["production"]
    assert (info["version"], info["verified"], info["damaged"]) == (1, False, where)
    assert problem in info["problem"]


def test_a_version_shipped_before_xz_still_pulls_and_shows_its_file(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Registries written by squeeze before it shipped xz hold model.onnx.gz: a rollback to such
    a version must still serve (pull-production unpacks it, status names the file it holds)."""
    registry = registry_for(workspace)
    card = {"model": {"name": "old"}, "metrics": {}, "lineage": {}}
    old = registry.publish({"model.onnx.gz": gzip.compress(ONNX, 9, mtime=0)}, card, {})
    registry.promote(old, expected=1)
    dest = tmp_path / "app"
    assert squeeze(workspace, "pull-production", str(dest)) == 0
    assert (dest / "model.onnx").read_bytes() == ONNX
    capsys.readouterr()
    assert squeeze(workspace, "status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["production"]["url"].endswith(
        f"versions/{old}/model.onnx.gz"
    )


def test_the_shipped_file_opens_with_the_standard_xz_tool() -> None:
    """What the registry ships is a plain .xz file: `xz -d` gives the ONNX bytes back, so a
    consumer needs no squeeze code."""
    shipped = pack(ONNX)
    assert shipped.startswith(b"\xfd7zXZ\x00") and pack(ONNX) == shipped  # deterministic
    done = subprocess.run(["xz", "-dc"], input=shipped, capture_output=True, check=True)
    assert done.stdout == ONNX


# -- row 19: pull-production changes nothing in DIR unless it can write both files ----------------


def test_pull_production_changes_nothing_when_card_json_is_a_folder(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "app"
    (dest / "card.json").mkdir(parents=True)
    (dest / "model.onnx").write_bytes(b"an older model")
    before = tree(dest)
    assert squeeze(workspace, "pull-production", str(dest)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write 'card.json'" in err and "is not a file" in err
    assert tree(dest) == before and sorted(os.listdir(dest)) == ["card.json", "model.onnx"]


def test_pull_production_puts_the_model_back_when_the_card_cannot_be_renamed(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "model.onnx").write_bytes(b"an older model")
    (dest / "card.json").write_text('{"old": true}')
    before = tree(dest)
    real = os.replace

    def full_disk_on_the_card(src: object, dst: object) -> None:
        if Path(str(dst)).name == "card.json":
            raise OSError(28, "No space left on device")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", full_disk_on_the_card)
    assert squeeze(workspace, "pull-production", str(dest)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert tree(dest) == before  # the model renamed first was put back; no temp files


# -- row 17: a malformed pointer, a location or endpoint typo ------------------------------------


def set_promote(workspace: Path, **changes: object) -> None:
    """Change params.promote of the workspace."""
    params = read_yaml(workspace / "params.yaml")
    params["promote"] |= changes
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))


def test_an_empty_pointer_is_reported_damaged_and_an_operator_promote_replaces_it(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = registry_for(workspace)
    registry.store.put("fmnist/production.json", b"{}")
    where = f"{registry.store.url}/fmnist/production.json"
    assert squeeze(workspace, "status") == 1
    out = capsys.readouterr().out
    assert f"production: DAMAGED: {where} is damaged: key 'version' is missing" in out
    assert "nothing promoted yet" not in out and "versions: 1" in out
    assert squeeze(workspace, "pull-production", str(tmp_path / "app")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{where} is damaged: key 'version' is missing" in err
    assert not (tmp_path / "app").exists()
    assert squeeze(workspace, "promote", "1") == 0
    assert "version 1 (was a damaged production.json)" in capsys.readouterr().out
    assert squeeze(workspace, "status") == 0
    assert "checksums: verified" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"registry": "s3:/bucket/registry"}, "did you mean 's3://bucket/registry'?"),
        ({"registry": "s3://bucket/registry", "endpoint_url": "127.0.0.1:9000"},
         "e.g. 'http://127.0.0.1:9000'"),
    ],
)  # fmt: skip
def test_a_location_or_endpoint_typo_is_refused_in_one_line(
    workspace: Path, capsys: pytest.CaptureFixture[str], changes: dict, problem: str
) -> None:
    set_promote(workspace, **changes)
    for command in ("status", "pull-production", "clean-registry"):
        argv = [command, str(workspace / "out")] if command == "pull-production" else [command]
        assert squeeze(workspace, *argv) == 2  # refused when params.yaml loads: invalid params
        err = capsys.readouterr().err
        assert err.startswith("squeeze: invalid parameters\n") and "Traceback" not in err, err
        assert problem in err and "params.yaml: promote." in err, err
    assert sorted(os.listdir(workspace)) == ["params.yaml", "registry"]  # no "s3:" folder


# -- row 18: half-versions in status, and clean-registry ------------------------------------------


def test_status_lists_half_versions_and_clean_registry_removes_old_ones(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = registry_for(workspace).store
    store.put("fmnist/versions/2/claim.json", b'{"claimed_at": "2026-01-01T00:00:00+00:00"}')
    store.put("fmnist/versions/2/model.onnx.xz", b"half")
    assert squeeze(workspace, "status") == 0
    out = capsys.readouterr().out
    assert "versions: 1\n" in out
    assert ("half-published (no checksums.json; not versions): 2 (claimed "
            "2026-01-01T00:00:00+00:00, 2 objects); squeeze clean-registry removes those "
            "claimed over 60 min ago") in out  # fmt: skip
    assert squeeze(workspace, "clean-registry", "--dry-run") == 0
    assert "half-published versions of 'fmnist': 2" in capsys.readouterr().out
    assert squeeze(workspace, "clean-registry") == 0
    assert "removed half-published versions of 'fmnist': 2" in capsys.readouterr().out
    assert store.list("fmnist/versions/2/") == []
    assert squeeze(workspace, "status") == 0
    assert "half-published" not in capsys.readouterr().out


def test_the_decision_line_names_the_challenger_as_such_unless_it_was_promoted() -> None:
    """A kept champion is production, not the challenger promote refused: the line must not
    read as if the challenger were what production holds."""
    registry = {"model": "/r/fashion-mnist/versions/1/model.onnx.xz"}
    promoted = {"outcome": "promoted", "challenger": {"name": "search_1"}, "registry": registry}
    kept = {"outcome": "champion_kept", "challenger": {"name": "search_uniform"},
            "registry": registry}  # fmt: skip
    none = {"outcome": "nothing_passed", "challenger": None, "registry": registry}
    assert cli.decision_line(promoted, "this run") == (
        "decision (this run): promoted search_1; production model: " + registry["model"]
    )
    assert cli.decision_line(kept, "this run").startswith(
        "decision (this run): champion_kept (challenger search_uniform); production model: "
    )
    assert cli.decision_line(none, "unchanged since the last run") == (
        "decision (unchanged since the last run): nothing_passed; production model: "
        + registry["model"]
    )
