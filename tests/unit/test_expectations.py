"""Tests for squeeze.expectations: the GX wrapper behind ingest's data checks and gate's gates."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from squeeze.expectations import SuiteResult, validate

SPECS = [
    ("expect_column_values_to_be_between", {"column": "label", "min_value": 0, "max_value": 9}),
    ("expect_column_mean_to_be_between", {"column": "mean", "min_value": 0, "max_value": 255}),
    ("expect_table_row_count_to_equal", {"value": 6}),
    ("expect_column_values_to_not_be_null", {"column": "mean"}),
]


@pytest.fixture
def df() -> pd.DataFrame:
    """Six images' statistics, all valid."""
    return pd.DataFrame({"label": [0, 1, 2, 3, 9, 5], "mean": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]})


def test_import_is_lazy() -> None:
    """Importing the module must not import GX (seconds); a fresh interpreter proves it."""
    code = "import sys, squeeze.expectations; assert 'great_expectations' not in sys.modules"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_passing_suite_reports_observed_values(df: pd.DataFrame) -> None:
    result = validate(df, "stats", SPECS)
    assert result.success and result.failures() == []
    assert [r.expectation for r in result.results] == [name for name, _ in SPECS]
    mean, rows = result.results[1], result.results[2]
    assert mean.column == "mean" and mean.observed == pytest.approx(35.0)
    assert rows.column is None and rows.observed == 6
    assert mean.kwargs == {"column": "mean", "min_value": 0, "max_value": 255}
    assert result.docs_url is None


def test_failing_suite_reports_what_failed(df: pd.DataFrame) -> None:
    df.loc[2, "label"] = 12
    specs = [*SPECS, ("expect_column_values_to_not_be_null", {"column": "missing"})]
    result = validate(df, "broken", specs)
    assert not result.success
    failures = result.failures()
    assert [(f.expectation, f.column) for f in failures] == [
        ("expect_column_values_to_be_between", "label"),
        ("expect_column_values_to_not_be_null", "missing"),
    ]
    assert failures[0].observed["unexpected_count"] == 1
    assert failures[0].observed["partial_unexpected_list"] == [12]
    # A check GX cannot evaluate fails with its reason instead of raising.
    assert "missing" in failures[1].observed["error"]
    assert json.loads(json.dumps(result.to_dict()))["results"][0]["success"] is False


def test_an_index_column_names_every_failing_row() -> None:
    """GX's unexpected_index_column_names: every failing row by name, past the 20 values a
    SUMMARY lists; expectations of other kinds, or that cannot run, name no rows."""
    names = [f"m{i:02d}" for i in range(30)]
    frame = pd.DataFrame({"name": names, "label": [*range(25, 50), 0, 1, 2, 3, None]})
    specs = [
        ("expect_column_values_to_be_between", {"column": "label", "max_value": 9}),
        ("expect_column_values_to_not_be_null", {"column": "label"}),
        ("expect_table_row_count_to_equal", {"value": 30}),
        ("expect_column_values_to_not_be_null", {"column": "missing"}),
    ]
    between, not_null, rows, missing = validate(frame, "named", specs, index="name").results
    assert between.unexpected_rows == names[:25]
    assert between.observed["unexpected_count"] == 25
    assert len(between.observed["partial_unexpected_list"]) == 20  # the values: only the first
    assert not_null.unexpected_rows == ["m29"]
    assert rows.success and rows.unexpected_rows is None
    assert not missing.success and missing.unexpected_rows is None
    assert validate(frame, "unnamed", specs[:1]).results[0].unexpected_rows is None


def test_unknown_or_malformed_expectation_is_a_clear_error(df: pd.DataFrame) -> None:
    with pytest.raises(
        ValueError, match="unknown expectation 'expect_column_values_to_be_betwen'"
    ) as e:
        validate(df, "typo", [("expect_column_values_to_be_betwen", {"column": "label"})])
    assert "expect_column_values_to_be_between" in str(e.value)  # the suggestion
    with pytest.raises(ValueError, match="expect_table_row_count_to_equal"):
        validate(df, "bad_args", [("expect_table_row_count_to_equal", {"value": "many"})])


def test_data_docs_list_every_suite(
    df: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docs land only in docs_dir, keep earlier suites, survive threads, and need no network."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    docs = tmp_path / "docs"
    first = validate(df, "ingest_stats", SPECS, docs_dir=docs)
    with ThreadPoolExecutor(max_workers=3) as pool:
        rest = list(
            pool.map(
                lambda s: validate(df, s, SPECS, docs_dir=docs), ["gate_a", "gate_b", "gate_c"]
            )
        )

    index = (docs / "index.html").read_text()
    for result in [first, *rest]:
        assert isinstance(result, SuiteResult) and result.success
        assert result.suite in index
        assert result.docs_url and Path(result.docs_url.removeprefix("file://")).is_file()
    assert list(work.iterdir()) == []
