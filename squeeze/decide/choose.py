"""The one chooser: rank models on validation under an objective (smallest, fastest,
most_accurate). The gate picks its challenger with it and the benchmark its rows.
"""

from __future__ import annotations

from typing import Any

from squeeze.config.sections import GateParams

# the size a gate and the `smallest` policy compare: the shipped file (squeeze.registry.package)
SIZE = "shipped_bytes"


ACCURACY = "val_accuracy"  # the accuracy every decision reads


def policy_key(record: dict[str, Any], policy: str) -> tuple:
    """Sort key of a passing candidate under a policy: best first, ties broken by accuracy
    (or size) and finally the name, so the choice is deterministic."""
    name, acc, size = record["name"], record[ACCURACY], record[SIZE]
    if policy == "smallest":
        return (size, -acc, name)
    if policy == "fastest":
        return (record["latency_ms_p50"], -acc, size, name)
    return (-acc, size, name)  # most_accurate (all passing ones are within max_size_bytes)


def rank(passing: dict[str, dict[str, Any]], cfg: GateParams) -> list[str]:
    """Names of the passing candidates, best first under params.gate.policy."""
    records = [{**rec, "name": name} for name, rec in passing.items()]
    return [r["name"] for r in sorted(records, key=lambda r: policy_key(r, cfg.policy))]


POLICY_METRIC = {"smallest": SIZE, "fastest": "latency_ms_p50", "most_accurate": ACCURACY}
