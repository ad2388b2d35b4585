"""The schema of params.yaml: one pydantic section per stage, validated before any work starts.

params.yaml is the only place a value lives, so the schema has no defaults: a missing key is an
error, as is an unknown key, a wrong type or an out-of-range value. Profiles (profiles/*.yaml)
are overlays of a few keys that `squeeze profile NAME` merges into params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"


class ParamsError(ValueError):
    """params.yaml (or a profile, or a flow parameter) does not match the schema."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestParams(Section):
    source: str = Field(
        description="Where the Fashion-MNIST IDX files come from: 'auto' (the system copy of the "
        "Debian package dataset-fashion-mnist, else the upstream download), a local folder, "
        "s3://bucket/prefix or an http(s):// base URL."
    )
    endpoint_url: str | None = Field(
        description="S3 endpoint for an s3:// source (MinIO, moto); null for AWS."
    )
    mirror: str = Field(description="Base URL of the upstream download used by source 'auto'.")
    val_fraction: float = Field(
        gt=0, lt=0.5, description="Share of the training images held out for validation."
    )
    train_per_class: int | None = Field(
        ge=10, description="Stratified subset: training images per class (null = all)."
    )
    test_per_class: int | None = Field(
        ge=10, description="Stratified subset: test images per class (null = all)."
    )
    expected_train: int = Field(ge=1, description="Images the raw training file must hold.")
    expected_test: int = Field(ge=1, description="Images the raw test file must hold.")
    balance_tolerance: float = Field(
        gt=0,
        lt=1,
        description="Each class's share may deviate from 1/10 by at most this fraction of it.",
    )
    seed: int = Field(ge=0, description="Seed of the splits and subsets.")


class ArchParams(Section):
    name: Literal["convnet"] = Field(description="Architecture family.")
    channels: list[int] = Field(
        min_length=1, max_length=4, description="Output channels of each stage (2×2 pool between)."
    )
    convs_per_stage: int = Field(ge=1, le=4, description="3×3 conv blocks per stage.")
    dropout: float = Field(ge=0, lt=1, description="Dropout before the classifier.")
    batchnorm: bool = Field(description="BatchNorm after every conv.")


class TrainParams(Section):
    arch: ArchParams
    epochs: int = Field(ge=1, le=500, description="Training epochs.")
    batch_size: int = Field(ge=1, le=4096, description="Mini-batch size.")
    lr: float = Field(gt=0, le=10, description="Peak learning rate of the one-cycle schedule.")
    momentum: float = Field(ge=0, lt=1, description="SGD Nesterov momentum.")
    weight_decay: float = Field(ge=0, lt=1, description="L2 weight decay.")
    label_smoothing: float = Field(ge=0, lt=1, description="Label smoothing of the loss.")
    augment: bool = Field(description="Random ±2-pixel shifts and horizontal flips.")
    seed: int = Field(ge=0, description="Seed of initialisation and batch order.")
    threads: int = Field(ge=1, le=256, description="torch CPU threads.")
    device: Literal["auto", "cpu", "cuda"] = Field(description="'auto' uses CUDA when present.")


class EvaluateParams(Section):
    threads: int = Field(ge=1, le=256, description="onnxruntime intra-op threads for latency.")
    warmup: int = Field(ge=0, description="Batch-1 runs discarded before timing.")
    runs: int = Field(ge=10, description="Timed batch-1 runs (median and p95 are reported).")
    throughput_batch: int = Field(ge=1, le=4096, description="Batch size of the throughput test.")


class Params(Section):
    """All squeeze parameters; the Prefect UI renders this as the run form."""

    ingest: IngestParams
    train_teacher: TrainParams
    evaluate: EvaluateParams


def format_errors(err: ValidationError, origin: str) -> str:
    """One line per problem: `origin: dotted.key: reason (got value)`."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = "" if e["type"] == "missing" else f" (got {e['input']!r})"
        lines.append(f"{origin}: {key}: {e['msg']}{got}")
    return "\n".join(lines)


def validate(data: Any, origin: str) -> Params:
    """Validate a mapping against the schema; raise ParamsError naming every bad key."""
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(format_errors(err, origin)) from None


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
    """Load and validate `<root>/params.yaml`."""
    path = root / PARAMS_FILE
    return validate(read_yaml(path), str(path))


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge overlay into a copy of base (mappings merge, everything else replaces)."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_profile(root: Path, profile: str) -> Params:
    """Merge profiles/<profile>.yaml into params.yaml (in place, like `dvc exp run -S`)."""
    overlay_path = root / PROFILES_DIR / f"{profile}.yaml"
    if not overlay_path.exists():
        known = sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))
        raise ParamsError(f"{overlay_path}: no such profile (known: {', '.join(known) or 'none'})")
    merged = merge(read_yaml(root / PARAMS_FILE), read_yaml(overlay_path))
    params = validate(merged, f"{root / PARAMS_FILE} + {overlay_path}")
    write_params(root, params)
    return params


def write_params(root: Path, params: Params) -> bool:
    """Write params to `<root>/params.yaml` unless it already holds them; True if it changed."""
    path = root / PARAMS_FILE
    if path.exists() and validate(read_yaml(path), str(path)) == params:
        return False
    text = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True
