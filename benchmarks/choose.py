"""Every row the benchmark picks, picked on validation; test figures are only reported.

A "best" candidate (the one a peer is built against, the one that meets a target) is the
highest validation accuracy among those that qualify, ties by a smaller shipped file or a lower
latency, then the name: squeeze's own chooser (squeeze.decide.choose, the gate's) under an
order of metrics. The qualifying conditions on accuracy are also read on validation. The test
split of the chosen row is what the report shows, and whether the target still holds there is
reported, never used to choose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from squeeze.config.params import Params
from squeeze.decide.choose import ACCURACY, LATENCY, SIZE, Order, best

CHOOSE = "val"  # the split every choice reads (squeeze.decide.choose.ACCURACY is val_accuracy)
REPORT = "test"  # the split the report shows for what was chosen
Row = dict[str, Any]


def accuracy(row: Row, split: str) -> float:
    return row[f"{split}_accuracy"]


def drop(row: Row, teacher: Row, split: str) -> float:
    """Accuracy points (as a fraction) the row loses against the teacher on split."""
    return accuracy(teacher, split) - accuracy(row, split)


def shipped_ratio(row: Row, teacher: Row) -> float:
    """Teacher's shipped file ÷ the row's shipped file (both xz: like with like)."""
    return teacher["shipped_bytes"] / row["shipped_bytes"]


def onnx_ratio(row: Row, teacher: Row) -> float:
    """Teacher's .onnx ÷ the row's .onnx (unpacked, what onnxruntime loads)."""
    return teacher["size_bytes"] / row["size_bytes"]


def speedup(row: Row, teacher: Row) -> float:
    """Teacher's batch-1 p50 latency ÷ the row's."""
    return teacher["latency_ms_p50"] / row["latency_ms_p50"]


def macs_ratio(row: Row, teacher: Row) -> float:
    """Teacher's multiply-accumulates per image ÷ the row's (counted in the ONNX graph)."""
    return teacher["macs"] / row["macs"]


BY_SIZE: Order = (ACCURACY, SIZE)  # the most accurate on validation, ties: smaller shipped file
BY_LATENCY: Order = (ACCURACY, LATENCY)  # the most accurate on validation, ties: lower latency


def unstructured(records: dict[str, Row], params: Params) -> list[str]:
    """squeeze's unstructured pruning candidates that were evaluated, in params order: each gets
    its own peer at its sparsity and budget (no choice, so none to make on validation)."""
    return [n for n, c in params.prune.items() if c.kind == "unstructured" and n in records]


def best_static_int8(records: dict[str, Row], params: Params) -> str | None:
    """squeeze's best static int8 quantization candidate (ties: smaller shipped file, then name)."""
    names = [n for n, c in params.quantize.items()
             if c.mode == "static" and c.weights == "int8" and n in records]  # fmt: skip
    chosen = best([records[n] for n in names], BY_SIZE)
    return None if chosen is None else chosen["name"]


@dataclass(frozen=True)
class Target:
    """One of the issue's targets: a condition on a row, given the teacher and a split.

    `holds(row, teacher, split)` reads the accuracy of `split` only; size and latency are the
    same on every split. order ranks the rows that meet it (squeeze.decide.choose).
    """

    key: str
    label: str
    holds: Callable[[Row, Row, str], bool]
    order: Order


MAX_DROP = 0.01  # "≤ 1 pt drop", as a fraction
STRICT_DROP = 0.005  # "≤ 0.5 pt drop"


TARGETS = (
    Target(
        "accurate_small", "≥ 92.5% with a deployable file ≤ 64 KB (the shipped model.onnx.xz)",
        lambda r, t, s: accuracy(r, s) >= 0.925 and r["shipped_bytes"] <= 64 * 1024, BY_SIZE,
    ),
    Target(
        "shipped_40x", "≥ 40× smaller shipped file than the teacher's (xz ÷ xz), ≤ 1 pt drop",
        lambda r, t, s: shipped_ratio(r, t) >= 40 and drop(r, t, s) <= MAX_DROP, BY_SIZE,
    ),
    Target(
        "latency_3x", "≥ 3× lower batch-1 latency (p50, onnxruntime), ≤ 1 pt drop",
        lambda r, t, s: speedup(r, t) >= 3 and drop(r, t, s) <= MAX_DROP,
        BY_LATENCY,
    ),
    Target(
        "shipped_60x", "≥ 60× smaller shipped file than the teacher's (xz ÷ xz), ≤ 1 pt drop "
        "(past Deep Compression's 35–49×)",
        lambda r, t, s: shipped_ratio(r, t) >= 60 and drop(r, t, s) <= MAX_DROP, BY_SIZE,
    ),
    Target(
        "latency_5x", "≥ 5× lower batch-1 latency (p50, onnxruntime), ≤ 0.5 pt drop",
        lambda r, t, s: speedup(r, t) >= 5 and drop(r, t, s) <= STRICT_DROP,
        BY_LATENCY,
    ),
    Target(
        "macs_2x", "≥ 2× fewer MACs and ≥ 1.8× lower batch-1 latency (p50), ≤ 0.5 pt drop",
        lambda r, t, s: (macs_ratio(r, t) >= 2 and speedup(r, t) >= 1.8
                         and drop(r, t, s) <= STRICT_DROP),
        BY_LATENCY,
    ),
)  # fmt: skip


def by_method(rows: list[Row]) -> dict[str, str]:
    """{method: the name of its candidate most accurate on validation (ties: the smaller shipped
    file, then the name)} over the candidate rows, methods in the order they first appear."""
    candidates = [r for r in rows if r["role"] == "candidate"]
    return {
        method: best([r for r in candidates if r["method"] == method], BY_SIZE)["name"]
        for method in dict.fromkeys(r["method"] for r in candidates)
    }


def choose_target(target: Target, candidates: list[Row], teacher: Row) -> dict[str, Any]:
    """The best candidate meeting target on validation, and whether it still holds on test.

    Returns {"target", "label", "chosen": name or None, "holds_on_test": bool or None}.
    """
    meeting = [r for r in candidates if target.holds(r, teacher, CHOOSE)]
    chosen = best(meeting, target.order)
    return {
        "target": target.key,
        "label": target.label,
        "chosen": None if chosen is None else chosen["name"],
        "holds_on_test": None if chosen is None else target.holds(chosen, teacher, REPORT),
    }
