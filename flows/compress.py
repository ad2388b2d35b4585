"""The Prefect flow `retrain_and_compress`: every stage of dvc.yaml, through the same tasks/ code.

A stage runs only when DVC reports it stale; afterwards it is recorded in dvc.lock, so a flow
run leaves `dvc status` clean and a `dvc repro` leaves the flow nothing to do. Candidates are
submitted to the task runner as soon as their upstreams are built, so independent ones run
concurrently.
"""

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.alerts import alert
from flows.dvcstate import is_stale, record
from flows.remote import default_remote, push_remote
from squeeze.dvcyaml import dvc_stage, parse_stage, sync
from squeeze.params import FlowParams, Params, load_params, write_params
from squeeze.workspace import Workspace, read_json
from tasks.distill import distill
from tasks.evaluate import evaluate
from tasks.gate import gate
from tasks.ingest import check_source, ingest
from tasks.merge import merge
from tasks.promote import promote
from tasks.prune import prune
from tasks.quantize import quantize
from tasks.train_teacher import train_teacher

STAGES: dict[str, Callable] = {
    "ingest": ingest, "train_teacher": train_teacher, "distill": distill, "prune": prune,
    "quantize": quantize, "merge": merge, "evaluate": evaluate, "gate": gate, "promote": promote,
}  # fmt: skip


class WorkspaceBusy(RuntimeError):
    """Another flow run holds the workspace."""


@contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the workspace, so two runs never write into each other."""
    path = Workspace(root).state("flow.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceBusy(f"{root} is in use by another squeeze run") from None
        yield


@task(name="stage", task_run_name="{dvc_stage}")
def build(dvc_stage: str, root: Path, params: Params, force: bool = False) -> bool:
    """Run one DVC stage (`distill@kd_small`, `merge-kd_ensemble` for candidates) if stale or
    forced; True if it ran."""
    if not force and not is_stale(root, dvc_stage):
        get_run_logger().info("skip %s: code, params and data unchanged", dvc_stage)
        return False
    stage, candidate = parse_stage(dvc_stage)
    STAGES[stage](root, params, *([candidate] if candidate else []))
    record(root, dvc_stage)
    return True


@flow(name="retrain_and_compress", on_failure=[alert])
def retrain_and_compress(params: Params | None = None, workspace: str = ".") -> dict:
    """Ingest → train_teacher → candidates → evaluate → gate → promote, skipping what is current.

    Args:
        params: the run's parameters; None uses the workspace's params.yaml. Given params are
            written to params.yaml first, so that DVC sees what the run used.
        workspace: the DVC repo to run in.
    Returns:
        {"ran": [...], "skipped": [...]}: DVC stage names.
    """
    logger = get_run_logger()
    root = Path(workspace).resolve()  # absolute: DVC calls switch the cwd briefly
    with workspace_lock(root):
        if params is None:
            params = load_params(root)
        elif write_params(root, params):
            logger.info("wrote the run's parameters to %s", root / "params.yaml")
        if sync(root, params):
            logger.info("rewrote the merge stages of %s/dvc.yaml from the run's params", root)
        new_data = check_source(root, params)
        if new_data:
            logger.info("the source %s holds new data: ingesting it", params.ingest.source)
        done = {"ingest": build("ingest", root, params, force=new_data)}
        done["train_teacher"] = build("train_teacher", root, params)
        stage_of = {name: dvc_stage(params, name) for name in params.upstreams()}
        # the runner comes from the run's params (not the decorator), so a UI or work-pool run
        # can choose threads or Dask like `squeeze run` does
        with task_runner(params.flow) as runner:
            futures = {}
            for name in params.model_names()[1:]:  # topological: upstreams are submitted first
                ups = [futures[up] for up in params.upstreams()[name] if up in futures]
                args = {"dvc_stage": stage_of[name], "root": root, "params": params}
                futures[name] = runner.submit(build, args, wait_for=ups)
            done |= {stage_of[name]: future.result() for name, future in futures.items()}
        for name in ("evaluate", "gate", "promote"):
            done[name] = build(name, root, params)
        if default_remote(root):
            logger.info("pushed %d files to the DVC remote", push_remote(root))
        else:
            logger.warning("no default DVC remote: nothing pushed (dvc remote add -d NAME URL)")
    ran = [name for name, did in done.items() if did]
    skipped = [name for name, did in done.items() if not did]
    logger.info("ran %s; skipped %s", ran or "nothing", skipped or "nothing")
    name_run(run_summary(root, ran))
    return {"ran": ran, "skipped": skipped}


def run_summary(root: Path, ran: list[str]) -> str:
    """What a run did, in a few words: the run's name in the UI."""
    if not ran:
        return "nothing changed"
    decision = read_json(Workspace(root).metrics("promote"))
    outcome = decision["outcome"].replace("_", " ")
    challenger = (decision.get("challenger") or {}).get("name")
    return f"{len(ran)} stages, {outcome}" + (f" {challenger}" if challenger else "")


def name_run(name: str) -> None:
    """Rename the current flow run (its random name says nothing about what it did)."""
    from prefect import get_client
    from prefect.runtime import flow_run

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)
    except Exception as err:  # a cosmetic update must not fail a run that did its work
        get_run_logger().warning("could not rename the run to %r: %s", name, err)


def task_runner(cfg: FlowParams) -> TaskRunner:
    """The runner of the candidate fan-out: local threads, or Dask (prefect-dask)."""
    if cfg.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    from prefect_dask import DaskTaskRunner

    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    # one thread per worker process: each build already uses its own torch threads
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1})


if __name__ == "__main__":
    retrain_and_compress()
