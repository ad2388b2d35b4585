"""Stage `gate`: the Great Expectations gate suite over the candidates table; picks the challenger.

Reads params `gate.*` and metrics/candidates.json; writes metrics/gate.json (per candidate and
per expectation results with observed values, the passing candidates in policy order, the
challenger or "nothing passed", and the reasons) and GX data docs in reports/gate/.
Whether the challenger replaces the production champion is the promote stage's decision. In a
flow run, the verdicts and the decision become artifacts of the run (flows.artifacts, from
metrics/gate.json).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from squeeze.config.params import Params
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.decide.gate import check
from stages.candidate import stage_main

DOCS = "reports/gate"


def run(root: Path, params: Params) -> None:
    """Gate every candidate, write the report and data docs, print the verdict."""
    ws = Workspace(root)
    candidates = read_json(ws.metrics("candidates"))
    docs = ws.report("gate")
    shutil.rmtree(docs, ignore_errors=True)  # the docs show this run's validation only
    report = check(candidates, params.gate, docs_dir=docs)
    report["docs"] = f"{DOCS}/index.html"  # relative: gate.json stays the same across machines
    write_json(ws.metrics("gate"), report)
    for line in summary_lines(report):
        print(line, flush=True)


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
