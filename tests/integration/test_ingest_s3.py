"""ingest from an s3:// source on a real S3 endpoint (moto's server) that throttles, refuses or is
down: the Prefect task retries what may succeed later and fails at once, naming bucket and key,
on what will not; `dvc repro` goes on with the last source stamp while the source is down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.in_process import TASKS
from squeeze.config.dvcyaml import stages_ran
from squeeze.config.files import load_params
from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json
from squeeze.data.idx import raw_names, read_split
from tests.conftest import run
from tests.integration.conftest import S3Endpoint

pytestmark = pytest.mark.slow

PROJECT = Path(__file__).resolve().parents[2]
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"


def s3_params(endpoint: S3Endpoint, prefix: str) -> Params:
    """The project's params with ingest reading s3://BUCKET/prefix on the endpoint."""
    params = load_params(PROJECT)
    cfg = params.ingest.model_copy(
        update={"source": f"s3://{endpoint.bucket}/{prefix}", "endpoint_url": endpoint.url}
    )
    return params.model_copy(update={"ingest": cfg})


@pytest.fixture
def source(s3_endpoint: S3Endpoint, s3_prefix: str, fmnist_dir: Path) -> str:
    """The four real gz files under a fresh prefix; returns the prefix."""
    client = s3_endpoint.client()
    for name in raw_names():
        body = (fmnist_dir / f"{name}.gz").read_bytes()
        client.put_object(Bucket=s3_endpoint.bucket, Key=f"{s3_prefix}/{name}.gz", Body=body)
    return s3_prefix


def run_ingest(root: Path, params: Params) -> tuple[Any, int]:
    """Run the flow's ingest task (its retry policy, without the waits); its final state and
    how many times it ran."""
    from prefect import get_client

    ingest = TASKS["ingest"].with_options(retry_delay_seconds=0)
    state = ingest(root, params, return_state=True)
    with get_client(sync_client=True) as client:
        return state, client.read_task_run(state.state_details.task_run_id).run_count


def test_a_throttling_endpoint_is_retried_until_ingest_succeeds(
    s3_endpoint: S3Endpoint, source: str, fmnist_dir: Path, tmp_path: Path, prefect_api
) -> None:
    # botocore tries each request 3 times (standard mode), so 4 SlowDowns outlast its retries
    # on the first listing: only ingest's own retry gets past them
    throttled = 4
    with s3_endpoint.failing(503, "SlowDown", times=throttled) as seen:
        state, runs = run_ingest(tmp_path, s3_params(s3_endpoint, source))
    assert state.is_completed(), state.message
    assert runs == 2
    assert len(seen) == throttled + 1 + 4  # refused, then one listing and the four files
    ingested = read_split(Workspace(tmp_path).raw, "train")
    assert (ingested.labels == read_split(fmnist_dir, "train").labels).all()
    assert read_json(Workspace(tmp_path).metrics("ingest"))["source"].startswith("s3://")


@pytest.mark.parametrize(
    ("status", "code"), [(403, "AccessDenied"), (404, "NoSuchKey")], ids=["refused", "missing"]
)
def test_a_refused_or_missing_object_fails_at_once_naming_bucket_and_key(
    s3_endpoint: S3Endpoint,
    source: str,
    tmp_path: Path,
    prefect_api,
    status: int,
    code: str,
) -> None:
    key = f"/{s3_endpoint.bucket}/{source}/{TRAIN_LABELS}"
    with s3_endpoint.failing(status, code, times=100, match=f"GET {key}") as seen:
        state, runs = run_ingest(tmp_path, s3_params(s3_endpoint, source))
    assert state.is_failed()
    assert runs == 1 and [r for r in seen if r.endswith(key)] == [f"GET {key}"]
    message = str(state.result(raise_on_failure=False))
    assert f"s3://{s3_endpoint.bucket}/{source}" in message and TRAIN_LABELS in message
    assert not Workspace(tmp_path).raw.exists()


def test_a_key_missing_from_the_prefix_fails_at_once_naming_it(
    s3_endpoint: S3Endpoint, source: str, tmp_path: Path, prefect_api
) -> None:
    s3_endpoint.client().delete_object(Bucket=s3_endpoint.bucket, Key=f"{source}/{TRAIN_LABELS}")
    state, runs = run_ingest(tmp_path, s3_params(s3_endpoint, source))
    assert state.is_failed() and runs == 1
    message = str(state.result(raise_on_failure=False))
    assert f"s3://{s3_endpoint.bucket}/{source}: missing {TRAIN_LABELS}" in message


def test_dvc_repro_keeps_the_last_stamp_while_the_source_is_down(
    s3_endpoint: S3Endpoint, source: str, workspace: Path
) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["ingest"] |= s3_params(s3_endpoint, source).ingest.model_dump(
        include={"source", "endpoint_url"}
    )
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_ran(run(["dvc", "repro", "ingest"], workspace).stdout) == ["ingest"]
    stamp = Workspace(workspace).source.read_bytes()
    s3_endpoint.stop()
    try:
        offline = run(["dvc", "repro", "ingest"], workspace)
    finally:
        s3_endpoint.start()
    assert "Running stage 'source'" in offline.stdout and stages_ran(offline.stdout) == []
    assert f"kept the last {Path('data', 'source.json')}" in offline.stderr
    assert "cannot reach S3 endpoint" in offline.stderr
    assert Workspace(workspace).source.read_bytes() == stamp
