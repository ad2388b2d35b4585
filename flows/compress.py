"""The Prefect flow `retrain_and_compress`: every stage of dvc.yaml, through the same stages/ code.

A stage runs only when DVC reports it stale; afterwards it is recorded in dvc.lock, so a flow run
leaves `dvc status` clean (but for the always-changed `source` and `production` stamps) and a `dvc
repro` leaves the flow nothing to do. The flow builds each candidate as soon as its upstreams are
current (flows.scheduler), on the task runner, so independent ones run concurrently: on local
threads in the workspace, or on Dask workers that share no disk with it and exchange inputs and
outputs with the flow through the DVC remote (flows.builds). A stage that builds a model runs as
its own process, with dvc.yaml's command: its weights do not depend on the entry point nor on what
is built beside it (flows.stagenames.MODEL_STAGES). The other stages run in this process, as the
tasks of flows.in_process, which also publish the run's artifacts.
"""

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.alerts import alert
from flows.builds import Built, adopt, build_here, build_remote, bundle, run_process
from flows.builds import StageFailed as StageFailed  # squeeze.cli.main catches it from here
from flows.dvcstate import command, is_stale, record, stale_stages
from flows.remote import default_remote, push_remote, shared_remote
from flows.scheduler import schedule
from flows.stagenames import IN_PROCESS, MODEL_STAGES
from squeeze.config.allowlist import check_class_paths, check_locations
from squeeze.config.dvcyaml import dvc_stage, parse_stage, sync
from squeeze.config.errors import ParamsError
from squeeze.config.files import load_params, write_params
from squeeze.config.params import Params
from squeeze.config.sections import FlowParams
from squeeze.config.workspace import Workspace, read_json

WORKSPACE_ENV = "SQUEEZE_WORKSPACE"  # the workspace a deployment's runs are bound to


class WorkspaceBusy(RuntimeError):
    """Another flow run holds the workspace."""


class WorkspaceRefused(ParamsError):
    """A deployment's run names a workspace other than the one it is served for."""


_HELD: set[Path] = set()  # workspaces this process holds: `squeeze run` locks before the flow


@contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on the workspace, so two runs never write into each other.

    Re-entrant within a process (flock would refuse a second open of the same file): the CLI
    takes the lock before it starts the flow, which then finds it already held.
    """
    if root in _HELD:
        yield
        return
    path = Workspace(root).state("flow.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceBusy(f"{root} is in use by another squeeze run") from None
        _HELD.add(root)
        try:
            yield
        finally:
            _HELD.discard(root)


def from_deployment() -> bool:
    """Whether this flow run was created from a deployment (the Prefect API or UI, a schedule)
    rather than called by the workspace's owner (`squeeze run`, Python)."""
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def bound_workspace(workspace: str) -> Path:
    """The workspace to run in, absolute. A deployment's run may only name the one it is served
    for, $SQUEEZE_WORKSPACE (`squeeze serve` sets it in its own environment, which a run cannot
    change; a worker is started with it): another folder is refused before anything in it is
    read or written, since its pyproject.toml would be the allow-list and its dvc.yaml the
    commands run."""
    root = Path(workspace).resolve()
    if not from_deployment():
        return root
    bound = os.environ.get(WORKSPACE_ENV)
    if not bound:
        raise WorkspaceRefused(
            f"workspace: a deployment's run needs {WORKSPACE_ENV}, the workspace it serves, in "
            "the environment that runs it (`squeeze serve` sets it; start a worker with it)"
        )
    if root != Path(bound).resolve():
        raise WorkspaceRefused(
            f"workspace: {workspace!r} is not the workspace this deployment serves ({bound}); a "
            "run from the Prefect API or UI cannot choose its workspace: serve that folder "
            "(`squeeze -w FOLDER serve`) or run it there (`squeeze -w FOLDER run`)"
        )
    return root


def stale(root: Path, dvc_stage: str, known: frozenset[str] | None) -> bool:
    """Whether dvc_stage is stale: read from known (stale_stages, taken since nothing ran) when
    given, else asked of DVC."""
    return dvc_stage in known if known is not None else is_stale(root, dvc_stage)


@task(name="stage", task_run_name="{dvc_stage}")
def build(
    dvc_stage: str, root: Path, params: Params, known: frozenset[str] | None = None,
    env: dict[str, str] | None = None,
) -> bool:  # fmt: skip
    """Run one DVC stage (`ingest`, `train_teacher`, `evaluate`...) in the workspace if stale
    (known: see `stale`), a process's stage with env added to its environment; True if it
    ran."""
    if not stale(root, dvc_stage, known):
        get_run_logger().info("skip %s: code, params and data unchanged", dvc_stage)
        return False
    stage, _ = parse_stage(dvc_stage)
    if stage in IN_PROCESS:
        # Imported when a stage runs, not with this module: a Dask worker imports this module at
        # start to restore a run's context (the run refers to the flow) and builds models in
        # child processes, so it needs none of the stages' libraries (torch, onnxruntime), which
        # took it seconds to import.
        from flows.in_process import TASKS

        TASKS[stage](root, params)
    else:
        run_process(dvc_stage, command(root, dvc_stage), root, MODEL_STAGES[stage], env=env)
    record(root, dvc_stage)
    return True


@flow(name="retrain_and_compress", on_failure=[alert])
def retrain_and_compress(params: Params | None = None, workspace: str = ".") -> dict:
    """Ingest → train_teacher → search → candidates → evaluate → gate → promote, skipping what is
    current.

    Args:
        params: the run's parameters; None uses the workspace's params.yaml. Given params are
            written to params.yaml first, so that DVC sees what the run used.
        workspace: the DVC repo to run in; a deployment's run may only name the one it is
            served for (bound_workspace).
    Returns:
        {"ran": [...], "skipped": [...], "seconds": {stage: wall seconds}}: DVC stage names;
        "seconds" has every stage the run looked at (the `source` and `production` stamps too),
        skipped ones included.
    """
    logger = get_run_logger()
    root = bound_workspace(workspace)  # absolute: DVC calls switch the cwd briefly
    with workspace_lock(root):
        if params is None:
            params = load_params(root)
        elif from_deployment():
            # params from the UI or API may not move where the run reads, writes or connects to
            # away from params.yaml's places, but within the places the workspace allows
            check_locations(params, load_params(root), root)
        # params from the UI or API name code to import: refuse a module the workspace does not
        # allow before anything runs (or is written to params.yaml)
        check_class_paths(params, root)
        # Dask workers see no disk of the workspace: without a remote to meet at, refuse now
        remote = shared_remote(root) if params.flow.task_runner == "dask" else None
        if write_params(root, params):
            logger.info("wrote the run's parameters to %s", root / "params.yaml")
        if sync(root, params):
            logger.info("rewrote merge stages / code deps of %s/dvc.yaml from the params", root)
        seconds: dict[str, float] = {}
        # always changed (dvc.yaml): stamp the data at the source (ingest is stale if it changed)
        # and whether production is damaged (promote is stale if it became so, or was repaired)
        for stamp in ("source", "production"):
            timed(seconds, stamp, build, root, params)
        known: frozenset[str] | None = stale_stages(root)  # None once a stage has run
        done: dict[str, bool] = {}
        for name in ("ingest", "train_teacher"):
            done[name] = timed(seconds, name, build, root, params, known)
            known = None if done[name] else known
        # the budget search runs here, before the candidates: its trials share no state with
        # them, but they time latency, which builds running beside them would distort (on Dask
        # its trials' fine-tunes go to the workers, and the timings stay here)
        searching = stale(root, "search", known)  # asked of DVC once, for both below
        with search_cluster(params, searching) as env:
            done["search"] = timed(seconds, "search", build, root, params,
                                   frozenset({"search"} if searching else ()), env)  # fmt: skip
        known = None if done["search"] else known
        if done["search"]:
            from flows.artifacts import publish_search  # as flows.in_process: torch on demand

            publish_search(root, params)
        if remote:  # the workers' inputs: the data, the teacher and the search's recipes
            logger.info("pushed %d files to the DVC remote for the workers", push_remote(root))
        # the runner comes from the run's params (not the decorator), so a UI or work-pool run
        # can choose threads or Dask like `squeeze run` does
        with task_runner(params.flow) as runner:
            done |= fan_out(root, params, runner, remote, seconds, known)
        known = None if any(done.values()) else known
        for name in ("evaluate", "gate", "promote"):
            done[name] = timed(seconds, name, build, root, params, known)
            known = None if done[name] else known
        if default_remote(root):
            logger.info("pushed %d files to the DVC remote", push_remote(root))
        else:
            logger.warning("no default DVC remote: nothing pushed (dvc remote add -d NAME URL)")
    ran = [name for name, did in done.items() if did]
    skipped = [name for name, did in done.items() if not did]
    logger.info("ran %s; skipped %s", ran or "nothing", skipped or "nothing")
    name_run(run_summary(root, ran))
    return {"ran": ran, "skipped": skipped, "seconds": seconds}


@contextmanager
def search_cluster(params: Params, searching: bool) -> Iterator[dict[str, str] | None]:
    """The environment of the search stage: on a Dask runner with search.parallel above 1 and
    the search to run (searching: the stage is stale), $SQUEEZE_SEARCH_DASK names the cluster
    its trials' fine-tunes go to (squeeze.methods.workers): flow.dask_address, or a LocalCluster
    of flow.workers processes started for the search alone (the fan-out's runner starts after
    it); else None."""
    cfg = params.flow
    if cfg.task_runner != "dask" or params.search.parallel < 2 or not params.search.finalists \
            or not searching:  # fmt: skip
        yield None
        return
    from squeeze.methods.workers import DASK_ENV

    if cfg.dask_address:
        yield {DASK_ENV: cfg.dask_address}
        return
    from distributed import LocalCluster

    with LocalCluster(n_workers=cfg.workers, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:  # fmt: skip
        yield {DASK_ENV: cluster.scheduler_address}


def timed(seconds: dict[str, float], name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(name, *args), its wall seconds stored under name."""
    start = time.perf_counter()
    try:
        return fn(name, *args)
    finally:
        seconds[name] = round(time.perf_counter() - start, 2)


def fan_out(
    root: Path,
    params: Params,
    runner: TaskRunner,
    remote: tuple[str, dict[str, Any]] | None,
    seconds: dict[str, float],
    known: frozenset[str] | None = None,
) -> dict[str, bool]:
    """Build every candidate that is stale, each as soon as its upstreams are current; return
    {dvc stage: ran}, as declared. known: the stale stages as of the start
    (flows.dvcstate.stale_stages), trusted until the first build finishes, or None to ask DVC
    for each.

    The flow checks staleness and records builds in the workspace; the runner only builds
    (`build_here` on threads, `build_remote` on Dask workers through the DVC remote, when remote
    is its (name, settings)), so independent candidates build concurrently, flow.workers at a
    time; flows.scheduler decides the order. After a failed build nothing new starts; the
    builds under way finish and are recorded, then the failure is raised.
    """
    logger = get_run_logger()
    overhead: dict[str, float] = {}  # model -> seconds to check and submit its build

    def start(name: str) -> PrefectFuture | None:
        """Submit the build of model name if its stage is stale; None if it is current."""
        stage, begin = dvc_stage(params, name), time.perf_counter()
        if not stale(root, stage, known):
            logger.info("skip %s: code, params and data unchanged", stage)
            seconds[stage] = round(time.perf_counter() - begin, 2)
            return None
        future = runner.submit(*submission(root, stage, remote))
        overhead[name] = time.perf_counter() - begin
        return future

    def finish(name: str, future: PrefectFuture) -> None:
        """Record a finished build in the workspace (raises the build's failure)."""
        nonlocal known
        stage, begin = dvc_stage(params, name), time.perf_counter()
        built: Built = future.result()
        if built.lock is None:  # built in the workspace
            record(root, stage)
        else:  # built on a worker: its dvc.lock entry, its outs from the remote
            adopt(root, stage, built.lock)
        known = None  # what it wrote may make others stale
        seconds[stage] = round(overhead[name] + built.seconds + time.perf_counter() - begin, 2)

    teacher, *candidates = params.model_names()  # topological: upstreams first
    ran = schedule(candidates, params.upstreams(), params.workload(), {teacher}, start, finish,
                   slots=params.flow.workers)  # fmt: skip
    return {dvc_stage(params, name): did for name, did in ran.items()}


def submission(
    root: Path, dvc_stage: str, remote: tuple[str, dict[str, Any]] | None
) -> tuple[Callable, dict[str, Any]]:
    """The task and its arguments that build a candidate stage: in the workspace, or (remote
    given) on a worker, from a bundle of the workspace's files as of now."""
    args = {"dvc_stage": dvc_stage, "timeout_s": MODEL_STAGES[parse_stage(dvc_stage)[0]]}
    if remote is None:
        return build_here, args | {"cmd": command(root, dvc_stage), "root": root}
    return build_remote, args | {"bundle": bundle(root, dvc_stage, *remote)}


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
    # One thread per worker process: each build already uses its own torch threads. Workers
    # import this module (a run's context refers to the flow) at start, not on their event loop
    # when the first build arrives, which stalled it for seconds ("Event loop was unresponsive");
    # workers of an existing cluster take the same `--preload flows.compress` (README).
    cluster = {"n_workers": cfg.workers, "threads_per_worker": 1, "preload": ["flows.compress"]}
    return DaskTaskRunner(cluster_kwargs=cluster)


if __name__ == "__main__":
    retrain_and_compress()
