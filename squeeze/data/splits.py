"""Splitting and subsetting: train/test as the source holds them or held out, the stratified
validation split, class names, and splits on disk as safetensors.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from squeeze.data.spec import DataError, Source, Split


def class_names(source: Source, configured: list[str] | None) -> tuple[str, ...]:
    """The names of labels 0..K-1: an ImageFolder's folder names; for IDX, ingest.classes, or
    "0".."K-1" when that is null, K being one more than the largest label the source holds."""
    if source.classes is not None:
        return source.classes
    k = 1 + max((int(s.labels.max()) for s in source.splits.values() if len(s)), default=-1)
    if configured is None:
        return tuple(str(label) for label in range(k))
    if len(configured) < k:
        raise DataError(
            f"ingest.classes names {len(configured)} classes but {source.location} holds labels "
            f"up to {k - 1}: name all {k} (label k is ingest.classes[k]), or set it to null"
        )
    twice = sorted({name for name in configured if configured.count(name) > 1})
    if twice:
        raise DataError(f"ingest.classes: {', '.join(twice)} named more than once")
    return tuple(configured)


def train_test(
    source: Source, test_fraction: float | None, rng: np.random.Generator
) -> dict[str, Split]:
    """The source's train and test splits: as it holds them, or, for one folder of class
    folders, with test_fraction of every class held out as test (stratified, seeded)."""
    if "all" in source.splits:
        if test_fraction is None:
            raise DataError(
                f"{source.location} holds class folders but no train/ and test/ folders: set "
                "ingest.test_fraction (e.g. 0.2) to hold out a test split, or sort the images "
                "into train/<class>/ and test/<class>/"
            )
        train, test = hold_out(source.splits["all"], test_fraction, rng)
        return {"train": train, "test": test}
    if test_fraction is not None:
        raise DataError(
            f"ingest.test_fraction is {test_fraction} but {source.location} holds its own test "
            "split (test/): set ingest.test_fraction to null"
        )
    return {"train": source.splits["train"], "test": source.splits["test"]}


def stratified_indices(
    labels: np.ndarray, per_class: int | None, rng: np.random.Generator
) -> np.ndarray:
    """Indices of up to per_class random samples of every class (all when None), in order."""
    if per_class is None:
        return np.arange(len(labels))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def hold_out(split: Split, fraction: float, rng: np.random.Generator) -> tuple[Split, Split]:
    """(the rest, fraction of every class held out): stratified, deterministic. Used for the
    validation split, and for the test split of a source that holds none."""
    held = []
    for c in np.unique(split.labels):
        members = rng.permutation(np.flatnonzero(split.labels == c))
        held.append(members[: round(len(members) * fraction)])
    is_held = np.zeros(len(split), bool)
    is_held[np.concatenate(held)] = True
    return subset(split, np.flatnonzero(~is_held)), subset(split, np.flatnonzero(is_held))


def subset(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], split.labels[idx])


def tensors(split: Split) -> dict[str, np.ndarray]:
    """The split as safetensors stores it."""
    return {"images": np.ascontiguousarray(split.images), "labels": split.labels}


def save_split(split: Split, path: Path) -> None:
    """safetensors: deterministic bytes (unchanged data → unchanged DVC hash) and no pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors(split), path)


def load_split(path: Path) -> Split:
    tensors = load_file(path)
    return Split(tensors["images"], tensors["labels"])


def image_hashes(images: np.ndarray) -> list[str]:
    """One digest per image, to count exact duplicates."""
    return [hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest() for img in images]
