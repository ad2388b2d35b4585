"""The pipeline end to end on the smoke profile, in a fresh git+DVC repo: `dvc repro` and the
Prefect flow (on a real Prefect API) run the same stages and agree on what is up to date."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.compress import retrain_and_compress
from squeeze.cli import main as cli
from squeeze.config.dvcyaml import stages_ran as ran_stages
from squeeze.config.files import load_params
from squeeze.config.workspace import Workspace, read_json
from squeeze.registry.package import SHIPPED
from squeeze.registry.registry import registry_of
from tests.conftest import dvc_up_to_date, one_per_method, params_yaml, run, set_param
from tests.integration.conftest import artifacts_of
from tests.unit.test_dvc_plots import check_pareto_plots

pytestmark = pytest.mark.slow


def raw_merge(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())["merge"]["ensemble_small"]


def shuffle_training_files(folder: Path) -> None:
    """New data at the source: the same images and labels in another order (still valid)."""
    images, labels = (folder / f"train-{kind}-idx{dim}-ubyte.gz" for kind, dim in
                      (("images", 3), ("labels", 1)))  # fmt: skip
    order = np.random.default_rng(7).permutation(60000)
    for path, header, item in ((images, 16, 784), (labels, 8, 1)):
        blob = gzip.decompress(path.read_bytes())
        body = np.frombuffer(blob, np.uint8, offset=header).reshape(60000, item)[order]
        path.write_bytes(gzip.compress(blob[:header] + body.tobytes()))


def run_name(flow_run_id) -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).name


@pytest.mark.longest  # about 12 min in CI: it starts first (tests/conftest.py)
def test_dvc_repro_runs_once_then_nothing_and_flow_agrees(
    workspace: Path, fmnist_dir: Path, prefect_api, capsys: pytest.CaptureFixture[str]
) -> None:
    one_per_method(workspace)
    source = workspace.parent / "source"
    shutil.copytree(fmnist_dir, source)
    set_param(workspace, "ingest", "source", str(source))
    first = run(["dvc", "repro"], workspace).stdout
    stages = ran_stages(first)
    assert stages[:2] == ["ingest", "train_teacher"] and stages[-3:] == [
        "evaluate",
        "gate",
        "promote",
    ]
    candidates = read_json(Workspace(workspace).metrics("candidates"))
    assert candidates["teacher"]["val_accuracy"] > 0.5  # smoke teacher: clearly above chance (0.1)
    # every plot of pareto.csv in dvc.yaml has a val and a test point per model, and `dvc metrics
    # show` is the gate's summary, one short row per model (no 300 KB candidates table)
    check_pareto_plots(workspace, set(candidates))
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], workspace).stdout)[""]["data"]
    summary = {Path(p).stem: m["data"] for p, m in shown.items() if p.startswith("metrics/summary")}
    assert set(summary) == set(candidates) and "metrics/candidates.json" not in shown
    assert {m["verdict"] for m in summary.values()} <= {"challenger", "pass", "fail"}

    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == []
    result = retrain_and_compress(workspace=str(workspace))
    assert result["ran"] == [] and set(result["skipped"]) == set(stages)

    # a change to an evaluate param re-runs evaluate and what reads its (new) measurements,
    # nothing upstream of it, in both entry points
    downstream = ["evaluate", "gate", "promote"]
    set_param(workspace, "evaluate", "runs", 45)
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == downstream
    set_param(workspace, "evaluate", "runs", 50)
    state = retrain_and_compress(workspace=str(workspace), return_state=True)
    assert state.result()["ran"] == downstream
    flow_run_id = state.state_details.flow_run_id
    assert run_name(flow_run_id).startswith("3 stages, ")  # the run's name says what it did
    artifacts = set(artifacts_of(flow_run_id))
    assert {
        "candidates",
        "pareto",
        "gate-verdicts",
        "gate-decision",
        "promote-decision",
    } <= artifacts
    assert dvc_up_to_date(workspace)

    # one finalist fewer: the search chooses again from the trials it holds (it runs none) and
    # no finalist whose recipe stayed is rebuilt; the run shows the trials' front and finalists
    set_param(workspace, "search", "finalists", 1)
    state = retrain_and_compress(workspace=str(workspace), return_state=True)
    assert state.result()["ran"] == ["search", *downstream]
    found = artifacts_of(state.state_details.flow_run_id)
    assert "data:image/png;base64," in found["search-front"].data
    table = found["search-finalists"].data
    finalists = json.loads(table) if isinstance(table, str) else table
    assert [row["name"] for row in finalists] == ["search_1", "search_uniform"]
    assert set(read_json(Workspace(workspace).metrics("candidates"))) == set(candidates) - {
        "search_2"
    }
    assert dvc_up_to_date(workspace)

    # a third ensemble member added by hand: `dvc repro` stops on the stale merge stage and
    # names the fix; after `squeeze sync` the ensemble is rebuilt on all three members
    members = [*load_params(workspace).merge["ensemble_small"].upstreams, "teacher_ch50"]
    set_param(workspace, "merge", "ensemble_small", {**raw_merge(workspace), "upstreams": members})
    stale = run(["dvc", "repro"], workspace, check=False)
    assert stale.returncode != 0 and "run `squeeze sync`" in stale.stdout + stale.stderr
    run(["squeeze", "sync"], workspace)
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == [
        "merge-ensemble_small",
        *downstream,
    ]
    measured = read_json(Workspace(workspace).metrics("candidates"))["ensemble_small"]
    assert measured["upstream"] == members and len(members) == 3

    # a candidate removed from params.yaml leaves the table, the gate and the registry's choice
    # (its leftover models/ folder is ignored), in both entry points
    with params_yaml(workspace) as data:
        del data["quantize"]["kd_small_ch50_int8"]
    run(["squeeze", "sync"], workspace)
    assert ran_stages(run(["dvc", "repro"], workspace).stdout) == downstream
    for metrics in ("candidates", "gate"):
        report = read_json(Workspace(workspace).metrics(metrics))
        names = report if metrics == "candidates" else report["candidates"]
        assert "kd_small_ch50_int8" not in names and "kd_small_ch50" in names, metrics
    assert dvc_up_to_date(workspace)

    # production's model damaged in the registry, nothing else changed: the `production` stamp
    # shows it to both entry points, and promote replaces it with a passing challenger (here the
    # same model: that repairs production); once repaired, promote checks once more, then rests
    registry = registry_of(workspace, load_params(workspace))
    for entry in ("dvc", "flow"):
        before = registry.production()["version"]
        Path(registry.url(before, SHIPPED)).write_bytes(b"bit rot")
        assert registry.damaged_production().endswith(f"versions/{before}/{SHIPPED}")
        if entry == "dvc":
            assert ran_stages(run(["dvc", "repro"], workspace).stdout) == ["promote"]
        else:
            assert retrain_and_compress(workspace=str(workspace))["ran"] == ["promote"]
        assert registry.damaged_production() is None
        assert registry.production()["version"] == before + 1
        # the stamp flips back to intact: promote runs once more (never restored from DVC's run
        # cache: it acts on the registry), then nothing does
        assert ran_stages(run(["dvc", "repro"], workspace).stdout) == ["promote"]
        assert ran_stages(run(["dvc", "repro"], workspace).stdout) == []
        assert registry.production()["version"] == before + 1

    # the gates refuse every candidate: `squeeze run` says so and exits 5 (only gate and promote
    # re-run: their params changed)
    smoke_min = load_params(workspace).gate.min_accuracy
    set_param(workspace, "gate", "min_accuracy", 0.999)
    capsys.readouterr()
    assert cli.main(["-w", str(workspace), "run"]) == cli.GATE_REFUSED
    # it ends with a table of every stage (ran or skipped, seconds) and the decision
    removed = {"quantize@kd_small_ch50_int8", "finalist-search_2"}  # taken out above
    current = ["source", "production", *(s for s in stages if s not in removed)]
    table = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in table[1 : len(current) + 1]}
    assert table[0].split() == ["stage", "seconds"] and set(rows) == set(current)
    assert list(rows)[:4] == current[:4] and list(rows)[-3:] == downstream  # in run order
    ran = {name for name, row in rows.items() if row[0] == "ran"}
    assert ran == {"source", "production", "gate", "promote"}
    assert all(float(row[1]) >= 0 for row in rows.values())
    assert table[len(current) + 1].split()[:6] == [
        "total:",
        "4",
        "of",
        str(len(current)),
        "ran",
        "wall",
    ]
    assert table[-1].startswith("decision (this run): nothing_passed; production model: ")
    assert read_json(Workspace(workspace).metrics("promote"))["outcome"] == "nothing_passed"
    set_param(workspace, "gate", "min_accuracy", smoke_min)

    # new data at the source: the next (scheduled) run ingests it and retrains everything. The
    # graph is cut first to the teacher, one candidate and the search with its finalists (each
    # other method's rebuild is what the first `dvc repro` above already ran)
    with params_yaml(workspace) as data:
        data |= {"distill": {}, "quantize": {}, "merge": {},
                 "prune": {"teacher_ch50": data["prune"]["teacher_ch50"]}}  # fmt: skip
    run(["squeeze", "sync"], workspace)
    shuffle_training_files(source)
    rebuilt = {"ingest", "train_teacher", "search", "finalist-search_1", "finalist-search_uniform",
               "prune@teacher_ch50", *downstream}  # fmt: skip
    assert rebuilt <= set(current)  # the stages' names as the run's table gave them
    assert set(retrain_and_compress(workspace=str(workspace))["ran"]) == rebuilt
    assert dvc_up_to_date(workspace)


def test_corrupt_source_stops_ingest_and_keeps_nothing(workspace: Path, fmnist_dir: Path) -> None:
    source = workspace.parent / "source"
    shutil.copytree(fmnist_dir, source)
    labels = source / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-10]))
    set_param(workspace, "ingest", "source", str(source))
    proc = run(["dvc", "repro"], workspace, check=False)
    assert proc.returncode != 0
    assert f"{labels}: header says shape (10000,)" in proc.stderr + proc.stdout
    assert not (workspace / "data" / "splits").exists()
    assert not (workspace / "models").exists()
