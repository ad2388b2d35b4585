"""The Prefect flow `retrain_and_compress`: every stage of dvc.yaml, through the same tasks/ code.

A stage runs only when DVC reports it stale; afterwards it is recorded in dvc.lock, so a flow
run leaves `dvc status` clean (but for the always-changed `source` stamp) and a `dvc repro`
leaves the flow nothing to do. Candidates are
submitted to the task runner as soon as their upstreams are built, so independent ones run
concurrently. A stage that builds a model runs as its own process, with dvc.yaml's command: its
weights do not depend on the entry point nor on what is built beside it (see MODEL_STAGES).
"""

import fcntl
import os
import shlex
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.alerts import alert
from flows.dvcstate import command, is_stale, record
from flows.remote import default_remote, push_remote
from squeeze.dvcyaml import dvc_stage, parse_stage, sync
from squeeze.params import FlowParams, Params, load_params, write_params
from squeeze.workspace import Workspace, read_json
from tasks.evaluate import evaluate
from tasks.gate import gate
from tasks.ingest import ingest
from tasks.promote import promote
from tasks.source import source

# Stages that build a model, and how long one build may take (seconds). Each runs as a child
# process with exactly the command dvc.yaml gives it (`python -m tasks.prune NAME`, cwd the
# workspace, this interpreter), so the flow and `dvc repro` run the same code path by
# construction. In threads of one process, concurrent builds shared torch's global RNG (weight
# init, dropout: seeding at stage start cannot protect a build from its neighbour re-seeding or
# drawing) and torch.set_num_threads, which is process-wide and changes float results (smoke
# prune@teacher_ch50 on 1 vs 2 threads: different weights). A torch.Generator per build cannot
# cover dropout (F.dropout takes none) nor a user's own module's init, and the thread count stays
# shared, so process isolation it is. Its cost on 2 cores (smoke profile, a warm in-process call
# vs `python -m tasks.<stage> NAME`, medians of 3): 2.1 s more per build for quantize, 2.8-2.9 s
# for prune, distill and merge, 1.5 s of it importing torch; 13 candidates on 2 workers add
# ~20 s to a smoke run, under 2% of a default one, whose builds take minutes.
MODEL_STAGES: dict[str, int] = {
    "train_teacher": 4 * 3600, "distill": 4 * 3600, "prune": 4 * 3600, "merge": 4 * 3600,
    "quantize": 3600,
}  # fmt: skip
# stages that publish artifacts or retry I/O run inside the flow (the Prefect run context)
IN_PROCESS: dict[str, Callable] = {
    "source": source, "ingest": ingest, "evaluate": evaluate, "gate": gate, "promote": promote,
}  # fmt: skip
STAGES = (*IN_PROCESS, *MODEL_STAGES)
TAIL_LINES = 40  # of a failed stage's output, in the error


class StageFailed(RuntimeError):
    """A stage's process exited non-zero or ran out of time; `stage` names it and `last_line`
    is its last line of output (a refusal's one-line reason)."""

    def __init__(self, message: str, stage: str, last_line: str) -> None:
        super().__init__(message)
        self.stage, self.last_line = stage, last_line

    def __reduce__(self) -> tuple:  # Prefect pickles a failed task's exception
        return (type(self), (str(self), self.stage, self.last_line))


class WorkspaceBusy(RuntimeError):
    """Another flow run holds the workspace."""


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


@task(name="stage", task_run_name="{dvc_stage}")
def build(dvc_stage: str, root: Path, params: Params) -> bool:
    """Run one DVC stage (`distill@kd_small`, `merge-kd_ensemble` for candidates) if stale;
    True if it ran."""
    if not is_stale(root, dvc_stage):
        get_run_logger().info("skip %s: code, params and data unchanged", dvc_stage)
        return False
    stage, _ = parse_stage(dvc_stage)
    if stage in IN_PROCESS:
        IN_PROCESS[stage](root, params)
    else:
        run_process(dvc_stage, command(root, dvc_stage), root, MODEL_STAGES[stage])
    record(root, dvc_stage)
    return True


def run_process(dvc_stage: str, cmd: str, root: Path, timeout_s: int) -> None:
    """Run a stage's dvc.yaml command in root, its `python` being this interpreter; every output
    line goes to the run's log. Raises StageFailed on a non-zero exit or after timeout_s."""
    logger, tail = get_run_logger(), deque[str](maxlen=TAIL_LINES)
    argv = shlex.split(cmd)
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    proc = subprocess.Popen(
        argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # lines reach the log as they are printed
    )  # fmt: skip
    timed_out = threading.Event()
    timer = threading.Timer(timeout_s, lambda: (timed_out.set(), proc.kill()))
    timer.start()
    try:
        for line in proc.stdout:
            if line := line.rstrip():
                tail.append(line)
                logger.info("%s", line)
        code = proc.wait()
    finally:  # also when the run is cancelled: no build outlives its task
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        why = f"ran out of its {timeout_s} s" if timed_out.is_set() else f"exited with {code}"
        raise StageFailed(
            f"{dvc_stage}: `{cmd}` (in {root}) {why}; rerun it there to debug. Its last output:\n"
            + "\n".join(tail),
            dvc_stage,
            tail[-1] if tail else why,
        )


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
        # always changed (dvc.yaml): stamps the data at the source; ingest is stale if it changed
        build("source", root, params)
        done = {"ingest": build("ingest", root, params)}
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
