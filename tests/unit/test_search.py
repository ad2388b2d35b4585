"""The budget search (squeeze.methods.search, stages/search.py, stages/finalist.py) on real
Fashion-MNIST images and a trained tiny ConvNet: finalists within the budget, built in full by
their recipe; trials that read neither validation nor test; a killed search that resumes; a
budget nobody meets and a network with nothing to prune refused in one clear message."""

from __future__ import annotations

import copy
import csv
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import optuna
import pytest
import sqlalchemy
from torch import nn

from squeeze.config.params import Params
from squeeze.config.sections import EvaluateParams, SearchParams
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.spec import Split
from squeeze.data.splits import hold_out, load_split, save_split
from squeeze.methods import MethodData
from squeeze.methods import search as method
from squeeze.methods.prune import ChannelGroup
from squeeze.methods.search import (
    REFERENCE,
    RESCORED,
    TEACHER_MS,
    UNIFORM,
    Choice,
    SearchError,
    at_best_fidelity,
    best_trials,
    channel_groups_of,
    chosen,
    compress,
    distinct_widths,
    done,
    finalist_trials,
    front,
    label,
    nearest,
    ordinal,
    pooled,
    quantize_only,
    speed_space,
)
from squeeze.nets.models import Classifier, load_checkpoint
from stages import finalist, search
from tests.unit.conftest import make_tiny_fit

TIMING = EvaluateParams(threads=1, warmup=1, runs=10, rounds=2, throughput_batch=64)
LATENCY_COLUMNS = ("latency_ms_p50",)  # timings differ from run to run; nothing else may


def search_params(**changes: Any) -> SearchParams:
    """A search of a few trials, each a 1-epoch fine-tune on 300 images, a budget of 30 points
    (the tiny teacher scores about 75%)."""
    fit = make_tiny_fit(epochs=1, lr=0.01)
    base = {
        "finalists": 2, "objective": "smallest", "max_accuracy_drop": 0.3, "drop": "absolute",
        "max_latency_ms": None, "max_shipped_bytes": None, "trials": 3, "uniform_trials": 2,
        "hours": None, "parallel": 1, "seed": 0, "storage": None, "max_sparsity": 0.75,
        "sparsity_step": 0.25, "sensitivity_limit": 0.5, "importance": "l2", "round_to": None,
        "distill_alpha": [0.0, 0.9], "temperature": [2.0, 8.0], "lr": [0.005, 0.05],
        "max_unstructured": 0.5, "weights": ["fp32", "int8", "int4"], "qat": [False, True],
        "fp32_first_layer": [False, True], "fp32_layers": [0, 1], "calibration_samples": 64,
        "trial_images": 300, "trial_fit": fit, "rescore": 0, "rescore_epochs": 2, "steps": 1,
        "fit": fit, "zeroing_epochs": 1,
        "students": {"widths": [1.0], "width_arg": None, "alpha": 0.9, "temperature": 4.0,
                     "fit": make_tiny_fit(epochs=2)},
    }  # fmt: skip
    return SearchParams(**(base | changes))


@pytest.fixture
def search_ws(workspace: Workspace, tmp_path: Path) -> Workspace:
    """A copy of the stage workspace whose train split has lost 20% of every class to a search
    split, as ingest carves it (ingest.search_fraction)."""
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(workspace.root, ws.root)
    train, held = hold_out(load_split(workspace.split("train")), 0.2, np.random.default_rng(0))
    save_split(train, ws.split("train"))
    save_split(held, ws.split("search"))
    return ws


def with_search(stage_params: Any, cfg: SearchParams) -> Params:
    return stage_params(search=cfg, evaluate=TIMING)


def trial_rows(ws: Workspace) -> list[dict[str, str]]:
    """search/trials.csv without the timing columns."""
    with ws.search(search.TRIALS).open() as f:
        return [{k: v for k, v in row.items() if k not in LATENCY_COLUMNS}
                for row in csv.DictReader(f)]  # fmt: skip


def recipes(ws: Workspace) -> dict[str, dict[str, Any]]:
    """The finalists' recipes without their timing."""
    found = read_json(ws.search(search.FINALISTS))["finalists"]
    return {name: {k: v for k, v in r.items() if k not in LATENCY_COLUMNS}
            for name, r in found.items()}  # fmt: skip


def test_the_search_writes_finalists_within_the_budget_and_each_is_built_by_its_recipe(
    search_ws: Workspace, stage_params: Any, capsys: pytest.CaptureFixture
) -> None:
    params = with_search(stage_params, search_params())
    teacher = search_ws.model("teacher") / "model.json"  # dropout draws from torch's generator
    write_json(
        teacher, read_json(teacher) | {"arch": {**read_json(teacher)["arch"], "dropout": 0.5}}
    )
    search.run(search_ws.root, params)
    found = read_json(search_ws.search(search.FINALISTS))
    # the log says, before any trial, where the budget's accuracy floor lies
    reference = found["teacher"]["trial_reference_accuracy"]
    assert (f"accuracy floor: {reference - params.search.max_accuracy_drop:.2%} on the search "
            f"split (teacher {found['teacher']['search_accuracy']:.2%}; {reference:.2%} after a "
            "trial's fine-tune") in capsys.readouterr().out  # fmt: skip
    assert list(found["finalists"]) == ["search_1", "search_2", "search_uniform"]
    grid = {0.25, 0.5, 0.75}
    for name, recipe in found["finalists"].items():
        assert recipe["within_budget"] and set(recipe["policy"].values()) <= grid, name
        drop = found["teacher"]["search_accuracy"] - recipe["search_accuracy"]
        assert drop <= 0.3 + 1e-9
    uniform = found["finalists"]["search_uniform"]
    assert uniform["kind"] == "uniform" and len(set(uniform["policy"].values())) <= 1
    # search_1: the smallest trial within the budget (every trial here is within it)
    sizes = [r["shipped_bytes"] for r in trial_rows(search_ws) if r["study"] == "per_layer"]
    assert found["finalists"]["search_1"]["shipped_bytes"] == min(map(int, sizes))
    rows = trial_rows(search_ws)
    assert [r["study"] for r in rows] == ["uniform"] * 2 + ["per_layer"] * 3
    assert {r["finalist"] for r in rows} == {"", "search_1", "search_2", "search_uniform"}
    assert set(found["sensitivity"]) == {"net.features.0", "net.features.4"}
    assert found["speed_levers"] == {}  # smallest: every lever makes the file smaller
    # every weight layer quantized alone (int4, the lowest asked), named as in the export
    assert set(found["weight_sensitivity"]) == {"/net/features/features.0/Conv",
                                                "/net/features/features.4/Conv",
                                                "/net/classifier/Gemm"}  # fmt: skip

    # the uniform search starts at quantization alone (search.quantize_only): int4, every channel
    storage = search.storage_url(search_ws, params)
    uniform = optuna.load_study(study_name=f"{found['study']}-uniform", storage=storage)
    assert {k: uniform.trials[0].params[k] for k in ("share", "weights")} == {
        "share": 0.0, "weights": "int4"}  # fmt: skip
    assert uniform.trials[0].user_attrs["choice"]["policy"] == {}
    # the per-layer search starts where the uniform one is best (search.warm_start)
    first = optuna.load_study(study_name=found["study"], storage=storage).trials[0]
    start = dict(best_trials(done(uniform), params.search)[0].params)
    share = start.pop("share")
    assert {k: first.params[k] for k in start} == start
    # the same choice scores the same, though other trials ran between the two
    best_uniform = best_trials(done(uniform), params.search)[0].user_attrs
    assert {k: first.user_attrs[k] for k in ("search_accuracy", "shipped_bytes")} == {
        k: best_uniform[k] for k in ("search_accuracy", "shipped_bytes")
    }
    groups = {k: v for k, v in first.params.items() if k not in start}
    assert set(groups) <= set(found["sensitivity"])
    for root, value in groups.items():  # the uniform share, or the top of the group's range
        assert value == min(share, first.distributions[root].choices[-1]), root

    for name in ("search_1", "search_2"):
        check_built_by_recipe(search_ws, params, name, found["finalists"][name])


def test_the_uniform_search_first_tries_each_quantized_type_alone_most_compressed_first() -> None:
    every = search_params(uniform_trials=6)
    assert quantize_only(every) == [{"share": 0.0, "weights": "int4"},
                                    {"share": 0.0, "weights": "int8"}]  # fmt: skip
    # the order is the types', not the list's; at most half the uniform trials are spent so
    assert quantize_only(search_params(weights=["int4", "fp32", "int8"], uniform_trials=3)) == [
        {"share": 0.0, "weights": "int4"}]  # fmt: skip
    assert quantize_only(search_params(weights=["int8"])) == [{"share": 0.0}]  # not asked
    assert quantize_only(search_params(weights=["fp32"], uniform_trials=6)) == []
    assert quantize_only(search_params(uniform_trials=1)) == []
    # with students to choose from, quantization alone of the widest network asked
    widths = search_params().students.model_copy(update={"widths": [0.5, 1.0]})
    assert quantize_only(search_params(students=widths, weights=["int8"])) == [
        {"share": 0.0, "width": 1.0}]  # fmt: skip


def check_built_by_recipe(ws: Workspace, params: Params, name: str, found: dict) -> None:
    """Build finalist `name` and check it is its recipe: each group's width (of the teacher, or
    of its student of the recipe's width), the sparsity, the weight type of its shipped file,
    the recipe in its lineage."""
    finalist.run(ws.root, params, name)
    record = read_json(ws.model(name) / "model.json")
    widths = {"net.features.0": 8, "net.features.4": 16}
    for layer, teacher_width in widths.items():
        width = round(teacher_width * found["width"])
        kept = record["layers"][layer]["channels"]
        assert kept == width - int(width * found["policy"].get(layer, 0.0)), layer
    # the zeroing pass reaches its share (to a weight); a fine-tune on the int8 grid (qat) then
    # rounds a few more of the smallest weights to zero, never fewer (+0.031 for one recipe on
    # an AVX-512 Xeon)
    assert found["sparsity"] - 0.01 <= record["sparsity"] <= found["sparsity"] + 0.06
    assert record["search"] == found | {"seed": 0}
    assert record["method"] == "search_finalist" and record["upstream"] == ["teacher"]
    # its passes as they ran: the channel pass only where the recipe removes channels, the
    # zeroing pass for search.zeroing_epochs; each at the finalists' lr, not at the lr its
    # trial's short fine-tune searched
    passes = record["params"]["passes"]
    kinds = ["structured"] * bool(found["policy"]) + ["unstructured"] * bool(found["sparsity"])
    assert [p["kind"] for p in passes] == kinds
    epochs = {"structured": params.search.fit.epochs, "unstructured": params.search.zeroing_epochs}
    assert all(p["fit"]["epochs"] == epochs[p["kind"]] for p in passes)
    assert {p["fit"]["lr"] for p in passes} == {params.search.fit.lr} != {found["lr"]}
    if found["weights"] == "fp32":
        assert record["format"] == "safetensors"
        load_checkpoint(ws.model(name))
        return
    model = onnx.load(ws.model(name) / "model.onnx")
    ops = {node.op_type for node in model.graph.node}
    assert record["format"] == "onnx" and "DequantizeLinear" in ops
    # its own fp32 export beside it: what evaluate measures its agreement against
    assert record["val_agreement_fp32"] > 0 and (ws.model(name) / "fp32.onnx").exists()
    assert record["on_trained_grid"] == found["qat"]
    bits = {t.data_type for t in model.graph.initializer  # weights, not int32 biases
            if t.name.endswith("_quantized") and len(t.dims) > 1}  # fmt: skip
    assert bits == {onnx.TensorProto.INT8 if found["weights"] == "int8" else onnx.TensorProto.INT4}
    # the layers its recipe keeps fp32 read their weights straight from fp32 initializers
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    weight_of = {node.name: node.input[1] for node in model.graph.node
                 if node.op_type in ("Conv", "Gemm")}  # fmt: skip
    kept = {name for name, weight in weight_of.items() if weight in floats}
    assert kept - {"/net/features/features.0/Conv"} == set(found["fp32_layers"]) - {
        "/net/features/features.0/Conv"
    }
    assert set(found["fp32_layers"]) <= kept


def test_a_quantized_sparse_finalist_is_built_by_its_recipe(
    search_ws: Workspace, stage_params: Any
) -> None:
    """Every trial int8, half its weights zeroed and its layer most sensitive to quantization
    kept fp32: the finalist ships int8 ONNX, as sparse, that layer fp32."""
    cfg = search_params(max_unstructured=0.5, sparsity_step=0.5, weights=["int8"], qat=[True],
                        fp32_layers=[1, 1], finalists=1, trials=2, uniform_trials=1)  # fmt: skip
    params = with_search(stage_params, cfg)
    search.run(search_ws.root, params)
    found = read_json(search_ws.search(search.FINALISTS))["finalists"]
    assert {r["weights"] for r in found.values()} == {"int8"}
    sensitivity = read_json(search_ws.search(search.FINALISTS))["weight_sensitivity"]
    # a layer that loses most (drops are whole images of the search split: ties happen)
    most = {layer for layer, drop in sensitivity.items() if drop == max(sensitivity.values())}
    (kept,) = {tuple(r["fp32_layers"]) for r in found.values()}
    assert len(kept) == 1 and kept[0] in most
    check_built_by_recipe(search_ws, params, "search_1", found["search_1"])


def test_shares_that_keep_the_same_width_are_measured_and_searched_once() -> None:
    """round_to 8 on a 16-wide group: 10% to 50% all keep 8 channels, so 10% alone stands for
    them; without rounding every share keeps a width of its own."""
    group = ChannelGroup(layers=("conv",), width=16)
    grid = [0.1, 0.2, 0.3, 0.4, 0.5]
    assert distinct_widths(group, grid, search_params(round_to=8)) == [0.1]
    assert distinct_widths(group, grid, search_params(round_to=None)) == grid


def test_a_choice_that_removes_no_channel_is_fine_tuned_once_by_its_zeroing_pass(
    tiny_trained: Classifier, small_fmnist: dict[str, Split]
) -> None:
    """Its channel pass would only fine-tune the start: it is not run, so a finalist of such a
    choice costs one pass of search.fit, not two; a choice that removes channels has both."""
    cfg = search_params(steps=2)
    data = MethodData(small_fmnist["train"], small_fmnist["val"], tiny_trained)
    keep_all = Choice(policy={}, distill_alpha=0.5, temperature=4.0, lr=0.01, sparsity=0.5,
                      weights="int8", qat=True, fp32_first_layer=False, fp32_layers=[],
                      width=1.0)  # fmt: skip
    model, history, record, passes = compress(tiny_trained, keep_all, cfg, 2, cfg.fit, data)
    assert len(history) == 2 and record["channels_removed"] == 0
    assert [p.kind for p in passes.passes] == ["unstructured"]
    assert record["sparsity"] == pytest.approx(0.5, abs=0.01)
    root = channel_groups_of(tiny_trained, cfg)[0].layers[0]
    halved = Choice(**{**keep_all.__dict__, "policy": {root: 0.5}})
    _, history, record, passes = compress(tiny_trained, halved, cfg, 2, cfg.fit, data)
    assert len(history) == 4 and record["channels_removed"] > 0
    assert [p.kind for p in passes.passes] == ["structured", "unstructured"]
    assert record["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_a_finalists_zeroing_pass_fine_tunes_for_zeroing_epochs(
    tiny_trained: Classifier, small_fmnist: dict[str, Split], monkeypatch: pytest.MonkeyPatch
) -> None:
    """compress with zeroing_epochs (a finalist's) fine-tunes the zeroing pass for that many
    epochs and the channel pass for fit.epochs; without it (a trial's) both for fit.epochs."""
    passes: list[tuple[str, int]] = []

    def spied(model: Classifier, cfg: Any, data: MethodData, **kwargs: Any) -> Any:
        passes.append((cfg.kind, cfg.fit.epochs))
        return real(model, cfg, data, **kwargs)

    real = method.prune
    monkeypatch.setattr(method, "prune", spied)
    cfg = search_params(steps=1)
    cfg = cfg.model_copy(update={"fit": cfg.fit.model_copy(update={"epochs": 2})})
    data = MethodData(small_fmnist["train"], small_fmnist["val"], tiny_trained)
    root = channel_groups_of(tiny_trained, cfg)[0].layers[0]
    choice = Choice(policy={root: 0.5}, distill_alpha=0.0, temperature=4.0, lr=0.01,
                    sparsity=0.5, weights="fp32", qat=False, fp32_first_layer=False,
                    fp32_layers=[], width=1.0)  # fmt: skip
    compress(tiny_trained, choice, cfg, 1, cfg.fit, data, zeroing_epochs=1)
    compress(tiny_trained, choice, cfg, 1, cfg.fit, data)
    assert passes == [("structured", 2), ("unstructured", 1), ("structured", 2),
                      ("unstructured", 2)]  # fmt: skip


def test_a_search_of_half_width_students_builds_its_finalists_from_the_same_student(
    search_ws: Workspace, stage_params: Any, capsys: pytest.CaptureFixture
) -> None:
    """search.students.widths [0.5]: every trial compresses the student of half the teacher's
    width (so asks no channel share), and each finalist is that student compressed by its
    recipe, trained again as the search trained it."""
    cfg = search_params(finalists=1, trials=2, uniform_trials=1)
    cfg = cfg.model_copy(update={"students": cfg.students.model_copy(update={"widths": [0.5]})})
    params = with_search(stage_params, cfg)
    search.run(search_ws.root, params)
    assert "search student at width 0.5: " in capsys.readouterr().out
    rows = trial_rows(search_ws)
    assert {(r["width"], r["policy"]) for r in rows} == {("0.5", "{}")}
    found = read_json(search_ws.search(search.FINALISTS))["finalists"]
    assert {r["width"] for r in found.values()} == {0.5}
    storage = search.storage_url(search_ws, params)
    asked = optuna.load_study(study_name=read_json(search_ws.search(search.FINALISTS))["study"],
                              storage=storage).trials[0].params  # fmt: skip
    assert not set(asked) & {"share", "width", "net.features.0", "net.features.4"}
    for name in found:
        check_built_by_recipe(search_ws, params, name, found[name])


def test_a_search_of_the_teacher_and_its_students_asks_shares_of_the_teacher_only(
    search_ws: Workspace, stage_params: Any
) -> None:
    """search.students.widths [0.5, 1.0]: each trial picks the teacher or the half-width student
    first; only a trial of the teacher asks channel shares; uniform trial 1 is int4 alone of
    the teacher (quantize_only)."""
    cfg = search_params(finalists=1, trials=4, uniform_trials=2)
    cfg = cfg.model_copy(
        update={"students": cfg.students.model_copy(update={"widths": [0.5, 1.0]})}
    )
    params = with_search(stage_params, cfg)
    search.run(search_ws.root, params)
    rows = trial_rows(search_ws)
    assert {r["width"] for r in rows} == {"0.5", "1.0"}
    assert all(r["policy"] == "{}" for r in rows if r["width"] == "0.5")
    name = read_json(search_ws.search(search.FINALISTS))["study"]
    storage = search.storage_url(search_ws, params)
    for study in (name, f"{name}-uniform"):
        for trial in done(optuna.load_study(study_name=study, storage=storage)):
            shares = set(trial.params) & {"share", "net.features.0", "net.features.4"}
            assert bool(shares) == (trial.params["width"] == 1.0), trial.params
    uniform = optuna.load_study(study_name=f"{name}-uniform", storage=storage)
    first = {"share": 0.0, "width": 1.0, "weights": "int4"}
    assert {k: uniform.trials[0].params[k] for k in first} == first


def test_permuting_validation_and_test_labels_changes_no_trial_and_no_finalist(
    search_ws: Workspace, stage_params: Any, tmp_path: Path
) -> None:
    """The search reads train and the search split only: two workspaces, one with its
    validation and test labels shuffled, search alike (timings aside)."""
    shuffled = Workspace(tmp_path / "shuffled")
    shutil.copytree(search_ws.root, shuffled.root)
    rng = np.random.default_rng(1)
    for split in ("val", "test"):
        data = load_split(shuffled.split(split))
        save_split(Split(data.images, rng.permutation(data.labels)), shuffled.split(split))
    params = with_search(stage_params, search_params())
    for ws in (search_ws, shuffled):
        search.run(ws.root, params)
    assert trial_rows(search_ws) == trial_rows(shuffled)
    assert recipes(search_ws) == recipes(shuffled)


def test_a_batch_fine_tuned_on_dask_workers_gives_the_trials_of_one_fine_tuned_in_turn(
    search_ws: Workspace, stage_params: Any, tmp_path: Path, capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """search.parallel 2: each batch's fine-tunes on the two workers of a Dask cluster (the
    stage's $SQUEEZE_SEARCH_DASK, which a flow on Dask sets), or one after the other in the
    stage's process (`dvc repro`): the same trials, rescored trials (no drop allowed, so some
    miss the floor) and finalists; every trial of a half-width student (search.students), which
    travels to the workers inside the pickled Inputs. (Workers that cannot see the workspace:
    tests/integration/test_dask.py.)"""
    from distributed import LocalCluster

    from squeeze.methods.workers import DASK_ENV

    twin = Workspace(tmp_path / "twin")
    shutil.copytree(search_ws.root, twin.root)
    cfg = search_params(parallel=2, trials=2, finalists=1, max_accuracy_drop=0.0, rescore=2)
    cfg = cfg.model_copy(update={"students": cfg.students.model_copy(update={"widths": [0.5]})})
    params = with_search(stage_params, cfg)
    search.run(search_ws.root, params)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:  # fmt: skip
        monkeypatch.setenv(DASK_ENV, cluster.scheduler_address)
        capsys.readouterr()
        search.run(twin.root, params)
        workers = set(cluster.scheduler_info["workers"])
    lines = capsys.readouterr().out.splitlines()
    trials = [ln for ln in lines if ln.startswith("search ") and " trial " in ln]
    rescored = [ln for ln in trials if ln.startswith("search rescored ")]
    assert len(trials) - len(rescored) == 4 and rescored
    assert f"{cluster.scheduler_address} (2 workers)" in lines[0]
    for line in trials:  # every trial fine-tuned (none stopped early here) on a worker
        assert line.rsplit("fine-tuned on dask worker ", 1)[1] in workers, line
    assert {r["width"] for r in trial_rows(twin)} == {"0.5"}
    assert trial_rows(search_ws) == trial_rows(twin)
    assert recipes(search_ws) == recipes(twin)


def database_of_its_own(server_url: str) -> str:
    """A new database on the PostgreSQL server of server_url: its URL. (Optuna and Prefect both
    keep an alembic_version table, so a study must not share Prefect's database.)"""
    name = f"search_{uuid.uuid4().hex[:8]}"
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        db.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_killed_search_resumes_with_the_trials_an_unbroken_one_runs(
    search_ws: Workspace, stage_params: Any, tmp_path: Path, capsys: pytest.CaptureFixture,
    backend: str, request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """Two trials, then a kill in the middle of the third (a RUNNING trial left in the study),
    then the search again with three: one trial more runs, and the three are those of a search
    that ran three at once. In the workspace's SQLite file, and on PostgreSQL (search.storage;
    the PostgreSQL server the Prefect API of the tests runs on)."""
    url = database_of_its_own(request.getfixturevalue("prefect_db")) if backend == "postgresql" \
        else None  # fmt: skip
    unbroken = Workspace(tmp_path / "unbroken")
    shutil.copytree(search_ws.root, unbroken.root)
    search.run(search_ws.root, with_search(stage_params, search_params(trials=2, finalists=1,
                                                                       storage=url)))  # fmt: skip
    storage = search.storage_url(search_ws, with_search(stage_params, search_params(storage=url)))
    found = read_json(search_ws.search(search.FINALISTS))
    assert found["storage"] == (url or storage)
    optuna.load_study(study_name=found["study"], storage=storage).ask()  # the kill: never told
    capsys.readouterr()
    search.run(search_ws.root, with_search(stage_params, search_params(storage=url)))
    assert capsys.readouterr().out.count("search per_layer trial") == 1
    study = optuna.load_study(study_name=found["study"], storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    assert states.count(optuna.trial.TrialState.FAIL) == 1
    assert study.metric_names == ["search_accuracy", "shipped_bytes"]  # optuna-dashboard's axes
    search.run(unbroken.root, with_search(stage_params, search_params()))
    assert trial_rows(search_ws) == trial_rows(unbroken)
    assert recipes(search_ws) == recipes(unbroken)


def test_trials_past_the_floor_are_rescored_longer_and_judged_at_that_fidelity(
    search_ws: Workspace, stage_params: Any, capsys: pytest.CaptureFixture
) -> None:
    """No accuracy drop allowed, so trials miss the floor: the first two that the finalists
    would be chosen from past it are fine-tuned again for 2 epochs, and each is judged within
    the budget by that score against the floor of the reference fine-tuned as long; a second
    run resumes the study and rescores none again."""
    params = with_search(stage_params, search_params(max_accuracy_drop=0.0, rescore=2))
    search.run(search_ws.root, params)
    log = capsys.readouterr().out
    found = read_json(search_ws.search(search.FINALISTS))
    floor = found["teacher"][RESCORED]  # the uncompressed reference's, at the second rung
    rescored = [r for r in trial_rows(search_ws) if r[RESCORED]]
    assert len(rescored) == log.count("search rescored ") == 2
    first_floor = found["teacher"][REFERENCE]
    for row in rescored:  # of either study: the finalists come from both
        assert float(row["search_accuracy"]) < first_floor
        assert row["within_budget"] == str(float(row[RESCORED]) >= floor), row
        assert (f"search rescored {row['study']} trial {row['trial']} " in log
                and f"{float(row[RESCORED]):.2%} after 2 on search" in log)  # fmt: skip
    for recipe in found["finalists"].values():
        key = (recipe["kind"], str(recipe["trial"]))
        row = next(r for r in trial_rows(search_ws) if (r["study"], r["trial"]) == key)
        assert recipe[RESCORED] == (float(row[RESCORED]) if row[RESCORED] else None)
        assert str(recipe["within_budget"]) == row["within_budget"]
    before = (trial_rows(search_ws), recipes(search_ws))
    search.run(search_ws.root, params)
    assert "search rescored " not in capsys.readouterr().out
    assert (trial_rows(search_ws), recipes(search_ws)) == before


def test_a_rescored_trial_within_the_floor_at_its_fidelity_becomes_the_first_finalist() -> None:
    """Trial 3 (90% at 200 bytes, past the 92% floor) scores 95% after the longer fine-tune,
    whose uncompressed reference scores 97% (floor 94% for a 3-point budget): within, and the
    cheapest such, so it leads the finalists; its front rank uses 95% less the reference's
    2-point rise."""
    points = [(0.95, 1000), (0.93, 500), (0.90, 200), (0.85, 100), (0.80, 300)]
    study = study_of(points, floor=0.92)
    trials = pooled(study, study_of([], floor=0.92))
    cfg = search_params(max_accuracy_drop=0.03)
    assert [ordinal(t) for t in finalist_trials(trials, cfg, 3)] == [2, 3, 4]
    judged = at_best_fidelity(trials, {"per_layer 3": 0.95, REFERENCE: 0.97}, 0.95, cfg)
    assert [ordinal(t) for t in finalist_trials(judged, cfg, 3)] == [3, 4, 2]
    third = judged[2]
    assert third.user_attrs[RESCORED] == 0.95
    assert third.user_attrs["search_accuracy"] == pytest.approx(0.93)
    assert third.constraints["max_shipped_bytes"] == done(study)[2].constraints[
        "max_shipped_bytes"]  # fmt: skip
    # the same score below that rung's floor: judged over it, and the order stays
    missed = at_best_fidelity(trials, {"per_layer 3": 0.935, REFERENCE: 0.97}, 0.95, cfg)
    assert [ordinal(t) for t in finalist_trials(missed, cfg, 3)] == [2, 3, 4]
    assert judged[0] is trials[0]  # a trial not rescored is left as it is
    # a uniform trial's score is told apart from the per-layer trial of the same ordinal
    uniform = at_best_fidelity(trials, {"uniform 3": 0.95, REFERENCE: 0.97}, 0.95, cfg)
    assert all(t is u for t, u in zip(trials, uniform, strict=True))


def test_a_trial_is_timed_beside_the_teacher_so_a_slow_spell_costs_it_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow spell of the machine (here: every timing doubled, as onnxruntime cannot be made
    slow on demand) leaves a trial's latency where it was: it is the ratio to the teacher timed
    in the same rounds, times the teacher's p50 kept in the study."""
    from types import SimpleNamespace

    spell = {"factor": 1.0}

    def timed(paths: dict[str, Path], sample: np.ndarray, cfg: Any) -> dict[str, dict]:
        assert set(paths) == {"trial", "teacher"} and paths["teacher"].parent == tmp_path
        base = {"trial": 0.1, "teacher": 0.5}
        return {name: {"latency_ms_p50": base[name] * spell["factor"]} for name in paths}

    monkeypatch.setattr(method, "latencies", timed)
    export = tmp_path / "trial.onnx"
    export.write_bytes(b"not timed here")
    ctx = SimpleNamespace(
        scratch=tmp_path,
        timing=None,
        teacher_ms=0.45,
        data=SimpleNamespace(search=SimpleNamespace(images=np.zeros((1, 2)))),
    )
    calm = method.cost(export, ctx)
    spell["factor"] = 2.0
    assert method.cost(export, ctx) == calm and calm["latency_ms_p50"] == pytest.approx(0.09)


def test_the_teacher_latency_is_kept_in_the_study_and_costs_the_teacher_at_about_itself(
    search_ws: Workspace, stage_params: Any
) -> None:
    """The scale a search costs its trials on is timed once and kept, so a resumed search
    keeps it; the teacher costed against itself comes out near it (one export, two timings)."""
    search.run(search_ws.root, with_search(stage_params, search_params(trials=1, finalists=1)))
    found = read_json(search_ws.search(search.FINALISTS))
    storage = search.storage_url(search_ws, with_search(stage_params, search_params()))
    kept = optuna.load_study(study_name=found["study"], storage=storage).user_attrs[TEACHER_MS]
    assert found["teacher"]["latency_ms_p50"] == pytest.approx(kept, rel=0.3)
    search.run(search_ws.root, with_search(stage_params, search_params(trials=2, finalists=1)))
    again = optuna.load_study(study_name=found["study"], storage=storage).user_attrs[TEACHER_MS]
    assert again == kept


def test_a_budget_no_trial_meets_is_refused_naming_the_tightest_limit_and_the_closest_trial(
    search_ws: Workspace, stage_params: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A latency nobody reaches: every trial stops before its fine-tune, its line says why, and
    no recipe is written (nothing downstream can build or promote from a search that found
    nothing)."""
    params = with_search(stage_params, search_params(max_latency_ms=1e-6))
    with pytest.raises(SearchError) as err:
        search.run(search_ws.root, params)
    trial_lines = [line for line in capsys.readouterr().out.splitlines() if " trial " in line]
    assert trial_lines and all(
        "stopped before fine-tuning: its probe is over max_latency_ms" in line
        for line in trial_lines
    )
    message = str(err.value)
    assert "the tightest limit is max_latency_ms, met by 0 of 3 trials" in message
    assert "The closest trial scored" in message and "Nothing was built or promoted" in message
    assert not search_ws.search(search.FINALISTS).exists()
    storage = search.storage_url(search_ws, params)
    (name,) = [s.study_name for s in optuna.get_all_study_summaries(storage)
               if not s.study_name.endswith("-uniform")]  # fmt: skip
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert all(t.user_attrs["stopped_early"] for t in trials)


def test_a_failed_search_leaves_the_last_searchs_recipes_as_they_were(
    search_ws: Workspace, stage_params: Any
) -> None:
    """A search that fails (a budget nobody meets; a storage that cannot be opened, refused
    naming search.storage without its password) changes none of the last search's outputs, so
    its finalists stay buildable and DVC sees nothing changed."""
    small = search_params(trials=1, finalists=1, uniform_trials=1)
    search.run(search_ws.root, with_search(stage_params, small))
    outputs = sorted(search_ws.search("").rglob("*.json")) + [search_ws.search(search.TRIALS)]
    before = {path: path.read_bytes() for path in outputs}
    assert search_ws.search(f"{search.RECIPES}/search_1.json") in before
    with pytest.raises(SearchError, match="tightest limit"):
        search.run(search_ws.root, with_search(stage_params, search_params(max_latency_ms=1e-6)))
    unreachable = "postgresql://nobody:secret@127.0.0.1:1/squeeze"  # nothing listens on port 1
    with pytest.raises(SearchError) as err:
        search.run(search_ws.root, with_search(stage_params, search_params(storage=unreachable)))
    message = str(err.value)
    assert "search.storage" in message and "127.0.0.1:1" in message
    assert "secret" not in message and "search.storage: null" in message
    after = sorted(search_ws.search("").rglob("*.json")) + [search_ws.search(search.TRIALS)]
    assert {path: path.read_bytes() for path in after} == before


def test_a_groups_sensitivity_is_its_own_drop_not_what_batchnorm_reestimation_moves(
    tiny_trained: Classifier, small_fmnist: dict[str, Split]
) -> None:
    """Stale BatchNorm statistics (as a teacher's may be against the images they are
    re-estimated on): the teacher as it is scores far below itself re-estimated. A group's drop
    is measured against the re-estimated teacher, so pruning a little of it costs little, and
    never looks like a large gain."""
    teacher = copy.deepcopy(tiny_trained)
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean += 3.0
    cfg = search_params()
    data = method.SearchData(small_fmnist["train"], small_fmnist["val"])
    stale = method.torch_accuracy(teacher, data.search)
    reestimated = copy.deepcopy(teacher)
    method.reestimate_bn(reestimated, method.bn_images(data.train, cfg.seed))
    assert method.torch_accuracy(reestimated, data.search) > stale + 0.2
    drops = method.sensitivity(teacher, channel_groups_of(teacher, cfg), data, cfg, lambda _: None)
    smallest = [next(iter(shares.values())) for shares in drops.values()]
    assert smallest and all(drop > -0.05 for drop in smallest), drops


def test_a_network_with_nothing_to_prune_is_refused_naming_its_layers(
    tiny_trained: Classifier,
) -> None:
    """A linear classifier: its one weight layer is the output, which keeps its K classes."""
    linear = Classifier(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), tiny_trained.spec,
                        {"name": "linear"})  # fmt: skip
    with pytest.raises(SearchError, match=r"net\.1 \(output layer\)"):
        channel_groups_of(linear, search_params())
    assert channel_groups_of(copy.deepcopy(tiny_trained), search_params())


def test_where_only_latency_counts_levers_that_are_no_faster_are_not_searched() -> None:
    cfg = search_params(objective="fastest")
    # int4 slower than fp32 (onnxruntime without int4 kernels), zeros skipped by no kernel
    space = speed_space(cfg, {"fp32": 0.50, "int8": 0.20, "int4": 0.60, "zeroed": 0.49})
    assert space == {"weights": ["fp32", "int8"], "max_unstructured": 0.0, "qat": [False, True],
                     "fp32_first_layer": [False, True], "fp32_layers": [0, 1]}  # fmt: skip
    # int4 must beat int8 too, the more precise type the space allows; sparse kernels count
    space = speed_space(cfg, {"fp32": 0.50, "int8": 0.20, "int4": 0.195, "zeroed": 0.30})
    assert space["weights"] == ["fp32", "int8"] and space["max_unstructured"] == 0.5
    assert speed_space(cfg, {"fp32": 0.5, "int8": 0.2, "int4": 0.1, "zeroed": 0.5})["weights"] == [
        "fp32", "int8", "int4"]  # fmt: skip
    # no quantized type left: nothing for qat, fp32_first_layer or fp32_layers to act on
    space = speed_space(cfg, {"fp32": 0.50, "int8": 0.52, "int4": 0.60, "zeroed": 0.50})
    assert space == {"weights": ["fp32"], "max_unstructured": 0.0, "qat": [False],
                     "fp32_first_layer": [False], "fp32_layers": [0, 0]}  # fmt: skip
    # a type the user asked for alone stays, however slow: nothing more precise is allowed
    only = search_params(objective="fastest", weights=["int4"])
    assert speed_space(only, {"fp32": 0.1, "int4": 0.6, "zeroed": 0.1})["weights"] == ["int4"]


def test_a_fastest_search_times_the_levers_and_searches_only_those_that_pay(
    search_ws: Workspace, stage_params: Any
) -> None:
    cfg = search_params(objective="fastest", trials=2, uniform_trials=1, finalists=1)
    search.run(search_ws.root, with_search(stage_params, cfg))
    levers = read_json(search_ws.search(search.FINALISTS))["speed_levers"]
    assert set(levers["latency_ms_p50"]) == {"fp32", "zeroed", "int8", "int4"}
    assert all(ms > 0 for ms in levers["latency_ms_p50"].values())
    space = levers["space"]
    assert space == speed_space(cfg, levers["latency_ms_p50"])
    for row in trial_rows(search_ws):
        assert row["weights"] in space["weights"], row
        assert float(row["sparsity"]) <= space["max_unstructured"], row
        assert row["qat"] == "False" or True in space["qat"], row


def study_of(
    points: list[tuple[float, int]], floor: float, choices: list[float] | None = None,
    latencies: list[float] | None = None,
) -> optuna.Study:  # fmt: skip
    """An in-memory study of completed trials with these (search accuracy, shipped bytes),
    told as run_study tells them, under an accuracy floor and a size limit of 10,000 bytes;
    each trial's choice a uniform share (`choices`, else its own), its p50 `latencies` (else
    0.1 ms)."""
    study = optuna.create_study(directions=["maximize", "minimize"])
    for number, (accuracy, size) in enumerate(points):
        trial = study.ask()
        share = choices[number] if choices else number / 100
        latency = latencies[number] if latencies else 0.1
        for key, value in {"search_accuracy": accuracy, "shipped_bytes": size,
                           "latency_ms_p50": latency, "ordinal": number + 1,
                           "stopped_early": False, "choice": {"share": share}}.items():  # fmt: skip
            trial.set_user_attr(key, value)
        trial.set_constraint("max_accuracy_drop", floor - accuracy)
        trial.set_constraint("max_shipped_bytes", size / 10_000 - 1)
        study.tell(trial, [accuracy, size])
    return study


def test_finalists_straddle_the_accuracy_floor_along_the_front_and_uniform_matches_the_cost() -> (
    None
):
    """A trial's short fine-tune understates its finalist's accuracy: the finalists are the
    cheapest front trial within the floor and the next cheaper ones past it; the uniform
    finalist is the uniform trial of the nearest cost."""
    points = [(0.95, 1000), (0.93, 500), (0.90, 200), (0.85, 100), (0.80, 300), (0.99, 20_000)]
    study = study_of(points, floor=0.92)
    # 0.80 @ 300 is beaten by 0.90 @ 200; 0.99 @ 20,000 breaks the size limit
    assert [ordinal(t) for t in front(done(study), "shipped_bytes")] == [6, 1, 2, 3, 4]
    cfg = search_params(finalists=3)
    assert [ordinal(t) for t in finalist_trials(done(study), cfg, 3)] == [2, 3, 4]
    assert [ordinal(t) for t in finalist_trials(done(study), cfg, 2)] == [2, 3]
    # a front neighbour less than a third cheaper than the last finalist is passed over, and
    # built only when the spaced ones run out
    crowded = study_of([*points, (0.915, 450)], floor=0.92)
    assert [ordinal(t) for t in finalist_trials(done(crowded), cfg, 3)] == [2, 3, 4]
    assert [ordinal(t) for t in finalist_trials(done(crowded), cfg, 4)] == [2, 3, 4, 7]
    # nothing within the floor: the most accurate affordable trial and the next cheaper ones
    none_within = study_of(points, floor=0.97)
    assert [ordinal(t) for t in finalist_trials(done(none_within), cfg, 3)] == [1, 2, 3]
    # all within: the cheapest, then (nothing past it) the next dearer; the first stays put
    all_within = study_of(points, floor=0.5)
    assert [ordinal(t) for t in finalist_trials(done(all_within), cfg, 3)] == [4, 3, 2]
    assert [ordinal(t) for t in finalist_trials(done(all_within), cfg, 1)] == [4]
    accurate = search_params(objective="most_accurate")
    assert [ordinal(t) for t in finalist_trials(done(study), accurate, 2)] == [1, 2]
    uniform = study_of([(0.9, 120), (0.91, 450), (0.92, 800)], floor=0.92)
    assert ordinal(nearest(done(uniform), cfg, finalist_trials(done(study), cfg, 1)[0])) == 2
    # a trial that repeats an earlier one's choice is not built again
    repeated = study_of(points, floor=0.92, choices=[0.1, 0.2, 0.2, 0.4, 0.5, 0.6])
    assert [ordinal(t) for t in finalist_trials(done(repeated), cfg, 3)] == [2, 4, 1]


def test_the_finalists_come_from_both_studies() -> None:
    """A uniform policy is a point of the per-layer space: a cheap uniform trial past the floor
    can be a finalist, told apart by its study."""
    per_layer = study_of([(0.95, 1000), (0.93, 500), (0.90, 400)], floor=0.92)
    uniform = study_of([(0.94, 900), (0.88, 150), (0.91, 480)], floor=0.92,
                       choices=[0.11, 0.12, 0.13])  # fmt: skip
    trials = pooled(per_layer, uniform)
    cfg = search_params(finalists=3)
    best = finalist_trials(trials, cfg, 3)
    assert [(t.user_attrs["kind"], ordinal(t)) for t in best] == [
        ("per_layer", 2), (UNIFORM, 2), (UNIFORM, 3)]  # fmt: skip
    # the uniform baseline, nearest the first per-layer finalist in cost, is uniform trial 3:
    # it is built once, as search_uniform, and the finalists are the order without it
    finalists, baseline = chosen(trials, cfg)
    assert (baseline.user_attrs["kind"], ordinal(baseline)) == (UNIFORM, 3)
    assert [(t.user_attrs["kind"], ordinal(t)) for t in finalists] == [
        ("per_layer", 2), (UNIFORM, 2), ("per_layer", 3)]  # fmt: skip
    # fewer finalists: the same baseline, and the finalists a prefix of these
    fewer, same = chosen(trials, search_params(finalists=1))
    assert (fewer, label(same)) == (finalists[:1], label(baseline))
    assert chosen(pooled(per_layer, study_of([], floor=0.92)), cfg)[1] is None  # no uniform trial
    # a front too short for both: the baseline's trial is a finalist too, not a refused search
    count = len(finalist_trials(trials, cfg, 9))
    every, _ = chosen(trials, search_params(finalists=count, trials=count))
    assert label(baseline) in map(label, every)


def test_a_per_layer_trial_that_repeats_a_uniform_one_counts_as_that_uniform_trial() -> None:
    """The per-layer study starts with the best uniform trial's choice (search.warm_start): the
    same model, timed again a little faster by chance. The finalist of that choice is the
    uniform trial, and the uniform baseline is matched to a per-layer policy of the search's own
    (the `fastest` study on the Xeon, 5a1a988: per-layer trial 1, a repeat of uniform trial 2 at
    0.123 ms against 0.124, was search_1, and the baseline matched to it a 76% fp32 trial)."""
    uniform = study_of([(0.94, 900), (0.93, 480), (0.80, 470)], floor=0.92,
                       choices=[0.11, 0.12, 0.13], latencies=[0.30, 0.124, 0.09])  # fmt: skip
    per_layer = study_of([(0.93, 480), (0.91, 300), (0.88, 200)], floor=0.92,
                         choices=[0.12, 0.2, 0.3], latencies=[0.123, 0.10, 0.08])  # fmt: skip
    trials = pooled(per_layer, uniform)
    assert len(best_trials(trials, search_params())) == len(trials)  # none lost to a shared number
    cfg = search_params(objective="fastest", finalists=2)
    finalists, baseline = chosen(trials, cfg)
    assert [label(t) for t in finalists] == ["uniform 2", "per_layer 3"]
    assert label(baseline) == "uniform 3"  # nearest per_layer 3 (0.08 ms), not the repeat's
    # of equal figures too, the uniform trial (it ran first) is the one on the front
    tied = pooled(study_of([(0.93, 480)], floor=0.92, choices=[0.12], latencies=[0.124]), uniform)
    assert "uniform 2" in map(label, front(tied, "latency_ms_p50"))


def test_a_budget_narrower_than_the_search_splits_standard_error_is_warned_of() -> None:
    # the default data's search split (6,000 images, teacher about 94%) resolves half a point
    assert method.coarse_split_warning(search_params(max_accuracy_drop=0.005), 0.94, 6000) is None
    # 180 images (the digits a newcomer tried): one point is 1.8 images, the error 1.6 points
    warning = method.coarse_split_warning(search_params(max_accuracy_drop=0.01), 0.95, 180)
    assert warning is not None
    assert "1.00%, about 1.8 of the search split's 180 images" in warning
    assert "standard error of an accuracy measured on it (1.62%)" in warning
    assert "ingest.search_fraction or search.max_accuracy_drop" in warning
    relative = search_params(max_accuracy_drop=0.01, drop="relative")
    assert "(0.95%, about 1.7 of" in method.coarse_split_warning(relative, 0.95, 180)


def test_without_a_search_the_stage_writes_no_recipe_and_no_empty_folder(
    search_ws: Workspace, stage_params: Any
) -> None:
    """search.finalists 0: an empty search, whose recipes folder holds only its README (DVC
    warns at every repro of an empty output folder)."""
    search.run(search_ws.root, with_search(stage_params, search_params(finalists=0)))
    assert read_json(search_ws.search(search.FINALISTS)) == {"finalists": {}}
    recipes = search_ws.search(search.RECIPES)
    assert [p.name for p in recipes.iterdir()] == ["README.md"]
    assert (recipes / "README.md").read_text() == search.RECIPES_README
