"""Validation chooses, test reports: the real prune, quantize, merge, evaluate, gate and promote
stages on two workspaces of real candidates, one of them with its test labels permuted before
anything was built. Every model file must come out byte-identical, and every decision the same:
the greedy soup's ingredients, the int4 scheme, each gate verdict, the challenger under two
policies, champion vs challenger and the promoted version; the reported test accuracies must
not be the same."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch import nn

from squeeze.config.files import load_params
from squeeze.config.params import Params
from squeeze.config.sections import IngredientParams, MergeParams, PruneParams, QuantizeParams
from squeeze.config.workspace import Workspace, read_json, write_json
from squeeze.data.spec import DataSpec, Split
from squeeze.data.splits import save_split
from squeeze.nets.models import save_checkpoint
from stages import evaluate, gate, merge, promote, prune, quantize

PROJECT = Path(__file__).resolve().parents[2]
LOOSE_GATES = {"min_accuracy": 0.3, "max_accuracy_drop": 0.3, "max_class_drop": 0.6,
               "max_latency_ms": 100.0, "min_agreement": 0.9}  # fmt: skip


def params_for(registry: Path, tiny_fit: Any, policy: str) -> Params:
    """The project's params with a graph built from the tiny teacher whose every choosing path
    reads a split: a pruned model, int8 of the teacher and of the pruned one, int4 of the pruned
    one (onnxruntime's scheme or squeeze's grid, on validation), a greedy soup of three
    fine-tunes (ingredients kept on validation)."""
    base = load_params(PROJECT)
    int8 = {
        "mode": "static",
        "weights": "int8",
        "per_channel": True,
        "calibration_samples": 64,
        "fp32_first_layer": False,
    }
    pruned = PruneParams(
        upstream="teacher", kind="structured", sparsity=0.5, steps=1, importance="l1",
        round_to=None, distill_alpha=0.0, temperature=4.0, qat=None,
        fit=tiny_fit(epochs=1, lr=0.02),
    )  # fmt: skip
    ingredients = [
        IngredientParams(seed=seed, lr=lr, epochs=1, augment=False, label_smoothing=smoothing)
        for seed, lr, smoothing in ((1, 0.01, 0.0), (2, 0.05, 0.0), (3, 0.2, 0.1))
    ]
    soup = MergeParams(kind="soup_greedy", upstreams=["teacher"], ingredients=ingredients,
                       student=None, temperature=4.0, alpha=0.9,
                       fit=tiny_fit(epochs=1))  # fmt: skip
    return base.model_copy(
        update={
            "distill": {},
            "merge": {"t_soup": soup},
            "prune": {"t_ch50": pruned},
            "quantize": {
                "t_int8": QuantizeParams(upstream="teacher", **int8),
                "t_ch50_int8": QuantizeParams(upstream="t_ch50", **int8),
                "t_ch50_int4": QuantizeParams(upstream="t_ch50", **(int8 | {"weights": "int4"})),
            },
            "gate": base.gate.model_copy(update=LOOSE_GATES | {"policy": policy}),
            "promote": base.promote.model_copy(update={"registry": str(registry)}),
        }
    )


def build_workspace(
    root: Path, data: dict[str, Split], spec: DataSpec, teacher: nn.Module, params: Params
) -> None:
    """Splits, fingerprint, data profile, the teacher and every candidate, built by the stage
    code."""
    ws = Workspace(root)
    for name, split in data.items():
        save_split(split, ws.split(name))
    write_json(ws.fingerprint, {"sha256": "0" * 64, "files": {}})
    write_json(ws.profile, spec.to_json())
    record = {"name": "teacher", "method": "train", "upstream": []}
    save_checkpoint(teacher, ws.model("teacher"), record)
    prune.run(root, params, "t_ch50")
    for name in params.quantize:
        quantize.run(root, params, name)
    merge.run(root, params, "t_soup")


def built_files(root: Path) -> dict[str, str]:
    """sha256 of every model file the build wrote, by path under models/."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((root / "models").rglob("*"))
        if path.is_file() and path.name != "model.json"  # model.json records wall times
    }


def decisions(root: Path, params: Params) -> dict[str, Any]:
    """evaluate -> gate -> promote; what was decided and what was reported."""
    evaluate.run(root, params)
    gate.run(root, params)
    promote.run(root, params)
    ws = Workspace(root)
    report, result = read_json(ws.metrics("gate")), read_json(ws.metrics("promote"))
    candidates = read_json(ws.metrics("candidates"))
    soup, int4 = (read_json(ws.model(name) / "model.json") for name in ("t_soup", "t_ch50_int4"))
    return {
        "built": built_files(root),
        "decided": {
            "soup": (soup["ingredients"], soup["ingredients_kept"], soup["variants"]),
            "int4_scheme": (int4["int4_scheme"], int4["int4_scheme_val_accuracy"]),
            "challenger": report["challenger"],
            "ranking": report["ranking"],
            "verdicts": {n: v["failed"] for n, v in report["candidates"].items()},
            "outcome": result["outcome"],
            "comparison": result["comparison"],
            "production": result["registry"]["production"],
        },
        "test_accuracy": {n: r["test_accuracy"] for n, r in candidates.items()},
        "agreement": {n: r["agreement"] for n, r in candidates.items()},
    }


@pytest.fixture(scope="module")
def runs(
    small_fmnist: dict[str, Split],
    fmnist_spec: DataSpec,
    tiny_trained: nn.Module,
    tiny_fit: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, list[dict[str, Any]]]:
    """Two rounds per workspace: most_accurate promotes a first champion, then smallest decides
    a challenger against it (paired on validation). The permuted workspace has its test labels
    shuffled before anything is built."""
    test = small_fmnist["test"]
    permuted = Split(test.images, np.random.default_rng(0).permutation(test.labels))
    out = {}
    for variant, data in (("as_is", small_fmnist), ("permuted", small_fmnist | {"test": permuted})):
        root = tmp_path_factory.mktemp(variant)
        registry = root.parent / f"{variant}-registry"
        first = params_for(registry, tiny_fit, "most_accurate")
        build_workspace(root, data, fmnist_spec, tiny_trained, first)
        second = params_for(registry, tiny_fit, "smallest")
        out[variant] = [decisions(root, first), decisions(root, second)]
    return out


def test_permuting_test_labels_before_building_changes_no_model_and_no_decision(runs: dict) -> None:
    for as_is, permuted in zip(runs["as_is"], runs["permuted"], strict=True):
        assert as_is["built"] == permuted["built"]
        assert as_is["decided"] == permuted["decided"]
        assert as_is["agreement"] == permuted["agreement"]
    built = runs["as_is"][0]["built"]
    assert {path.split("/")[1] for path in built} == {
        "teacher", "t_ch50", "t_int8", "t_ch50_int8", "t_ch50_int4", "t_soup"
    }  # fmt: skip
    first, second = (r["decided"] for r in runs["as_is"])
    assert first["outcome"] == "promoted" and first["production"] == 1
    assert second["comparison"] is not None or second["outcome"] == "already_in_production"


def test_permuting_test_labels_changes_the_reported_test_accuracy(runs: dict) -> None:
    as_is, permuted = runs["as_is"][0]["test_accuracy"], runs["permuted"][0]["test_accuracy"]
    assert as_is.keys() == permuted.keys()
    for name in as_is:
        assert as_is[name] > 0.5 > permuted[name], name  # trained models vs shuffled labels


def test_every_export_has_an_agreement_figure(runs: dict) -> None:
    agreement = runs["as_is"][0]["agreement"]
    assert set(agreement) == {"teacher", "t_ch50", "t_int8", "t_ch50_int8", "t_ch50_int4", "t_soup"}
    # int4 weights of a model not fine-tuned on the int4 grid agree less with their source
    assert all(0.9 <= a <= 1.0 for n, a in agreement.items() if n != "t_ch50_int4"), agreement
    assert 0.5 <= agreement["t_ch50_int4"] <= 1.0, agreement
