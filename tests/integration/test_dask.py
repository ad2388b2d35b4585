"""Scale-out: the candidate fan-out of the flow on Dask workers that share no disk with it.

A Dask scheduler (LocalCluster, no workers of its own) and two `dask worker` processes, each in a
temporary directory of its own, with the test's whole tmp_path (the workspace, its twin) hidden
from them: a private mount namespace with an empty tmpfs over it (`unshare -m`, as root or where
the container allows it; the test fails, saying so, where it cannot). The workspace's DVC remote
is on the moto S3 server, which is all the workers and the flow share. The workers' models, and the
candidates table, must equal those of a threaded run on the same params in a second clone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.compress import retrain_and_compress
from squeeze.config.dvcyaml import dvc_stage, parse_stage
from squeeze.config.files import load_params, merge, write_params
from squeeze.config.params import COMPRESSION_STAGES, Params, validate
from squeeze.config.workspace import Workspace, read_json
from tests.conftest import dvc_up_to_date, one_per_method, run
from tests.integration.conftest import S3Endpoint
from tests.integration.test_reproducible import accuracies, digests

pytestmark = pytest.mark.slow

WORKERS = 2


def check_unshare() -> None:
    """Fail, saying why, where a worker cannot get a mount namespace of its own."""
    probe = ["unshare", "-m", "sh", "-c", "mount -t tmpfs none /mnt"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.fail(f"`unshare -m` + tmpfs mount refused ({done.stderr.strip()}): run the tests "
                    "as root or in a container that allows mount namespaces")  # fmt: skip


def start_worker(address: str, hide: Path, home: Path, env: dict[str, str]) -> Any:
    """A `dask worker` process in its own folder `home` (cwd, TMPDIR) that cannot see `hide`."""
    argv = [str(Path(sys.executable).parent / "dask"), "worker", address, "--nthreads", "1",
            "--preload", "flows.compress",  # as the README says: imports at start, not mid-run
            "--no-nanny", "--no-dashboard", "--local-directory", str(home)]  # fmt: skip
    env = {**env, "TMPDIR": str(home), "HOME": str(home)}
    # an empty tmpfs over `hide`, in a mount namespace of the worker's own
    mount = 'mount -t tmpfs none "$0" && exec "$@"'
    return subprocess.Popen(["unshare", "-m", "sh", "-c", mount, str(hide), *argv],
                            cwd=home, env=env)  # fmt: skip


@pytest.fixture
def hidden_workers(
    tmp_path: Path, s3_endpoint: S3Endpoint, prefect_api
) -> Iterator[tuple[str, list[str]]]:
    """(scheduler address, worker addresses): WORKERS workers that cannot see tmp_path."""
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL

    # workers read the remote's credentials from their own environment (here moto's fakes, set
    # by s3_endpoint) and reach the Prefect API the flow reports to
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value() or ""}
    check_unshare()
    cluster = LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None)
    # outside pytest's temp root, which only root may enter
    homes = [Path(tempfile.mkdtemp(prefix=f"squeeze-worker{i}-")) for i in range(WORKERS)]
    procs = [start_worker(cluster.scheduler_address, tmp_path, home, env) for home in homes]
    try:
        with Client(cluster.scheduler_address) as client:
            client.wait_for_workers(WORKERS, timeout=120)
            addresses = sorted(client.scheduler_info()["workers"])
            # prove it: no worker finds the workspace, each runs in its own folder (builtins
            # only: a function of this module would not unpickle where `tests` is not importable)
            params = client.run(os.path.exists, str(tmp_path / "repo" / "params.yaml"))
            listing = client.run(os.listdir, str(tmp_path), on_error="return")
            cwds = client.run(os.getcwd)
        assert len(addresses) == WORKERS and params == dict.fromkeys(addresses, False), params
        assert all(seen == [] for seen in listing.values()), listing  # an empty tmpfs
        assert sorted(cwds.values()) == sorted(map(str, homes)), cwds
        yield cluster.scheduler_address, addresses
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.close()
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


# the part of the smoke graph scale-out needs: candidates of each kind of upstream (the teacher,
# another candidate) for the workers to build, at a quarter of the whole graph's build time
# (test_reproducible builds all of it, twice)
CANDIDATES = ("kd_small", "ce_small", "teacher_ch50", "teacher_ch50_int8")


def with_runner(root: Path, runner: dict) -> Params:
    smoke = load_params(root).model_dump(mode="json")
    for stage in COMPRESSION_STAGES:
        smoke[stage] = {k: v for k, v in smoke[stage].items() if k in CANDIDATES}
    # the search's trials two at a time: on Dask their fine-tunes go to the workers too
    return validate(merge(smoke, {"flow": runner, "search": {"parallel": WORKERS}}), "test")


def run_logs(flow_run_id) -> list[str]:
    """The messages a flow run has logged so far."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in logs]


def worker_lines(flow_run_id, candidates: list[str]) -> dict[str, str]:
    """{stage: its "building STAGE on dask worker ..." log line} of a flow run; waits a little
    for workers' logs, which reach the API in batches."""
    lines: dict[str, str] = {}
    for _ in range(30):
        for message in run_logs(flow_run_id):
            stage = message.removeprefix("building ").split(" on ")[0]
            if stage in candidates and message.startswith("building "):
                lines[stage] = message
        if len(lines) == len(candidates):
            break
        time.sleep(1)
    return lines


def test_candidates_build_on_workers_that_share_no_disk(
    workspace: Path, tmp_path: Path, s3_endpoint: S3Endpoint, s3_prefix: str,
    hidden_workers: tuple[str, list[str]], prefect_api,
) -> None:  # fmt: skip
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    one_per_method(workspace)
    twin = tmp_path / "twin"
    shutil.copytree(workspace, twin)
    run(["dvc", "remote", "add", "-d", "s3", f"s3://{s3_endpoint.bucket}/{s3_prefix}/dvc"],
        workspace)  # fmt: skip
    run(["dvc", "remote", "modify", "s3", "endpointurl", s3_endpoint.url], workspace)
    address, workers = hidden_workers
    params = with_runner(workspace, {"task_runner": "dask", "dask_address": address,
                                     "workers": WORKERS})  # fmt: skip
    candidates = [dvc_stage(params, name) for name in params.model_names()[1:]]

    state = retrain_and_compress(params=params, workspace=str(workspace), return_state=True)
    result = state.result()
    assert set(result["ran"]) == {"ingest", "train_teacher", "search", *candidates, "evaluate",
                                  "gate", "promote"}  # fmt: skip
    assert set(result["seconds"]) == {"source", "production", *result["ran"]}
    # the workers' dvc.lock entries, taken into the workspace: DVC agrees that all is current
    assert dvc_up_to_date(workspace)
    flow_run_id = state.state_details.flow_run_id
    built_on = worker_lines(flow_run_id, candidates)
    assert set(built_on) == set(candidates), "a candidate's worker log did not reach the run"
    for line in built_on.values():
        assert any(f"dask worker {w}," in line for w in workers), line
    # the search's stage, run in the workspace, sent its trials' fine-tunes to the same workers
    # (those the second rung fine-tuned again too, search.rescore, each on a worker)
    trials = [m for m in run_logs(flow_run_id) if m.startswith("search ") and " trial " in m]
    rescored = [m for m in trials if m.startswith("search rescored ")]
    assert len(trials) - len(rescored) == 6, trials  # the smoke's 2 uniform, 4 per-layer trials
    fine_tuned = [m.rsplit("fine-tuned on dask worker ", 1) for m in trials]
    assert all(len(m) == 2 and m[1] in workers for m in fine_tuned), trials

    # the same params on local threads, in a clone, as a user runs it: the same models and the
    # same accuracies, and a log with no warning in it (none a user could act on)
    write_params(twin, with_runner(twin, {"task_runner": "threads", "workers": WORKERS}))
    threaded = run(["squeeze", "-w", str(twin), "run"], twin)
    logged = threaded.stdout + threaded.stderr
    assert not [line for line in logged.splitlines() if "warn" in line.lower()], logged
    on_dask, on_threads = digests(workspace), digests(twin)
    assert {key.split("/")[1] for key in on_dask if key.startswith("models/")} == set(
        params.model_names()
    )
    differ = sorted(k for k in on_dask.keys() | on_threads.keys()
                    if on_dask.get(k) != on_threads.get(k))  # fmt: skip
    assert differ == [], f"Dask workers and threads built different files: {differ}"
    dask_table = read_json(Workspace(workspace).metrics("candidates"))
    threads_table = read_json(Workspace(twin).metrics("candidates"))
    assert set(dask_table) == set(threads_table) == set(params.model_names())
    dask_acc, threads_acc = dict(accuracies(dask_table)), dict(accuracies(threads_table))
    assert dask_acc and dask_acc == threads_acc
    print("seconds per stage on dask:", result["seconds"])

    # candidates built from the teacher alone are ready at once and submitted heaviest
    # first (Params.workload): the first two start together on the two workers and overlap
    from_teacher = [c for c in candidates if params.upstreams()[parse_stage(c)[1]] == ["teacher"]]
    workload = params.workload()
    from_teacher.sort(key=lambda c: -workload[parse_stage(c)[1]])
    first, second = from_teacher[:2]
    this_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        runs = {r.name: r for r in client.read_task_runs(flow_run_filter=this_run)}
    a, b = runs[first], runs[second]
    assert a.start_time < b.end_time and b.start_time < a.end_time, (a, b)


def test_dask_without_a_default_remote_stops_before_any_stage(workspace: Path, prefect_api) -> None:
    from flows.remote import RemoteError

    run(["dvc", "remote", "default", "--unset"], workspace)
    params = with_runner(workspace, {"task_runner": "dask", "dask_address": "tcp://127.0.0.1:9",
                                     "workers": WORKERS})  # fmt: skip
    with pytest.raises(RemoteError, match=r"flow.task_runner is dask.*`dvc remote add -d"):
        retrain_and_compress(params=params, workspace=str(workspace))
    assert not (workspace / "dvc.lock").exists()  # not even `source` ran
