"""A class_path is code execution, and params arrive from the Prefect UI or API: a run whose
params name `subprocess.run` is refused before anything is imported or built, naming the key;
and were the workspace owner to allow `subprocess`, the stage still refuses to call it (not a
network factory). Through a real API server (PostgreSQL) and `squeeze serve`, as from the UI."""

from __future__ import annotations

from pathlib import Path

import pytest

from squeeze.config.files import load_params
from tests.integration.test_deployments import (  # noqa: F401 - api is a fixture
    FLOW,
    api,
    outputs,
    serving,
    wait_for_deployments,
)


@pytest.mark.slow
def test_an_api_run_naming_subprocess_run_fails_naming_the_key_and_builds_nothing(
    workspace: Path,
    api: str,  # noqa: F811 - the fixture imported above
) -> None:
    from prefect.deployments import run_deployment

    params = load_params(workspace)
    marker = workspace.parent / "subprocess-ran"
    hostile = params.model_dump(mode="json")
    hostile["train_teacher"]["arch"] = {
        "class_path": "subprocess.run",
        "init_args": {"args": ["touch", str(marker)]},
    }
    with serving(workspace) as proc:
        wait_for_deployments(["manual"], proc, workspace, timeout_s=120)

        # the UI form's schema takes it (a class_path is a valid arch); the flow refuses it first
        refused = run_deployment(
            f"{FLOW}/manual", parameters={"params": hostile}, timeout=300, poll_interval=1
        )
        assert refused.state.is_failed(), refused.state
        assert (
            "train_teacher.arch.class_path: 'subprocess.run' is not in the modules the workspace "
            "allows (squeeze, examples)" in refused.state.message
        )
        assert "[tool.squeeze] allowed_modules" in refused.state.message  # and how to allow one
        assert outputs(workspace) == []  # no stage ran: no data, no models/teacher
        assert load_params(workspace) == params  # params.yaml untouched

        # the owner allows subprocess (pyproject.toml, read at run time): the teacher's stage
        # imports it, then refuses a function that is not annotated to build a network
        pyproject, allowed = workspace / "pyproject.toml", 'allowed_modules = ["examples"]'
        assert allowed in (text := pyproject.read_text())
        pyproject.write_text(text.replace(allowed, 'allowed_modules = ["examples", "subprocess"]'))
        uncalled = run_deployment(
            f"{FLOW}/manual", parameters={"params": hostile}, timeout=600, poll_interval=2
        )
        assert uncalled.state.is_failed(), uncalled.state
        assert (
            "class_path 'subprocess.run': names a function not annotated to return an nn.Module"
            in uncalled.state.message
        )
    assert not (workspace / "models" / "teacher").exists()
    assert not marker.exists()  # subprocess.run was never called
