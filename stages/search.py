"""Stage `search`: the budget search (squeeze.methods.search), turning params `search` into the
recipes of the finalists search_1..N and search_uniform.

Reads params `search` and `evaluate.threads`, data/splits/{train,search}.safetensors and
models/teacher/; writes search/finalists.json (the recipes, the teacher's figures on the search
split, the sensitivity pass, the studies' names and seed), search/recipes/NAME.json (each
finalist's recipe, what its finalist-NAME stage reads) and search/trials.csv (one row per trial:
the front dvc.yaml's plots draw). With search.finalists 0 it writes an
empty search and imports no torch. The Optuna studies live in search.storage, by default the
SQLite file .squeeze/search.db of the workspace (outside DVC's outs, so `dvc repro` never deletes
it: a killed search resumes).
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from squeeze.config.dvcyaml import stage_code
from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, write_json
from stages.candidate import stage_main

FINALISTS, TRIALS, RECIPES = "finalists.json", "trials.csv", "recipes"
RECIPES_README = (
    "The budget search's finalists (params search.finalists; none when it is 0): one NAME.json "
    "per finalist, the recipe its finalist-NAME stage builds (python -m stages.finalist NAME). "
    "Written by python -m stages.search.\n"
)
# How a trial's export is timed, at evaluate.threads: fewer runs than evaluate's (a trial needs a
# ranking and a limit check, evaluate the reported figure), and fixed here, so that a change of
# evaluate's timing re-runs evaluate only, not the search and every finalist
TRIAL_TIMING = {"warmup": 20, "runs": 100, "rounds": 5}
TRIAL_COLUMNS = ("study", "trial", "search_accuracy", "latency_ms_p50", "shipped_bytes",
                 "rescored_accuracy", "within_budget", "stopped_early", "front", "finalist",
                 "width", "sparsity", "weights", "qat", "policy")  # fmt: skip
# what changes no trial: how many trials there are and how long they may take (more of them
# resume the study), where they live, which are rescored after them, and the finalists' own
# build. The budget and the objective do: the sampler learns from which trials met the budget,
# and minimises the objective's cost.
NOT_IN_KEY = ("finalists", "trials", "uniform_trials", "hours", "storage", "rescore",
              "rescore_epochs", "steps", "fit", "zeroing_epochs")  # fmt: skip


def storage_url(ws: Workspace, params: Params) -> str:
    """search.storage, or the workspace's SQLite file."""
    if params.search.storage:
        return params.search.storage
    path = ws.state("search.db")
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def study_key(ws: Workspace, params: Params) -> str:
    """What determines the trials: the train and search splits, the teacher's weights, the
    search space, budget, objective and sampler seed, the latency's threads, and the code that
    runs a trial."""
    code = stage_code(ws.root, ["stages.search"])["stages.search"]
    parts = {
        "data": [sha256(ws.split(s)) for s in ("train", "search")],
        "teacher": sha256(ws.model("teacher") / "model.safetensors"),
        "space": params.search.model_dump(mode="json", exclude=set(NOT_IN_KEY)),
        "threads": params.evaluate.threads,
        "code": [sha256(ws.root / f) for f in code],
    }
    from squeeze.methods.search import study_key as key

    return key(parts)


def write_trials(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TRIAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def fresh_recipes(ws: Workspace) -> Path:
    """The recipes folder, emptied but for a README that says what it holds (without a search
    it would be empty, which DVC warns of at every repro): only once a search has succeeded,
    so that one that fails (a budget nobody meets, a storage that cannot be opened) leaves the
    last search's recipes, finalists.json and trials.csv as they were, and DVC sees no
    change."""
    recipes = ws.search(RECIPES)
    shutil.rmtree(recipes, ignore_errors=True)
    recipes.mkdir(parents=True)
    (recipes / "README.md").write_text(RECIPES_README)
    return recipes


@contextmanager
def trial_pool() -> Iterator[Any]:
    """Where the trials' fine-tunes run: on the Dask cluster $SQUEEZE_SEARCH_DASK names (a flow
    on Dask sets it), else in this process one after the other."""
    from squeeze.methods.search import one_by_one
    from squeeze.methods.workers import DASK_ENV, dask_pool

    address = os.environ.get(DASK_ENV)
    if not address:
        yield one_by_one
        return
    from distributed import Client

    with Client(address) as client:
        workers = len(client.scheduler_info()["workers"])
        print(f"search: the trials' fine-tunes run on the Dask cluster at {address} "
              f"({workers} workers)")  # fmt: skip
        yield dask_pool(client)


def run(root: Path, params: Params) -> None:
    ws, cfg = Workspace(root), params.search
    if not cfg.finalists:
        write_trials(ws.search(TRIALS), [])
        write_json(ws.search(FINALISTS), {"finalists": {}})
        fresh_recipes(ws)
        return
    import torch

    from squeeze.data.splits import load_split
    from squeeze.methods.search import SearchData, search, shown_storage
    from squeeze.nets.models import load_checkpoint

    torch.set_num_threads(cfg.trial_fit.threads)
    torch.manual_seed(cfg.seed)
    teacher, _ = load_checkpoint(ws.model("teacher"))
    data = SearchData(load_split(ws.split("train")), load_split(ws.split("search")))
    storage, key = storage_url(ws, params), study_key(ws, params)
    names = params.finalists()
    timing = params.evaluate.model_copy(update=TRIAL_TIMING)
    start = time.perf_counter()
    with trial_pool() as pool:
        outcome = search(teacher, cfg, data, timing, storage, key, names, pool=pool)
    write_trials(ws.search(TRIALS), outcome.trials)
    write_json(ws.search(FINALISTS), {
        "study": f"squeeze-{key}", "storage": shown_storage(storage),
        "seed": cfg.seed, "objective": cfg.objective, "teacher": outcome.teacher,
        # this run's wall time (a resumed search's: since it resumed)
        "seconds": round(time.perf_counter() - start, 1),
        "sensitivity": outcome.sensitivity, "weight_sensitivity": outcome.weight_sensitivity,
        "speed_levers": outcome.speed_levers,
        "trials_sha256": sha256(ws.search(TRIALS)),
        "finalists": outcome.finalists,
    })  # fmt: skip
    recipes = fresh_recipes(ws)
    for name, found in outcome.finalists.items():
        # one file per finalist, its stage's only dep on the search: a finalist whose recipe a
        # longer search did not change is not rebuilt
        write_json(recipes / f"{name}.json", found | {"seed": cfg.seed})
        print(f"finalist {name}: {found['kind']} trial {found['trial']}, {found['weights']}, "
              f"{found['sparsity']:.0%} of weights zeroed, "
              f"{found['search_accuracy']:.2%} on search, {found['latency_ms_p50']:.3f} ms p50, "
              f"{found['shipped_bytes']:,} bytes shipped")  # fmt: skip


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
