"""A thin wrapper over Great Expectations (GX 1.x) for squeeze's data checks and quality gates.

Callers describe a suite as plain specs, ``("expect_column_values_to_be_between", {"column":
"label", "min_value": 0, "max_value": 9})``, so no other module has to import GX. ``validate``
runs them on a pandas DataFrame in an ephemeral GX context and returns plain, JSON-able results;
with ``docs_dir`` it also writes GX data docs (a static HTML site) there.

GX names the rows that fail a column-map expectation itself: by the DataFrame's index (its name
and labels, the first few rows, in ``observed``), and with ``index`` by a column of names, every
failing row (GX's ``unexpected_index_column_names``, in ``ExpectationResult.unexpected_rows``).

GX is imported lazily: ``import great_expectations`` takes seconds, and most commands that
import squeeze never validate anything.
"""

from __future__ import annotations

import difflib
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.data_context import EphemeralDataContext
    from great_expectations.expectations import Expectation

ExpectationSpec = tuple[str, dict[str, Any]]
"""An expectation as data: its snake_case GX type and its keyword arguments."""

# GX keeps process-wide state (its project manager points at "the current" context, which
# checkpoint actions use), so two validations in different threads would build data docs
# through each other's context. One lock serialises every use of GX from this module.
_GX_LOCK = threading.Lock()

_SITE = "squeeze"
# GX's own JSON records (suites, validation results) live beside the HTML inside docs_dir: the
# site index is rebuilt from them, so earlier validations stay listed across calls and processes.
_STORE_DIR = ".gx"
# Result keys that tell a human what a column-map expectation saw: how many rows failed, the
# first few values and which rows those were (by the DataFrame's index, or validate's `index`).
_MAP_KEYS = (
    "unexpected_count", "unexpected_percent", "partial_unexpected_list",
    "partial_unexpected_index_list",
)  # fmt: skip


@dataclass(frozen=True)
class ExpectationResult:
    """The outcome of one expectation, in plain JSON-able values.

    ``unexpected_rows``: with validate's ``index``, that column's value in every row that failed
    a column-map expectation, as GX reports them; None without an index, for other expectations,
    and when GX could not evaluate the expectation.
    """

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    success: bool
    observed: Any
    unexpected_rows: list[Any] | None = None


@dataclass(frozen=True)
class SuiteResult:
    """The outcome of one suite; ``docs_url`` is the file:// URL of its data-docs page, if any."""

    suite: str
    success: bool
    results: list[ExpectationResult]
    docs_url: str | None = field(default=None)

    def failures(self) -> list[ExpectationResult]:
        """Return the expectations that did not pass, in suite order."""
        return [r for r in self.results if not r.success]

    def to_dict(self) -> dict[str, Any]:
        """Return the result as a JSON-able dict (for metrics files and Prefect artifacts)."""
        return asdict(self)


def expectation_types() -> list[str]:
    """Return the snake_case names of every expectation type GX knows."""
    import great_expectations.expectations  # noqa: F401  (registers the core expectations)
    from great_expectations.expectations.registry import (
        list_registered_expectation_implementations,
    )

    return sorted(list_registered_expectation_implementations())


def build_expectation(name: str, kwargs: dict[str, Any]) -> Expectation:
    """Build the GX expectation object for a spec, failing clearly on a bad name or argument.

    Raises:
        ValueError: ``name`` is not a GX expectation type, or ``kwargs`` do not fit it.
    """
    import great_expectations.expectations  # noqa: F401  (registers the core expectations)
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        cls = get_expectation_impl(name)
    except ExpectationNotFoundError:
        close = difflib.get_close_matches(name, expectation_types(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown expectation {name!r}: not a Great Expectations expectation type.{hint} "
            "See squeeze.expectations.expectation_types() for the full list."
        ) from None
    try:
        return cls(**kwargs)
    except Exception as e:  # pydantic's ValidationError, or GX's own checks on the arguments
        raise ValueError(f"expectation {name!r} with arguments {kwargs!r}: {e}") from e


def validate(
    df: pd.DataFrame,
    suite: str,
    expectations: list[ExpectationSpec],
    docs_dir: Path | None = None,
    index: str | None = None,
) -> SuiteResult:
    """Run the expectations on ``df`` as suite ``suite`` in an ephemeral GX context.

    Expectations are built (and so checked) before any data is touched. An expectation that
    cannot be evaluated (e.g. a missing column) fails with its error as ``observed``; it does
    not raise. When ``docs_dir`` is given, GX data docs are written there: ``index.html`` lists
    this validation next to earlier ones written to the same folder.

    Args:
        df: the data, one row per record (an image's statistics, a candidate model, ...).
        suite: the suite's name; it names the data-docs pages too.
        expectations: ``(snake_case_type, kwargs)`` specs, in the order results are reported.
        docs_dir: folder of the data-docs site; nothing is written anywhere when None.
        index: a column naming each row (a model's name): GX then reports every row that fails
            a column-map expectation by it (result format COMPLETE with
            ``unexpected_index_column_names``), in each result's ``unexpected_rows``.

    Returns:
        The suite's result, its expectations in the order given.
    """
    objs = [build_expectation(name, dict(kwargs)) for name, kwargs in expectations]
    with _GX_LOCK:
        import great_expectations as gx
        from great_expectations.checkpoint import UpdateDataDocsAction

        context = _ephemeral_context(docs_dir)
        batch = (
            context.data_sources.add_pandas("pandas")
            .add_dataframe_asset(suite)
            .add_batch_definition_whole_dataframe("whole")
        )
        # add_or_update: with docs_dir the suite store is on disk and may already hold `suite`.
        gx_suite = context.suites.add_or_update(gx.ExpectationSuite(name=suite, expectations=objs))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite, data=batch, suite=gx_suite)
        )
        actions = [UpdateDataDocsAction(name="data_docs", site_names=[_SITE])] if docs_dir else []
        # GX 1.x reads the result format from the checkpoint (an expectation's own is ignored)
        fmt: dict[str, Any] = {"result_format": "SUMMARY"}
        if index:
            fmt = {"result_format": "COMPLETE", "unexpected_index_column_names": [index]}
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=suite, validation_definitions=[definition], actions=actions, result_format=fmt
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": df})
        ((result_id, suite_result),) = run.run_results.items()
        docs_url = _docs_url(context, result_id) if docs_dir else None
        order = {e.id: i for i, e in reversed(list(enumerate(gx_suite.expectations)))}
        # GX groups expectations by metric, not by suite order: restore the caller's order.
        ordered = sorted(
            suite_result.results, key=lambda r: order.get(r.expectation_config.id, len(order))
        )
        results = [_to_result(r.to_json_dict(), index) for r in ordered]
    return SuiteResult(
        suite=suite, success=bool(suite_result.success), results=results, docs_url=docs_url
    )


def _ephemeral_context(docs_dir: Path | None) -> EphemeralDataContext:
    """Build an in-memory GX context: no progress bars, no analytics, files only in docs_dir."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # Without init_temp_docs_sites GX configures no data-docs site (the default would be a
    # temporary directory); we add ours only when asked to write docs.
    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    sites: dict[str, Any] = {}
    if docs_dir is not None:
        # Absolute, because an ephemeral context has no root directory to resolve against.
        root = Path(docs_dir).resolve()
        store = root / _STORE_DIR
        for name, sub in (
            (defaults.expectations_store_name, "expectations"),
            (defaults.validation_results_store_name, "validations"),
        ):
            defaults.stores[name]["store_backend"] = {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(store / sub),
            }
        sites[_SITE] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(root),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(
        store_backend_defaults=defaults,
        data_docs_sites=sites,
        # GX 1.24 ships no usage-statistics client any more; this keeps it off if one returns.
        analytics_enabled=False,
        # Validation would otherwise draw tqdm bars on stderr for every suite.
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _docs_url(context: EphemeralDataContext, result_id: Any) -> str | None:
    """Return the file:// URL of a validation result's data-docs page."""
    urls = context.get_docs_sites_urls(resource_identifier=result_id, site_name=_SITE)
    return urls[0]["site_url"] if urls else None


def _to_result(result: dict[str, Any], index: str | None = None) -> ExpectationResult:
    """Convert one GX ExpectationValidationResult (as its JSON dict) to an ExpectationResult;
    ``index``: the column GX named the failing rows by (validate's)."""
    config = result["expectation_config"]
    # batch_id is GX bookkeeping, not part of what the caller asked for.
    kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
    column = kwargs.get("column")
    return ExpectationResult(
        expectation=config["type"],
        column=column if isinstance(column, str) else None,
        kwargs=kwargs,
        success=bool(result["success"]),
        observed=_observed(result),
        unexpected_rows=_unexpected_rows(result, index),
    )


def _unexpected_rows(result: dict[str, Any], index: str | None) -> list[Any] | None:
    """The index column's value of every failing row GX listed (COMPLETE's
    ``unexpected_index_list``, one {index: name, column: value} per row); None when not listed."""
    listed = (result.get("result") or {}).get("unexpected_index_list")
    if index is None or listed is None or _exception_messages(result.get("exception_info") or {}):
        return None
    return [row[index] for row in listed]


def _observed(result: dict[str, Any]) -> Any:
    """Pick what a human wants to see: the error, the observed value, or the unexpected values."""
    errors = _exception_messages(result.get("exception_info") or {})
    if errors:
        return {"error": "; ".join(errors)}
    details = result.get("result") or {}
    if "observed_value" in details:
        return details["observed_value"]
    return {k: details[k] for k in _MAP_KEYS if k in details}


def _exception_messages(info: dict[str, Any]) -> list[str]:
    """Collect error messages from GX's exception_info.

    GX reports either one record ``{"raised_exception": ..., "exception_message": ...}`` or, when a
    metric failed, one such record per metric configuration.
    """
    records = [info] if "raised_exception" in info else list(info.values())
    return [
        str(r.get("exception_message"))
        for r in records
        if isinstance(r, dict) and r.get("raised_exception")
    ]
