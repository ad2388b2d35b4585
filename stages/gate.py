"""Stage `gate`: the Great Expectations gate suite over the candidates table; picks the challenger.

Reads params `gate.*` and metrics/candidates.json; writes metrics/gate.json (per candidate and
per expectation results with observed values, the passing candidates in policy order, the
challenger or "nothing passed", and the reasons), GX data docs in reports/gate/, the summary
metrics (metrics/summary/<name>.json, one small file per model: what `dvc metrics show` and
`dvc metrics diff` print, one row each) and plots/pareto.png (validation accuracy vs size and
latency with the front and these limits).
Whether the challenger replaces the production champion is the promote stage's decision. In a
flow run, the verdicts and the decision become artifacts of the run (flows.artifacts, from
metrics/gate.json, and the Pareto plot).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.decide.gate import check
from squeeze.measure.plots import pareto_png
from stages.candidate import stage_main

DOCS = "reports/gate"
SUMMARY = "metrics/summary"
# a summary row's measurements, of each record of metrics/candidates.json
SUMMARY_COLUMNS = ("val_accuracy", "test_accuracy", "shipped_bytes", "latency_ms_p50")


def run(root: Path, params: Params) -> None:
    """Gate every candidate, write the report and data docs, print the verdict."""
    ws = Workspace(root)
    candidates = read_json(ws.metrics("candidates"))
    docs = ws.report("gate")
    shutil.rmtree(docs, ignore_errors=True)  # the docs show this run's validation only
    report = check(candidates, params.gate, docs_dir=docs)
    report["docs"] = f"{DOCS}/index.html"  # relative: gate.json stays the same across machines
    write_json(ws.metrics("gate"), report)
    write_summary(root / SUMMARY, summary(candidates, report))
    passed = {name: v["passed"] for name, v in report["candidates"].items()}
    named = [{**record, "name": name} for name, record in candidates.items()]
    pareto_png(named, ws.plot("pareto.png"), params.gate, report["teacher"], passed)
    for line in summary_lines(report):
        print(line, flush=True)


def summary(candidates: dict[str, Any], report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One row per model: validation and test accuracy, shipped bytes, p50 latency and the gate's
    verdict ("challenger", "pass" or "fail"; the teacher is gated like any other row)."""
    rows = {}
    for name, record in candidates.items():
        passed = report["candidates"][name]["passed"]
        status = "challenger" if name == report["challenger"] else "pass" if passed else "fail"
        rows[name] = {key: record[key] for key in SUMMARY_COLUMNS} | {"verdict": status}
    return rows


def write_summary(folder: Path, rows: dict[str, dict[str, Any]]) -> None:
    """metrics/summary/<name>.json per row; a model no longer in the table leaves no file."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, row in rows.items():
        write_json(folder / f"{name}.json", row)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per candidate and the decision, for the log."""
    lines = []
    for name, verdict in report["candidates"].items():
        status = "pass" if verdict["passed"] else "FAIL " + ", ".join(verdict["failed"])
        lines.append(f"gate {name}: {status}")
    head = report["challenger"] or "nothing passed"
    lines.append(f"gate decision: {head} — {'; '.join(report['reasons'])}")
    return lines


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
