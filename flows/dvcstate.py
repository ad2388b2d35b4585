"""What DVC knows about the workspace: which stages are stale, and recording a stage as run.

The flow runs a stage only when DVC says it is stale and records it in dvc.lock afterwards, so
`dvc repro` and the flow share one notion of "up to date" (invariant 1).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

from dvc.repo import Repo

# DVC resolves stage names and its run-cache against the cwd, so its calls run inside the repo;
# the lock keeps concurrent flow threads from interleaving those cwd switches. Everything else
# in the flow uses absolute paths, so the switch is invisible to it.
_LOCK = threading.Lock()


@contextlib.contextmanager
def open_repo(root: Path) -> Iterator[Repo]:
    with _LOCK, contextlib.chdir(root), Repo(".") as repo:
        yield repo


def is_stale(root: Path, stage: str) -> bool:
    """True when the stage's code, params, deps or outs differ from dvc.lock (or it never ran)."""
    with open_repo(root) as repo:
        return bool(repo.status(targets=[stage]))


def record(root: Path, stage: str) -> None:
    """Write the stage's current deps/outs hashes to dvc.lock and its outs to the DVC cache."""
    with open_repo(root) as repo:
        repo.commit(stage, force=True)
