"""The GX data suite of ingest passes on real data and fails on broken data: K, H, W and C come
from the data and params, never from Fashion-MNIST."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from squeeze.config.files import load_params
from squeeze.config.sections import IngestParams
from squeeze.data import checks as data_suite
from squeeze.data.idx import read_split
from squeeze.data.spec import Split
from squeeze.data.splits import subset
from squeeze.expectations import SuiteResult, validate

PROJECT = Path(__file__).resolve().parents[2]
CLASSES = tuple(f"class {k}" for k in range(10))


@pytest.fixture(scope="module")
def full(fmnist_dir: Path) -> dict[str, Split]:
    """The source's splits, as ingest reads them."""
    return {name: read_split(fmnist_dir, name) for name in ("train", "test")}


@pytest.fixture(scope="module")
def splits(fmnist: dict[str, Split]) -> dict[str, Split]:
    """train, val and test as ingest writes them (small real subsets)."""
    return dict(fmnist)


def params(**changes: object) -> IngestParams:
    return load_params(PROJECT).ingest.model_copy(update=changes)


def run_suites(
    splits: dict[str, Split],
    full: dict[str, Split] | None = None,
    classes: tuple[str, ...] = CLASSES,
    docs: Path | None = None,
    **changes: object,
) -> dict[str, SuiteResult]:
    cfg = params(**({"expected_train": None, "expected_test": None} if full is None else {}),
                 **changes)  # fmt: skip
    suites = data_suite.suites(full or {}, splits, classes, cfg)
    return {name: validate(df, name, specs, docs) for name, df, specs in suites}


def failed(results: dict[str, SuiteResult]) -> set[tuple[str, str, str | None]]:
    return {(s, f.expectation, f.column) for s, r in results.items() for f in r.failures()}


def test_real_data_passes_and_writes_docs(
    full: dict[str, Split], splits: dict[str, Split], tmp_path: Path
) -> None:
    results = run_suites(splits, full, docs=tmp_path)
    assert set(results) == {"source_counts", "duplicates"} | {
        f"{s}_{suite}" for s in ("train", "val", "test") for suite in ("images", "balance")
    }
    assert all(r.success for r in results.values()), failed(results)
    assert "train_images" in (tmp_path / "index.html").read_text()


def test_source_counts_are_checked_only_when_expected(
    full: dict[str, Split], splits: dict[str, Split]
) -> None:
    fails = failed(run_suites(splits, full, expected_train=59999))
    assert fails == {("source_counts", "expect_column_values_to_be_in_set", "train")}
    assert "source_counts" not in run_suites(splits)


def test_labels_out_of_range_fail(splits: dict[str, Split]) -> None:
    labels = splits["test"].labels.copy()
    labels[:5] = 12
    bad = {**splits, "test": Split(splits["test"].images, labels)}
    assert ("test_images", "expect_column_values_to_be_in_set", "label") in failed(run_suites(bad))


def test_k_comes_from_the_classes(splits: dict[str, Split]) -> None:
    """The same labels against 11 classes: class 10 is missing from every split."""
    fails = failed(run_suites(splits, classes=(*CLASSES, "class 10")))
    for split in ("train", "val", "test"):
        assert (f"{split}_images", "expect_column_distinct_values_to_equal_set", "label") in fails
        assert (f"{split}_balance", "expect_column_values_to_be_between", "share") in fails


def test_wrong_image_shape_fails(splits: dict[str, Split]) -> None:
    images = np.zeros((len(splits["test"]), 32, 32, 3), np.uint8)
    bad = {**splits, "test": Split(images, splits["test"].labels)}
    fails = failed(run_suites(bad))
    for column in ("height", "width", "channels"):
        assert ("test_images", "expect_column_values_to_be_in_set", column) in fails
    # and the same images pass where params say 32x32x3
    ok = failed(run_suites(bad, channels=3, image_size=[32, 32]))
    assert not {f for f in ok if f[0] == "test_images"}


def test_wrong_dtype_fails(splits: dict[str, Split]) -> None:
    bad = {**splits, "test": Split(splits["test"].images.astype(np.int16), splits["test"].labels)}
    assert ("test_images", "expect_column_values_to_be_in_set", "dtype") in failed(run_suites(bad))


def test_nan_pixels_fail(splits: dict[str, Split]) -> None:
    images = splits["test"].images.astype(np.float32)
    images[3, 4, 5, 0] = np.nan
    bad = {**splits, "test": Split(images, splits["test"].labels)}
    fails = failed(run_suites(bad))
    assert ("test_images", "expect_column_values_to_not_be_null", "pixel_mean") in fails


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_a_class_missing_from_any_split_fails(splits: dict[str, Split], split: str) -> None:
    keep = np.flatnonzero(splits[split].labels != 3)
    bad = {**splits, split: subset(splits[split], keep)}
    fails = failed(run_suites(bad))
    assert (f"{split}_images", "expect_column_distinct_values_to_equal_set", "label") in fails
    assert (f"{split}_balance", "expect_column_values_to_be_between", "share") in fails


def test_balance_tolerance_is_relative_to_one_over_k(splits: dict[str, Split]) -> None:
    """Class 0 cut to a third of its images: share ≈ 0.036 against fair 0.1, inside ±70%
    of it but not inside ±50%."""
    train = splits["train"]
    keep = np.flatnonzero((train.labels != 0) | (np.arange(len(train)) % 3 == 0))
    bad = {**splits, "train": subset(train, keep)}
    share = ("train_balance", "expect_column_values_to_be_between", "share")
    assert share in failed(run_suites(bad, balance_tolerance=0.5))
    assert share not in failed(run_suites(bad, balance_tolerance=0.7))


def test_duplicates_within_and_across_splits_fail_naming_them(splits: dict[str, Split]) -> None:
    train, test = splits["train"], splits["test"]
    # test image 0 twice more in train (within train, and across train/test), once in val
    images = np.concatenate([train.images, test.images[:1], test.images[:1]])
    labels = np.concatenate([train.labels, test.labels[:1], test.labels[:1]])
    n = len(train)
    val = splits["val"]
    planted = {
        "train": Split(images, labels),
        "val": Split(np.concatenate([val.images, test.images[:1]]),
                     np.concatenate([val.labels, test.labels[:1]])),
        "test": test,
    }  # fmt: skip
    frame = data_suite.duplicates(planted)
    assert frame["duplicate_within"].dropna().to_dict() == {f"train#{n + 1}": f"train#{n}"}
    assert frame["duplicate_across"].dropna().to_dict() == {
        f"val#{len(val)}": f"train#{n}",
        "test#0": f"train#{n}",
    }
    result = run_suites(planted)["duplicates"]
    failures = {f.column: f.observed for f in result.failures()}
    assert set(failures) == {"duplicate_within", "duplicate_across"}
    # GX names each repeating image by the frame's index, beside the image it repeats
    assert failures["duplicate_across"]["partial_unexpected_index_list"] == [
        {"image": f"val#{len(val)}", "duplicate_across": f"train#{n}"},
        {"image": "test#0", "duplicate_across": f"train#{n}"},
    ]


def test_profile_counts_images_per_split_and_class(
    full: dict[str, Split], splits: dict[str, Split]
) -> None:
    profile = data_suite.profile(full, splits, CLASSES)
    assert profile["raw_images"] == {"train": 60000, "test": 10000}
    assert profile["split_images"] == {"train": 3000, "val": 500, "test": 1000}
    assert profile["class_counts"]["test"]["class 8"] == 100
