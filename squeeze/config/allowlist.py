"""Your own network, named by import path: `{class_path: "package.module.Name", init_args: {...}}`
(LightningCLI's convention), allowed here; squeeze.nets.factory builds it.

Params can arrive from the Prefect UI or API, so a class_path is code execution: importing a
module runs it. Only modules the workspace owner allowed are imported, and the allow-list lives
outside params, where a run's params cannot change it:

- `squeeze` (the built-in architectures) and the workspace's own package, which is its
  pyproject.toml's `[project].name` (dashes and dots as underscores) and every name in an explicit
  `[tool.setuptools] packages` list (package discovery patterns are not read: name those packages
  in allowed_modules);
- `[tool.squeeze] allowed_modules = ["mynets", ...]` in the workspace's pyproject.toml;
- the environment variable SQUEEZE_ALLOWED_MODULES (comma-separated), e.g. of a Prefect worker;
  the flow checks params against its own, a stage against its machine's (a Dask worker's
  environment is its own; pyproject.toml travels to it with the code, flows.builds).

An entry is a module prefix on dotted boundaries: `mynets` allows `mynets` and `mynets.resnet`,
never `mynetsevil`. Importing `mynets.resnet` also runs `mynets/__init__.py`, as any import does.

The params that name a place squeeze reads, writes or connects to (`locations`: the registry,
the data source and mirror, the teacher's init weights, the S3 endpoints, the Dask scheduler)
are the same risk from the API: a run may not point them anywhere else than params.yaml does
(check_locations), unless the new place is under one the owner allowed, again outside params:
`[tool.squeeze] allowed_locations = ["s3://bucket/", "/data/", ...]` in pyproject.toml and
SQUEEZE_ALLOWED_LOCATIONS (comma-separated). An entry is a prefix on `/` boundaries: a local
folder (relative ones from the workspace; `..` and symlinks resolved) or a URL (`s3://bucket/x`
allows `s3://bucket/x/y`, never `s3://bucket/xy`; `http://host:9000` allows only that host).
"""

from __future__ import annotations

import os
import posixpath
import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from squeeze.config.errors import ParamsError
from squeeze.config.locations import hide_userinfo
from squeeze.config.params import Params
from squeeze.errors import StageRefused

ENV_VAR = "SQUEEZE_ALLOWED_MODULES"


LOCATIONS_ENV_VAR = "SQUEEZE_ALLOWED_LOCATIONS"


BUILT_IN = ("squeeze",)


PYPROJECT = "pyproject.toml"


DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


HOW_TO_ALLOW = (
    f"add its module (or a package above it) to `[tool.squeeze] allowed_modules` in the "
    f"workspace's {PYPROJECT} (Dask workers get a copy), or to {ENV_VAR} (comma-separated) "
    "in the environment of what runs the flow (`squeeze run`, `squeeze serve`, a Prefect "
    "worker) and of every Dask worker"
)


class ClassPathRefused(ParamsError, StageRefused):
    """A class_path names a module the workspace does not allow, or the allow-list itself is
    malformed; raised before anything is imported."""


def allowed_modules(root: Path) -> tuple[str, ...]:
    """The module prefixes the workspace at root allows a class_path to import: the built-ins,
    the workspace's own package, `[tool.squeeze] allowed_modules` and $SQUEEZE_ALLOWED_MODULES.

    Raises ClassPathRefused naming the file or variable when an entry is not a dotted name.
    """
    project = read_pyproject(root)
    entries = [*BUILT_IN, *own_packages(project)]
    configured = project.get("tool", {}).get("squeeze", {}).get("allowed_modules", [])
    where = f"{root / PYPROJECT}: tool.squeeze.allowed_modules"
    if not isinstance(configured, list) or not all(isinstance(e, str) for e in configured):
        raise ClassPathRefused(f"{where}: expected a list of module names, got {configured!r}")
    entries += checked(configured, where)
    env = [e.strip() for e in os.environ.get(ENV_VAR, "").split(",") if e.strip()]
    entries += checked(env, ENV_VAR)
    return tuple(dict.fromkeys(entries))


def read_pyproject(root: Path) -> dict[str, Any]:
    """The workspace's pyproject.toml as a mapping ({} when there is none)."""
    path = root / PYPROJECT
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as err:
        raise ClassPathRefused(
            f"{path}: not valid TOML ({err}); the allow-list is read there"
        ) from None


def own_packages(project: dict[str, Any]) -> list[str]:
    """The workspace's own package: `[project].name` as an import name, plus an explicit
    `[tool.setuptools] packages` list (not find patterns, which can match more than meant)."""
    names = []
    if isinstance(name := project.get("project", {}).get("name"), str):
        names.append(re.sub(r"[-.]+", "_", name).lower())
    packages = project.get("tool", {}).get("setuptools", {}).get("packages")
    if isinstance(packages, list):
        names += [p for p in packages if isinstance(p, str)]
    return [n for n in names if DOTTED.match(n)]


def checked(entries: Iterable[str], where: str) -> list[str]:
    """entries, each a dotted module name; else ClassPathRefused naming where it came from."""
    entries = list(entries)
    for entry in entries:
        if not DOTTED.match(entry):
            raise ClassPathRefused(f"{where}: {entry!r} is not a module name like mynets.resnet")
    return entries


def is_allowed(module: str, allowed: Sequence[str]) -> bool:
    """module is an allowed entry or inside one (dotted boundaries: `a` allows `a.b`, not `ab`)."""
    return any(module == entry or module.startswith(entry + ".") for entry in allowed)


def split_class_path(class_path: str) -> tuple[str, str]:
    """`package.module.Name` -> (`package.module`, `Name`); ClassPathRefused if malformed."""
    if not DOTTED.match(class_path) or "." not in class_path:
        raise ClassPathRefused(
            f"class_path {class_path!r}: expected package.module.Name (a dotted import path)"
        )
    module, name = class_path.rsplit(".", 1)
    return module, name


def workspace_packages(root: Path, modules: Iterable[str]) -> list[str]:
    """The folder or .py file in root of each dotted module's top-level package, first seen
    first; squeeze itself and packages that are installed rather than in root are left out.
    These are the user's code files: DVC deps of the stages that build networks, and what a
    remote build ships so a worker imports the same code."""
    tops = dict.fromkeys(module.split(".")[0] for module in modules)
    found = [[rel for rel in (top, f"{top}.py") if (root / rel).exists()] for top in tops
             if top != "squeeze"]  # fmt: skip
    return [rels[0] for rels in found if rels]


def class_paths(params: Params) -> dict[str, str]:
    """Every class_path in params by its key (`distill.kd_small.student.class_path`): the
    teacher's arch, the distilled students and the distilled-ensemble students."""
    archs = {"train_teacher.arch": params.train_teacher.arch}
    archs |= {f"distill.{name}.student": cfg.student for name, cfg in params.distill.items()}
    archs |= {f"merge.{name}.student": cfg.student for name, cfg in params.merge.items()}
    return {f"{key}.class_path": arch.class_path for key, arch in archs.items()
            if getattr(arch, "class_path", None) is not None}  # fmt: skip


def check_class_paths(params: Params, root: Path) -> None:
    """Refuse params naming a class_path outside the workspace's allow-list, before anything is
    imported: one ClassPathRefused naming every such key, its value and how to allow it."""
    allowed = allowed_modules(root)
    refused = [
        f"{key}: {path!r} is not in the modules the workspace allows ({', '.join(allowed)})"
        for key, path in class_paths(params).items()
        if not is_allowed(split_class_path(path)[0], allowed)
    ]
    if refused:
        raise ClassPathRefused("\n".join(refused) + f"\nTo allow a module, {HOW_TO_ALLOW}.")


# -- locations ------------------------------------------------------------------------------

HOW_TO_ALLOW_LOCATION = (
    f"change params.yaml in the workspace itself, or add the location (or a folder or URL "
    f"above it) to `[tool.squeeze] allowed_locations` in the workspace's {PYPROJECT}, or to "
    f"{LOCATIONS_ENV_VAR} (comma-separated) in the environment of what runs the flow "
    "(`squeeze serve`, a Prefect worker)"
)


class LocationRefused(ParamsError, StageRefused):
    """A run from the Prefect API or UI points a place-naming key somewhere the workspace does not
    allow, or the location allow-list itself is malformed; raised before anything is written."""


def locations(params: Params) -> dict[str, str | None]:
    """Every value in params that names a place squeeze reads, writes or connects to, by key."""
    return {
        "ingest.source": params.ingest.source,
        "ingest.mirror": params.ingest.mirror,
        "ingest.endpoint_url": params.ingest.endpoint_url,
        "train_teacher.init": params.train_teacher.init,
        "train_teacher.endpoint_url": params.train_teacher.endpoint_url,
        "promote.registry": params.promote.registry,
        "promote.endpoint_url": params.promote.endpoint_url,
        "flow.dask_address": params.flow.dask_address,
    }


def place(value: str, root: Path) -> str:
    """value as one comparable string: a URL with its scheme and host in lower case and its path
    normalised (no `..`, no trailing `/`); anything else a local path, resolved from root."""
    if "://" not in value:
        return str((root / value).resolve())
    parts = urlsplit(value.strip())
    if parts.scheme.lower() == "file":
        return str(Path(parts.path).resolve())
    path = posixpath.normpath(parts.path) if parts.path else ""
    path = "" if path in ("/", ".") else path
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def is_under(value: str, allowed: Sequence[str]) -> bool:
    """value (a place) is an allowed one or inside one, on `/` boundaries."""
    return any(value == entry or value.startswith(entry.rstrip("/") + "/") for entry in allowed)


def allowed_locations(root: Path) -> tuple[str, ...]:
    """The places (see `place`) the workspace at root lets a run from the API point its location
    keys at: `[tool.squeeze] allowed_locations` and $SQUEEZE_ALLOWED_LOCATIONS; relative
    folders are read from root. Raises LocationRefused naming the file when the list is not one.
    """
    squeeze = read_pyproject(root).get("tool", {}).get("squeeze", {})
    configured = squeeze.get("allowed_locations", [])
    if not isinstance(configured, list) or not all(isinstance(e, str) and e for e in configured):
        raise LocationRefused(
            f"{root / PYPROJECT}: tool.squeeze.allowed_locations: expected a list of folders or "
            f"URLs, got {configured!r}"
        )
    env = [e.strip() for e in os.environ.get(LOCATIONS_ENV_VAR, "").split(",") if e.strip()]
    return tuple(dict.fromkeys(place(entry, root) for entry in [*configured, *env]))


def check_locations(params: Params, trusted: Params, root: Path) -> None:
    """Refuse params from the Prefect API or UI that point a location key (`locations`) away from
    trusted's value (the workspace's params.yaml) to a place outside the workspace's allowed
    locations: one LocationRefused naming every such key. null (no endpoint, no init, a local
    Dask cluster) and ingest.source `auto` (the system copy, else ingest.mirror) name no new
    place and pass."""
    allowed, before = allowed_locations(root), locations(trusted)
    refused = [
        f"{key}: {hide_userinfo(value)!r} is not params.yaml's value "
        f"({hide_userinfo(str(before[key]))!r}) nor under a location the workspace allows "
        f"({', '.join(map(hide_userinfo, allowed)) or 'none'})"
        for key, value in locations(params).items()
        if value is not None
        and not (key == "ingest.source" and value == "auto")
        and (before[key] is None or place(value, root) != place(before[key], root))
        and not is_under(place(value, root), allowed)
    ]
    if refused:
        raise LocationRefused(
            "a run from the Prefect API or UI may not move where squeeze reads, writes or "
            "connects:\n" + "\n".join(refused) + f"\nTo allow a location, {HOW_TO_ALLOW_LOCATION}."
        )
