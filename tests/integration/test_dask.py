"""Scale-out: the candidate fan-out of the flow on a Dask LocalCluster (two worker processes),
in a fresh git+DVC workspace on the smoke profile, against a real Prefect API."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.compress import retrain_and_compress
from squeeze.dvcyaml import dvc_stage, parse_stage
from squeeze.params import load_params, merge, validate
from squeeze.workspace import Workspace, read_json
from tests.conftest import dvc_up_to_date

pytestmark = pytest.mark.slow


def test_candidate_fan_out_completes_on_a_dask_local_cluster(workspace: Path, prefect_api) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    smoke = load_params(workspace).model_dump(mode="json")
    params = validate(merge(smoke, {"flow": {"task_runner": "dask", "workers": 2}}), "test")
    candidates = [dvc_stage(params, name) for name in params.model_names()[1:]]

    state = retrain_and_compress(params=params, workspace=str(workspace), return_state=True)
    result = state.result()
    assert set(result["ran"]) == {"ingest", "train_teacher", *candidates, "evaluate", "gate",
                                  "promote"}  # fmt: skip
    # every worker process recorded its stage in dvc.lock: DVC agrees that all is current
    assert dvc_up_to_date(workspace)
    measured = read_json(Workspace(workspace).metrics("candidates"))
    assert set(measured) == set(params.model_names())

    # two candidates built from the teacher alone are ready at once: on two workers they overlap
    first, second = [c for c in candidates if params.upstreams()[parse_stage(c)[1]] == ["teacher"]][
        :2
    ]
    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = {r.name: r for r in client.read_task_runs(flow_run_filter=this_run)}
    a, b = runs[first], runs[second]
    assert a.start_time < b.end_time and b.start_time < a.end_time, (a, b)
