"""The gate suite on hand-made candidates tables, challenger selection, champion vs challenger."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest

from squeeze.config.sections import GateParams
from squeeze.decide.champion import decide
from squeeze.decide.choose import ACCURACY, LATENCY, POLICIES, SIZE, rank
from squeeze.decide.gate import GateError, check

# the gates read per-class accuracies by name, whatever the names are
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip

CFG = GateParams(
    min_accuracy=0.85,
    max_accuracy_drop=0.03,
    max_class_drop=0.10,
    max_size_bytes=1_000_000,
    max_latency_ms=5.0,
    min_agreement=0.98,
    policy="smallest",
    alpha=0.05,
    noninferiority_margin=0.005,
    multiplicity="none",
    latency_margin=0.05,
)
N = 2000  # validation images of the hand-made tables
TEACHER_ACC = 0.91


def paired(a: float, b: float, swaps: int = 0, n: int = N) -> list[list[int]]:
    """A paired 2×2 table [[both right, only a], [only b, both wrong]] for accuracies a and b
    on n images: as few disagreements as the accuracies allow, plus `swaps` images each way
    (more disagreement, same accuracies: a wider interval)."""
    low = min(a, b)
    only_a, only_b = round((a - low) * n) + swaps, round((b - low) * n) + swaps
    both = round(low * n) - swaps
    return [[both, only_a], [only_b, n - both - only_a - only_b]]


def record(
    accuracy: float = 0.90,
    size: int = 200_000,
    p50: float = 0.5,
    agreement: float | None = 0.99,
    per_class: dict[str, float] | None = None,
    swaps: int = 0,
) -> dict[str, Any]:
    """A candidates.json record; every class at the overall validation accuracy unless
    overridden, paired with a teacher at TEACHER_ACC. The test figures are deliberately the
    opposite of validation's: a decision that read them would show."""
    return {
        "val_accuracy": accuracy,
        "val_accuracy_ci": [accuracy - 0.01, accuracy + 0.01],
        "val_per_class_accuracy": {c: accuracy for c in CLASSES} | (per_class or {}),
        "val_vs_teacher": paired(accuracy, TEACHER_ACC, swaps),
        "test_accuracy": 1 - accuracy,
        "test_accuracy_ci": [0.99 - accuracy, 1.01 - accuracy],
        "test_per_class_accuracy": {c: 1 - accuracy for c in CLASSES},
        "size_bytes": size * 2,
        "shipped_bytes": size,
        "latency_ms_p50": p50,
        "latency_ms_p95": p50 * 1.5,
        "agreement": agreement,
    }


def table(**candidates: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A candidates table with a passing teacher at TEACHER_ACC."""
    return {"teacher": record(accuracy=TEACHER_ACC, size=900_000, p50=2.0), **candidates}


# One candidate per gate that breaks that gate and no other (teacher at 0.91).
BREAKS_ONE = {
    "accuracy": (record(accuracy=0.89), {"min_accuracy": 0.895}),
    "accuracy_drop": (record(accuracy=0.87), {}),
    "class_drop": (record(per_class={"Shirt": 0.80}), {}),
    "size": (record(size=1_000_001), {}),
    "latency": (record(p50=5.01), {}),
    "agreement": (record(agreement=0.97), {}),
}


@pytest.mark.parametrize("gate", list(BREAKS_ONE))
def test_each_threshold_fails_on_its_own(gate: str) -> None:
    candidate, overrides = BREAKS_ONE[gate]
    report = check(table(bad=candidate), CFG.model_copy(update=overrides))
    verdict = report["candidates"]["bad"]
    assert verdict["failed"] == [gate] and not verdict["passed"]
    assert report["candidates"]["teacher"]["passed"]
    assert report["challenger"] == "teacher" and report["passed"] == ["teacher"]
    failing = [e for e in report["expectations"] if not e["success"]]
    assert [(e["gate"], e["failing"]) for e in failing] == [(gate, ["bad"])]


def test_observed_values_and_bounds_are_reported() -> None:
    report = check(table(c=record(accuracy=0.89, per_class={"Shirt": 0.83})), CFG)
    gates = report["candidates"]["c"]["gates"]
    assert gates["accuracy"] == {
        "passed": True,
        "observed": 0.89,
        "min": 0.85,
        "column": "val_accuracy",
    }
    drop = gates["accuracy_drop"]
    assert drop["drop"] == 0.02 and drop["column"] == "accuracy_drop_bound"
    assert 0.02 < drop["observed"] <= 0.03 and drop["passed"]  # the bound lies above the drop
    assert 0 <= drop["p_value"] < 0.05  # 40 images only the teacher gets right, none the other way
    assert gates["class_drop"] == {
        "passed": True, "observed": 0.08, "max": 0.10, "column": "worst_class_drop",
        "class": "Shirt",
    }  # fmt: skip
    assert gates["size"]["observed"] == 200_000 and gates["latency"]["max"] == 5.0


def test_drop_gate_is_non_inferiority_not_the_point_estimate() -> None:
    """The same 2-point drop passes when the models disagree on few images and fails when they
    disagree on many (the drop's upper bound then exceeds the 3-point margin)."""
    report = check(table(tight=record(accuracy=0.89), loose=record(accuracy=0.89, swaps=150)), CFG)
    tight, loose = (report["candidates"][n]["gates"]["accuracy_drop"] for n in ("tight", "loose"))
    assert tight["drop"] == loose["drop"] == 0.02
    assert tight["passed"] and not loose["passed"] and loose["observed"] > 0.03


# 2 points below the teacher on 2,000 images, disagreeing on 40 more images each way: the drop's
# one-sided bound is within the 3-point margin at alpha 0.05 (2.9 points), not at 0.025 (3.05)
EDGE = {"accuracy": 0.89, "swaps": 40}


@pytest.mark.parametrize(
    ("multiplicity", "with_bad", "edge_alpha", "edge_passes"),
    [
        ("none", True, 0.05, True),  # per candidate: the edge passes at alpha and is selected
        ("bonferroni", False, 0.025, False),  # alpha / 2 for each of 2
        # Holm: tight passes at alpha / 2, then the edge alone is judged at alpha
        ("holm", False, 0.05, True),
        # ... but with a third candidate that never passes, the edge stays at alpha / 2
        ("holm", True, 0.025, False),
    ],
)
def test_multiplicity_shares_alpha_over_every_candidate(
    multiplicity: str, with_bad: bool, edge_alpha: float, edge_passes: bool
) -> None:
    """gate.multiplicity: the family is every candidate's non-inferiority test; the smallest
    (edge) is selected only while its bound passes at the level the rule gives it."""
    candidates = {"tight": record(accuracy=0.89, size=100_000),
                  "edge": record(**EDGE, size=50_000)}  # fmt: skip
    if with_bad:
        candidates["bad"] = record(accuracy=0.87, size=10_000)
    report = check(table(**candidates), CFG.model_copy(update={"multiplicity": multiplicity}))
    assert report["multiplicity"] == multiplicity
    edge = report["candidates"]["edge"]
    assert edge["gates"]["accuracy_drop"]["alpha"] == edge_alpha
    assert edge["passed"] == edge_passes and report["candidates"]["tight"]["passed"]
    assert edge_passes or edge["failed"] == ["accuracy_drop"]
    assert report["challenger"] == ("edge" if edge_passes else "tight")
    assert report["candidates"]["teacher"]["gates"]["accuracy_drop"]["alpha"] == 0.05


def test_thresholds_are_inclusive_without_float_noise() -> None:
    # 0.91 - 0.88 is 0.030000000000000027 in floats; the class-drop gate must see 0.03 and pass
    exact = record(accuracy=0.9, size=1_000_000, p50=5.0, agreement=0.98, per_class={"Bag": 0.88})
    report = check(table(edge=exact), CFG.model_copy(update={"min_accuracy": 0.9,
                                                             "max_class_drop": 0.03}))  # fmt: skip
    assert report["candidates"]["edge"]["passed"], report["candidates"]["edge"]


def test_missing_agreement_or_accuracy_fails() -> None:
    no_source = record(agreement=None)
    unmeasured = record() | {"val_accuracy": None}
    report = check(table(int8=no_source, broken=unmeasured), CFG)
    int8 = report["candidates"]["int8"]
    assert int8["failed"] == ["agreement"] and int8["gates"]["agreement"]["observed"] is None
    broken = report["candidates"]["broken"]
    assert broken["failed"] == ["accuracy"]
    assert broken["gates"]["accuracy"]["note"] == "not measured: fails"


@pytest.mark.parametrize(
    ("policy", "winner"), [("smallest", "small"), ("fastest", "fast"), ("most_accurate", "sharp")]
)
def test_policy_picks_the_challenger_among_passing_ones(policy: str, winner: str) -> None:
    candidates = table(
        small=record(accuracy=0.89, size=50_000, p50=1.0),
        fast=record(accuracy=0.895, size=300_000, p50=0.2),
        sharp=record(accuracy=0.905, size=800_000, p50=1.5),
        tiny_but_bad=record(accuracy=0.70, size=10_000, p50=0.1),
    )
    # the teacher (900 kB) is over this size limit, so it does not compete
    report = check(candidates, CFG.model_copy(update={"policy": policy, "max_size_bytes": 850_000}))
    assert report["challenger"] == winner and report["outcome"] == "challenger_selected"
    assert "tiny_but_bad" not in report["ranking"] and report["ranking"][0] == winner
    assert policy in report["reasons"][1]


@pytest.mark.parametrize(
    ("policy", "order"),
    [("smallest", ["same_size_sharper", "same_size_a", "same_size_b", "sharp", "fast"]),
     ("fastest", ["fast", "same_size_sharper", "same_size_a", "same_size_b", "sharp"]),
     ("most_accurate", ["sharp", "same_size_sharper", "same_size_a", "same_size_b", "fast"])],
)  # fmt: skip
def test_the_chooser_breaks_ties_by_its_order_then_the_name(policy: str, order: list) -> None:
    """smallest: size, then accuracy; fastest: latency, accuracy, size; most_accurate: accuracy,
    size; the name last (squeeze.decide.choose, the benchmark's chooser too)."""
    passing = {
        "same_size_b": {ACCURACY: 0.90, SIZE: 100, LATENCY: 2.0},
        "same_size_a": {ACCURACY: 0.90, SIZE: 100, LATENCY: 2.0},
        "same_size_sharper": {ACCURACY: 0.91, SIZE: 100, LATENCY: 2.0},
        "fast": {ACCURACY: 0.90, SIZE: 300, LATENCY: 1.0},
        "sharp": {ACCURACY: 0.95, SIZE: 200, LATENCY: 3.0},
    }
    assert rank(passing, CFG.model_copy(update={"policy": policy})) == order


def test_every_policy_params_allow_has_an_order() -> None:
    assert set(POLICIES) == set(get_args(GateParams.model_fields["policy"].annotation))


def test_every_failing_candidate_is_named_past_twenty() -> None:
    """GX names every failing row (not only the 20 values a SUMMARY lists)."""
    too_big = {f"big{i:02d}": record(size=2_000_000 + i) for i in range(25)}
    report = check(table(ok=record(), **too_big), CFG)
    assert {n for n, v in report["candidates"].items() if "size" in v["failed"]} == set(too_big)
    assert report["challenger"] == "ok"


def test_nothing_passed_names_every_failure(tmp_path: Path) -> None:
    strict = CFG.model_copy(update={"min_accuracy": 0.99})
    report = check(table(a=record(), b=record(size=2_000_000)), strict, docs_dir=tmp_path)
    assert report["challenger"] is None and report["outcome"] == "nothing_passed"
    assert report["passed"] == [] and not report["success"]
    assert any(
        r.startswith("b: ") and "(size)" in r and "(accuracy)" in r for r in report["reasons"]
    )
    assert (tmp_path / "index.html").exists()  # the GX data docs


def test_no_teacher_is_a_clear_error() -> None:
    with pytest.raises(GateError, match="no 'teacher' record.*evaluate"):
        check({"a": record()}, CFG)


# -- champion vs challenger (pure decisions) ---------------------------------------------------

BYTES = "shipped_bytes"
CHAMPION = {"val_accuracy": 0.90, BYTES: 100_000, "latency_ms_p50": 1.0}


@pytest.mark.parametrize(
    ("policy", "changes", "swaps", "outcome", "why"),
    [
        ("smallest", {BYTES: 90_000}, 0, "promoted", "non-inferior"),
        # 0.1 point less accurate on 2,000 images, few disagreements: within the 0.5 margin
        ("smallest", {BYTES: 90_000, "val_accuracy": 0.899}, 2, "promoted", "non-inferior"),
        # the same point difference, but disagreeing on 60 images: the bound passes the margin
        ("smallest", {BYTES: 90_000, "val_accuracy": 0.899}, 30, "champion_kept", "not non"),
        ("smallest", {BYTES: 50_000, "val_accuracy": 0.89}, 0, "champion_kept", "not non"),
        (
            "smallest",
            {BYTES: 110_000, "val_accuracy": 0.95},
            0,
            "champion_kept",
            "not below",
        ),
        # same size, 2 points more accurate: McNemar p far below alpha
        ("smallest", {"val_accuracy": 0.92}, 0, "promoted", "significantly more accurate"),
        # same size, 0.1 point more accurate: not significant
        ("smallest", {"val_accuracy": 0.901}, 0, "champion_kept", "not significantly"),
        ("fastest", {"latency_ms_p50": 0.5}, 0, "promoted", "non-inferior"),
        # gate.latency_margin 5%: a median 1% below is timing noise, 10% below is a win
        ("fastest", {"latency_ms_p50": 0.99}, 0, "champion_kept", "not below"),
        ("fastest", {"latency_ms_p50": 0.9}, 0, "promoted", "non-inferior"),
        # bytes are exact: one byte smaller is smaller, whatever the latency margin
        ("smallest", {BYTES: 99_999}, 0, "promoted", "non-inferior"),
        ("fastest", {"latency_ms_p50": 1.5, BYTES: 10}, 0, "champion_kept", "not below"),
        ("most_accurate", {"val_accuracy": 0.92, BYTES: 500_000}, 0, "promoted", "signif"),
        ("most_accurate", {"val_accuracy": 0.901, BYTES: 90_000}, 0, "champion_kept", "not"),
    ],
)
def test_champion_vs_challenger(
    policy: str, changes: dict[str, float], swaps: int, outcome: str, why: str
) -> None:
    cfg = CFG.model_copy(update={"policy": policy})
    challenger = CHAMPION | changes
    pairs = paired(challenger["val_accuracy"], CHAMPION["val_accuracy"], swaps)
    decision = decide(challenger, CHAMPION, pairs, cfg)
    assert decision["outcome"] == outcome, decision
    assert decision["promote"] == (outcome == "promoted") and why in decision["reasons"][0]
    stats = decision["comparison"]
    assert stats["table"] == pairs and "McNemar exact p" in decision["reasons"][1]
    assert stats["ci95"][0] <= stats["difference"] <= stats["ci95"][1]


def test_latency_margin_zero_is_any_lower_median() -> None:
    cfg = CFG.model_copy(update={"policy": "fastest", "latency_margin": 0.0})
    challenger = CHAMPION | {"latency_ms_p50": 0.99}
    decision = decide(challenger, CHAMPION, paired(0.9, 0.9), cfg)
    assert decision["outcome"] == "promoted", decision


def test_no_champion_failing_champion_and_identical_model() -> None:
    worse = CHAMPION | {"val_accuracy": 0.80}
    assert decide(worse, None, None, CFG)["outcome"] == "promoted"
    failing = decide(worse, CHAMPION, None, CFG, champion_failed=["checksums"])
    assert failing["promote"] and "fails today's gates: checksums" in failing["reasons"][0]
    same = decide(CHAMPION, CHAMPION, paired(0.9, 0.9), CFG, identical=True)
    assert same == {
        "promote": False,
        "outcome": "already_in_production",
        "reasons": ["the challenger's model is byte-identical to production's"],
        "comparison": None,
    }


# -- the stage outside Prefect (as `dvc repro` runs it), its report as the flow's artifacts ------


def test_stage_runs_outside_a_flow_and_its_report_makes_the_artifacts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stage writes the report and the data docs and prints its verdict, no Prefect involved;
    in a flow, the artifacts are made from the report it wrote (flows.artifacts), and outside a
    run none is published (Prefect would start a temporary API server and warn for each)."""
    import warnings

    from flows.artifacts import gate_markdown, gate_rows, in_run, publish
    from squeeze.config.files import load_params
    from squeeze.config.workspace import read_json, write_json
    from stages import gate as stage

    params = load_params(Path(__file__).resolve().parents[2])
    write_json(tmp_path / "metrics" / "candidates.json", table(kd=record()))
    stage.run(tmp_path, params)
    report = read_json(tmp_path / "metrics" / "gate.json")
    assert report["docs"] == "reports/gate/index.html" and report["challenger"]
    assert (tmp_path / "reports" / "gate" / "index.html").exists()
    assert set(report["candidates"]) == {"kd", "teacher"}
    assert capsys.readouterr().out.splitlines() == stage.summary_lines(report)
    rows = gate_rows(report)
    assert [(r["candidate"], r["verdict"]) for r in rows] == [("kd", "pass"), ("teacher", "pass")]
    assert rows[0]["accuracy"].endswith(f"✓ (min {params.gate.min_accuracy})")
    assert f"## Gate: challenger **{report['challenger']}**" in gate_markdown(report)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # Prefect's "outside of a run" warning
        assert not in_run() and publish("markdown", markdown="x", key="k") is None
