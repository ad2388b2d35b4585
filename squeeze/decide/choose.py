"""The one chooser: rank models on validation by an ordered list of metrics. The gate picks its
challenger with it (params.gate.policy names the order) and the benchmark its targets' rows
(benchmarks/choose.py: the most accurate, ties by size or latency).

One rule for every choice: compare the metrics of the order in turn, validation accuracy
maximised and every other metric minimised, and break what ties remain by the name, so the
choice is deterministic. Only validation is read: no order names a test metric.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from squeeze.config.sections import GateParams

ACCURACY = "val_accuracy"  # the accuracy every decision reads (maximised)


# the accuracy the budget search ranks its trials by (squeeze.methods.search), also maximised:
# trials are scored on the search split, which no gate decision reads
SEARCH_ACCURACY = "search_accuracy"


# the size a gate and the `smallest` policy compare: the shipped file (squeeze.registry.package)
SIZE = "shipped_bytes"


LATENCY = "latency_ms_p50"  # batch-1 median latency (squeeze.measure)


Order = tuple[str, ...]
"""Metrics compared in turn, best first: ACCURACY highest, any other lowest; then the name."""


POLICIES: dict[str, Order] = {
    "smallest": (SIZE, ACCURACY),
    "fastest": (LATENCY, ACCURACY, SIZE),
    "most_accurate": (ACCURACY, SIZE),  # all passing ones are within max_size_bytes
}


# the metric each policy is about (what its reasons and the champion comparison name)
POLICY_METRIC = {policy: order[0] for policy, order in POLICIES.items()}


def sort_key(record: dict[str, Any], order: Order) -> tuple:
    """A record's sort key under order: its metrics in turn (accuracies negated, so that the
    lowest key is the best record), then its name."""
    maximised = (ACCURACY, SEARCH_ACCURACY)
    return (*(-record[m] if m in maximised else record[m] for m in order), record["name"])


def ranked(records: Iterable[dict[str, Any]], order: Order) -> list[dict[str, Any]]:
    """The records (each with a "name"), best first under order."""
    return sorted(records, key=lambda r: sort_key(r, order))


def best(records: Iterable[dict[str, Any]], order: Order) -> dict[str, Any] | None:
    """The best record under order; None when there are none."""
    return next(iter(ranked(records, order)), None)


def rank(passing: dict[str, dict[str, Any]], cfg: GateParams) -> list[str]:
    """Names of the passing candidates, best first under params.gate.policy."""
    records = [{**rec, "name": name} for name, rec in passing.items()]
    return [r["name"] for r in ranked(records, POLICIES[cfg.policy])]
