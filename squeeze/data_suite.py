"""The Great Expectations data suite of ingest and the data profile it reports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from squeeze.data import CLASSES, Split, image_hashes
from squeeze.params import IngestParams

Spec = tuple[str, dict[str, Any]]
IMAGE_SIDE = 28


def image_stats(split: Split) -> pd.DataFrame:
    """One row per image: its label, shape, dtype and pixel statistics."""
    n, rows, cols = split.images.shape
    flat = split.images.reshape(n, -1)
    return pd.DataFrame({
        "label": split.labels,
        "rows": np.full(n, rows),
        "cols": np.full(n, cols),
        "dtype": np.full(n, str(split.images.dtype)),
        "pixel_min": flat.min(1),
        "pixel_max": flat.max(1),
        # float mean: NaN would show here if the pixels were ever decoded as floats
        "pixel_mean": flat.astype(np.float64).mean(1),
    })  # fmt: skip


def class_shares(split: Split) -> pd.DataFrame:
    """One row per class: its share of the split's images."""
    counts = np.bincount(split.labels, minlength=len(CLASSES))
    return pd.DataFrame({"label": np.arange(len(counts)), "share": counts / counts.sum()})


def image_suite(expected_count: int) -> list[Spec]:
    """Expectations on image_stats of one raw split."""
    labels = list(range(len(CLASSES)))
    return [
        ("expect_table_row_count_to_equal", {"value": expected_count}),
        ("expect_column_values_to_be_in_set", {"column": "rows", "value_set": [IMAGE_SIDE]}),
        ("expect_column_values_to_be_in_set", {"column": "cols", "value_set": [IMAGE_SIDE]}),
        ("expect_column_values_to_be_in_set", {"column": "dtype", "value_set": ["uint8"]}),
        ("expect_column_values_to_be_between", {"column": "pixel_min", "min_value": 0}),
        ("expect_column_values_to_be_between", {"column": "pixel_max", "max_value": 255}),
        ("expect_column_values_to_not_be_null", {"column": "pixel_mean"}),
        ("expect_column_values_to_not_be_null", {"column": "label"}),
        ("expect_column_values_to_be_in_set", {"column": "label", "value_set": labels}),
        ("expect_column_distinct_values_to_equal_set", {"column": "label", "value_set": labels}),
    ]


def balance_suite(tolerance: float) -> list[Spec]:
    """Expectations on class_shares: every class holds 1/10 ± tolerance·1/10 of the images."""
    fair = 1 / len(CLASSES)
    bounds = {"min_value": fair * (1 - tolerance), "max_value": fair * (1 + tolerance)}
    return [
        ("expect_table_row_count_to_equal", {"value": len(CLASSES)}),
        ("expect_column_values_to_be_between", {"column": "share", **bounds}),
    ]


def suites(raw: dict[str, Split], cfg: IngestParams) -> list[tuple[str, pd.DataFrame, list[Spec]]]:
    """(suite name, data frame, expectations) for every check ingest runs on the raw splits."""
    expected = {"train": cfg.expected_train, "test": cfg.expected_test}
    out = []
    for name, split in raw.items():
        out.append((f"{name}_images", image_stats(split), image_suite(expected[name])))
        out.append((f"{name}_balance", class_shares(split), balance_suite(cfg.balance_tolerance)))
    return out


def profile(raw: dict[str, Split], splits: dict[str, Split]) -> dict[str, Any]:
    """Counts per class and split, pixel statistics and exact duplicates (within and across)."""
    hashes = {name: image_hashes(split.images) for name, split in raw.items()}
    train, test = set(hashes["train"]), set(hashes["test"])
    return {
        "raw_images": {name: len(split) for name, split in raw.items()},
        "split_images": {name: len(split) for name, split in splits.items()},
        "class_counts": {
            name: dict(zip(CLASSES, np.bincount(s.labels, minlength=10).tolist(), strict=True))
            for name, s in splits.items()
        },
        "pixel_mean": round(float(raw["train"].images.mean()) / 255, 5),
        "pixel_std": round(float(raw["train"].images.std()) / 255, 5),
        "duplicates_within_train": len(hashes["train"]) - len(train),
        "duplicates_within_test": len(hashes["test"]) - len(test),
        "duplicates_train_test": sum(h in train for h in hashes["test"]),
    }
