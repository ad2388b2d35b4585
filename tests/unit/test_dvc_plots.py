"""dvc.yaml's Pareto plots and the gate's summary metrics, read by DVC itself in a tmp git+DVC
repo: every plot has one point per model for validation and for test accuracy, and the summary
gives `dvc metrics show` one short row per model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from squeeze.config.workspace import Workspace
from stages.evaluate import write_pareto
from stages.gate import SUMMARY, summary, write_summary
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[2]
# name, val, test, shipped bytes, p50 ms, passed the gate
MODELS = (
    ("teacher", 0.91, 0.905, 400_000, 2.0, False),
    ("kd_small", 0.885, 0.874, 90_000, 0.7, True),
    ("kd_small_int8", 0.88, 0.871, 30_000, 0.5, True),
    ("pruned", 0.70, 0.69, 80_000, 0.9, False),
)


def records() -> dict[str, dict[str, Any]]:
    return {
        name: {"name": name, "method": "m", "val_accuracy": val, "test_accuracy": test,
               "size_bytes": size * 3, "shipped_bytes": size, "latency_ms_p50": p50,
               "val_accuracy_ci": [val - 0.01, val + 0.01]}
        for name, val, test, size, p50, _ in MODELS
    }  # fmt: skip


def report() -> dict[str, Any]:
    passed = {name: ok for name, *_, ok in MODELS}
    return {"teacher": "teacher", "challenger": "kd_small_int8",
            "candidates": {name: {"passed": ok} for name, ok in passed.items()}}  # fmt: skip


def pareto_plots(dvc_yaml: dict[str, Any]) -> list[dict[str, Any]]:
    """The top-level plots that read plots/pareto.csv."""
    plots = [p for p in dvc_yaml["plots"] if "plots/pareto.csv" in json.dumps(p)]
    assert plots, "dvc.yaml has no plot of plots/pareto.csv"
    return plots


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git+DVC repo holding dvc.yaml's Pareto plots and the gate stage's metrics, with
    plots/pareto.csv and metrics/summary/ written by the stages' own writers."""
    real = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    gate = real["stages"]["gate"]
    assert SUMMARY in gate["metrics"]
    run(["git", "init", "-q"], tmp_path)
    run(["dvc", "init", "-q"], tmp_path)
    dvc_yaml = {"stages": {"gate": {"cmd": "true", "metrics": gate["metrics"]}},
                "plots": pareto_plots(real)}  # fmt: skip
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    write_pareto(Workspace(tmp_path), records())
    write_summary(tmp_path / SUMMARY, summary(records(), report()))
    return tmp_path


def check_pareto_plots(root: Path, names: set[str]) -> list[str]:
    """Assert every Pareto plot of `dvc plots show --json` in root has one point per model in
    `names` for validation and for test accuracy; return the plots' ids."""
    shown = run(["dvc", "plots", "show", "--json"], root)
    assert "could not find provided field" not in shown.stderr, shown.stderr
    data = json.loads(shown.stdout)
    assert not data.get("errors"), data["errors"]
    ids = [next(iter(p)) for p in pareto_plots(yaml.safe_load((root / "dvc.yaml").read_text()))]
    for plot_id in ids:
        (plot,) = data["data"][plot_id]
        points = plot["content"]["data"]["values"]
        for field in ("val_accuracy", "test_accuracy"):
            mine = [p for p in points if p["field"] == field]
            assert sorted(p["name"] for p in mine) == sorted(names), (plot_id, field)
            for p in mine:  # the plotted y is the column it names, and x is a number
                assert float(p["dvc_inferred_y_value"]) == float(p[field]) > 0
                assert float(p[plot["content"]["encoding"]["x"]["field"]]) > 0
    return ids


def test_every_pareto_plot_has_a_val_and_a_test_point_per_model(repo: Path) -> None:
    ids = check_pareto_plots(repo, {name for name, *_ in MODELS})
    assert set(ids) == {"accuracy_vs_size", "accuracy_vs_latency"}


def test_summary_metrics_are_one_short_row_per_model(repo: Path) -> None:
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    files = shown[""]["data"]
    rows = {Path(path).stem: entry["data"] for path, entry in files.items()}
    assert set(rows) == {name for name, *_ in MODELS}
    assert rows["kd_small_int8"] == {"val_accuracy": 0.88, "test_accuracy": 0.871,
                                     "shipped_bytes": 30_000, "latency_ms_p50": 0.5,
                                     "verdict": "challenger"}  # fmt: skip
    assert rows["kd_small"]["verdict"] == "pass" and rows["pruned"]["verdict"] == "fail"
    table = run(["dvc", "metrics", "show"], repo).stdout
    assert len(table.splitlines()) == 1 + len(MODELS) and max(map(len, table.splitlines())) < 160
