"""What the data is: a Split of (N, H, W, C) uint8 images and int64 labels, the DataSpec a model
needs (data/profile.json), the Source ingest read, and the errors bad data raises.

Images are uint8 (N, H, W, C) everywhere after reading: IDX images get a trailing channel axis,
and when ingest.channels or ingest.image_size differ from what the source holds, images are
converted by the same Pillow path as an ImageFolder's (squeeze.data.imagefolder.conform).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from squeeze.errors import StageRefused

STATS_CHUNK = 2**22  # pixel values per step of DataSpec.measure's float64 sums (32 MiB)


class DataError(StageRefused):
    """A raw data file is missing, corrupt, truncated or inconsistent."""


class FetchError(DataError):
    """The source could not be read (network, S3): worth retrying, unlike bad data."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W, C) uint8, C = 1 or 3
    labels: np.ndarray  # (N,) int64, class k is DataSpec.classes[k]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know of its data (data/profile.json, written by ingest): the
    image size and channels of the (N, H, W, C) uint8 splits, the class names (label k is
    classes[k]) and the per-channel pixel mean and standard deviation of the training split on
    the 0..1 scale, which the model standardises its raw input with."""

    classes: tuple[str, ...]
    height: int
    width: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        shape = {"height": self.height, "width": self.width, "channels": self.channels}
        return {"classes": list(self.classes), **shape, "mean": list(self.mean),
                "std": list(self.std)}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DataSpec:
        return cls(tuple(data["classes"]), int(data["height"]), int(data["width"]),
                   int(data["channels"]), tuple(data["mean"]), tuple(data["std"]))  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def measure(cls, train: Split, classes: Sequence[str]) -> DataSpec:
        """The spec of (N, H, W, C) uint8 training images: their shape, and the mean and
        standard deviation of every channel over all pixels, on the 0..1 scale (float64 sums
        over chunks of STATS_CHUNK pixel values; rounded to 6 decimals, so that the profile's
        bytes are stable)."""
        n, height, width, channels = train.images.shape
        total = np.zeros(channels)
        squares = np.zeros(channels)
        step = max(1, STATS_CHUNK // (height * width * channels))
        for i in range(0, n, step):
            chunk = train.images[i : i + step].reshape(-1, channels).astype(np.float64)
            total += chunk.sum(0)
            squares += (chunk * chunk).sum(0)
        count = n * height * width
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
        return cls(tuple(classes), height, width, channels,
                   tuple(round(float(m) / 255, 6) for m in mean),
                   tuple(round(float(s) / 255, 6) for s in std))  # fmt: skip


def read_spec(path: Path) -> DataSpec:
    """The DataSpec ingest wrote to path (data/profile.json); DataError when there is none."""
    try:
        return DataSpec.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise DataError(
            f"{path} is missing: run the ingest stage first (dvc repro ingest)"
        ) from None


@dataclass(frozen=True)
class Source:
    """The data ingest.source holds now, decoded to ingest.channels and ingest.image_size: what
    ingest splits and snapshots, and what the `source` stamp fingerprints."""

    location: str  # the source read, 'auto' resolved
    format: str  # ingest.format: idx or imagefolder
    splits: dict[str, Split]  # "train" and "test"; or "all": one folder of class folders
    classes: tuple[str, ...] | None = None  # imagefolder: the class folders' names, sorted
    converted: int = 0  # images whose mode or size was changed to the configured ones
    skipped: tuple[str, ...] = field(default=())  # files left out (on_bad_image: skip): "path: why"
    ignored: tuple[str, ...] = field(default=())  # imagefolder: files outside the class folders
