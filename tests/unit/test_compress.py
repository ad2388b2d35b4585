"""A model-building stage of the flow runs as its own process (flows.builds.run_process):
dvc.yaml's command, this interpreter, the workspace as cwd, its output in the run's log, failures
named. A remote build (flows.builds) gets the workspace's files and deps through the DVC remote,
never its credentials, and its dvc.lock entry makes the stage current in the workspace. The
other stages run in the flow's process as its tasks (flows.in_process), retried only on
transient I/O errors, and loaded only when one runs."""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from prefect.states import Failed

from flows import builds
from flows.builds import StageFailed, adopt, build_remote, bundle, run_process
from flows.dvcstate import is_stale, open_repo, stale_stages
from flows.in_process import TASKS
from flows.remote import RemoteError, shared_remote
from flows.stagenames import IN_PROCESS, MODEL_STAGES, STAGES
from squeeze.config.dvcyaml import generated_stages, parse_stage
from squeeze.config.files import load_params
from squeeze.data.spec import DataError, FetchError
from squeeze.registry.store import NotFound, Unavailable
from tests.conftest import run

LOGGER = "squeeze.test.stage"
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def plain_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain logger in place of the Prefect run logger (no run context in a unit test)."""
    monkeypatch.setattr(builds, "get_run_logger", lambda: logging.getLogger(LOGGER))


def test_the_command_runs_on_this_interpreter_in_the_workspace_and_logs_its_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cmd = 'python -c "import os, sys; print(sys.executable); print(); print(os.getcwd())"'
    with caplog.at_level(logging.INFO, logger=LOGGER):
        run_process("prune@x", cmd, tmp_path, timeout_s=60)
    assert [r.getMessage() for r in caplog.records] == [sys.executable, os.fspath(tmp_path)]


def test_a_failing_stage_raises_with_its_name_and_last_output(tmp_path: Path) -> None:
    cmd = "python -c \"import sys; print('loading'); sys.exit('params.yaml: no candidate x')\""
    with pytest.raises(StageFailed) as err:
        run_process("prune@x", cmd, tmp_path, timeout_s=60)
    message = str(err.value)
    assert message.startswith(f"prune@x: `{cmd}` (in {tmp_path}) exited with 1")
    assert message.endswith("loading\nparams.yaml: no candidate x")


def test_a_stage_past_its_time_is_killed(tmp_path: Path) -> None:
    with pytest.raises(StageFailed, match=r"distill@x: .* ran out of its 1 s"):
        run_process("distill@x", 'python -c "import time; time.sleep(60)"', tmp_path, 1)


# A two-stage pipeline in the shape of squeeze's: `python -m stages.<module>`, a code dep, a
# params key, the upstream stage's out as a dep.
PIPELINE = {
    "dvc.yaml": """stages:
  first:
    cmd: python -m stages.scale first
    deps: [stages/scale.py]
    params: [first]
    outs: [out/first]
  second:
    cmd: python -m stages.scale second first
    deps: [stages/scale.py, out/first/value.json]
    params: [second]
    outs: [out/second]
""",
    "params.yaml": "first: {factor: 2}\nsecond: {factor: 3}\n",
    "stages/__init__.py": "",
    "stages/scale.py": """import json, os, sys, yaml
name, up = sys.argv[1], (sys.argv[2:] or [None])[0]
start = json.load(open(f"out/{up}/value.json"))["value"] if up else 1
factor = yaml.safe_load(open("params.yaml"))[name]["factor"]
os.makedirs(f"out/{name}", exist_ok=True)
json.dump({"value": start * factor, "cwd": os.getcwd()}, open(f"out/{name}/value.json", "w"))
print(f"{name} = {start * factor}")
""",
}


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    """A DVC repo (no git) running that pipeline, `first` built and pushed to its local remote."""
    root = tmp_path / "workspace"
    for rel, text in PIPELINE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    run(["dvc", "init", "-q", "--no-scm"], root)
    run(["dvc", "remote", "add", "-d", "shared", "../remote"], root)  # relative on purpose
    with open_repo(root) as repo:
        repo.reproduce("first")
        repo.push()
    return root


def test_a_remote_build_moves_through_the_remote_and_leaves_the_stage_current(
    pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, config = shared_remote(pipeline)
    assert (name, config["url"]) == ("shared", str(tmp_path / "remote"))  # absolute for a worker
    packed = bundle(pipeline, "second", name, config)
    assert packed.cmd == "python -m stages.scale second first"
    assert packed.pull == ("out/first/value.json",)  # a file inside a tracked folder
    assert set(packed.files) == {"dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore",
                                 "stages/__init__.py", "stages/scale.py"}  # fmt: skip
    # the worker: elsewhere, its own temp dir, the workspace's path never given to it
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("TMPDIR", str(elsewhere))
    built = build_remote.fn("second", packed, timeout_s=60)
    assert list(elsewhere.iterdir()) == []  # the scratch repo is gone
    assert [out["path"] for out in built.lock["outs"]] == ["out/second"]

    adopt(pipeline, "second", built.lock)
    value = json.loads((pipeline / "out/second/value.json").read_text())
    assert value["value"] == 6 and not value["cwd"].startswith(str(pipeline))
    assert json.loads(run(["dvc", "status", "--json"], pipeline).stdout) == {}


def test_a_remote_build_from_other_inputs_than_the_workspace_has_is_refused(
    pipeline: Path,
) -> None:
    packed = bundle(pipeline, "second", *shared_remote(pipeline))
    built = build_remote.fn("second", packed, timeout_s=60)
    (pipeline / "params.yaml").write_text("first: {factor: 2}\nsecond: {factor: 5}\n")
    with pytest.raises(StageFailed, match=r"second: its inputs in the workspace differ"):
        adopt(pipeline, "second", built.lock)


def test_the_workers_get_the_remote_without_its_credentials(pipeline: Path) -> None:
    run(["dvc", "remote", "add", "-d", "s3", "s3://bucket/dvc"], pipeline)
    run(["dvc", "remote", "modify", "s3", "endpointurl", "http://127.0.0.1:9"], pipeline)
    for key in ("access_key_id", "secret_access_key", "session_token", "sse_customer_key",
                "credentialpath", "profile", "configpath"):  # fmt: skip
        run(["dvc", "remote", "modify", "--local", "s3", key, "SECRET-" + key], pipeline)
    run(["dvc", "remote", "modify", "s3", "region", "eu-west-3"], pipeline)
    name, config = shared_remote(pipeline)
    assert name == "s3" and config["endpointurl"] == "http://127.0.0.1:9"
    assert config["url"] == "s3://bucket/dvc" and config["region"] == "eu-west-3"
    assert not {"profile", "credentialpath", "configpath", "sse_customer_key"} & set(config)
    assert "SECRET" not in repr(bundle(pipeline, "second", name, config))
    # credentials in a URL's userinfo do not travel either: refused, naming the key, not the token
    for key, url in (("endpointurl", "http://user:SECRET-token@127.0.0.1:9"),
                     ("url", "s3://SECRET-token@bucket/dvc")):  # fmt: skip
        run(["dvc", "remote", "modify", "--local", "s3", key, url], pipeline)
        with pytest.raises(RemoteError, match=f"'s3': its {key} holds a user name") as refused:
            shared_remote(pipeline)
        assert "SECRET" not in str(refused.value)
        run(["dvc", "remote", "modify", "--local", "--unset", "s3", key], pipeline)


def test_dask_without_a_default_remote_is_refused_with_the_fix(pipeline: Path) -> None:
    run(["dvc", "remote", "default", "--unset"], pipeline)
    with pytest.raises(
        RemoteError, match=r"flow.task_runner is dask.*`dvc remote add -d NAME URL`"
    ):
        shared_remote(pipeline)


def test_a_failed_remote_build_says_where_it_ran_and_how_to_rerun_it(
    pipeline: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packed = bundle(pipeline, "second", *shared_remote(pipeline))
    failing = replace(packed, cmd="python -c \"import sys; sys.exit('second: refused')\"")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with pytest.raises(StageFailed) as err:
        build_remote.fn("second", failing, timeout_s=60)
    assert err.value.stage == "second" and err.value.last_line == "second: refused"
    assert f"pid {os.getpid()}, whose scratch repo is gone: `dvc repro second`" in str(err.value)
    assert not list(tmp_path.glob("squeeze-build-*"))


def test_one_status_names_the_stale_stages_as_each_stage_check_does(pipeline: Path) -> None:
    """stale_stages (one `dvc status` for the run) agrees with is_stale (one per stage)."""
    assert stale_stages(pipeline) == {"second"}  # `first` was built, `second` never ran
    (pipeline / "params.yaml").write_text("first: {factor: 5}\nsecond: {factor: 3}\n")
    assert stale_stages(pipeline) == {"first", "second"}
    assert all(is_stale(pipeline, stage) for stage in ("first", "second"))


# -- which stages run where --------------------------------------------------------------------


def test_the_flow_knows_every_stage_of_dvc_yaml() -> None:
    """flows.stagenames names every stage dvc.yaml runs (the alert hook finds failed ones by it),
    those generated for a search's finalists too, and each in-process stage has its task."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    params = load_params(PROJECT)
    searched = params.model_copy(
        update={"search": params.search.model_copy(update={"finalists": 1})}
    )
    stages |= generated_stages(PROJECT, searched)
    assert {parse_stage(key)[0] for key in stages} == set(STAGES)
    assert set(TASKS) == set(IN_PROCESS) and not set(IN_PROCESS) & set(MODEL_STAGES)


def test_only_the_stages_that_touch_the_outside_world_retry_and_only_on_transient_errors() -> None:
    retried = {stage for stage, task in TASKS.items() if task.retries}
    assert retried == {"source", "production", "ingest", "promote"}
    assert all(task.log_prints for task in TASKS.values())  # a stage's printed lines: the run log
    for stage in ("source", "ingest"):
        retry = TASKS[stage].retry_condition_fn
        assert retry(None, None, Failed(data=FetchError("throttled")))
        assert not retry(None, None, Failed(data=DataError("not IDX data")))
    for stage in ("production", "promote"):
        retry = TASKS[stage].retry_condition_fn
        assert retry(None, None, Failed(data=Unavailable("endpoint down")))
        assert not retry(None, None, Failed(data=NotFound("gone")))


# what importing the flow loads of the stages and their heaviest libraries
PROBE = """import sys, flows.compress
print(sorted(m for m in sys.modules if m.split(".")[0] in ("stages", "torch", "onnxruntime")))"""


def test_importing_the_flow_imports_no_stage() -> None:
    """A Dask worker imports flows.compress at start (--preload) and builds models in child
    processes: the stages and their libraries load only where a stage runs in the flow."""
    assert run([sys.executable, "-c", PROBE], PROJECT).stdout.strip() == "[]"
