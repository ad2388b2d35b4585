"""dvc.yaml's generated parts (merge stages, the user's code among the deps): in step with
params.yaml, rewritten by `squeeze sync`, and a stale dvc.yaml refused with the command that
fixes it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from squeeze.config.dvcyaml import (
    check_synced,
    dvc_stage,
    generated_stages,
    parse_stage,
    stale_code_stages,
    stale_generated_stages,
    sync,
)
from squeeze.config.errors import ParamsError
from squeeze.config.files import apply_profile, load_params, merge
from squeeze.config.params import validate
from tests.conftest import ensemble_merges

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's dvc.yaml, params.yaml, profiles and code (the stages' deps)."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(PROJECT / name, tmp_path / name)
    for name in ("profiles", "squeeze", "stages"):
        shutil.copytree(
            PROJECT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


def with_trio(root: Path) -> None:
    """Hand-edit params.yaml: a three-member ensemble, and no more soup."""
    params = load_params(root).model_dump(mode="json")
    ensemble = ensemble_merges()["ensemble_small"]
    params["merge"] = {
        "ensemble_small": ensemble | {"upstreams": ["kd_small", "ce_small"]},
        "trio": ensemble | {"upstreams": ["kd_small", "ce_small", "teacher_ch50"]},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_committed_dvc_yaml_matches_params_and_the_smoke_profile(project: Path) -> None:
    assert stale_generated_stages(PROJECT, load_params(PROJECT)) == []
    assert stale_code_stages(PROJECT, load_params(PROJECT)) == []
    # the smoke profile adds the finalists of its search, which `squeeze profile` writes
    smoke = apply_profile(project, "smoke")
    assert stale_generated_stages(project, smoke) == [f"finalist-{n}" for n in smoke.finalists()]


def test_every_member_is_a_dependency() -> None:
    base = load_params(PROJECT).model_dump(mode="json")
    members = ["kd_small", "ce_small", "kd_small_ch50"]
    ens = ensemble_merges()["ensemble_small"] | {"upstreams": members}
    params = validate(merge(base, {"merge": {"big": ens}}), "test")
    deps = generated_stages(PROJECT, params)["merge-big"]["deps"]
    assert [d for d in deps if d.startswith("models/")] == [
        "models/kd_small",
        "models/ce_small",
        "models/kd_small_ch50",
    ]


def test_sync_rewrites_the_generated_stages_and_keeps_the_rest(project: Path) -> None:
    before = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    with_trio(project)
    params = load_params(project)
    with pytest.raises(ParamsError, match=r"merge-teacher_ch50_soup, merge-trio .*squeeze sync"):
        check_synced(project, params)

    assert sync(project, params) is True
    text = (project / "dvc.yaml").read_text()
    after = yaml.safe_load(text)["stages"]
    assert [k for k in after if k.startswith("merge-")] == ["merge-ensemble_small", "merge-trio"]
    assert "merge-teacher_ch50_soup" not in after
    assert after["merge-trio"]["deps"][-3:] == [
        "models/kd_small",
        "models/ce_small",
        "models/teacher_ch50",
    ]
    assert list(after)[-3:] == ["evaluate", "gate", "promote"]  # the rest keeps its order
    assert {k: v for k, v in after.items() if not k.startswith("merge-")} == {
        k: v for k, v in before.items() if not k.startswith("merge-")
    }
    assert text.startswith("# One stage per stages/<stage>.py")  # comments survive
    check_synced(project, params)
    assert sync(project, params) is False  # nothing to do twice


def test_a_stage_run_by_dvc_refuses_a_stale_dvc_yaml(project: Path) -> None:
    with_trio(project)
    proc = subprocess.run(
        [sys.executable, "-m", "stages.merge", "trio"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(PROJECT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 1
    assert "merge-trio" in proc.stderr and "run `squeeze sync`" in proc.stderr
    assert not (project / "models").exists()


def test_stage_names_round_trip() -> None:
    params = load_params(PROJECT)
    names = {name: dvc_stage(params, name) for name in params.model_names()}
    assert names["teacher"] == "train_teacher"
    assert names["kd_small"] == "distill@kd_small"
    assert names["teacher_ch50_soup"] == "merge-teacher_ch50_soup"
    for name, stage in names.items():
        assert parse_stage(stage) == (params.stage_of(name), None if name == "teacher" else name)
    assert parse_stage("evaluate") == ("evaluate", None)
    with pytest.raises(ValueError, match="not a squeeze stage name"):
        parse_stage("evaluate-0a1")  # a nested Prefect task run, not a stage


def test_sync_lists_the_users_network_code_and_init_file_among_the_deps(project: Path) -> None:
    (project / "mynets").mkdir()
    (project / "mynets" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text('[tool.squeeze]\nallowed_modules = ["mynets"]\n')
    raw = load_params(project).model_dump(mode="json")
    raw["train_teacher"]["arch"] = {"class_path": "mynets.resnet.ResNet", "init_args": {}}
    raw["train_teacher"]["init"] = "weights/teacher.safetensors"
    raw["distill"]["kd_small"]["student"] = {"class_path": "mynets.Tiny", "init_args": {}}
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(project)
    stale = ["train_teacher", "search", "distill", "prune", "quantize", "evaluate"]
    assert stale_code_stages(project, params) == stale
    with pytest.raises(ParamsError, match="merge-teacher_ch50_soup, .*train_teacher.*squeeze sync"):
        check_synced(project, params)

    assert sync(project, params) is True
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert stages["train_teacher"]["deps"][-2:] == ["mynets", "weights/teacher.safetensors"]
    for body in (stages["prune"]["do"], stages["evaluate"], stages["merge-teacher_ch50_soup"]):
        assert "mynets" in body["deps"] and "weights/teacher.safetensors" not in body["deps"]
    check_synced(project, params)
    assert sync(project, params) is False

    # back to the built-in network: the deps go again, and dvc.yaml is the committed one
    shutil.copy(PROJECT / "params.yaml", project / "params.yaml")
    assert sync(project, load_params(project)) is True
    assert yaml.safe_load((project / "dvc.yaml").read_text()) == yaml.safe_load(
        (PROJECT / "dvc.yaml").read_text()
    )


def test_a_new_import_in_stage_code_makes_its_stage_stale_until_synced(project: Path) -> None:
    params = load_params(project)
    assert stale_code_stages(project, params) == []
    # the gate stage's code now reaches squeeze/methods/qat.py (and what that imports)
    stage = project / "stages" / "gate.py"
    stage.write_text(stage.read_text() + "\n\ndef later():\n    import squeeze.methods.qat\n")
    assert stale_code_stages(project, params) == ["gate"]
    with pytest.raises(ParamsError, match="gate do not match.*squeeze sync"):
        check_synced(project, params)
    assert sync(project, params) is True
    deps = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["gate"]["deps"]
    assert {"squeeze/methods/qat.py", "squeeze/nets/models.py"} <= set(deps)
    assert "data/splits/train.safetensors" not in deps  # code only: the stage's data deps stay
    check_synced(project, params)
