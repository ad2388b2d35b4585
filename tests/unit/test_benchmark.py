"""The benchmark's peer builders, its choices (validation chooses, test reports) and its report.

The peers are built on the tiny trained ConvNet and the small Fashion-MNIST subset: the torch
peer really reaches the asked sparsity and stays a plain model, and both quantization peers
give ONNX files that onnxruntime runs and that predict like their fp32 source.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from benchmarks import choose, report
from benchmarks.peers import nncf_quantized, ort_dynamic, torch_pruned
from squeeze.config.sections import PruneParams, QuantizeParams
from squeeze.config.workspace import write_json
from squeeze.data.spec import Split
from squeeze.decide.choose import best
from squeeze.measure.export import INPUT, export_onnx
from squeeze.measure.runtime import session
from squeeze.methods.train import accuracy, predict
from squeeze.nets.models import weight_layers

Data = dict[str, Split]
MIN_AGREEMENT = 0.9  # share of validation images on which a quantized peer predicts like fp32


def classes(path: Path, images: np.ndarray) -> np.ndarray:
    return session(path, 1).run(None, {INPUT: images})[0].argmax(1)


@pytest.fixture(scope="module")
def fp32_tiny(tiny_trained: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("peers") / "fp32.onnx"
    export_onnx(tiny_trained, path)
    return path


def test_torch_peer_reaches_the_sparsity_and_stays_a_plain_model(
    tiny_trained: nn.Module, tiny_fit: Callable, small_fmnist: Data
) -> None:
    model = copy.deepcopy(tiny_trained)
    pruned, history = torch_pruned(
        model, 0.6, tiny_fit(epochs=1), small_fmnist["train"], small_fmnist["val"]
    )
    weights = [m.weight for m in weight_layers(pruned).values()]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.6 * total)  # exactly the candidate's share, kept through fine-tuning
    assert not any(n.endswith(("_orig", "_mask")) for n, _ in pruned.named_parameters())
    assert len(history) == 1
    val = small_fmnist["val"]
    acc = accuracy(predict(pruned, torch.from_numpy(val.images)), torch.from_numpy(val.labels))
    assert acc >= 0.5  # fine-tuned back far above chance (0.1)


def test_ort_dynamic_peer_predicts_like_its_fp32_source(
    fp32_tiny: Path, small_fmnist: Data, tmp_path: Path
) -> None:
    out = tmp_path / "ort_dynamic.onnx"
    ort_dynamic(fp32_tiny, out)
    assert "ConvInteger" in {n.op_type for n in onnx.load(str(out)).graph.node}
    val = small_fmnist["val"].images
    assert (classes(out, val) == classes(fp32_tiny, val)).mean() >= MIN_AGREEMENT


def test_nncf_peer_calibrates_on_uint8_pixels_and_runs_in_onnxruntime(
    fp32_tiny: Path, small_fmnist: Data, tmp_path: Path
) -> None:
    out = tmp_path / "nncf.onnx"
    nncf_quantized(fp32_tiny, out, small_fmnist["train"].images[:64])
    graph = onnx.load(str(out)).graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    assert "QuantizeLinear" in {n.op_type for n in graph.node} and len(int8) >= 3
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # contract kept
    val = small_fmnist["val"]
    # NNCF's default Fast Bias Correction moves this 8/16-channel net's predictions (agreement
    # with fp32 ≈ 0.75 here, ≈ 0.97 with it off): the default is what is benchmarked, so this
    # only asks for a working classifier; how close it comes on real models is the benchmark's.
    assert (classes(out, val.images) == val.labels).mean() >= 0.5


def row(name: str, val: float, test: float, shipped_bytes: int = 1000, p50: float = 0.1) -> dict:
    return {
        "name": name, "role": "candidate", "method": "m", "val_accuracy": val,
        "val_accuracy_ci": [val - 0.01, val + 0.01], "test_accuracy": test,
        "test_accuracy_ci": [test - 0.01, test + 0.01], "size_bytes": 2 * shipped_bytes,
        "shipped_bytes": shipped_bytes, "nonzero_params": 10, "macs": 100, "latency_ms_p50": p50,
        "latency_ms_p95": p50, "throughput": 1.0,
    }  # fmt: skip


def params_with(prune: dict[str, str], quantize: dict[str, tuple[str, str]], fit) -> Any:
    """Params holding prune candidates of the given kinds and quantize ones of (mode, weights)."""
    from squeeze.config.params import Params

    prune_cfg = {
        n: PruneParams(upstream="teacher", kind=kind, sparsity=0.5, steps=1, importance="l1",
                       round_to=None, distill_alpha=0.0, temperature=4.0, qat=None, fit=fit)
        for n, kind in prune.items()
    }  # fmt: skip
    quant_cfg = {
        n: QuantizeParams(upstream="teacher", mode=mode, weights=weights, per_channel=True,
                          calibration_samples=8, fp32_first_layer=False)
        for n, (mode, weights) in quantize.items()
    }  # fmt: skip
    return Params.model_construct(distill={}, merge={}, prune=prune_cfg, quantize=quant_cfg)


def test_peer_counterparts_are_chosen_on_validation(tiny_fit: Callable) -> None:
    # test ranks q8b above q8; validation ranks q8 above q8b: q8 is chosen
    records = {
        "a": row("a", val=0.90, test=0.80), "b": row("b", val=0.85, test=0.95),
        "s": row("s", val=0.99, test=0.99),  # structured: not a candidate for the torch peer
        "q8": row("q8", val=0.91, test=0.80), "q8b": row("q8b", val=0.89, test=0.99),
        "q4": row("q4", val=0.99, test=0.99), "dyn": row("dyn", val=0.99, test=0.99),
    }  # fmt: skip
    params = params_with(
        {"a": "unstructured", "b": "unstructured", "s": "structured"},
        {"q8": ("static", "int8"), "q8b": ("static", "int8"), "q4": ("static", "int4"),
         "dyn": ("dynamic", "int8")},
        tiny_fit(),
    )  # fmt: skip
    assert choose.unstructured(records, params) == ["a", "b"]  # each its own torch peer
    assert choose.best_static_int8(records, params) == "q8"


def test_ties_on_validation_go_to_the_smaller_shipped_file_then_the_name() -> None:
    rows = [row("b", 0.9, 0.7, shipped_bytes=500), row("a", 0.9, 0.9, shipped_bytes=500),
            row("c", 0.9, 0.99, shipped_bytes=400)]  # fmt: skip
    assert best(rows, choose.BY_SIZE)["name"] == "c"  # squeeze's one chooser (the gate's)
    assert best(rows[:2], choose.BY_SIZE)["name"] == "a"
    assert best([], choose.BY_SIZE) is None


def test_targets_are_chosen_on_validation_and_reported_on_test() -> None:
    teacher = row("teacher", 0.935, 0.935, shipped_bytes=1_000_000, p50=0.3)
    small = [
        row("val_best", val=0.93, test=0.920, shipped_bytes=20_000),  # best on val, misses on test
        row("test_best", val=0.926, test=0.95, shipped_bytes=10_000),  # best on test
        row("too_big", val=0.99, test=0.99, shipped_bytes=100_000),
    ]
    target = next(t for t in choose.TARGETS if t.key == "accurate_small")
    result = choose.choose_target(target, small, teacher)
    assert result["chosen"] == "val_best"
    assert result["holds_on_test"] is False
    # the 1-point drop reads validation: test_drop is within 1 pt on test only
    drops = [row("val_drop_ok", val=0.93, test=0.90, shipped_bytes=10_000),
             row("test_drop_ok", val=0.90, test=0.934, shipped_bytes=10_000)]  # fmt: skip
    shipped = next(t for t in choose.TARGETS if t.key == "shipped_40x")
    assert choose.choose_target(shipped, drops, teacher)["chosen"] == "val_drop_ok"


def test_the_macs_target_needs_fewer_macs_a_real_speed_up_and_half_a_point() -> None:
    teacher = {**row("teacher", 0.93, 0.93, p50=1.0), "macs": 1000}
    rows = [
        {**row("fast_enough", 0.927, 0.92, p50=0.5), "macs": 450},  # holds on val, not on test
        {**row("too_slow", 0.93, 0.93, p50=0.6), "macs": 450},  # 1.67× is under 1.8×
        {**row("too_big", 0.93, 0.93, p50=0.5), "macs": 600},  # 1.67× fewer MACs
        {**row("dropped", 0.92, 0.93, p50=0.4), "macs": 300},  # 1 pt down on validation
    ]
    target = next(t for t in choose.TARGETS if t.key == "macs_2x")
    result = choose.choose_target(target, rows, teacher)
    assert result["chosen"] == "fast_enough" and result["holds_on_test"] is False


def test_the_60x_and_5x_targets_read_their_ratio_and_drop_on_validation() -> None:
    teacher = row("teacher", 0.93, 0.93, shipped_bytes=60_000, p50=1.0)
    rows = [
        row("x59", 0.93, 0.93, shipped_bytes=1_017, p50=0.5),  # 59.0×: short of 60×
        row("x60", 0.921, 0.90, shipped_bytes=1_000, p50=0.5),  # 0.9 pt down on val, 3 on test
        row("fast", 0.926, 0.93, shipped_bytes=9_000, p50=0.2),  # 5×, 0.4 pt down on val
        row("fast_drop", 0.924, 0.93, shipped_bytes=9_000, p50=0.1),  # 0.6 pt down on val
    ]
    by_key = {t.key: t for t in choose.TARGETS}
    size = choose.choose_target(by_key["shipped_60x"], rows, teacher)
    assert size["chosen"] == "x60" and size["holds_on_test"] is False
    speed = choose.choose_target(by_key["latency_5x"], rows, teacher)
    assert speed["chosen"] == "fast" and speed["holds_on_test"] is True


def fake_results() -> dict[str, Any]:
    teacher = {**row("teacher", 0.93, 0.92, shipped_bytes=1000, p50=0.2), "role": "teacher"}
    cand = row("cand", 0.91, 0.90, shipped_bytes=20)
    peer = {
        **row("peer_x", 0.90, 0.89, shipped_bytes=40),
        "role": "peer",
        "compared_with": "cand",
        "built": "default settings",
        "squeeze_over_peer": {
            "shipped_bytes": 0.5,
            "size_bytes": 0.5,
            "latency_ms_p50": 1.0,
            "latency_ms_p50_range": [0.9, 1.1],
        },
    }
    rows = [teacher, cand, peer]
    for r in rows:
        r |= {
            "shipped_ratio": 1000 / r["shipped_bytes"],
            "onnx_ratio": 1000 / r["shipped_bytes"],
            "speedup_p50": 0.2 / r["latency_ms_p50"],
            "speedup_p50_range": [0.19 / r["latency_ms_p50"], 0.21 / r["latency_ms_p50"]],
            "macs_ratio": 1.0,
        }
    comparison = {
        "method": "vs peer",
        "a": "cand",
        "b": "peer_x",
        "split": "test",
        "difference": 0.01,
        "ci95": [-0.002, 0.022],
        "p_value": 0.12,
        "alpha": 0.05,
        "better": False,
        "worse": False,
        "table": [[880, 20], [10, 90]],
    }
    return {
        "command": "python -m benchmarks.compare", "measured": "now", "machine": "test",
        "commit": "0" * 40, "dirty": False, "latency_repeats": 3, "profile": "default",
        "network": {"name": "convnet"}, "by_method": {"m": "cand"},
        "evaluate": {"threads": 1, "runs": 10, "rounds": 2, "warmup": 1},
        "teacher_training": {"train_seconds": 1.0, "epochs": 1, "parameters": 100, "threads": 1},
        "models": rows, "comparisons": [comparison],
        "targets": [{"target": "accurate_small", "label": "small", "chosen": "cand",
                     "holds_on_test": True},
                    {"target": "latency_5x", "label": "fast", "chosen": None,
                     "holds_on_test": None}],
        "noop": [],
    }  # fmt: skip


def test_report_shows_intervals_comparisons_and_keeps_the_notes() -> None:
    previous = "# old\n\n| stale | figures |\n\n## Budgets\n\nhand-measured: 19 min\n"
    notes = report.kept_notes(previous)
    text = report.results_md(fake_results(), notes, "benchmarks/results-x.json")
    assert "regenerates this file and `benchmarks/results-x.json`" in text
    assert "92.00 [91.00, 93.00]" in text  # test accuracy with its 95% interval
    assert "| vs peer | cand | peer_x | test |" in text
    assert "+1.00 [-0.20, +2.20] | 0.12 | 0.12 | no significant difference" in text  # Holm p
    assert "(1 on test)" in text  # the family Holm adjusts over
    assert "| small | met | cand |" in text and "| fast | missed |" in text
    assert "| peer_x | default settings | cand | 0.50 | 0.50 | 1.00 (0.90–1.10) |" in text
    assert "stale" not in text and text.endswith("## Budgets\n\nhand-measured: 19 min\n")
    assert report.kept_notes(text) == notes  # a second regeneration keeps them unchanged


def test_holm_adjusts_each_split_on_its_own_and_changes_no_verdict() -> None:
    """The family is the comparisons on one split; a stored 0 (< 1e-6) gives an upper bound."""
    base = fake_results()["comparisons"][0]
    ps = [("test", 0.01), ("val", 0.02), ("test", 0.04), ("test", 0.03), ("val", 0.0)]
    comparisons = [base | {"split": s, "p_value": p, "better": p < 0.05} for s, p in ps]
    assert report.holm(comparisons) == pytest.approx([0.03, 0.02, 0.06, 0.06, 2e-6])
    results = fake_results() | {"comparisons": comparisons}
    table = report.comparisons_table(results)
    assert "| 0.04 | 0.06 | cand more accurate (p < 0.05) |" in table[4]  # the raw verdict
    assert "| < 1e-06 | < 2e-06 |" in table[6]
    assert "(3 on test, 2 on val)" in report.results_md(results)
    figures = report.readme_figures(results)
    assert "| vs peers (m): 3 paired comparisons | 0 no significant difference; " in figures
    assert "+1.00 points [-0.20, +2.20] over m (McNemar p = 0.04, Holm p = 0.06)" in figures


def test_readme_figures_replace_only_their_section() -> None:
    readme = "# squeeze\n\n## Figures\n\nold figures\n\n## Development\n\nmake test\n"
    out = report.replace_section(readme, "## Figures", report.readme_figures(fake_results()))
    assert "old figures" not in out and out.endswith("## Development\n\nmake test\n")
    assert "| ≥ 92.5% with a shipped file ≤ 64 KB: `cand` | 90.00 [89.00, 91.00] %, 20 B " in out
    assert "| ≥ 5× lower batch-1 latency, ≤ 0.5 pt drop | missed |" in out
    assert "| vs peers (m): 1 paired comparison | 1 no significant difference |" in out


def test_readme_figures_say_when_a_target_does_not_hold_and_what_distillation_adds() -> None:
    results = fake_results()
    results["targets"][0]["holds_on_test"] = False
    peer = results["comparisons"][0]
    distill = peer | {"method": "distillation", "b": "teacher", "p_value": 0.0, "better": True}
    results["comparisons"] = [peer | {"split": "val"}, distill, peer]
    figures = report.readme_figures(results)
    assert "2.00× (1.90–2.10) lower p50 latency (does not hold on test) |" in figures
    assert (
        "| distillation: `cand` vs `teacher` (same student, labels alone) | +1.00 points "
        "[-0.20, +2.20], McNemar p < 1e-06, Holm p < 2e-06: cand more accurate |"
    ) in figures
    with pytest.raises(ValueError, match="no '## Figures' section"):
        report.replace_section("# nothing\n", "## Figures", "x")


def test_the_results_name_the_commit_and_whether_code_differed_from_it(tmp_path: Path) -> None:
    """A profile rewrites params.yaml and dvc.yaml (the run's configuration, recorded beside the
    figures), and an earlier compare its own report; any other tracked change means the commit
    alone did not build the models."""
    from benchmarks.compare import code_changed
    from tests.conftest import run

    assert code_changed(tmp_path) is None  # outside git
    report = "benchmarks/RESULTS-budget.md"
    (tmp_path / "benchmarks").mkdir()
    for name in ("params.yaml", "dvc.yaml", "train.py", report):
        (tmp_path / name).write_text("a\n")
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "."], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"], tmp_path)
    (tmp_path / "params.yaml").write_text("b\n")
    (tmp_path / "dvc.yaml").write_text("b\n")
    assert code_changed(tmp_path) is False
    (tmp_path / report).write_text("b\n")
    assert code_changed(tmp_path, (report,)) is False
    assert code_changed(tmp_path) is True
    (tmp_path / "train.py").write_text("b\n")
    assert code_changed(tmp_path, (report,)) is True


def test_each_committed_benchmark_names_the_command_that_regenerates_it() -> None:
    from benchmarks.compare import command_for, committed_results

    for results in committed_results(Path(__file__).resolve().parents[2] / "benchmarks"):
        assert results["command"] == command_for(results["profile"], bool(results["noop"]))


def test_a_profile_on_others_is_reproduced_by_applying_them_in_order_after_its_data() -> None:
    from benchmarks.compare import PROFILE_BASE, command_for

    root = Path(__file__).resolve().parents[2]
    for name in {n for base in PROFILE_BASE.values() for n in base} | set(PROFILE_BASE):
        assert (root / "profiles" / f"{name}.yaml").is_file(), name
    command = command_for("resnet-fastest")
    assert ("&& python -m examples.fmnist_imagefolder datasets/fmnist-rgb32 --rgb32 && squeeze "
            "profile resnet && squeeze profile budget && squeeze profile fastest && squeeze "
            "profile resnet-fastest && squeeze run && python -m benchmarks.compare --profile "
            "resnet-fastest --noop ") in command  # fmt: skip
    assert command.endswith("--out benchmarks/RESULTS-resnet-fastest.md "
                            "--json benchmarks/results-resnet-fastest.json")  # fmt: skip


def trial(number: int, accuracy: float, shipped: int, finalist: str = "") -> dict[str, str]:
    """A row of search/trials.csv, as csv.DictReader gives it (strings)."""
    return {"study": "per_layer", "trial": str(number), "search_accuracy": str(accuracy),
            "latency_ms_p50": "0.1", "shipped_bytes": str(shipped), "within_budget": "True",
            "stopped_early": "False", "front": str(number != 3), "finalist": finalist,
            "sparsity": "0.5",
            "weights": "int8", "qat": "True", "policy": "{}"}  # fmt: skip


def test_the_search_section_shows_the_budget_the_front_and_the_finalists_built() -> None:
    results = fake_results()
    recipe = {"kind": "per_layer", "trial": 1, "weights": "int8", "sparsity": 0.5, "qat": True,
              "fp32_layers": [], "search_accuracy": 0.9, "rescored_accuracy": 0.91}  # fmt: skip
    results["gate"] = {"challenger": "cand", "policy": "smallest"}
    results["search"] = {
        "budget": {"objective": "smallest", "max_accuracy_drop": 0.01, "drop": "absolute",
                   "max_latency_ms": None, "max_shipped_bytes": 5000, "trials": 3,
                   "uniform_trials": 1, "hours": 1.0, "seed": 0, "rescore": 2,
                   "rescore_epochs": 3},
        "search_seconds": 600.0, "build_seconds": {"cand": 120.0},
        "teacher": {"search_accuracy": 0.92, "rescored_accuracy": 0.93},
        "finalists": {"cand": recipe},
        # trial 3 is beaten by trial 1 (as accurate, smaller): off the front (search.front)
        "trials": [{**trial(1, 0.9, 100, "cand"), "rescored_accuracy": "0.91"},
                   trial(2, 0.95, 300), trial(3, 0.9, 200),
                   {**trial(1, 0.8, 50), "study": "uniform", "within_budget": "False"}],
    }  # fmt: skip
    text = report.results_md(results)
    assert "objective `smallest`" in text and "max_shipped_bytes 5000" in text
    assert "took 10.0 min; building the finalists in full took cand 2.0 min" in text
    assert "per_layer 3 completed, 3 within the budget" in text
    assert "uniform 1 completed, 0 within the budget" in text
    # the front of both studies' trials, where the finalists are chosen
    front = [ln.split(" | ")[0] for ln in text.splitlines() if ln.startswith("| ")]
    assert {"| per_layer 1", "| per_layer 2", "| uniform 1"} <= set(front)
    assert "| per_layer 3" not in front
    assert "| cand ★ | per_layer 1 | int8 | 0 | 0.5 | True | 90.00 | 91.00 |" in text
    # the second rung: the rescored trial's score beside its first; — where not rescored
    assert "| per_layer 1 | 90.00 | 91.00 | 100 |" in text
    assert "| per_layer 2 | 95.00 | — | 300 |" in text
    assert (
        "Up to 2 trials past the accuracy floor were fine-tuned again for 3 "
        "epochs (`rescored %`; the uncompressed reference 93.00% at that length)"
    ) in text
    recipe["width"] = 0.5  # a distilled student's recipe says so
    assert "| cand ★ | per_layer 1 (student ×0.5) | int8 |" in report.results_md(results)
    del results["search"]["teacher"]["rescored_accuracy"]  # none rescored: nothing said
    assert "fine-tuned again" not in report.results_md(results)
    assert "Against the hand-written graph" not in text  # no default run to stand beside
    assert "## Search" not in report.results_md(fake_results())  # no search, no section
    assert "each lever was timed" not in text  # size counts: no lever was timed
    space = {"weights": ["fp32", "int8"], "max_unstructured": 0.0}
    results["search"]["speed_levers"] = {
        "latency_ms_p50": {"fp32": 0.5, "zeroed": 0.5, "int8": 0.2, "int4": 0.6},
        "space": space,
    }
    assert ("(p50: fp32 0.500 ms, zeroed 0.500 ms, int8 0.200 ms, int4 0.600 ms); not searched, "
            "as no faster: int4, zeroed weights.") in report.results_md(results)  # fmt: skip


def test_a_search_report_stands_beside_the_hand_written_graphs_answer(tmp_path: Path) -> None:
    """A search run's report names the committed default run's candidate best under the gate's
    policy within the gate's drop on validation, with its test interval and ratios
    (benchmarks.compare.hand_tuned), not a paired test across runs."""
    from benchmarks.compare import hand_tuned

    assert hand_tuned(tmp_path, "smallest", 0.01) is None  # no default run committed
    default = fake_results()
    fast = {**row("fast", 0.925, 0.92, shipped_bytes=500, p50=0.01), "shipped_ratio": 2.0,
            "speedup_p50": 20.0, "speedup_p50_range": [19.0, 21.0]}  # fmt: skip
    default |= {"commit": "a" * 40, "measured": "2026-12-05 22:24 UTC",
                "models": [*default["models"], fast]}  # fmt: skip
    write_json(tmp_path / "results.json", default)
    # cand (val 0.91) is 2 points under the teacher (0.93), fast (0.925) half a point
    assert hand_tuned(tmp_path, "smallest", 0.025)["chosen"]["name"] == "cand"
    assert hand_tuned(tmp_path, "smallest", 0.01)["chosen"]["name"] == "fast"
    assert hand_tuned(tmp_path, "smallest", 0.001) is None
    other = hand_tuned(tmp_path, "fastest", 0.025)
    assert other["chosen"]["name"] == "fast" and other["teacher"]["name"] == "teacher"
    text = "\n".join(report.hand_tuned_text({"hand_tuned": other}))
    assert f"is `fast`: test {report.with_ci(fast, 'test')} %" in text
    assert "best under `fastest` among those within 2.5 points" in text
    assert "2.0× smaller shipped file, 20.00× (19.00–21.00) batch-1 speed-up" in text
    assert "(the default params, commit aaaaaaaaaaaa" in text and "not by a paired test" in text
    # a budget on another profile's data and network stands beside that profile's hand-written run
    assert hand_tuned(tmp_path, "fastest", 0.025, "resnet-fastest") is None
    write_json(tmp_path / "results-resnet.json", default)
    mine = hand_tuned(tmp_path, "fastest", 0.025, "resnet-fastest")
    text = "\n".join(report.hand_tuned_text({"hand_tuned": mine}))
    assert "in `benchmarks/RESULTS-resnet.md` (the resnet params, commit aaaaaaaaaaaa" in text
