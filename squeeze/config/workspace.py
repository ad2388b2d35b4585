"""Where every stage reads and writes, relative to a workspace root (the DVC repo)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    def split(self, name: str) -> Path:
        return self.root / "data" / "splits" / f"{name}.safetensors"

    @property
    def fingerprint(self) -> Path:
        return self.root / "data" / "fingerprint.json"

    @property
    def profile(self) -> Path:
        """What models need to know of the data (squeeze.data.spec.DataSpec): written by ingest."""
        return self.root / "data" / "profile.json"

    @property
    def source(self) -> Path:
        """The `source` stage's stamp: the fingerprint of the data ingest.source holds now."""
        return self.root / "data" / "source.json"

    @property
    def production(self) -> Path:
        """The `production` stage's stamp: whether production in the registry is damaged."""
        return self.root / "data" / "production.json"

    def model(self, name: str) -> Path:
        return self.root / "models" / name

    def variant(self, name: str, variant: str) -> Path:
        """A model merge built beside candidate `name` to compare it with (a soup's best
        ingredient and its other soup), saved inside the candidate's folder."""
        return self.model(name) / "variants" / variant

    def search(self, name: str) -> Path:
        """The budget search's outputs (search/finalists.json, trials.csv, pareto.png)."""
        return self.root / "search" / name

    def export(self, name: str) -> Path:
        """The deployable ONNX file of a model, as evaluate measured it."""
        return self.root / "exports" / f"{name}.onnx"

    def metrics(self, name: str) -> Path:
        return self.root / "metrics" / f"{name}.json"

    def plot(self, name: str) -> Path:
        return self.root / "plots" / name

    def report(self, name: str) -> Path:
        return self.root / "reports" / name

    def state(self, name: str) -> Path:
        """Scratch space outside DVC's outs (resume states), which `dvc repro` never deletes."""
        return self.root / ".squeeze" / name


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically with sorted keys, so equal data gives equal bytes.

    Raises ValueError on a NaN or infinity (before anything is written): Python would write them
    as bare NaN/Infinity, which is not JSON and which other readers (jq, DVC, browsers) reject.
    """
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
