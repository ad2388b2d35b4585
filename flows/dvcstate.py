"""What DVC knows about the workspace: which stages are stale, and recording a stage as run.

The flow runs a stage only when DVC says it is stale and records it in dvc.lock afterwards, so
`dvc repro` and the flow share one notion of "up to date" (invariant 1).
"""

from __future__ import annotations

import threading
from pathlib import Path

from dvc.repo import Repo

# DVC's repo lock is per process and per call; serialise our own calls across flow threads.
_LOCK = threading.Lock()


def is_stale(root: Path, stage: str) -> bool:
    """True when the stage's code, params, deps or outs differ from dvc.lock (or it never ran)."""
    with _LOCK, Repo(str(root)) as repo:
        return bool(repo.status(targets=[stage]))


def record(root: Path, stage: str) -> None:
    """Write the stage's current deps/outs hashes to dvc.lock and its outs to the DVC cache."""
    with _LOCK, Repo(str(root)) as repo:
        repo.commit(stage, force=True)
