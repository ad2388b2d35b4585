"""The Pareto PNG: the front is the non-dominated set, and the figure draws validation accuracy,
the front and the gate's limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from squeeze.config.sections import GateParams
from squeeze.measure import plots
from squeeze.measure.plots import pareto_front, pareto_png
from tests.unit.test_dvc_plots import records

# only the limits the plot draws (model_construct: the other gate keys do not matter here)
GATE = GateParams.model_construct(min_accuracy=0.85, max_size_bytes=100_000, max_latency_ms=1.0)


def test_front_is_the_non_dominated_points_by_size() -> None:
    # (size, accuracy): 1 dominates 3 (smaller and as accurate); 4 ties 0 in size but is worse
    points = [(10, 0.80), (20, 0.90), (40, 0.95), (30, 0.90), (10, 0.70)]
    assert pareto_front(points) == [0, 1, 2]


def test_png_plots_validation_with_front_and_gate_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = []
    real = plots.draw_panel

    def spy(ax, recs, key, verdicts, teacher):  # noqa: ANN001, ANN202
        real(ax, recs, key, verdicts, teacher)
        drawn.append(ax)

    monkeypatch.setattr(plots, "draw_panel", spy)
    recs = list(records().values())
    pareto_png(recs, tmp_path / "pareto.png", GATE, "teacher", {r["name"]: True for r in recs})
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    size, latency = drawn
    for ax, limit in ((size, GATE.max_size_bytes), (latency, GATE.max_latency_ms)):
        labels = [t.get_text() for t in ax.texts]
        # the front (by size: kd_small_int8, kd_small, teacher) and the teacher, each once;
        # "pruned" is dominated and unlabelled
        assert "pruned" not in labels and labels.count("teacher") == 1
        assert ax.get_ylabel().startswith("validation accuracy")
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert lines["gate.min_accuracy 0.85"].get_ydata()[0] == pytest.approx(85)
        assert any(line.get_xdata()[0] == limit for line in lines.values())
        front = lines["non-dominated front"]
        assert len(front.get_xdata()) == len(set(labels) - {"teacher"}) + 1  # teacher on it
    # the y is validation accuracy (kd_small: val 0.885, test 0.874)
    at = {t.get_text(): t.xy for t in size.texts}
    assert at["kd_small"] == (90_000, pytest.approx(88.5))
