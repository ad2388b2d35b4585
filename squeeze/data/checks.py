"""The Great Expectations data suite of ingest and the data profile it reports.

Nothing in it is specific to one dataset: K is the number of classes the data holds (its class
folders, or ingest.classes for IDX), H, W and C the image size and channels the images were
converted to (ingest.image_size, ingest.channels). The suites run on the train, val and test
splits ingest is about to write (and on the source's image counts), before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from squeeze.config.sections import IngestParams
from squeeze.data.spec import Split
from squeeze.data.splits import image_hashes

Spec = tuple[str, dict[str, Any]]


def image_stats(split: Split) -> pd.DataFrame:
    """One row per image: its label, shape, dtype and pixel statistics."""
    n, height, width, channels = split.images.shape
    flat = split.images.reshape(n, -1)
    return pd.DataFrame({
        "label": split.labels,
        "height": np.full(n, height),
        "width": np.full(n, width),
        "channels": np.full(n, channels),
        "dtype": np.full(n, str(split.images.dtype)),
        "pixel_min": flat.min(1),
        "pixel_max": flat.max(1),
        # a float mean (summed in float64 without a float copy of the images): NaN would show
        # here if the pixels were ever decoded as floats
        "pixel_mean": flat.mean(1, dtype=np.float64),
    })  # fmt: skip


def class_shares(split: Split, num_classes: int) -> pd.DataFrame:
    """One row per class: its share of the split's images."""
    counts = np.bincount(split.labels, minlength=num_classes)
    return pd.DataFrame({"label": np.arange(len(counts)), "share": counts / max(1, counts.sum())})


def duplicates(splits: Mapping[str, Split]) -> pd.DataFrame:
    """One row per image of every split, indexed by its name split#index (the index in the
    split): the earlier image it repeats pixel for pixel, of its own split (duplicate_within)
    or of an earlier split (duplicate_across), else null. GX names a failing row by this index
    ("image"), beside the image it repeats."""
    names, split_of, within, across = [], [], [], []
    earlier: dict[str, str] = {}  # image digest -> where it first appeared, in earlier splits
    for name, split in splits.items():
        first: dict[str, str] = {}
        for i, digest in enumerate(image_hashes(split.images)):
            names.append(f"{name}#{i}")
            within.append(first.get(digest))
            across.append(earlier.get(digest))
            first.setdefault(digest, names[-1])
        for digest, where in first.items():
            earlier.setdefault(digest, where)
        split_of += [name] * len(split)
    return pd.DataFrame(
        {"split": split_of, "duplicate_within": within, "duplicate_across": across},
        index=pd.Index(names, name="image"),
        dtype=object,
    )


def image_suite(num_classes: int, height: int, width: int, channels: int) -> list[Spec]:
    """Expectations on image_stats of one split: shape, dtype, pixel range, labels in 0..K-1,
    and every class present."""
    labels = list(range(num_classes))
    return [
        ("expect_column_values_to_be_in_set", {"column": "height", "value_set": [height]}),
        ("expect_column_values_to_be_in_set", {"column": "width", "value_set": [width]}),
        ("expect_column_values_to_be_in_set", {"column": "channels", "value_set": [channels]}),
        ("expect_column_values_to_be_in_set", {"column": "dtype", "value_set": ["uint8"]}),
        ("expect_column_values_to_be_between", {"column": "pixel_min", "min_value": 0}),
        ("expect_column_values_to_be_between", {"column": "pixel_max", "max_value": 255}),
        ("expect_column_values_to_not_be_null", {"column": "pixel_mean"}),
        ("expect_column_values_to_not_be_null", {"column": "label"}),
        ("expect_column_values_to_be_in_set", {"column": "label", "value_set": labels}),
        ("expect_column_distinct_values_to_equal_set", {"column": "label", "value_set": labels}),
    ]


def balance_suite(num_classes: int, tolerance: float) -> list[Spec]:
    """Expectations on class_shares: every class holds 1/K ± tolerance·1/K of the images."""
    fair = 1 / num_classes
    bounds = {"min_value": fair * (1 - tolerance), "max_value": fair * (1 + tolerance)}
    return [
        ("expect_table_row_count_to_equal", {"value": num_classes}),
        ("expect_column_values_to_be_between", {"column": "share", **bounds}),
    ]


def duplicate_suite() -> list[Spec]:
    """Expectations on duplicates: no image repeats within a split or across splits (a test
    image also seen in training would flatter every model measured on it)."""
    return [
        ("expect_column_values_to_be_null", {"column": "duplicate_within"}),
        ("expect_column_values_to_be_null", {"column": "duplicate_across"}),
    ]


def count_suite(expected: Mapping[str, int | None]) -> list[Spec]:
    """Expectations on the one-row frame of the source's image counts (column "<split>")."""
    return [
        ("expect_column_values_to_be_in_set", {"column": name, "value_set": [count]})
        for name, count in expected.items()
        if count is not None
    ]


def suites(
    full: Mapping[str, Split],
    splits: Mapping[str, Split],
    classes: Sequence[str],
    cfg: IngestParams,
) -> list[tuple[str, pd.DataFrame, list[Spec]]]:
    """(suite name, data frame, expectations) for every check ingest runs.

    full: the source's train and test splits before any subset (their counts are checked
    against ingest.expected_train/test); splits: the train, val and test splits ingest writes.
    """
    height, width = cfg.image_size
    out = []
    counts = count_suite({"train": cfg.expected_train, "test": cfg.expected_test})
    if counts:
        frame = pd.DataFrame({name: [len(split)] for name, split in full.items()})
        out.append(("source_counts", frame, counts))
    for name, split in splits.items():
        out.append((
            f"{name}_images", image_stats(split),
            image_suite(len(classes), height, width, cfg.channels),
        ))  # fmt: skip
        out.append((
            f"{name}_balance", class_shares(split, len(classes)),
            balance_suite(len(classes), cfg.balance_tolerance),
        ))  # fmt: skip
    out.append(("duplicates", duplicates(splits), duplicate_suite()))
    return out


def profile(
    full: Mapping[str, Split], splits: Mapping[str, Split], classes: Sequence[str]
) -> dict[str, Any]:
    """Images in the source (before subsets) and per split, and per class and split."""
    return {
        "raw_images": {name: len(split) for name, split in full.items()},
        "split_images": {name: len(split) for name, split in splits.items()},
        "class_counts": {
            name: dict(zip(classes, np.bincount(s.labels, minlength=len(classes)).tolist(),
                           strict=True))
            for name, s in splits.items()
        },
    }  # fmt: skip
