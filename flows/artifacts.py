"""The run's artifacts, published by the flow from what the stages wrote.

The stages are plain Python (no Prefect: `dvc repro` runs them too) and leave their results in
files: evaluate metrics/candidates.json, gate metrics/gate.json and plots/pareto.png, promote
metrics/promote.json. After one of them ran in the flow, its task (flows.in_process) reads those
files back and files them on the run page under fixed keys: `candidates`, `gate-verdicts`,
`gate-decision` and `pareto`, `promote-comparison`, `promote-decision` and
`registry-production`. Outside a run nothing is published (Prefect 3.9 would warn, start a
temporary API server, ~10 s, and file an artifact that belongs to no run), and a failure to
create one is logged, never raised: a report must not fail the stage that it reports on.
"""

from __future__ import annotations

import base64
import csv
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

from squeeze.config.params import Params
from squeeze.config.sections import GateParams
from squeeze.config.workspace import Workspace, read_json
from squeeze.decide.gate import COMPARED, gates
from squeeze.measure.plots import search_png
from squeeze.methods.search import REFERENCE, accuracy_floor
from squeeze.registry.card import summary_markdown
from squeeze.registry.registry import RegistryError, registry_of
from squeeze.registry.store import StoreError
from stages import promote
from stages import search as search_stage

# the finalists table's columns, of each recipe of search/finalists.json
FINALIST_COLUMNS = ("kind", "trial", "search_accuracy", "latency_ms_p50", "shipped_bytes",
                    "within_budget", "width", "weights", "sparsity", "qat", "distill_alpha",
                    "temperature", "lr", "policy")  # fmt: skip
# the candidates table's columns, of each record of metrics/candidates.json
CANDIDATE_COLUMNS = (
    "name", "method", "val_accuracy", "val_accuracy_ci", "test_accuracy", "test_accuracy_ci",
    "size_bytes", "shipped_bytes", "nonzero_params", "macs", "latency_ms_p50", "latency_ms_p95",
    "agreement",
)  # fmt: skip


def in_run() -> bool:
    """Whether the caller is inside a Prefect flow or task run."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def publish(kind: str, **kwargs: Any) -> str | None:
    """Create one artifact (kind: "table", "markdown" or "link") when inside a run.

    Returns the artifact id, or None when outside a run or when the API refused it.
    """
    if not in_run():
        return None
    create = {
        "table": create_table_artifact,
        "markdown": create_markdown_artifact,
        "link": create_link_artifact,
    }[kind]
    try:
        return str(create(**kwargs))
    except Exception as err:  # the API is down or refused it: the stage's work still stands
        get_run_logger().warning(
            "could not create the %s artifact %r: %s", kind, kwargs.get("key"), err
        )
        return None


def link_for(location: str) -> str:
    """A link the Prefect UI can render: s3:// as is, a local path as a file:// URL."""
    return location if "://" in location else Path(location).resolve().as_uri()


# -- evaluate -----------------------------------------------------------------------------------


def publish_evaluate(root: Path, params: Params) -> None:
    """The candidates table (models in params' order, upstreams first)."""
    records = read_json(Workspace(root).metrics("candidates"))
    rows = [{k: records[name][k] for k in CANDIDATE_COLUMNS} for name in params.model_names()]
    publish("table", key="candidates", table=rows, description="evaluate: every model measured")


def publish_pareto(root: Path) -> None:
    """The Pareto plot the gate stage drew (it knows the limits and the verdicts)."""
    # the UI cannot load a file on the worker's disk, so the PNG travels inside the markdown
    png = base64.b64encode(Workspace(root).plot("pareto.png").read_bytes()).decode()
    publish("markdown", key="pareto",
            description="validation accuracy vs size and latency: the front and the gate's limits",
            markdown=f"![Pareto plot](data:image/png;base64,{png})")  # fmt: skip


# -- search -------------------------------------------------------------------------------------


def publish_search(root: Path, params: Params) -> None:
    """The budget search's trials as a Pareto plot (search/trials.csv, drawn here) and its
    finalists as a table, from what the search stage wrote; nothing without a search."""
    ws = Workspace(root)
    found = read_json(ws.search(search_stage.FINALISTS))
    if not found["finalists"]:
        return
    with ws.search(search_stage.TRIALS).open() as f:
        rows = list(csv.DictReader(f))
    cfg, teacher = params.search, found["teacher"]
    limits = {"shipped_bytes": cfg.max_shipped_bytes, "latency_ms_p50": cfg.max_latency_ms}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "search.png"
        search_png(rows, teacher, accuracy_floor(cfg, teacher[REFERENCE]), limits, path)
        png = base64.b64encode(path.read_bytes()).decode()
    publish("markdown", key="search-front",
            description="budget search: every trial on the search split, the budget, the finalists",
            markdown=f"![Budget search](data:image/png;base64,{png})")  # fmt: skip
    table = [{"name": name, **{k: r[k] for k in FINALIST_COLUMNS}}
             for name, r in found["finalists"].items()]  # fmt: skip
    about = f"budget search finalists (objective {cfg.objective}; study {found['study']})"
    publish("table", key="search-finalists", table=table, description=about)


# -- gate ---------------------------------------------------------------------------------------


def publish_gate(root: Path) -> None:
    """The candidates × gates table and the decision, from metrics/gate.json."""
    report = read_json(Workspace(root).metrics("gate"))
    publish(
        "table",
        table=gate_rows(report),
        key="gate-verdicts",
        description="Every candidate against every gate (observed value, ✓/✗, threshold)",
    )
    publish("markdown", markdown=gate_markdown(report), key="gate-decision")
    publish_pareto(root)


def gate_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """Candidates × gates, for the table artifact."""
    names = [g.name for g in gates(GateParams.model_validate(report["thresholds"]))]
    rows = []
    for name, verdict in report["candidates"].items():
        row = {"candidate": name, "verdict": "pass" if verdict["passed"] else "FAIL"}
        row.update({g: cell(verdict["gates"][g]) for g in names})
        rows.append(row)
    return rows


def cell(entry: dict[str, Any]) -> str:
    """A table cell: '0.8912 ✓ (min 0.85)'."""
    bound = "min" if "min" in entry else "max"
    mark = "✓" if entry["passed"] else "✗"
    return f"{entry['observed']} {mark} ({bound} {entry[bound]})"


def gate_markdown(report: dict[str, Any]) -> str:
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


# -- promote ------------------------------------------------------------------------------------


def publish_promote(root: Path, params: Params) -> None:
    """Champion vs challenger, the decision with production's card summary, and a link to the
    production model, from metrics/promote.json and the registry."""
    result = read_json(Workspace(root).metrics("promote"))
    reg = result["registry"]
    publish(
        "table",
        table=comparison_rows(result),
        key="promote-comparison",
        description="Champion (production) vs challenger, measured in the same process",
    )
    publish("markdown", markdown=promote_markdown(root, params, result), key="promote-decision")
    if reg["model"]:
        publish(
            "link",
            link=link_for(reg["model"]),
            link_text=f"{reg['family']} version {reg['production']} (production)",
            key="registry-production",
        )


def comparison_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Champion vs challenger, one row per compared metric (for the table artifact)."""
    champ = (result["champion"] or {}).get("measured") or {}  # None: a damaged champion
    chall = result["challenger"]["measured"] if result["challenger"] else {}
    return [
        {"metric": key, "champion": champ.get(key), "challenger": chall.get(key)}
        for key in COMPARED
    ]


def promote_markdown(root: Path, params: Params, result: dict[str, Any]) -> str:
    """The decision, its reasons and the card of what is in production now."""
    text = f"## Promote: {result['outcome']}\n\n{promote.headline(result)}\n\n" + "\n".join(
        f"- {r}" for r in result["reasons"]
    )
    production = result["registry"]["production"]
    if production:
        try:
            card = registry_of(root, params).card(production)
            text += "\n\n" + summary_markdown(card)
        except (StoreError, RegistryError) as err:  # unreachable, or damaged since promote
            text += f"\n\n(card unavailable: {err})"
    return text
