"""Shared fixtures: real Fashion-MNIST data and throw-away git+DVC copies of the project."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from squeeze.config.dvcyaml import STAMPS
from squeeze.data.idx import read_split
from squeeze.data.sources import SYSTEM_DIR
from squeeze.data.spec import Split
from squeeze.data.splits import stratified_indices, subset

PROJECT = Path(__file__).resolve().parents[1]
# what a workspace needs to run the pipeline (no data, no outputs)
PROJECT_FILES = ("dvc.yaml", "params.yaml", "profiles", "squeeze", "stages", "flows", "examples",
                 "pyproject.toml", ".dvcignore", ".gitignore")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked `longest` first, then the other `slow` ones, then the rest, each in
    collection order: `make test` runs `pytest -n 2 --dist worksteal`, whose idle worker takes
    queued tests from the other but cannot share a running one, so the two finish together when
    the longest starts first (longest processing time first scheduling)."""
    rank = {"longest": 0, "slow": 1}
    items.sort(key=lambda item: min((rank[m.name] for m in item.iter_markers() if m.name in rank),
                                    default=2))  # fmt: skip


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The system copy of Fashion-MNIST (Debian package dataset-fashion-mnist)."""
    if not (SYSTEM_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"{SYSTEM_DIR} is empty: apt-get install dataset-fashion-mnist (.ci/run does)")
    return SYSTEM_DIR


@pytest.fixture(scope="session")
def fmnist(fmnist_dir: Path) -> dict[str, Split]:
    """Small stratified real subsets: 300/class train, 50/class val, 100/class test."""
    rng = np.random.default_rng(0)
    train = read_split(fmnist_dir, "train")
    test = read_split(fmnist_dir, "test")
    idx = stratified_indices(train.labels, 350, rng)
    pool = subset(train, idx)
    is_val = np.zeros(len(pool), bool)
    is_val[stratified_indices(pool.labels, 50, rng)] = True
    return {
        "train": subset(pool, np.flatnonzero(~is_val)),
        "val": subset(pool, np.flatnonzero(is_val)),
        "test": subset(test, stratified_indices(test.labels, 100, rng)),
    }


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's bin/ first on PATH (dvc, python, squeeze)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def dvc_up_to_date(root: Path, *targets: str) -> bool:
    """`dvc status` reports nothing to do: no stage but the stamps (`source`, `production`),
    which DVC lists as "always changed" (they stamp what DVC cannot see, see dvc.yaml)."""
    status = json.loads(run(["dvc", "status", "--json", *targets], root).stdout)
    return all(
        stage in STAMPS and changes == ["always changed"] for stage, changes in status.items()
    )


# One hand-written candidate of each method and form of the smoke graph (distillation with and
# without KD, structured and unstructured pruning with QAT, int8 and int4, a pruned student and
# its int8, a soup), and the ensembles profile's two merges (an ensemble, a distilled ensemble)
# on MEMBERS with the smoke profile's fit: the end-to-end tests that build the whole graph more
# than once build this much of it, every code path at about half the time.
ONE_PER_METHOD = {
    "distill": ("kd_small", "ce_small"),
    "prune": ("teacher_ch50", "teacher_ch50_sp60_qat", "kd_small_ch50"),
    "quantize": ("teacher_ch50_int8", "teacher_ch50_sp60_qat_int4", "kd_small_ch50_int8"),
    "merge": ("teacher_ch50_soup",),
}
MEMBERS = ["kd_small", "ce_small"]


def ensemble_merges() -> dict[str, dict]:
    """profiles/ensembles.yaml's merge entries (ensemble_small, ensemble_kd_small), as written."""
    return yaml.safe_load((PROJECT / "profiles" / "ensembles.yaml").read_text())["merge"]


@contextlib.contextmanager
def params_yaml(root: Path) -> Iterator[dict]:
    """The workspace's params.yaml as a dict to change in place, written back (plain YAML, keys in
    their order) when the block ends."""
    path = root / "params.yaml"
    data = yaml.safe_load(path.read_text())
    yield data
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def set_param(root: Path, section: str, key: str, value: object) -> None:
    """Set params.yaml's `section.key` to `value` in the workspace at root."""
    with params_yaml(root) as data:
        data[section][key] = value


def one_per_method(root: Path) -> None:
    """Cut the workspace's candidate graph to ONE_PER_METHOD and add the merges of
    profiles/ensembles.yaml on MEMBERS, fitted as the smoke profile fits a student; synced into
    dvc.yaml and committed."""
    with params_yaml(root) as data:
        for section, keep in ONE_PER_METHOD.items():
            data[section] = {name: data[section][name] for name in keep}
        short_fit = data["distill"]["kd_small"]["fit"]
        for name, entry in ensemble_merges().items():
            data["merge"][name] = entry | {"upstreams": MEMBERS, "fit": short_fit}
    run(["squeeze", "sync"], root)
    run(["git", "commit", "-qam", "one candidate per method"], root)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A fresh git + DVC repo holding the project's pipeline, on the smoke profile."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in PROJECT_FILES:
        src = PROJECT / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "ci@squeeze.test"], root)
    run(["git", "config", "user.name", "squeeze ci"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    run(["dvc", "remote", "add", "-d", "local", str(tmp_path / "dvc-remote")], root)
    run(["squeeze", "profile", "smoke"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "pipeline"], root)
    return root


@pytest.fixture(scope="session")
def prefect_db() -> Iterator[str]:
    """A throw-away PostgreSQL cluster for the session (tests/prefect_server.py): its URL."""
    from tests.prefect_server import postgres

    # not pytest's tmp_path: under root its 0700 parents would keep the `postgres` user out
    pg_dir = Path(tempfile.mkdtemp(prefix="squeeze-postgres-"))
    try:
        with postgres(pg_dir) as db_url:
            yield db_url
    finally:
        shutil.rmtree(pg_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_api(prefect_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect API server on PostgreSQL for the whole session, as in production
    (infra/docker-compose.yml); yields its API URL (the UI is that URL without /api).

    `prefect server start` on prefect_db (tests/prefect_server.py), stopped at the end; both
    start in about 6 s. PREFECT_API_URL points at it, in the environment (for CLI subprocesses:
    prefect, squeeze) and in Prefect's settings context (for flows run in this process, whose
    settings were read when prefect was imported).
    """
    import prefect.context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.prefect_server import prefect_server

    home = tmp_path_factory.mktemp("prefect-server")
    with (
        prefect_server(prefect_db, home) as api_url,
        pytest.MonkeyPatch.context() as mp,
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        # also for contexts copied before this fixture ran (as prefect_test_harness does)
        prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()),
    ):
        mp.setenv("PREFECT_API_URL", api_url)
        yield api_url
        drain_prefect_workers()


def drain_prefect_workers() -> None:
    """Send the logs and events still queued in this process before the server stops."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for drain in (APILogWorker.drain_all, EventsWorker.drain_all):
        with contextlib.suppress(Exception):
            drain(timeout=10)
