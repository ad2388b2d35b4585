"""Operations: `squeeze serve`, infra/prefect.yaml on a process work pool, the failure alert, all
against a real Prefect API server; and the docker-compose stack, checked statically (no Docker
engine in the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.exceptions import PrefectHTTPStatusError

from squeeze.config.files import load_params, merge
from squeeze.config.params import COMPRESSION_STAGES, Params, validate
from squeeze.config.workspace import Workspace, read_json
from tests.conftest import PROJECT, dvc_up_to_date, params_yaml, run
from tests.integration.conftest import artifacts_of

INFRA = PROJECT / "infra"
FLOW = "retrain_and_compress"
ENTRYPOINT = "flows/compress.py:retrain_and_compress"


def read_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def set_params(root: Path, overlay: dict[str, Any]) -> None:
    """Merge overlay into the workspace's params.yaml (validated, like a profile)."""
    with params_yaml(root) as data:
        data.update(merge(data, overlay))
        validate(data, str(root / "params.yaml"))


def outputs(root: Path) -> list[str]:
    """Stage outputs present in the workspace (none before a stage has run)."""
    return sorted(p for p in ("data", "models", "exports", "metrics") if (root / p).exists())


# ---------------------------------------------------------------- static: infra/ files


def test_compose_runs_server_on_postgres_minio_with_bucket_and_project_worker() -> None:
    compose = read_yaml(INFRA / "docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "minio", "minio-init", "worker"}

    server = services["prefect-server"]
    assert server["image"] == "prefecthq/prefect:3.9.1-python3.11"  # the pinned client version
    db_url = server["environment"]["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db_url
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"

    init = services["minio-init"]
    assert init["image"].startswith("minio/mc") and init["restart"] == "no"
    assert "mc mb --ignore-existing" in " ".join(init["entrypoint"])
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"

    worker = services["worker"]
    assert (INFRA / worker["build"]["context"]).resolve() == PROJECT
    assert worker["build"]["dockerfile"] == "infra/Dockerfile"
    assert worker["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    env = worker["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert env["SQUEEZE_S3_ENDPOINT"] == "http://minio:9000"
    assert "--pool" in worker["command"] and "squeeze" in worker["command"]

    # secrets are ${VAR:-placeholder} references, the same pair for MinIO and its clients
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[name].startswith(f"${{{name}:-"), env[name]
        assert init["environment"][name] == env[name]
    assert services["minio"]["environment"]["MINIO_ROOT_USER"] == env["AWS_ACCESS_KEY_ID"]
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == env["AWS_SECRET_ACCESS_KEY"]
    example = (INFRA / ".env.example").read_text()
    for name in re.findall(r"\$\{(\w+):-", (INFRA / "docker-compose.yml").read_text()):
        assert f"\n{name}=" in f"\n{example}", f"{name} is not documented in infra/.env.example"
    # published ports only on the loopback interface
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    assert set(compose["volumes"]) == {"postgres", "minio", "workspace"}


def test_dockerfile_installs_the_locked_project_with_cpu_torch() -> None:
    dockerfile = (INFRA / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert lines[next(i for i, line in enumerate(lines) if line.startswith("FROM"))] == (
        "FROM python:3.11-slim"
    )
    install = re.search(r"RUN pip install ([^\n]*)", dockerfile)
    assert install and "-c requirements.lock ." in install.group(1)
    assert "download.pytorch.org/whl/cpu" in install.group(1)
    lock = (PROJECT / "requirements.lock").read_text()
    assert re.search(r"^torch==[\d.]+\+cpu$", lock, re.M), "the lock pins the CPU build of torch"
    # every file the image copies exists and is let through Dockerfile.dockerignore
    allowed = [line[1:].rstrip("/") for line in (INFRA / "Dockerfile.dockerignore").read_text()
               .splitlines() if line.startswith("!")]  # fmt: skip
    for copy in re.findall(r"^COPY (.+)$", dockerfile, re.M):
        *sources, _dest = copy.split()
        for source in sources:
            assert (PROJECT / source).exists(), source
            assert any(source == a or source.startswith(f"{a}/") for a in allowed), source
    assert "ENTRYPOINT" in dockerfile and "squeeze-workspace-init" in dockerfile


def test_prefect_yaml_declares_the_served_deployments_on_the_params_schedule() -> None:
    spec = read_yaml(INFRA / "prefect.yaml")
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"scheduled", "manual"}
    params = load_params(PROJECT)
    for deployment in deployments.values():
        assert deployment["entrypoint"] == ENTRYPOINT
        assert deployment["work_pool"]["name"] == "squeeze"
    (schedule,) = deployments["scheduled"]["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == (params.flow.cron, params.flow.timezone)
    assert not deployments["manual"].get("schedules")
    (pull,) = spec["pull"]
    assert pull["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "{{ $SQUEEZE_WORKSPACE }}"
    )


def test_workspace_init_makes_a_git_dvc_workspace_on_s3(tmp_path: Path) -> None:
    ws = tmp_path / "workspace"
    env = {
        "SQUEEZE_SOURCE": str(PROJECT),
        "SQUEEZE_WORKSPACE": str(ws),
        "SQUEEZE_S3_ENDPOINT": "http://minio:9000",
        "SQUEEZE_BUCKET": "squeeze",
        "HOME": str(tmp_path),  # git and dvc config stay in the temp dir
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        run(["sh", str(INFRA / "workspace-init.sh"), "true"], tmp_path)
        promote = load_params(ws).promote
        assert (promote.registry, promote.endpoint_url) == ("s3://squeeze/registry", env[
            "SQUEEZE_S3_ENDPOINT"])  # fmt: skip
        remote = run(["dvc", "remote", "list"], ws).stdout.split()
        assert remote[:2] == ["s3", "s3://squeeze/dvc"]
        assert (ws / ENTRYPOINT.split(":")[0]).exists()
        assert run(["git", "status", "--porcelain"], ws).stdout == ""  # committed: lineage
        (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "# kept\n")
        run(["sh", str(INFRA / "workspace-init.sh"), "true"], tmp_path)  # a restart
        assert (ws / "params.yaml").read_text().endswith("# kept\n")


# ---------------------------------------------------------------- a real Prefect API


@pytest.fixture
def api(prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test server's URL, exported so that CLI subprocesses (prefect, squeeze) use it."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_RUNNER_POLL_FREQUENCY", "1")  # pick up runs within a second
    return url


@pytest.mark.slow
def test_the_api_server_keeps_runs_in_postgresql(prefect_api: str, prefect_db: str) -> None:
    """A flow run in this process goes to the session's server, which stores it in PostgreSQL
    (not in a SQLite file of an ephemeral server, Prefect's fallback without PREFECT_API_URL)."""
    import asyncpg
    from prefect import flow, get_client
    from prefect.settings import PREFECT_API_URL

    @flow(name="postgres-probe")
    def probe() -> int:
        return 7

    state = probe(return_state=True)
    assert state.is_completed() and PREFECT_API_URL.value() == prefect_api
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        assert str(client.api_url).rstrip("/") == prefect_api
        assert client.read_flow_run(flow_run_id).name

    async def stored() -> Any:
        conn = await asyncpg.connect(prefect_db)
        try:
            return await conn.fetchrow(
                "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                "WHERE r.id = $1",
                flow_run_id,
            )
        finally:
            await conn.close()

    row = asyncio.run(stored())
    assert row is not None, f"flow run {flow_run_id} is not in {prefect_db}"
    assert (row["name"], row["state_type"]) == ("postgres-probe", "COMPLETED")


def read_deployment(name: str) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(f"{FLOW}/{name}")


def quick_params(params: Params) -> dict[str, Any]:
    """params with no candidates (the teacher alone: no search either) and fewer timing runs: a
    quick full run."""
    quick = merge(params.model_dump(mode="json"),
                  {"evaluate": {"runs": 20}, "search": {"finalists": 0}})  # fmt: skip
    return quick | {stage: {} for stage in COMPRESSION_STAGES}


def assert_run_report(flow_run_id: Any, models: set[str]) -> None:
    """The run's artifacts, read back through the server: the candidates table (exactly
    `models`), the Pareto plot (an inline PNG), the gate's verdicts and decision, promote's."""
    found = artifacts_of(flow_run_id)
    expected = {"candidates", "pareto", "gate-verdicts", "gate-decision", "promote-decision"}
    assert expected <= set(found), sorted(found)
    table = found["candidates"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {row["name"] for row in rows} == models
    assert found["pareto"].type == "markdown"
    assert "data:image/png;base64," in found["pareto"].data
    assert found["gate-verdicts"].type == "table" and found["gate-decision"].data.strip()


def wait_for_deployments(
    names: list[str], proc: subprocess.Popen, workspace: Path, timeout_s: float
) -> dict:
    """Poll the API until serve has registered every deployment for this workspace.

    A deployment of the same name may already exist in the session's server (an earlier test's
    serve or `prefect deploy`): it counts only once serve has updated it, i.e. it is served (no
    work pool) and its parameters name this workspace.
    """
    from prefect.exceptions import ObjectNotFound

    def ours(deployment: Any) -> bool:
        served = deployment.work_pool_name is None
        return served and deployment.parameters.get("workspace") == str(workspace)

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"squeeze serve exited ({proc.returncode}):\n{proc.stdout.read()}")
        try:
            found = {name: read_deployment(name) for name in names}
            if all(map(ours, found.values())):
                return found
        except ObjectNotFound:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"serve did not register {names} for {workspace} in {timeout_s} s")
        time.sleep(1)


@contextlib.contextmanager
def serving(workspace: Path, *args: str) -> Iterator[subprocess.Popen]:
    """`squeeze serve` in a subprocess, stopped with Ctrl-C (SIGINT) afterwards."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.Popen(
        [str(bin_dir / "squeeze"), "-w", str(workspace), "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_serve_deploys_a_typed_form_refuses_bad_params_and_runs_custom_ones(
    workspace: Path, api: str
) -> None:
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    set_params(workspace, {"flow": {"timezone": "Europe/Berlin"}})
    params = load_params(workspace)
    with serving(workspace, "--cron", "30 4 * * 1-5") as proc:
        found = wait_for_deployments(["scheduled", "manual"], proc, workspace, timeout_s=120)
        scheduled, manual = found["scheduled"], found["manual"]

        (schedule,) = scheduled.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (
            "30 4 * * 1-5", "Europe/Berlin")  # fmt: skip
        assert schedule.active and not manual.schedules
        # the UI form: prefilled from params.yaml; the schema is Params, with its constraints
        assert manual.parameters == {
            "params": params.model_dump(mode="json"),
            "workspace": str(workspace),
        }
        assert scheduled.parameters == {"workspace": str(workspace)}  # params.yaml at run time
        schema = manual.parameter_openapi_schema
        assert manual.enforce_parameter_schema and schema == scheduled.parameter_openapi_schema
        val_fraction = schema["definitions"]["IngestParams"]["properties"]["val_fraction"]
        assert val_fraction["exclusiveMaximum"] == 0.5 and val_fraction["description"]
        task_runner = schema["definitions"]["FlowParams"]["properties"]["task_runner"]
        assert task_runner["enum"] == ["threads", "dask"] and task_runner["description"]
        assert set(schema["definitions"]["Params"]["properties"]) == set(Params.model_fields)

        # out of range: the API refuses to create the run
        bad = params.model_dump(mode="json")
        bad["ingest"]["val_fraction"] = 0.7
        with (
            get_client(sync_client=True) as client,
            pytest.raises(PrefectHTTPStatusError, match=r"params\.ingest\.val_fraction"),
        ):
            client.create_flow_run_from_deployment(manual.id, parameters={"params": bad})
        # valid JSON but a broken candidate graph: the flow's own validation fails the run
        broken = params.model_dump(mode="json")
        broken["distill"]["kd_small"]["upstream"] = "nope"
        failed = run_deployment(
            f"{FLOW}/manual", parameters={"params": broken}, timeout=300, poll_interval=1
        )
        assert failed.state.is_failed(), failed.state
        assert "unknown model 'nope'" in failed.state.message
        assert outputs(workspace) == []  # refused before any stage ran
        assert load_params(workspace) == params  # and params.yaml is untouched

        # custom parameters, as from the form: no candidates (quick), fewer timing runs
        custom = quick_params(params)
        done = run_deployment(
            f"{FLOW}/manual", parameters={"params": custom}, timeout=600, poll_interval=2
        )
        assert done.state.is_completed(), done.state
    assert load_params(workspace).model_dump(mode="json") == custom  # what the run used
    assert set(read_json(Workspace(workspace).metrics("candidates"))) == {"teacher"}
    assert dvc_up_to_date(workspace)
    assert_run_report(done.id, {"teacher"})


def wait_for_a_scheduled_run(
    deployment_id: Any, proc: subprocess.Popen, timeout_s: float, workspace: Path
) -> Any:
    """The first run for `workspace` of the deployment that the server's scheduler created and
    the runner started; then the deployment is paused, which deletes its other auto-scheduled
    runs (one a minute), so that no second run follows this one into the workspace. Runs that
    an earlier test's serve of the same deployment left scheduled name that test's workspace:
    this serve refuses them (flows.compress.bound_workspace), and they are passed over here."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    started = FlowRunFilter(
        deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED])),
    )
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"squeeze serve exited ({proc.returncode})")
            runs = client.read_flow_runs(
                flow_run_filter=started, sort=FlowRunSort.EXPECTED_START_TIME_ASC
            )
            ours = [r for r in runs if r.parameters.get("workspace") == str(workspace)]
            if ours:
                client.pause_deployment(deployment_id)
                return ours[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no scheduled run started within {timeout_s:.0f} s")
            time.sleep(1)


def wait_for_final_state(flow_run_id: Any, timeout_s: float) -> Any:
    """The flow run, once it is completed, failed, crashed or cancelled."""
    from prefect import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while not (flow_run := client.read_flow_run(flow_run_id)).state.is_final():
            if time.monotonic() > deadline:
                raise AssertionError(f"{flow_run.name} is still {flow_run.state.name}")
            time.sleep(2)
    return flow_run


@pytest.mark.slow
def test_the_scheduled_deployment_runs_on_its_cron_from_params_yaml(
    workspace: Path, api: str
) -> None:
    quick = quick_params(load_params(workspace))
    (workspace / "params.yaml").write_text(yaml.safe_dump(validate(quick, "quick").model_dump(
        mode="json"), sort_keys=False))  # fmt: skip
    with serving(workspace, "--cron", "* * * * *") as proc:  # due within a minute
        scheduled = wait_for_deployments(["scheduled"], proc, workspace, timeout_s=120)["scheduled"]
        started = wait_for_a_scheduled_run(scheduled.id, proc, timeout_s=150, workspace=workspace)
        flow_run = wait_for_final_state(started.id, timeout_s=240)
        assert flow_run.state.is_completed(), flow_run.state
    # made by the server's scheduler on the cron; params: none, so params.yaml at run time
    assert flow_run.auto_scheduled and flow_run.parameters == {"workspace": str(workspace)}
    assert set(read_json(Workspace(workspace).metrics("candidates"))) == {"teacher"}
    assert load_params(workspace).model_dump(mode="json") == quick
    assert dvc_up_to_date(workspace)
    assert_run_report(flow_run.id, {"teacher"})


@pytest.mark.slow
def test_prefect_deploy_all_onto_a_process_pool_and_a_worker_runs_in_the_workspace(
    workspace: Path, api: str
) -> None:
    from prefect import get_client

    (workspace / "infra").mkdir()
    (workspace / "infra" / "prefect.yaml").write_text((INFRA / "prefect.yaml").read_text())
    run(["prefect", "work-pool", "create", "squeeze", "--type", "process", "--base-job-template",
         str(INFRA / "process-pool.json")], workspace)  # fmt: skip
    out = run(
        ["prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml"],
        workspace,
    ).stdout
    assert f"'{FLOW}/scheduled' successfully" in out and f"'{FLOW}/manual' successfully" in out

    params = load_params(workspace)
    scheduled, manual = read_deployment("scheduled"), read_deployment("manual")
    for deployment in (scheduled, manual):
        assert deployment.work_pool_name == "squeeze"
        assert deployment.entrypoint == ENTRYPOINT
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {
                "directory": "{{ $SQUEEZE_WORKSPACE }}"}}  # resolved by the worker
        ]  # fmt: skip
        props = deployment.parameter_openapi_schema["definitions"]["IngestParams"]["properties"]
        assert props["val_fraction"]["exclusiveMaximum"] == 0.5
    (schedule,) = scheduled.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (
        params.flow.cron, params.flow.timezone)  # fmt: skip

    # a worker loads the flow from SQUEEZE_WORKSPACE and runs it there (quickly failing ingest);
    # its environment allows the run's new ingest.source (squeeze.config.allowlist)
    missing = merge(params.model_dump(mode="json"), {"ingest": {"source": "/nonexistent/fmnist"}})
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(manual.id, parameters={
            "params": missing})  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SQUEEZE_WORKSPACE", str(workspace))
        mp.setenv("SQUEEZE_ALLOWED_LOCATIONS", "/nonexistent")
        run(["prefect", "worker", "start", "--pool", "squeeze", "--run-once"], workspace.parent)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.is_failed(), state
    assert "ingest.source: /nonexistent/fmnist is not a folder" in state.message
    assert load_params(workspace).ingest.source == "/nonexistent/fmnist"  # it ran in workspace
    assert outputs(workspace) == []

    # the pool's template (infra/process-pool.json) gives a run no job variable that could move
    # the workspace, widen the allow-lists or change the command: the API refuses such a run
    refused = pytest.raises(PrefectHTTPStatusError, match="422")
    for variables in ({"env": {"SQUEEZE_WORKSPACE": "/tmp"}}, {"command": "sh -c id"},
                      {"working_dir": "/tmp"}):  # fmt: skip
        with get_client(sync_client=True) as client, refused:
            client.create_flow_run_from_deployment(manual.id, job_variables=variables)


class _Receiver(BaseHTTPRequestHandler):
    """Collects JSON POST bodies into the server's `received` list."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict]]:
    """A local HTTP receiver in SQUEEZE_ALERT_WEBHOOK (with a token, as real ones have)."""
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SQUEEZE_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/h?t=s3cr3t")
    yield server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.fixture
def prefect_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog on Prefect's loggers, which do not propagate to the root logger."""
    logger = logging.getLogger("prefect")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.slow
def test_failed_run_alerts_with_the_stage_and_the_run_url(
    workspace: Path, prefect_api, webhook: list[dict], prefect_logs: pytest.LogCaptureFixture
) -> None:
    from flows.alerts import alert
    from flows.compress import retrain_and_compress
    from squeeze.data.spec import DataError

    missing = workspace.parent / "no-such-folder"
    params = validate(
        merge(load_params(workspace).model_dump(mode="json"), {"ingest": {"source": str(missing)}}),
        "test",
    )
    alerting = retrain_and_compress.with_options(on_failure=[alert])
    with pytest.raises(DataError):
        alerting(params=params, workspace=str(workspace))

    (payload,) = webhook
    # `source` is the first stage that reads ingest.source (it stamps the data there)
    assert payload["stages"] == ["source"] and payload["state"] == "Failed"
    assert f"{missing} is not a folder" in payload["message"]
    assert payload["url"].endswith(f"/runs/flow-run/{payload['flow_run_id']}")
    assert payload["text"].startswith(f"{FLOW} run {payload['flow_run']!r} failed at source: ")
    assert payload["url"] in payload["text"]
    assert outputs(workspace) == []
    logged = "\n".join(r.getMessage() for r in prefect_logs.records)
    assert f"ALERT {payload['text']}" in logged
    assert "s3cr3t" not in logged  # the webhook's token never reaches a log


def test_webhook_refusals_raise_for_the_hook_to_log() -> None:
    from flows.alerts import post_webhook

    with pytest.raises(OSError):  # nothing listens on port 9 of the loopback
        post_webhook("http://127.0.0.1:9/hook", {"text": "x"}, timeout_s=2)
    with pytest.raises(ValueError, match="not an http"):
        post_webhook("file:///etc/passwd", {"text": "x"})
