"""Quality gates over the candidates table, and the challenger they select.

Validation chooses, test reports: every gate, the policy order and the champion/challenger
decision read the validation split only (`val_*` fields of metrics/candidates.json); the test
figures are carried along for the report and never read here.

The gates are a Great Expectations suite over one row per model (the teacher included). Drops
are measured against the teacher on the same validation images, so columns are derived per row
first: ``accuracy_drop`` (teacher - candidate validation accuracy, absolute), its one-sided
upper bound ``accuracy_drop_bound`` at 1 - gate.alpha from a paired bootstrap of the
per-image differences (squeeze.measure.stats; the row's ``val_vs_teacher`` table), and
``worst_class_drop`` (the largest per-class drop). The accuracy-drop gate is a
non-inferiority test: the bound must not exceed ``max_accuracy_drop``. With
``gate.multiplicity`` holm or bonferroni the candidates' non-inferiority tests are one family and
each bound is taken at the level the family-wise rule gives it (``noninferiority_alphas``), so the
chance that any candidate worse than the margin passes stays under alpha. Each gate is a
column-map expectation, and GX names every row that broke it by the table's ``name`` column
(its ``unexpected_index_column_names``): that is the per-candidate verdict.
Every gated value must be present: a not-null expectation fails a row that lacks it (evaluate
gives every export an agreement figure, ONNX-only models included).

The teacher is a row like any other: it is the reference (its drops are 0) and it may be
promoted when it fits the size and latency limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from squeeze.config.sections import GateParams
from squeeze.decide.choose import ACCURACY, LATENCY, POLICY_METRIC, SIZE, rank
from squeeze.measure.stats import compare, difference_ci

TEACHER = "teacher"


SUITE = "gate"


# The metrics a champion/challenger comparison and the reports show (test: reported only).
COMPARED = (
    "val_accuracy", "val_accuracy_ci", "test_accuracy", "test_accuracy_ci", "size_bytes",
    "shipped_bytes", "latency_ms_p50", "latency_ms_p95",
)  # fmt: skip


class GateError(ValueError):
    """The candidates table cannot be gated (no teacher, no candidates); says what to run."""


@dataclass(frozen=True)
class Gate:
    """One threshold: a column of the candidates table and its bound (inclusive)."""

    name: str
    column: str
    bound: Literal["min", "max"]
    threshold: float


def gates(cfg: GateParams) -> list[Gate]:
    """The gates in report order, thresholds from params.gate."""
    return [
        Gate("accuracy", ACCURACY, "min", cfg.min_accuracy),
        Gate("accuracy_drop", "accuracy_drop_bound", "max", cfg.max_accuracy_drop),
        Gate("class_drop", "worst_class_drop", "max", cfg.max_class_drop),
        Gate("size", SIZE, "max", cfg.max_size_bytes),
        Gate("latency", LATENCY, "max", cfg.max_latency_ms),
        Gate("agreement", "agreement", "min", cfg.min_agreement),
    ]


def _drop(reference: float | None, value: float | None) -> float | None:
    """reference - value, rounded like the accuracies so that 0.92 - 0.89 == 0.03 exactly
    (a float-noise 0.0300000001 would fail a 0.03 threshold)."""
    if reference is None or value is None:
        return None
    return round(reference - value, 5)


def vs_teacher(record: dict[str, Any], cfg: GateParams, alpha: float) -> dict[str, Any] | None:
    """The paired comparison of a candidate with the teacher on validation (squeeze.measure.stats),
    non-inferiority within max_accuracy_drop at one-sided level alpha; None when evaluate
    recorded no table."""
    table = record.get("val_vs_teacher")
    return None if table is None else compare(table, alpha, cfg.max_accuracy_drop)


def _noninferior(table: list[list[int]], alpha: float, margin: float) -> bool:
    """compare(table, alpha, margin)["noninferior"] without its 95% interval and McNemar test:
    the one-sided (1 - alpha) bound, the two-sided (1 - 2·alpha) interval's low end, is at least
    -margin. The bootstrap's seed is fixed, so the bound only falls as alpha does."""
    return difference_ci(table, level=1 - 2 * alpha)[0] >= -margin


def noninferiority_alphas(
    candidates: dict[str, dict[str, Any]], cfg: GateParams, teacher: str = TEACHER
) -> dict[str, float]:
    """The one-sided level at which each model's non-inferiority to the teacher is judged.

    The family is every candidate with a paired table (the teacher, the reference, is no test of
    its own and keeps alpha). none: alpha each. bonferroni: alpha / m for the m of the family.
    holm: Holm's step-down on the p-values the bounds imply (a candidate's p-value is the
    smallest level at which its bound passes): with r candidates not yet passed, every one whose
    bound passes at alpha / r passes, and the rest are retried at alpha / (the fewer left) until
    a step passes none; each is reported at the last level it was judged at.
    """
    alphas = dict.fromkeys(candidates, cfg.alpha)
    family = sorted(
        n for n, r in candidates.items() if n != teacher and r.get("val_vs_teacher") is not None
    )
    if cfg.multiplicity == "none" or not family:
        return alphas
    if cfg.multiplicity == "bonferroni":
        return alphas | dict.fromkeys(family, cfg.alpha / len(family))
    remaining = family
    while remaining:
        level = cfg.alpha / len(remaining)
        alphas |= dict.fromkeys(remaining, level)
        left = [
            n for n in remaining
            if not _noninferior(candidates[n]["val_vs_teacher"], level, cfg.max_accuracy_drop)
        ]  # fmt: skip
        if len(left) == len(remaining):
            break
        remaining = left
    return alphas


def candidate_row(
    name: str,
    record: dict[str, Any],
    teacher: dict[str, Any],
    cfg: GateParams,
    alpha: float,
) -> dict[str, Any]:
    """One row of the candidates table: the gated validation metrics plus the derived drops,
    non-inferiority to the teacher judged at one-sided level alpha (noninferiority_alphas)."""
    per_class = record.get("val_per_class_accuracy") or {}
    drops = {
        cls: _drop(acc, per_class.get(cls))
        for cls, acc in teacher["val_per_class_accuracy"].items()
    }
    known = {cls: d for cls, d in drops.items() if d is not None}
    # a class missing from the record counts as unmeasured: the whole column value is null
    worst = max(known, key=known.__getitem__) if known and len(known) == len(drops) else None
    paired = vs_teacher(record, cfg, alpha)
    return {
        "name": name,
        ACCURACY: record.get(ACCURACY),
        "accuracy_drop": _drop(teacher.get(ACCURACY), record.get(ACCURACY)),
        # the drop's one-sided (1 - alpha) upper bound: what non-inferiority is judged on
        # + 0.0: the teacher's own bound is 0.0, not -0.0
        "accuracy_drop_bound": None if paired is None else round(-paired["lower_bound"], 5) + 0.0,
        "drop_p_value": None if paired is None else paired["p_value"],
        "drop_alpha": alpha,
        "worst_class_drop": known[worst] if worst else None,
        "worst_class": worst,
        SIZE: record.get(SIZE),
        LATENCY: record.get(LATENCY),
        "agreement": record.get("agreement"),
    }


def candidates_table(
    candidates: dict[str, dict[str, Any]], cfg: GateParams, teacher: str = TEACHER
) -> Any:
    """The candidates table as a DataFrame, one row per model (sorted by name).

    Raises:
        GateError: there is no teacher record to measure drops against.
    """
    import pandas as pd

    if teacher not in candidates:
        raise GateError(
            f"the candidates table has no {teacher!r} record, the reference of every drop gate; "
            "run the evaluate stage (dvc repro evaluate)"
        )
    alphas = noninferiority_alphas(candidates, cfg, teacher)
    rows = [
        candidate_row(name, candidates[name], candidates[teacher], cfg, alphas[name])
        for name in sorted(candidates)
    ]
    return pd.DataFrame(rows)


def expectation_specs(cfg: GateParams) -> list[tuple[str, str, dict[str, Any]]]:
    """(gate name, GX expectation, kwargs) per expectation of the suite, in report order."""
    specs = []
    for gate in gates(cfg):
        specs.append((gate.name, "expect_column_values_to_not_be_null", {"column": gate.column}))
        bound = {f"{gate.bound}_value": gate.threshold}
        specs.append(
            (gate.name, "expect_column_values_to_be_between", {"column": gate.column, **bound})
        )
    return specs


def failing_rows(table: Any, result: Any) -> set[str]:
    """Names of the rows an expectation result says failed: GX lists every one by the name
    column (squeeze.expectations.validate's index). When GX could not evaluate the expectation
    at all, no row can be said to pass it.
    """
    if result.unexpected_rows is None:
        return set() if result.success else set(table["name"])
    names = set(result.unexpected_rows)
    if len(names) != result.observed["unexpected_count"]:  # COMPLETE lists them all, once
        raise GateError(f"GX named {sorted(names)} failing {result.column!r}: {result.observed}")
    return names


def _json_value(value: Any) -> Any:
    """A table cell as JSON: NaN/NA become null, numpy scalars plain Python numbers."""
    import pandas as pd

    if value is None or pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value


def verdicts(table: Any, cfg: GateParams, failed: dict[str, set[str]]) -> dict[str, dict]:
    """Per candidate: passed, the failed gate names, and per gate the observed value + bound."""
    out = {}
    for row in table.to_dict("records"):
        name, per_gate = row["name"], {}
        for gate in gates(cfg):
            observed = _json_value(row[gate.column])
            entry: dict[str, Any] = {
                "passed": name not in failed[gate.name],
                "observed": observed,
                gate.bound: gate.threshold,
                "column": gate.column,
            }
            if gate.name == "class_drop" and observed is not None:
                entry["class"] = row["worst_class"]
            if gate.name == "accuracy_drop":
                entry["drop"] = _json_value(row["accuracy_drop"])
                entry["p_value"] = _json_value(row["drop_p_value"])
                # the one-sided level of the bound: alpha, or less under gate.multiplicity
                entry["alpha"] = _json_value(row["drop_alpha"])
            if observed is None:
                entry["note"] = "not measured: fails"
            per_gate[gate.name] = entry
        failures = [g for g, e in per_gate.items() if not e["passed"]]
        out[name] = {"passed": not failures, "failed": failures, "gates": per_gate}
    return out


def check(
    candidates: dict[str, dict[str, Any]],
    cfg: GateParams,
    docs_dir: Path | None = None,
    teacher: str = TEACHER,
) -> dict[str, Any]:
    """Run the gate suite over the candidates and select the challenger by params.gate.policy.

    Args:
        candidates: metrics/candidates.json, {name: record}; must hold the teacher.
        cfg: params.gate.
        docs_dir: where GX writes its data docs (HTML); none when None.
        teacher: the reference model's name.
    Returns:
        The gate report (metrics/gate.json): per candidate and per expectation results, the
        passing candidates in policy order, the challenger (or None) and the reasons.
    """
    from squeeze.expectations import validate

    table = candidates_table(candidates, cfg, teacher)
    specs = expectation_specs(cfg)
    result = validate(table, SUITE, [(e, kw) for _, e, kw in specs], docs_dir, index="name")
    failed: dict[str, set[str]] = {g.name: set() for g in gates(cfg)}
    expectations = []
    for (gate_name, _, _), res in zip(specs, result.results, strict=True):
        names = failing_rows(table, res)
        failed[gate_name] |= names
        expectations.append({
            "gate": gate_name,
            "expectation": res.expectation,
            "column": res.column,
            "kwargs": res.kwargs,
            "success": res.success,
            "observed": res.observed,
            "failing": sorted(names),
        })  # fmt: skip
    per_candidate = verdicts(table, cfg, failed)
    ranking = rank({n: candidates[n] for n, v in per_candidate.items() if v["passed"]}, cfg)
    challenger, reasons = select(ranking, per_candidate, candidates, cfg)
    return {
        "suite": SUITE,
        "success": result.success,
        "teacher": teacher,
        "policy": cfg.policy,
        "thresholds": cfg.model_dump(mode="json"),
        "multiplicity": cfg.multiplicity,
        "candidates": per_candidate,
        "expectations": expectations,
        "passed": sorted(ranking),
        "ranking": ranking,
        "challenger": challenger,
        "outcome": "challenger_selected" if challenger else "nothing_passed",
        "reasons": reasons,
    }


def select(
    ranking: list[str],
    per_candidate: dict[str, dict],
    candidates: dict[str, dict[str, Any]],
    cfg: GateParams,
) -> tuple[str | None, list[str]]:
    """The challenger (first of the ranking) and why; or None and why each candidate failed."""
    if not ranking:
        reasons = [f"no candidate passed every gate ({len(per_candidate)} checked)"]
        for name, verdict in per_candidate.items():
            broken = [_describe(verdict["gates"][g]) + f" ({g})" for g in verdict["failed"]]
            reasons.append(f"{name}: " + "; ".join(broken))
        return None, reasons
    best = ranking[0]
    metric = POLICY_METRIC[cfg.policy]
    reasons = [
        f"{len(ranking)} of {len(per_candidate)} candidates passed every gate",
        f"challenger {best}: policy {cfg.policy!r} ranks it first "
        f"({metric} {candidates[best][metric]}"
        + ("" if metric == ACCURACY else f", {ACCURACY} {candidates[best][ACCURACY]}")
        + ")",
    ]
    return best, reasons


def _describe(entry: dict[str, Any]) -> str:
    """'0.81 < min 0.85' for a failed gate entry of a verdict."""
    if entry["observed"] is None:
        return "not measured"
    if "min" in entry:
        return f"{entry['observed']} < min {entry['min']}"
    return f"{entry['observed']} > max {entry['max']}"
