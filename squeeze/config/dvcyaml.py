"""The parts of dvc.yaml written out from params.yaml and the code: the merge stages, the search
finalists' stages, and the code among every stage's deps.

A merge has any number of upstreams, and DVC's templating cannot put a list into `deps`
(treeverse/dvc#8171: "Cannot interpolate data of type 'list'"), so merge cannot be a `foreach`
like distill, prune and quantize. Its stages are generated instead, one per `merge.NAME`, named
`merge-NAME`; so are the budget search's finalists (search.finalists: `finalist-search_1` ...
and `finalist-search_uniform`, which read the recipes the `search` stage wrote). `squeeze sync`
writes them, `squeeze profile` and every flow run call it, and a stage
run by `dvc repro` refuses a dvc.yaml that disagrees with params.yaml and names that command.

A stage's code is every project file its stage module imports, directly or not (its import
closure, squeeze.config.imports): sync lists exactly those files among its deps, so a change to
any module a stage runs makes DVC re-run it, and no other change does. A class_path network is
code in the workspace (squeeze.nets.factory) that DVC cannot know of from the static dvc.yaml,
and a local train_teacher.init is a file: sync lists the folder (or .py file) of every
class_path's top-level package among the deps of each stage that builds or loads models
(CODE_STAGES, the merge stages), and the init file among train_teacher's, so `dvc repro` re-runs
them when that code or those weights change. Every other dep (data, models, metrics: OWN_DEPS) is
dvc.yaml's own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from squeeze.config.allowlist import class_paths, workspace_packages
from squeeze.config.errors import ParamsError
from squeeze.config.imports import closures, module_file
from squeeze.config.params import FINALIST, FINALIST_KEYS, Params

DVC_FILE = "dvc.yaml"
# always_changed stages (dvc.yaml): they stamp what DVC cannot see, the data at the source and
# whether production is damaged, so that the stages reading the stamps re-run when that changed
STAMPS = ("source", "production")
STAGE_CMD = re.compile(r"^python -m (?P<module>stages\.[a-z_]+)\b")
MERGE_CMD = "python -m stages.merge"
FINALIST_CMD = "python -m stages.finalist"
# what a merge or finalist stage reads besides its code and the model folders it builds from
MERGE_DATA = ["data/splits/train.safetensors", "data/splits/val.safetensors",
              "data/fingerprint.json"]  # fmt: skip
RECIPES = "search/recipes"  # the search stage's recipes, one NAME.json per finalist
# the stages that build or load a model, so run the user's network code; merge-* besides
CODE_STAGES = ("train_teacher", "search", "distill", "prune", "quantize", "evaluate")
# deps dvc.yaml lists itself (what a stage reads besides code); sync writes every other dep
OWN_DEPS = ("data/", "models", "exports", "metrics/")
_STAGE_NAME = re.compile(
    r"^(?:(?P<generated>merge|finalist)-(?P<built>.+)|(?P<stage>[a-z_]+)(?:@(?P<name>.+))?)$"
)


def dvc_stage(params: Params, name: str) -> str:
    """The DVC stage that builds model `name`: `merge-NAME` or `finalist-NAME` (generated), or
    `distill@NAME` style (foreach)."""
    stage = params.stage_of(name)
    if stage == "train_teacher":
        return stage
    return f"{stage}-{name}" if stage in ("merge", FINALIST) else f"{stage}@{name}"


def parse_stage(dvc_name: str) -> tuple[str, str | None]:
    """`prune@teacher_ch50` -> ("prune", "teacher_ch50"), `merge-ensemble_small` -> ("merge",
    "ensemble_small"), `finalist-search_1` -> ("finalist", "search_1"), `evaluate` ->
    ("evaluate", None); ValueError for anything else."""
    match = _STAGE_NAME.match(dvc_name)
    if match is None:
        raise ValueError(f"not a squeeze stage name: {dvc_name!r}")
    if match["generated"]:
        return match["generated"], match["built"]
    return match["stage"], match["name"]


def stages_ran(repro_output: str) -> list[str]:
    """The stages a `dvc repro` printed as run, less the STAMPS, which DVC runs every time."""
    names = [line.split("'")[1] for line in repro_output.splitlines() if "Running stage" in line]
    return [name for name in names if name not in STAMPS]


def user_deps(root: Path, params: Params) -> list[str]:
    """The user's code files (workspace_packages) of every class_path, sorted."""
    return workspace_packages(root, sorted(class_paths(params).values()))


def init_deps(params: Params) -> list[str]:
    """train_teacher.init when it is a file in the workspace (a path relative to it)."""
    init = params.train_teacher.init
    return [] if init is None or "://" in init or Path(init).is_absolute() else [init]


def generated_stages(root: Path, params: Params) -> dict[str, dict[str, Any]]:
    """The dvc.yaml stages written out from params: one per merge candidate (merge-NAME: the
    code stages.merge runs, its import closure, the data, the user's code (user_deps) and its
    upstreams' model folders) and one per search finalist (finalist-NAME: the same for
    stages.finalist, the teacher and the search's recipes)."""
    code = stage_code(root, ["stages.merge", "stages.finalist"])
    user = user_deps(root, params)
    merges = {
        f"merge-{name}": {
            "cmd": f"{MERGE_CMD} {name}",
            "deps": code["stages.merge"]
            + MERGE_DATA
            + user
            + [f"models/{up}" for up in dict.fromkeys(cfg.upstreams)],
            "params": [f"merge.{name}"],
            "outs": [f"models/{name}"],
        }
        for name, cfg in params.merge.items()
    }
    finalists = {
        f"finalist-{name}": {
            "cmd": f"{FINALIST_CMD} {name}",
            "deps": code["stages.finalist"]
            + MERGE_DATA
            + user
            + ["models/teacher", f"{RECIPES}/{name}.json"],
            "params": [f"search.{key}" for key in FINALIST_KEYS],
            "outs": [f"models/{name}"],
        }
        for name in params.finalists()
    }
    return merges | finalists


def stage_code(root: Path, modules: list[str]) -> dict[str, list[str]]:
    """Each stage module's import closure (squeeze.config.imports): every project file it runs,
    so that a change to any of them makes DVC re-run the stage. [] for a module the workspace
    does not hold (squeeze installed as a package rather than checked out there)."""
    present = [m for m in modules if module_file(root, m) is not None]
    return {m: [] for m in modules} | closures(root, present)


def _module(stage: dict[str, Any]) -> str | None:
    """The stage module a dvc.yaml stage runs (`python -m stages.prune ...` -> stages.prune)."""
    match = STAGE_CMD.match(str(stage.get("cmd", "")))
    return match["module"] if match else None


def code_deps(root: Path, params: Params, stages: dict[str, Any]) -> dict[str, list[str]]:
    """The deps every stage that runs a stage module should have: its import closure, then its
    other deps as dvc.yaml lists them (data, models, metrics), then for CODE_STAGES the user's
    code, and train_teacher's init file. Generated stages are generated_stages' whole."""
    bodies = {key: stage.get("do", stage) for key, stage in stages.items()
              if not _is_generated(stage)}  # fmt: skip  # a foreach stage's deps are under do:
    modules = {key: _module(body) for key, body in bodies.items()}
    code = stage_code(root, sorted({m for m in modules.values() if m}))
    user = user_deps(root, params)
    wanted = {}
    for key, module in modules.items():
        if module is None:
            continue
        own = [d for d in bodies[key].get("deps", [])
               if str(d).startswith(OWN_DEPS) and d not in init_deps(params)]  # fmt: skip
        extra = user if key in CODE_STAGES else []
        wanted[key] = (
            code[module] + own + extra + (init_deps(params) if key == "train_teacher" else [])
        )
    return wanted


def stale_code_stages(root: Path, params: Params) -> list[str]:
    """The stages whose deps are not what code_deps says (the code they import, the user's
    code, the init file)."""
    stages = yaml.safe_load((root / DVC_FILE).read_text())["stages"]
    wanted = code_deps(root, params, stages)
    return [key for key, deps in wanted.items()
            if stages[key].get("do", stages[key]).get("deps", []) != deps]  # fmt: skip


def _is_generated(stage: Any) -> bool:
    return isinstance(stage, dict) and str(stage.get("cmd", "")).startswith(
        (MERGE_CMD, FINALIST_CMD)
    )


def stale_generated_stages(root: Path, params: Params) -> list[str]:
    """The generated stages (merge-NAME, finalist-NAME) where dvc.yaml and params.yaml disagree
    (missing, extra or different)."""
    stages = yaml.safe_load((root / DVC_FILE).read_text())["stages"]
    have = {key: value for key, value in stages.items() if _is_generated(value)}
    want = generated_stages(root, params)
    return sorted(key for key in have.keys() | want.keys() if have.get(key) != want.get(key))


def check_synced(root: Path, params: Params) -> None:
    """Raise ParamsError, naming the stages and the fix, when dvc.yaml's generated stages or
    the code among the deps are stale."""
    stale = stale_generated_stages(root, params) + stale_code_stages(root, params)
    if stale:
        raise ParamsError(
            f"{root / DVC_FILE}: stages {', '.join(stale)} do not match params.yaml (the merge "
            f"section, search.finalists, the code they import, or the class_path code and "
            f"train_teacher.init they depend on); run `squeeze sync` to regenerate them, then "
            f"`dvc repro` again"
        )


def sync(root: Path, params: Params) -> bool:
    """Rewrite dvc.yaml's generated stages and the code among every stage's deps from params
    and the import graph (comments elsewhere kept); True if changed."""
    if not stale_generated_stages(root, params) and not stale_code_stages(root, params):
        return False
    from dvc.utils.serialize import modify_yaml  # ruamel round trip: keeps comments and order

    with modify_yaml(root / DVC_FILE) as data:
        stages = data["stages"]
        keys = list(stages)
        old = [key for key in keys if _is_generated(stages[key])]
        # generated stages go where the old ones were, else before evaluate
        at = keys.index(old[0]) if old else keys.index("evaluate")
        for key in old:
            del stages[key]
        for offset, (key, value) in enumerate(generated_stages(root, params).items()):
            stages.insert(at + offset, key, value)
        for key, deps in code_deps(root, params, stages).items():
            stages[key].get("do", stages[key])["deps"] = deps
    return True
