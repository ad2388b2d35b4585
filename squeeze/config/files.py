"""params.yaml on disk: read and validate it, write it, and merge a profile into it.

Profiles (profiles/*.yaml) are overlays of a few keys that `squeeze profile NAME` merges into
params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from squeeze.config.allowlist import check_class_paths
from squeeze.config.errors import ParamsError
from squeeze.config.params import Params, validate

PARAMS_FILE = "params.yaml"


PROFILES_DIR = "profiles"


REPLACE_KEY = "replace"  # a profile's list of dotted keys it sets whole (apply_profile)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, failing with the file and line on a syntax error."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_params(root: Path = Path(".")) -> Params:
    """Load and validate `<root>/params.yaml`, refusing (before any import) a class_path the
    workspace does not allow (squeeze.config.allowlist.check_class_paths)."""
    path = root / PARAMS_FILE
    params = validate(read_yaml(path), str(path))
    check_class_paths(params, root)
    return params


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge overlay into a copy of base (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def replace(merged: dict[str, Any], overlay: dict[str, Any], dotted: str, where: Path) -> None:
    """Set merged's value at a dotted key to overlay's, whole: a profile's own candidate graph
    or network, instead of one merged key by key into params.yaml's (which would keep the
    default candidates, or mix a class_path into the built-in convnet's keys)."""
    *parents, last = dotted.split(".")
    source, target = overlay, merged
    for key in parents:
        source, target = source.get(key), target.get(key)
        if not isinstance(source, dict) or not isinstance(target, dict):
            break
    else:
        if last in source:
            target[last] = source[last]
            return
    raise ParamsError(f"{where}: {REPLACE_KEY} names {dotted!r}, which the profile does not set")


def apply_profile(root: Path, profile: str) -> Params:
    """Merge profiles/<profile>.yaml into params.yaml (in place, like `dvc exp run -S`).

    Mappings merge key by key; a profile's top-level `replace:` lists dotted keys whose value
    the profile sets whole (e.g. [train_teacher.arch, prune])."""
    overlay_path = root / PROFILES_DIR / f"{profile}.yaml"
    if not overlay_path.exists():
        known = sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))
        raise ParamsError(f"{overlay_path}: no such profile (known: {', '.join(known) or 'none'})")
    overlay = read_yaml(overlay_path)
    whole = overlay.pop(REPLACE_KEY, None) or []
    merged = merge(read_yaml(root / PARAMS_FILE), overlay)
    for dotted in whole:
        replace(merged, overlay, dotted, overlay_path)
    params = validate(merged, f"{root / PARAMS_FILE} + {overlay_path}")
    write_params(root, params)
    return params


def current_params(path: Path) -> Params | None:
    """What params.yaml holds now; None when it does not parse or validate (the run's valid
    params then replace it rather than fail on it)."""
    try:
        return validate(read_yaml(path), str(path))
    except ParamsError:
        return None


def write_params(root: Path, params: Params) -> bool:
    """Write params to `<root>/params.yaml` unless it already holds them; True if it changed."""
    path = root / PARAMS_FILE
    if path.exists() and current_params(path) == params:
        return False
    text = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True
