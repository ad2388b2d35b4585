"""`squeeze serve`'s deployments are bound to their workspace: a run from the API cannot choose
another folder (whose pyproject.toml would be the allow-list and whose dvc.yaml the commands), nor
point the registry, data source, endpoints... outside params.yaml's places and those the workspace
allows. Through a real API server (PostgreSQL) and `squeeze serve`, as from the UI."""

from __future__ import annotations

from pathlib import Path

import pytest

from squeeze.config.files import load_params, merge
from tests.integration.test_deployments import (  # noqa: F401 - api is a fixture
    FLOW,
    api,
    outputs,
    serving,
    wait_for_deployments,
)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under folder (recursively): its bytes and mtime, by relative path."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_an_api_run_cannot_choose_the_workspace_nor_move_the_registry_outside_the_allowed(
    workspace: Path,
    tmp_path: Path,
    api: str,  # noqa: F811 - the fixture imported above
) -> None:
    from prefect.deployments import run_deployment

    # another folder, as a hostile run would prepare it: it allows subprocess and its dvc.yaml
    # runs a command of its own
    other = tmp_path / "other"
    other.mkdir()
    marker = tmp_path / "other-ran"
    (other / "pyproject.toml").write_text('[tool.squeeze]\nallowed_modules = ["subprocess"]\n')
    (other / "params.yaml").write_text((workspace / "params.yaml").read_text())
    (other / "dvc.yaml").write_text(f"stages:\n  source:\n    cmd: touch {marker}\n")
    before_other, before_params = snapshot(other), (workspace / "params.yaml").read_bytes()
    params = load_params(workspace)
    elsewhere = tmp_path / "elsewhere"

    with serving(workspace) as proc:
        wait_for_deployments(["scheduled", "manual"], proc, workspace, timeout_s=120)

        # (a) another workspace, on either deployment: refused before anything there is touched
        for name in ("manual", "scheduled"):
            refused = run_deployment(
                f"{FLOW}/{name}", parameters={"workspace": str(other)}, timeout=300,
                poll_interval=1,
            )  # fmt: skip
            assert refused.state.is_failed(), refused.state
            assert (
                f"workspace: {str(other)!r} is not the workspace this deployment serves "
                f"({workspace})" in refused.state.message
            )
        assert snapshot(other) == before_other  # same files, bytes and mtimes: no lock, no write
        assert not marker.exists() and outputs(workspace) == []

        # (b) the registry moved to a folder the workspace does not allow: refused naming the key
        hostile = merge(params.model_dump(mode="json"), {"promote": {"registry": str(elsewhere)}})
        refused = run_deployment(
            f"{FLOW}/manual", parameters={"params": hostile}, timeout=300, poll_interval=1
        )
        assert refused.state.is_failed(), refused.state
        assert (
            f"promote.registry: {str(elsewhere)!r} is not params.yaml's value ('registry') nor "
            "under a location the workspace allows (none)" in refused.state.message
        )
        assert "[tool.squeeze] allowed_locations" in refused.state.message  # and how to allow
        assert (workspace / "params.yaml").read_bytes() == before_params  # params.yaml untouched
        assert outputs(workspace) == [] and not elsewhere.exists()

        # (c) the owner allows the folder (pyproject.toml, read at run time): the check passes
        # and the run goes on, to fail at the first stage on the data source it also moved there
        pyproject = workspace / "pyproject.toml"
        pyproject.write_text(
            pyproject.read_text().replace(
                "[tool.squeeze]\n", f'[tool.squeeze]\nallowed_locations = ["{elsewhere}"]\n'
            )
        )
        allowed = merge(hostile, {"ingest": {"source": str(elsewhere / "no-data")}})
        passed = run_deployment(
            f"{FLOW}/manual", parameters={"params": allowed}, timeout=300, poll_interval=1
        )
        assert passed.state.is_failed(), passed.state
        assert f"ingest.source: {elsewhere / 'no-data'} is not a folder" in passed.state.message
        assert load_params(workspace).promote.registry == str(elsewhere)  # the run's params
