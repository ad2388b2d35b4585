"""What DVC knows about the workspace: which stages are stale, what a stage runs, and recording
a stage as run (built here, or built elsewhere and written in by its dvc.lock entry).

The flow runs a stage only when DVC says it is stale and records it in dvc.lock afterwards, so
`dvc repro` and the flow share one notion of "up to date" (invariant 1).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dvc.repo import Repo

from squeeze.config.workspace import Workspace

# DVC resolves stage names and its run-cache against the cwd, so its calls run inside the repo;
# the lock keeps concurrent flow threads from interleaving those cwd switches. Everything else
# in the flow uses absolute paths, so the switch is invisible to it.
_LOCK = threading.Lock()
# DVC's API logs its own INFO lines ("Updating lock file 'dvc.lock'") to stdout and, through the
# root logger, into the run log: twice per stage, and nothing a user acts on; the flow logs what
# it ran and recorded itself. DVC's warnings and errors still show.
logging.getLogger("dvc").setLevel(logging.WARNING)


@contextlib.contextmanager
def dvc_lock(root: Path) -> Iterator[None]:
    """Serialise DVC calls on one workspace across processes (Dask workers, a served run).

    DVC's own repo lock gives up after 3 s ("Unable to acquire lock"), so two worker
    processes that check or commit candidates at once could fail; this blocking flock on
    .squeeze/dvc-repo.lock makes them wait their turn instead. The threading lock above covers
    threads of one process (flock is per open file, so it would not stop them).
    """
    path = Workspace(root).state("dvc-repo.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


@contextlib.contextmanager
def open_repo(root: Path) -> Iterator[Repo]:
    root = root.resolve()
    with _LOCK, dvc_lock(root), contextlib.chdir(root), Repo(".") as repo:
        yield repo


def is_stale(root: Path, stage: str) -> bool:
    """True when the stage's code, params, deps or outs differ from dvc.lock (or it never ran)."""
    with open_repo(root) as repo:
        return bool(repo.status(targets=[stage]))


def stale_stages(root: Path) -> frozenset[str]:
    """Every stale stage of the pipeline from one `dvc status`: one repo open instead of one per
    stage (each reads dvc.yaml, params.yaml and dvc.lock, ~0.5 s here), which is most of a run
    that has nothing to do. Valid until a stage runs: what it writes may make others stale."""
    with open_repo(root) as repo:
        return frozenset(repo.status())


def command(root: Path, stage: str) -> str:
    """The stage's `cmd` in dvc.yaml, interpolated (`python -m stages.distill kd_small`)."""
    with open_repo(root) as repo:
        (found,) = repo.stage.collect(stage)
        return found.cmd


def record(root: Path, stage: str) -> None:
    """Write the stage's current deps/outs hashes to dvc.lock and its outs to the DVC cache."""
    with open_repo(root) as repo:
        repo.commit(stage, force=True)


def write_lock_entry(root: Path, stage: str, entry: dict[str, Any]) -> None:
    """Put a stage's dvc.lock entry, as DVC wrote it in another checkout, into the workspace's
    dvc.lock (DVC's own round trip, so the file reads as if `dvc commit` had written it)."""
    from dvc.utils.serialize import modify_yaml

    with _LOCK, dvc_lock(root), modify_yaml(root / "dvc.lock") as data:
        data.setdefault("schema", "2.0")
        data.setdefault("stages", {})[stage] = entry
