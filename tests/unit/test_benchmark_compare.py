"""benchmarks.compare end to end on a tiny workspace: the pipeline's teacher, one unstructured
and one static int8 candidate built and evaluated by the real stages, then every row of the
benchmark (candidates, anchors, peers) measured and compared in one process."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import choose, compare, report
from squeeze.config.params import Params
from squeeze.config.sections import (
    ConvNetArch,
    DistillParams,
    EvaluateParams,
    IngredientParams,
    MergeParams,
    PruneParams,
    QuantizeParams,
    SearchParams,
)
from squeeze.config.workspace import Workspace, read_json, write_json
from stages import evaluate, merge, prune, quantize

CALIBRATION = 64
PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_ws(
    workspace: Workspace,
    stage_params: Callable[..., Params],
    tiny_fit: Callable,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Workspace, Params]:
    """A copy of the shared workspace (evaluate rewrites exports/ and metrics/) with sp50
    (unstructured, 50%), int8 (static) and soup (greedy, two ingredients) built from the teacher,
    ens (the ensemble of teacher and sp50), all evaluated."""
    ws = Workspace(tmp_path_factory.mktemp("bench"))
    for sub in ("data", "models"):
        shutil.copytree(workspace.root / sub, ws.root / sub)
    teacher = ws.model("teacher") / "model.json"
    # the fields train_teacher writes that evaluate and the benchmark read
    write_json(teacher, read_json(teacher) | {"method": "train", "upstream": [],
                                              "train_seconds": 1.0, "parameters": 1})  # fmt: skip
    params = stage_params(
        prune={"sp50": PruneParams(
            upstream="teacher", kind="unstructured", sparsity=0.5, steps=1, importance="l1",
            round_to=None, distill_alpha=0.0, temperature=4.0, qat=None, fit=tiny_fit(epochs=1))},
        quantize={"int8": QuantizeParams(
            upstream="teacher", mode="static", weights="int8", per_channel=True,
            calibration_samples=CALIBRATION, fp32_first_layer=False)},
        merge={"soup": MergeParams(
            kind="soup_greedy", upstreams=["teacher"], student=None, temperature=4.0, alpha=0.0,
            ingredients=[IngredientParams(seed=i, lr=0.01 * (i + 1), epochs=1, augment=i == 0,
                                          label_smoothing=0.0) for i in range(2)],
            fit=tiny_fit(epochs=1)),
               "ens": MergeParams(
            kind="ensemble", upstreams=["teacher", "sp50"], student=None, temperature=4.0,
            alpha=0.0, ingredients=[], fit=tiny_fit(epochs=1))},
        evaluate=EvaluateParams(threads=1, warmup=1, runs=10, rounds=2, throughput_batch=256),
    )  # fmt: skip
    prune.run(ws.root, params, "sp50")
    quantize.run(ws.root, params, "int8")
    merge.run(ws.root, params, "soup")
    merge.run(ws.root, params, "ens")
    evaluate.run(ws.root, params)
    return ws, params


@pytest.fixture(scope="module")
def measured(bench_ws: tuple[Workspace, Params], tmp_path_factory: pytest.TempPathFactory):
    ws, params = bench_ws
    return compare.benchmark(ws, params, tmp_path_factory.mktemp("bench_tmp"))


def test_every_row_is_measured_on_both_splits_with_intervals(measured: tuple) -> None:
    rows, _ = measured
    for r in rows:  # timed REPEATS times; p50 is the median of the repeats, their spread kept
        repeats = r["latency_ms_p50_repeats"]
        assert len(repeats) == compare.REPEATS
        assert r["latency_ms_p50"] == round(float(np.median(repeats)), 4)
        low, high = r["speedup_p50_range"]
        assert low <= r["speedup_p50"] <= high
    names = [r["name"] for r in rows]
    assert names == ["teacher", "sp50", "int8", "soup", "ens", "soup/best_ingredient",
                     "soup/uniform_soup", "anchor_random_mask50",
                     "anchor_minmax_int_no_zero_point", "peer_torch_prune/sp50", "peer_ort_dynamic",
                     "peer_nncf_ptq"]  # fmt: skip
    for r in rows:
        for split in ("val", "test"):
            low, high = r[f"{split}_accuracy_ci"]
            assert low <= r[f"{split}_accuracy"] <= high
        assert r["agreement"] is not None and r["shipped_bytes"] < r["size_bytes"]
    teacher = rows[0]
    assert teacher["shipped_ratio"] == teacher["onnx_ratio"] == 1.0


def test_peers_stand_against_the_candidates_they_copy(
    measured: tuple, bench_ws: tuple[Workspace, Params]
) -> None:
    rows, _ = measured
    by_name = {r["name"]: r for r in rows}
    torch_peer = by_name["peer_torch_prune/sp50"]
    assert torch_peer["compared_with"] == "sp50"
    # the same weights zeroed as the candidate reached (biases stay dense in both)
    assert torch_peer["nonzero_params"] == by_name["sp50"]["nonzero_params"]
    ws, _ = bench_ws
    sparsity = read_json(ws.model("sp50") / "model.json")["sparsity"]
    assert f"sparsity {sparsity:.4f}" in torch_peer["built"]
    for name in ("peer_ort_dynamic", "peer_nncf_ptq"):
        assert by_name[name]["compared_with"] == "int8"
        ratio = by_name[name]["squeeze_over_peer"]["shipped_bytes"]
        ours, theirs = by_name["int8"]["shipped_bytes"], by_name[name]["shipped_bytes"]
        assert ratio == pytest.approx(ours / theirs, rel=1e-3)
        latency = by_name[name]["squeeze_over_peer"]
        low, high = latency["latency_ms_p50_range"]  # within each repeat, so it holds the median
        assert low <= latency["latency_ms_p50"] <= high
    assert f"{CALIBRATION} calibration images" in by_name["peer_nncf_ptq"]["built"]


def test_each_method_is_compared_paired_on_validation_and_test(measured: tuple) -> None:
    rows, compared = measured
    val = {r["name"]: r["val_accuracy"] for r in rows}
    best_member = max(("teacher", "sp50"), key=val.__getitem__)  # chosen on validation
    pairs = [(c["method"], c["a"], c["b"], c["split"]) for c in compared]
    assert pairs == [(m, a, b, s) for m, a, b in [
        ("vs peer", "sp50", "peer_torch_prune/sp50"), ("vs peer", "int8", "peer_ort_dynamic"),
        ("vs peer", "int8", "peer_nncf_ptq"), ("ensemble", "ens", best_member),
        ("soup", "soup", "soup/best_ingredient"), ("soup", "soup", "soup/uniform_soup"),
    ] for s in ("val", "test")]  # fmt: skip
    variant = next(r for r in rows if r["name"] == "soup/best_ingredient")
    assert variant["role"] == "variant" and variant["upstream"] == ["soup"]
    for c in compared:
        low, high = c["ci95"]
        assert low <= c["difference"] <= high and 0 <= c["p_value"] <= 1
        assert sum(map(sum, c["table"])) == 1000  # every image of the split, paired


def test_outputs_are_written_from_one_results_dict(
    measured: tuple, bench_ws: tuple[Workspace, Params], tmp_path: Path
) -> None:
    rows, compared = measured
    data: dict[str, Any] = {
        "command": compare.COMMAND, "measured": "now", "machine": "test",
        "commit": "0" * 40, "dirty": True, "latency_repeats": compare.REPEATS,
        "profile": "default", "network": {"name": "convnet"},
        "by_method": choose.by_method(rows),
        "evaluate": bench_ws[1].evaluate.model_dump(), "choose_split": "val",
        "report_split": "test",
        "teacher_training": {"train_seconds": 1.0, "epochs": 1, "parameters": 1, "threads": 1},
        "models": rows, "comparisons": compared, "targets": compare.targets(rows), "noop": [],
    }  # fmt: skip
    out, js, readme = tmp_path / "RESULTS.md", tmp_path / "results.json", tmp_path / "README.md"
    out.write_text("# old\n\n## Budgets\n\nby hand\n")
    readme.write_text("# x\n\n## Figures\n\nold\n\n## What each method buys\n\nold\n\n## Dev\n")
    text = compare.write(data, out, js, readme)
    assert [r["name"] for r in read_json(js)["models"]] == [r["name"] for r in rows]
    assert "| ensemble | ens |" in text and "| soup | soup | soup/uniform_soup | test |" in text
    assert text.startswith("# Benchmark results") and text.endswith("## Budgets\n\nby hand\n")
    assert f"`{compare.COMMAND}`" in text
    assert "## Figures\n\n" + report.readme_figures(data) in readme.read_text()
    methods = readme.read_text().partition("## What each method buys\n\n")[2]
    assert methods.startswith(report.methods_by_network([read_json(js)]))
    assert "| the built-in convnet (default params) | prune_unstructured | `sp50` |" in methods
    assert "with uncommitted changes" in text  # the header names the commit that built them


def test_distillation_is_compared_with_its_twin_without_soft_targets(
    tiny_arch: dict, tiny_fit: Callable
) -> None:
    arch = ConvNetArch(**tiny_arch)

    def student(alpha: float, epochs: int = 1) -> DistillParams:
        return DistillParams(upstream="teacher", student=arch, temperature=4.0, alpha=alpha,
                             feature_weight=0.0, fit=tiny_fit(epochs=epochs))  # fmt: skip

    distill = {"kd": student(0.9), "ce": student(0.0), "ce_longer": student(0.0, epochs=2)}
    from_ensemble = MergeParams(kind="distill_ensemble", upstreams=["kd", "ce_longer"],
                                ingredients=[], student=arch, temperature=4.0, alpha=0.9,
                                fit=tiny_fit(epochs=1))  # fmt: skip
    merged = {
        "ens_kd": from_ensemble,
        "ens_kd_longer": from_ensemble.model_copy(update={"fit": tiny_fit(epochs=3)}),
    }
    params = Params.model_construct(distill=distill, prune={}, quantize={}, merge=merged)
    # not the twin trained longer, nor the ensemble's student trained longer than any control
    assert compare.kd_pairs(params) == [("kd", "ce"), ("ens_kd", "ce")]


def test_readme_figures_are_what_the_generator_writes_from_results_json() -> None:
    """README's Figures section is readme_figures(benchmarks/results.json), byte for byte: a
    regeneration (benchmarks.compare --readme) changes nothing a person wrote there."""
    results = read_json(PROJECT / "benchmarks" / "results.json")
    readme = (PROJECT / "README.md").read_text()
    body = report.readme_figures(results)
    assert report.replace_section(readme, report.README_SECTION, body) == readme


def test_readme_says_what_each_method_buys_on_each_network_from_the_committed_results() -> None:
    readme = (PROJECT / "README.md").read_text()
    body = report.methods_by_network(compare.committed_results(PROJECT / "benchmarks"))
    assert report.replace_section(readme, report.METHODS_SECTION, body) == readme
    for network in ("the built-in convnet (default params)", "`examples.user_models.ResNet`"):
        assert f"| {network}" in body


@pytest.mark.parametrize("name", ["", "-resnet"])
def test_hand_written_notes_were_checked_against_the_figures_above_them(name: str) -> None:
    """RESULTS' notes name the commit whose results they were checked against; regenerating the
    figures (a new commit) fails here until a person re-reads the notes and updates the line."""
    results = read_json(PROJECT / "benchmarks" / f"results{name}.json")
    text = (PROJECT / "benchmarks" / f"RESULTS{name}.md").read_text()
    assert results["dirty"] is False, "benchmark a committed tree"
    assert report.notes_commit(text) == results["commit"], (
        f"benchmarks/RESULTS{name}.md: its notes were checked against other figures; re-read "
        f"them and set their '<!-- notes checked ... -->' line to {results['commit']}"
    )


def test_readme_figures_table_has_six_rows() -> None:
    figures = report.readme_figures(read_json(PROJECT / "benchmarks" / "results.json"))
    table = [line for line in figures.splitlines() if line.startswith("|")]
    assert table[:2] == ["| figure | on test |", "| --- | --- |"]
    prefixes = ["| teacher, after ", "| the gate's challenger ", "| ≥ 92.5% with ",
                "| ≥ 5× lower ", "| distillation: ", "| vs peers ("]  # fmt: skip
    assert len(table) == 2 + 6
    assert all(row.startswith(p) for row, p in zip(table[2:], prefixes, strict=True))
    assert all(line.count("Holm p") == line.count("McNemar p") for line in table)


def test_only_finalists_of_per_layer_trials_stand_against_the_uniform_one(
    tmp_path: Path, stage_params: Callable[..., Params]
) -> None:
    """A finalist drawn from the uniform study's front is a uniform policy: it is not counted as
    per-layer in the per-layer vs uniform comparison."""
    ws = Workspace(tmp_path)
    for name, kind in (("search_1", "uniform"), ("search_2", "per_layer"),
                       ("search_uniform", "uniform")):  # fmt: skip
        write_json(ws.model(name) / "model.json", {"search": {"kind": kind, "trial": 1}})
    params = stage_params(search=SearchParams.model_construct(finalists=2))
    assert compare.per_layer_finalists(ws, params) == ["search_2"]
