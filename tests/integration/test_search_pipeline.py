"""A budget instead of a graph, end to end: `squeeze profile budget` (no hand-written candidate)
on the smoke data, `squeeze run` as a user runs it, gives a promoted model that the search found;
a budget no trial meets stops the run at the search with one line, builds nothing and leaves
production as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from squeeze.config.files import load_params
from squeeze.config.workspace import Workspace, read_json
from squeeze.registry.registry import registry_of
from tests.conftest import run, set_param
from tests.integration.test_cli import squeeze_run

pytestmark = pytest.mark.slow


def test_a_budget_alone_promotes_a_finalist_and_one_nobody_meets_promotes_nothing(
    workspace: Path,
) -> None:
    # the smoke data and a four-trial search, then the budget profile: no hand-written
    # candidate; a 3-epoch smoke teacher's trials and finalists cannot keep 1 point, so the
    # budget is 30 points here, in the search and at the gate
    run(["squeeze", "profile", "smoke"], workspace)
    run(["squeeze", "profile", "budget"], workspace)
    set_param(workspace, "search", "max_accuracy_drop", 0.3)
    set_param(workspace, "gate", "max_accuracy_drop", 0.3)
    run(["squeeze", "sync"], workspace)
    params = load_params(workspace)
    assert params.model_names() == ["teacher", "search_1", "search_2", "search_3", "search_uniform"]
    status, ours = squeeze_run(workspace)
    assert status == 0, ours
    ws = Workspace(workspace)
    decision = read_json(ws.metrics("promote"))
    assert decision["outcome"] == "promoted", decision["reasons"]
    promoted = decision["challenger"]["name"]
    assert promoted in params.finalists()
    registry = registry_of(workspace, params)
    production = registry.production()
    lineage = registry.card(production["version"])["lineage"]
    recipe = read_json(ws.search(f"recipes/{promoted}.json"))
    assert lineage["upstream_chain"][0]["search"] == recipe  # study, trial, seed, policy
    found = read_json(ws.search("finalists.json"))
    assert lineage["search"]["trials_sha256"] == found["trials_sha256"]
    assert (
        recipe["study"].startswith(found["study"]) and lineage["search"]["study"] == found["study"]
    )

    # nothing reaches 1 ns: the search fails naming the limit, and nothing after it runs
    built = {name: (ws.model(name) / "model.json").read_bytes() for name in params.finalists()}
    set_param(workspace, "search", "max_latency_ms", 1e-6)
    status, ours = squeeze_run(workspace)
    assert status == 1 and ours.startswith("squeeze: search failed: ")
    assert "the tightest limit is max_latency_ms, met by 0 of 4 trials" in ours
    assert registry.production() == production
    assert read_json(ws.metrics("promote"))["challenger"]["name"] == promoted
    assert {n: (ws.model(n) / "model.json").read_bytes() for n in built} == built
