"""Model builds: a stage's dvc.yaml command as its own process, in the workspace or on a Dask
worker that shares no disk with it.

The flow decides what to build and records what was built (flows.compress.fan_out); this module
runs one build. `build_here` runs the command in the workspace (the thread pool). `build_remote`
runs it on a worker that cannot see the workspace, so everything moves through the DVC remote:

1. the flow packs a `Bundle`: dvc.yaml, dvc.lock, params.yaml, the code (the `squeeze` and
   `stages` packages, the user packages the workspace allows a class_path to import with its
   pyproject.toml that allows them, and any other dep DVC does not track), the names of the
   tracked deps to pull, and the default remote's config without credentials;
2. the worker writes it into a scratch DVC repo of its own, pulls those deps from the remote,
   runs the same command there, commits the stage and pushes its outs, and returns the stage's
   dvc.lock entry;
3. the flow writes that entry into the workspace's dvc.lock and pulls the outs (`adopt`): the
   stage is then up to date there exactly as if it had been built in place.

Credentials never travel: a worker reads the remote's with its own environment or AWS chain.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task

from flows.dvcstate import is_stale, open_repo, write_lock_entry
from flows.remote import pull, push
from squeeze.config.allowlist import PYPROJECT, allowed_modules, workspace_packages

TAIL_LINES = 40  # of a failed stage's output, in the error
# What a stage's `python -m stages.<stage>` imports: shipped whole, not only the files dvc.yaml
# lists as deps. A worker whose scratch checkout had stages/distill.py but no stages/__init__.py
# would import the installed package's copy instead, and run other code than the workspace's.
CODE = ("squeeze", "stages")
DVC_FILES = ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore")


class StageFailed(RuntimeError):
    """A stage's process exited non-zero or ran out of time; `stage` names it and `last_line`
    is its last line of output (a refusal's one-line reason)."""

    def __init__(self, message: str, stage: str, last_line: str) -> None:
        super().__init__(message)
        self.stage, self.last_line = stage, last_line

    def __reduce__(self) -> tuple:  # Prefect and Dask pickle a failed task's exception
        return (type(self), (str(self), self.stage, self.last_line))


@dataclass(frozen=True)
class Bundle:
    """What a worker needs to build one stage without the workspace."""

    cmd: str  # dvc.yaml's command of the stage
    files: dict[str, bytes]  # path in the workspace -> content: DVC files and code
    pull: tuple[str, ...]  # tracked deps (data splits, upstream models) to pull from the remote
    remote: str  # the default remote's name
    config: dict[str, Any]  # its settings, credentials left out


@dataclass(frozen=True)
class Built:
    """A finished build: its wall seconds and, for a remote one, its dvc.lock entry."""

    seconds: float
    lock: dict[str, Any] | None = None


def run_process(
    dvc_stage: str, cmd: str, root: Path, timeout_s: int, debug: str = "rerun it there to debug",
    env: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Run a stage's dvc.yaml command in root, its `python` being this interpreter, with env
    added to this process's environment; every output line goes to the run's log. Raises
    StageFailed on a non-zero exit or after timeout_s, saying how to `debug` it."""
    logger, tail = get_run_logger(), deque[str](maxlen=TAIL_LINES)
    argv = shlex.split(cmd)
    argv[0] = sys.executable if argv[0] == "python" else argv[0]
    proc = subprocess.Popen(
        argv, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # PYTHONUNBUFFERED: lines reach the log as they are printed
        env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
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
            f"{dvc_stage}: `{cmd}` (in {root}) {why}; {debug}. Its last output:\n"
            + "\n".join(tail),
            dvc_stage,
            tail[-1] if tail else why,
        )


@task(name="stage", task_run_name="{dvc_stage}")
def build_here(dvc_stage: str, cmd: str, root: Path, timeout_s: int) -> Built:
    """Build a stage in the workspace; the flow records it."""
    start = time.perf_counter()
    run_process(dvc_stage, cmd, root, timeout_s)
    return Built(time.perf_counter() - start)


def bundle(root: Path, dvc_stage: str, remote: str, config: dict[str, Any]) -> Bundle:
    """Pack what a worker needs to build dvc_stage: DVC files and code by value, tracked deps
    by name (the worker pulls them from the remote, where the flow or an earlier build put them).
    """
    with open_repo(root) as repo:
        (stage,) = repo.stage.collect(dvc_stage)
        tracked = [Path(out.def_path) for other in repo.index.stages for out in other.outs]
        deps = [Path(dep.def_path) for dep in stage.deps]
        pulled = [d for d in deps if any(d == out or out in d.parents for out in tracked)]
        pulled = list(dict.fromkeys(pulled))  # prune from the teacher lists models/teacher twice
        user = [p for p in user_code(root) if not any(overlaps(Path(p), out) for out in tracked)]
        shipped = [*DVC_FILES, *CODE, PYPROJECT, *user, *(str(d) for d in deps if d not in pulled)]
        files = {rel: (root / rel).read_bytes() for rel in sorted(set(_files(root, shipped)))}
        return Bundle(stage.cmd, files, tuple(map(str, pulled)), remote, config)


def user_code(root: Path) -> list[str]:
    """The user's code files (workspace_packages) of every module the allow-list allows. A
    worker imports a user's network from its scratch copy of them, as a stage in the workspace
    does; an allowed package that is installed instead must be installed on the worker too."""
    return workspace_packages(root, allowed_modules(root))


def overlaps(path: Path, out: Path) -> bool:
    """path is a DVC out, inside one or holds one: the remote has it, not the bundle."""
    return path == out or out in path.parents or path in out.parents


def _files(root: Path, paths: list[str]) -> list[str]:
    """The files at or under paths (relative to root), less caches; missing paths are skipped
    (a workspace without .dvcignore)."""
    found = []
    for rel in paths:
        path = root / rel
        if path.is_file():
            found.append(rel)
        elif path.is_dir():
            found += [str(f.relative_to(root)) for f in sorted(path.rglob("*"))
                      if f.is_file() and "__pycache__" not in f.parts]  # fmt: skip
    return found


@task(name="stage", task_run_name="{dvc_stage}")
def build_remote(dvc_stage: str, bundle: Bundle, timeout_s: int) -> Built:
    """Build a stage in a scratch DVC repo of this worker's own, from and to the DVC remote;
    return its dvc.lock entry. The scratch repo is removed afterwards."""
    start, logger = time.perf_counter(), get_run_logger()
    with tempfile.TemporaryDirectory(prefix="squeeze-build-") as tmp:
        scratch = Path(tmp)
        logger.info("building %s on %s in %s", dvc_stage, where(), scratch)
        checkout(scratch, bundle)
        debug = f"on {where()}, whose scratch repo is gone: `dvc repro {dvc_stage}` runs it"
        run_process(dvc_stage, bundle.cmd, scratch, timeout_s, debug)
        with open_repo(scratch) as repo:
            repo.commit(dvc_stage, force=True)
        pushed = push(scratch, targets=[dvc_stage])
        lock = yaml.safe_load((scratch / "dvc.lock").read_text())["stages"][dvc_stage]
    logger.info("built %s: pushed %d files to the DVC remote", dvc_stage, pushed)
    return Built(time.perf_counter() - start, lock)


def where() -> str:
    """This process, for the log: the Dask worker's address if it is one, host and pid."""
    try:
        from distributed import get_worker

        worker = f"dask worker {get_worker().address}, "
    except (ImportError, ValueError):  # not on a Dask worker
        worker = ""
    return f"{worker}host {socket.gethostname()}, pid {os.getpid()}"


def checkout(scratch: Path, bundle: Bundle) -> None:
    """Make scratch a DVC repo (no git) holding the bundle's files and the pulled deps."""
    from dvc.config import Config

    # what `dvc init --no-scm` makes, written before any Repo opens: a Repo puts its state and
    # index in site_cache_dir at once, and under the scratch repo they go away with it
    (scratch / ".dvc").mkdir()
    with Config(dvc_dir=scratch / ".dvc").edit() as conf:
        conf["core"] |= {"no_scm": True, "remote": bundle.remote,
                         "site_cache_dir": str(scratch / ".dvc" / "site")}  # fmt: skip
        conf["remote"][bundle.remote] = bundle.config
    for rel, data in bundle.files.items():
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(data)
    if bundle.pull:  # none: pull no targets, not every target (what an empty list means to DVC)
        pull(scratch, list(bundle.pull))


def adopt(root: Path, dvc_stage: str, lock: dict[str, Any]) -> None:
    """Take a remote build into the workspace: its entry into dvc.lock, its outs from the remote.

    The worker computed the entry's hashes from the bundle, so the stage is current unless the
    workspace changed meanwhile (or the worker ran other code): then it is an error, not a
    silent rebuild.
    """
    write_lock_entry(root, dvc_stage, lock)
    pull(root, [dvc_stage], force=True)
    if is_stale(root, dvc_stage):
        why = "its inputs in the workspace differ from those the worker built it from"
        raise StageFailed(
            f"{dvc_stage}: {why}; `dvc status {dvc_stage}` in {root} shows which", dvc_stage, why
        )
