"""The Prefect flow `retrain_and_compress`: every stage of dvc.yaml, through the same tasks/ code.

A stage runs only when DVC reports it stale; afterwards it is recorded in dvc.lock, so a flow
run leaves `dvc status` clean and a `dvc repro` leaves the flow nothing to do.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger

from flows.dvcstate import is_stale, record
from squeeze.params import Params, load_params, write_params
from squeeze.workspace import Workspace, read_json
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.train_teacher import train_teacher

STAGES = {"ingest": ingest, "train_teacher": train_teacher, "evaluate": evaluate}


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
            raise WorkspaceBusy(f"{root.resolve()} is in use by another squeeze run") from None
        yield


@flow(name="retrain_and_compress")
def retrain_and_compress(params: Params | None = None, workspace: str = ".") -> dict:
    """Ingest → train_teacher → evaluate on the workspace's DVC repo, skipping what is current.

    Args:
        params: the run's parameters; None uses the workspace's params.yaml. Given params are
            written to params.yaml first, so that DVC sees what the run used.
        workspace: the DVC repo to run in.
    Returns:
        {"ran": [...], "skipped": [...]} stage names.
    """
    logger = get_run_logger()
    root = Path(workspace).resolve()  # absolute: DVC calls switch the cwd briefly
    with workspace_lock(root):
        if params is None:
            params = load_params(root)
        elif write_params(root, params):
            logger.info("wrote the run's parameters to %s", root / "params.yaml")
        ran, skipped = [], []
        for name, stage in STAGES.items():
            if not is_stale(root, name):
                skipped.append(name)
                logger.info("skip %s: code, params and data unchanged since it last ran", name)
                continue
            stage(root, params)
            record(root, name)
            ran.append(name)
    logger.info("ran %s; skipped %s", ran or "nothing", skipped or "nothing")
    candidates = read_json(Workspace(root).metrics("candidates"))
    for rec in candidates.values():
        logger.info("%s: accuracy %.4f, %d bytes", rec["name"], rec["accuracy"], rec["size_bytes"])
    return {"ran": ran, "skipped": skipped}


if __name__ == "__main__":
    retrain_and_compress()
