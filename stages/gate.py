"""Stage `gate`: the Great Expectations gate suite over the candidates table; picks the challenger.

Reads params `gate.*` and metrics/candidates.json; writes metrics/gate.json (per candidate and
per expectation results with observed values, the passing candidates in policy order, the
challenger or "nothing passed", and the reasons) and GX data docs in reports/gate/.
Whether the challenger replaces the production champion is the promote stage's decision.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import task

from squeeze.config.params import Params
from squeeze.config.sections import GateParams
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.decide.gate import check, gates
from stages.artifacts import publish, say
from stages.candidate import stage_main

DOCS = "reports/gate"


def run(root: Path, params: Params) -> None:
    """Gate every candidate, write the report and data docs, log and publish the verdict."""
    ws = Workspace(root)
    candidates = read_json(ws.metrics("candidates"))
    docs = ws.report("gate")
    shutil.rmtree(docs, ignore_errors=True)  # the docs show this run's validation only
    report = check(candidates, params.gate, docs_dir=docs)
    report["docs"] = f"{DOCS}/index.html"  # relative: gate.json stays the same across machines
    write_json(ws.metrics("gate"), report)
    for line in summary_lines(report):
        say(line)
    publish_artifacts(report)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One line per candidate and the decision, for the log."""
    lines = []
    for name, verdict in report["candidates"].items():
        status = "pass" if verdict["passed"] else "FAIL " + ", ".join(verdict["failed"])
        lines.append(f"gate {name}: {status}")
    head = report["challenger"] or "nothing passed"
    lines.append(f"gate decision: {head} — {'; '.join(report['reasons'])}")
    return lines


def cell(entry: dict[str, Any]) -> str:
    """A table cell: '0.8912 ✓ (min 0.85)'."""
    bound = "min" if "min" in entry else "max"
    mark = "✓" if entry["passed"] else "✗"
    return f"{entry['observed']} {mark} ({bound} {entry[bound]})"


def table_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """Candidates × gates, for the table artifact."""
    names = [g.name for g in gates_of(report)]
    rows = []
    for name, verdict in report["candidates"].items():
        row = {"candidate": name, "verdict": "pass" if verdict["passed"] else "FAIL"}
        row.update({g: cell(verdict["gates"][g]) for g in names})
        rows.append(row)
    return rows


def gates_of(report: dict[str, Any]) -> list[Any]:
    """The gates a report was made with (rebuilt from its recorded thresholds)."""
    return gates(GateParams.model_validate(report["thresholds"]))


def decision_markdown(report: dict[str, Any]) -> str:
    """The gate decision as Markdown."""
    head = (
        f"challenger **{report['challenger']}**" if report["challenger"] else "**nothing passed**"
    )
    reasons = "\n".join(f"- {r}" for r in report["reasons"])
    return (
        f"## Gate: {head}\n\npolicy `{report['policy']}`; passing, best first: "
        f"{', '.join(report['ranking']) or 'none'}\n\n{reasons}\n\n"
        f"GX data docs: `{report['docs']}`\n"
    )


def publish_artifacts(report: dict[str, Any]) -> None:
    """The candidates × gates table and the decision, on the run page (no-op outside a run)."""
    publish(
        "table",
        table=table_rows(report),
        key="gate-verdicts",
        description="Every candidate against every gate (observed value, ✓/✗, threshold)",
    )
    publish("markdown", markdown=decision_markdown(report), key="gate-decision")


gate = task(run, name="gate", timeout_seconds=600)


def main() -> None:
    stage_main(run)


if __name__ == "__main__":
    main()
