"""The GX data suite of ingest passes on the real files and fails on broken data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from squeeze import data_suite
from squeeze.data import Split, read_split
from squeeze.expectations import SuiteResult, validate
from squeeze.params import load_params

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw(fmnist_dir: Path) -> dict[str, Split]:
    return {name: read_split(fmnist_dir, name) for name in ("train", "test")}


def run_suites(raw: dict[str, Split], docs: Path | None = None) -> dict[str, SuiteResult]:
    cfg = load_params(PROJECT).ingest
    return {
        name: validate(df, name, specs, docs) for name, df, specs in data_suite.suites(raw, cfg)
    }


def failed(results: dict[str, SuiteResult]) -> set[tuple[str, str, str | None]]:
    return {(s, f.expectation, f.column) for s, r in results.items() for f in r.failures()}


def test_real_data_passes_and_writes_docs(raw: dict[str, Split], tmp_path: Path) -> None:
    results = run_suites(raw, tmp_path)
    assert all(r.success for r in results.values()), failed(results)
    assert "train_images" in (tmp_path / "index.html").read_text()


def test_labels_out_of_range_fail(raw: dict[str, Split]) -> None:
    labels = raw["test"].labels.copy()
    labels[:5] = 12
    bad = {**raw, "test": Split(raw["test"].images, labels)}
    assert ("test_images", "expect_column_values_to_be_in_set", "label") in failed(run_suites(bad))


def test_wrong_image_shape_fails(raw: dict[str, Split]) -> None:
    images = np.zeros((len(raw["test"]), 32, 32), np.uint8)
    bad = {**raw, "test": Split(images, raw["test"].labels)}
    fails = failed(run_suites(bad))
    assert ("test_images", "expect_column_values_to_be_in_set", "rows") in fails
    assert ("test_images", "expect_column_values_to_be_in_set", "cols") in fails


def test_wrong_dtype_fails(raw: dict[str, Split]) -> None:
    bad = {**raw, "test": Split(raw["test"].images.astype(np.int16), raw["test"].labels)}
    assert ("test_images", "expect_column_values_to_be_in_set", "dtype") in failed(run_suites(bad))


def test_nan_pixels_fail(raw: dict[str, Split]) -> None:
    images = raw["test"].images.astype(np.float32)
    images[3, 4, 5] = np.nan
    bad = {**raw, "test": Split(images, raw["test"].labels)}
    fails = failed(run_suites(bad))
    assert ("test_images", "expect_column_values_to_not_be_null", "pixel_mean") in fails


def test_missing_class_and_imbalance_fail(raw: dict[str, Split]) -> None:
    keep = raw["train"].labels != 3
    bad = {**raw, "train": Split(raw["train"].images[keep], raw["train"].labels[keep])}
    fails = failed(run_suites(bad))
    assert ("train_images", "expect_column_distinct_values_to_equal_set", "label") in fails
    assert ("train_images", "expect_table_row_count_to_equal", None) in fails
    assert ("train_balance", "expect_column_values_to_be_between", "share") in fails


def test_profile_counts_duplicates(raw: dict[str, Split]) -> None:
    test = raw["test"]
    # plant two test images into train: two cross-split duplicates, one within train
    images = np.concatenate([raw["train"].images, test.images[:2], test.images[:1]])
    labels = np.concatenate([raw["train"].labels, test.labels[:2], test.labels[:1]])
    planted = {"train": Split(images, labels), "test": test}
    profile = data_suite.profile(planted, planted)
    assert profile["duplicates_train_test"] == 2
    assert profile["duplicates_within_train"] == 1
    assert profile["class_counts"]["test"]["Bag"] == 1000
