"""What the compression stages (distill, prune, quantize, merge) share: finding a candidate's
params, the common part of its record, a clean output folder swapped in only when complete, the
resume key (train_teacher uses these two too) and the `python -m` entry points (evaluate's too).

No Prefect and no math here: these are the file-and-params chores every candidate stage does the
same way, kept in one place so the four stage modules stay about their method.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from squeeze.config.dvcyaml import check_synced
from squeeze.config.errors import ParamsError
from squeeze.config.files import load_params
from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json
from squeeze.errors import StageRefused
from squeeze.registry.registry import RegistryError
from squeeze.registry.store import StoreError


def candidate(params: Params, stage: str, name: str) -> Any:
    """The params of candidate `name` under `stage`, or an error listing the names there (a
    search finalist's params are params.search, whatever its name)."""
    section = params.section_of(stage)
    if name not in section:
        known = ", ".join(sorted(section)) or "none"
        raise KeyError(f"params.yaml {stage}: no candidate {name!r} (known: {known})")
    return section[name]


@contextmanager
def fresh_folder(folder: Path) -> Iterator[Path]:
    """Build models/<name>/ in an empty temporary sibling (models/.<name>.tmp-<hex>/), which
    replaces it only when the block completes: a build that fails leaves the previous model as it
    was and no temporary folder, and no file of an earlier, different build survives in the new
    one. Temporary folders a killed build left behind are removed first.

    Between the two renames (microseconds) models/<name>/ is absent, never half-built; if the
    second fails the previous model is put back.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    build = folder.with_name(f".{folder.name}.tmp-{secrets.token_hex(4)}")
    build.mkdir()
    try:
        yield build
        old = build.with_name(f"{build.name}-old")
        if folder.exists():
            folder.rename(old)
        try:
            build.rename(folder)
        except OSError:
            if old.exists():
                old.rename(folder)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(build, ignore_errors=True)  # gone once renamed; a failed build's leftovers


def base_record(
    ws: Workspace, name: str, method: str, upstream: list[str], cfg: BaseModel
) -> dict[str, Any]:
    """The fields every candidate's model.json has (the lineage evaluate and promote read)."""
    return {
        "name": name,
        "method": method,
        "upstream": upstream,
        "params": cfg.model_dump(mode="json"),
        "data_sha256": read_json(ws.fingerprint)["sha256"],
    }


def resume_key(cfg: BaseModel, data_sha256: str, upstream: list[Path]) -> str:
    """Resume only a state made by the same params, on the same data, from the same upstream
    weights (a retrained upstream must not continue a stale run)."""
    blob = json.dumps({"cfg": cfg.model_dump(mode="json"), "data": data_sha256}, sort_keys=True)
    digest = hashlib.sha256(blob.encode())
    for folder in upstream:
        for path in sorted(folder.iterdir()):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def main_for(run: Callable[[Path, Params, str], None], stage: str) -> None:
    """`python -m stages.<stage> NAME`: build candidate NAME of params.yaml (what dvc.yaml runs)."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m stages.{stage} NAME  (a key under `{stage}:` in params.yaml)")
    params = stage_params()
    try:
        candidate(params, stage, sys.argv[1])
    except KeyError as err:
        sys.exit(str(err.args[0]))
    with refusals_in_one_line():
        run(Path("."), params, sys.argv[1])


def stamp_main(
    run: Callable[[Path, Params], None], unreadable: type[Exception], stamp: Path, what: str
) -> None:
    """`python -m stages.<stamp>` for an always-changed stamp stage (source, production): when
    what it stamps cannot be read now (`unreadable`: offline, throttled), the last stamp stays,
    with a warning, so that local work goes on: DVC leaves the file in place (persist) and what
    depends on it stays current. The flow's task retries instead, then fails the run
    (flows.in_process). Without a last stamp the error stands."""
    params = stage_params()
    with refusals_in_one_line():
        try:
            run(Path("."), params)
        except unreadable as err:
            if not stamp.exists():
                raise
            print(f"warning: {err}; kept the last {stamp}: {what}", file=sys.stderr)


def stage_main(run: Callable[[Path, Params], None]) -> None:
    """`python -m stages.<stage>` for a stage without a NAME (what dvc.yaml runs)."""
    params = stage_params()
    with refusals_in_one_line():
        run(Path("."), params)


@contextmanager
def refusals_in_one_line() -> Iterator[None]:
    """A stage that refuses its params or data (StageRefused: bad data, a teacher that learned
    nothing, a sparsity a layer cannot take) or cannot use the registry or a store (RegistryError,
    StoreError: their messages say what to do) exits non-zero with one line naming the cause."""
    try:
        yield
    except (StageRefused, RegistryError, StoreError) as err:
        sys.exit(str(err))


def stage_params() -> Params:
    """params.yaml for a stage that `dvc repro` runs: valid, and with dvc.yaml's generated merge
    stages in step with it (else a merge missing from dvc.yaml would silently never be built)."""
    try:
        params = load_params()
        check_synced(Path("."), params)
    except ParamsError as err:
        sys.exit(str(err))
    return params
